//! The VM0 API client: wire types for both JSON shapes, pagination, typed errors, retries
//! and streamed archive downloads.
//!
//! This module owns everything that crosses HTTP to the VM0 API and its object store. It
//! knows nothing of inodes or the cache: callers get plain structs and an `impl Read`.
//! The contract it implements is `shared/vm0-api.md` (both the "snake" and the "camel"
//! shapes are read by the same types).

mod answer;
mod client;
mod download;
mod error;
mod redirect;
mod retry;
mod rows;
mod runs;
mod transport;
mod types;
mod wire;

pub use client::{error_chain, Client, ClientConfig, Token};
pub use download::{Download, ResumePoint};
pub use error::{ApiError, Server};
pub use retry::RetryPolicy;
pub use runs::{
    is_final_status, snake_key, snake_keys, Agent, LogEntry, LogPage, LogQuery, Run, RunEvent,
    RunEvents, RunId, RunQuery,
};
pub use types::{ArchiveRef, Kind, Storage, StorageDetail, Version};
