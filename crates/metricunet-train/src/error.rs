//! Errors of training.

use std::path::PathBuf;

use thiserror::Error;

/// What can stop a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Write(#[from] metricunet_core::fsio::WriteError),
    #[error(transparent)]
    Core(#[from] metricunet_core::CoreError),
    #[error(transparent)]
    Data(#[from] metricunet_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Boxed: network errors are large and rare.
    #[error(transparent)]
    Model(Box<metricunet_model::ModelError>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a usable checkpoint: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("iteration {iteration}: the loss term `{term}` is {value}; training stopped (lower the learning rate or lambda)")]
    NonFinite {
        iteration: usize,
        term: String,
        value: f64,
    },
    #[error("device: {0}")]
    Device(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<metricunet_model::ModelError> for TrainError {
    fn from(e: metricunet_model::ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the training crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
