//! Errors of report writing.

use std::path::PathBuf;

use thiserror::Error;

/// What can stop a report.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Write(#[from] metricunet_core::fsio::WriteError),
    #[error(transparent)]
    Store(#[from] metricunet_store::StoreError),
    #[error(transparent)]
    Data(#[from] metricunet_data::DataError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("figure {name}: {message}")]
    Plot { name: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ReportError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Self::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Result alias of the report crate.
pub type Result<T, E = ReportError> = std::result::Result<T, E>;
