//! Errors of remote storage.

/// What can go wrong talking to the object store or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The `--remote-storage` URL cannot be used.
    #[error("remote storage URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (it holds no secrets: credentials come from the environment).
        url: String,
        /// Why.
        reason: String,
    },
    /// The object store failed (network, permissions, the service).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// An object exists but its bytes are not what its metadata says.
    #[error("archived object {object} is corrupt: {reason}")]
    Corrupt {
        /// The object's path.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// Compression or decompression failed for a reason other than corrupt input.
    #[error("{0}")]
    Codec(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RemoteError {
    /// True for "the object is not there" (as opposed to "could not ask").
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RemoteError::Store(object_store::Error::NotFound { .. })
        )
    }
}
