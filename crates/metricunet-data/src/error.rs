//! Error type of the data crate: every variant names the file or the field concerned.

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong reading, checking or writing data.
#[derive(Debug, Error)]
pub enum DataError {
    #[error(transparent)]
    Write(#[from] metricunet_core::fsio::WriteError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable NIfTI file: {message}", path.display())]
    Nifti { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    BadCase { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    /// A problem with the case read from `path`.
    pub fn bad(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::BadCase {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of the data crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
