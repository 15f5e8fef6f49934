//! YAML records of a run folder, written through the one atomic-write helper of
//! [`metricunet_core::fsio`].

use std::path::Path;

pub use metricunet_core::fsio::{copy_atomic, remove_temporaries, write_atomic};

use crate::error::{Result, RunError};

/// Serialise `value` as YAML into `path` atomically.
pub fn write_yaml<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_norway::to_string(value).map_err(|e| RunError::file(path, e.to_string()))?;
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Read a YAML file written by [`write_yaml`].
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
    serde_norway::from_str(&text).map_err(|e| RunError::file(path, e.to_string()))
}
