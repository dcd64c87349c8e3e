//! The VM0 API client: wire types for both JSON shapes, pagination, typed errors, retries
//! and streamed archive downloads.
//!
//! This module owns everything that crosses HTTP to the VM0 API and its object store. It
//! knows nothing of inodes or the cache: callers get plain structs and an `impl Read`.
//! The contract it implements is `shared/vm0-api.md` (both the "snake" and the "camel"
//! shapes are read by the same types).

mod client;
mod download;
mod error;
mod retry;
mod types;
mod wire;

pub use client::{error_chain, Client, ClientConfig, Token};
pub use download::{Download, ResumePoint};
pub use error::{ApiError, Server};
pub use retry::RetryPolicy;
pub use types::{ArchiveRef, Kind, Storage, StorageDetail, Version};
