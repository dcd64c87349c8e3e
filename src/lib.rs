//! vm0fs: the volumes and artifacts of the VM0 agent platform as a read-only directory tree.
//!
//! The crate is a library plus a thin binary. The library is layered so that each part can
//! be tested alone:
//!
//! - [`api`] speaks HTTP to the VM0 API (both JSON shapes, pagination, retries, downloads).
//! - [`archive`] turns a `tar.gz` stream into an on-disk version: content files plus an index.
//! - [`cache`] keeps unpacked versions on disk under a byte budget (LRU, pinning, crash safety).
//! - [`fs`] is the filesystem logic (inodes, the tree, every operation as a plain method).
//! - [`fuse`] adapts [`fs`] to `fuser`; it holds no logic of its own.
//!
//! The VM0 API emulator that tests, demo and benchmarks run against is a separate crate of
//! the workspace (`crates/vm0-emulator`), a dev-dependency only.

pub mod activity;
pub mod api;
pub mod archive;
pub mod cache;
pub mod config;
pub mod dates;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod ids;
pub mod metadata;
pub mod mount;
pub mod openfiles;
pub mod panics;
pub mod remote;
pub mod runs;
pub mod size;
