//! Errors of the runner: every variant names the file, cell or setting concerned.

use std::path::PathBuf;

use thiserror::Error;

/// What can stop a run (or one cell of it).
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Write(#[from] metricunet_core::fsio::WriteError),
    #[error(transparent)]
    Core(#[from] metricunet_core::CoreError),
    #[error(transparent)]
    Data(#[from] metricunet_data::DataError),
    #[error(transparent)]
    Store(#[from] metricunet_store::StoreError),
    #[error(transparent)]
    Train(#[from] metricunet_train::TrainError),
    /// Boxed: prediction errors are large and rare.
    #[error(transparent)]
    Predict(Box<metricunet_eval::PredictError>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<metricunet_eval::PredictError> for RunError {
    fn from(e: metricunet_eval::PredictError) -> Self {
        Self::Predict(Box::new(e))
    }
}

impl RunError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    /// A file that is there but not what was expected.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result alias of the runner crate.
pub type Result<T, E = RunError> = std::result::Result<T, E>;
