//! Where jobs read and write data: local paths as before, and S3-compatible object stores
//! through `object_store` (see README.md for what holds on which store).
//!
//! Async at heart (the store is an HTTP client); [`block_on`] lets the blocking parts of the
//! task runtimes (split readers, part-file writers) call it from their own threads.

mod blocking;
mod object;
mod s3;

pub use blocking::block_on;
pub use object::{ObjectEntry, ObjectReader, ObjectUrl};
pub use s3::{S3Settings, SECRET_VARIABLES};
pub use spindle_protocol::{DataUrl, UrlError};

/// A client of one bucket (S3's, for its multipart uploads that complete later).
pub type Store = std::sync::Arc<object_store::aws::AmazonS3>;

/// What went wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The settings cannot make a client (never shows a secret's value).
    #[error("object store settings: {0}")]
    Config(String),
    /// A request about `url` failed.
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
}

impl StorageError {
    pub(crate) fn request(url: &impl std::fmt::Display) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
        move |error| StorageError::Request {
            url: url.to_string(),
            reason: error.to_string(),
        }
    }
}
