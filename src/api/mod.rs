//! The VM0 API client: wire types for both JSON shapes, pagination, typed errors, retries
//! and streamed archive downloads.
//!
//! This module owns everything that crosses HTTP to the VM0 API and its object store. It
//! knows nothing of inodes or the cache: callers get plain structs and an `impl Read`.
//! The contract it implements is `shared/vm0-api.md` (both the "snake" and the "camel"
//! shapes are read by the same types).

mod client;
mod error;
mod types;

pub use client::{Client, ClientConfig, Download, RetryPolicy, Token};
pub use error::ApiError;
pub use types::{Kind, Storage, StorageDetail, Version};
