//! The run store: the one place that knows what a run folder holds and what its files are
//! called, the records written there (`cell.yaml`, `plan.yaml`, `run.yaml`) as serde structs,
//! and their reading and writing (atomic, through `metricunet_core::fsio`).
//!
//! ```text
//! RUN_ROOT/                      default runs/<experiment name>
//!   plan.yaml                    the cells of the experiment as last run (source, --set, axes)
//!   stage1/<stage-1 hash>/       one localiser per data + stage-1 settings + seed
//!   cells/<cell hash>/           one grid cell x seed
//!     cell.yaml                  the cell's record: state, label, seed, device, times, attempts
//!     config.yaml run.yaml       resolved configuration; version, git revision, device
//!     split.yaml                 train / val / test case ids
//!     stage1/model.safetensors   copy of the shared localiser (the folder predicts alone)
//!     stage2/                    train_log.csv, checkpoint.safetensors, model.safetensors
//!     predictions/<case>.nii.gz  test-case masks on the CT's grid
//!     probabilities/<case>.nii.gz  foreground probability of the report's figure cases
//!     metrics.csv                per test case: every metric and its flag
//! ```
//!
//! A folder of `metricunet train` holds the same `config.yaml`, `run.yaml`, `split.yaml` and
//! stage folders.

mod records;

use std::path::{Path, PathBuf};

use metricunet_core::config::StageName;
use thiserror::Error;

pub use records::{
    git_revision, now, Attempt, AttemptOutcome, CellRecord, CellState, KeptRecord, PlanCell,
    PlanRecord, RunInfo, TestCase, Timings,
};

/// `RUN_ROOT/plan.yaml`.
pub const PLAN: &str = "plan.yaml";
/// `cells/<hash>/cell.yaml`.
pub const CELL_RECORD: &str = "cell.yaml";
/// The resolved configuration of a cell or `train` folder.
pub const CONFIG: &str = "config.yaml";
/// Version, git revision, hashes, seed, device and host of a cell or `train` folder.
pub const RUN_INFO: &str = "run.yaml";
/// The train / val / test split.
pub const SPLIT: &str = "split.yaml";
/// Per test case: every metric and its flag.
pub const METRICS: &str = "metrics.csv";
/// A stage folder's training checkpoint (weights, optimiser, RNG, iteration).
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// A stage folder's final weights (what prediction loads).
pub const WEIGHTS: &str = "model.safetensors";
/// A stage folder's training log.
pub const LOG: &str = "train_log.csv";
/// Which weights a stage folder's model holds (`training.keep`), written before them.
pub const KEPT: &str = "kept.yaml";

/// `stage1` or `stage2`: a stage's folder inside a cell or `train` folder.
pub fn stage_dir(stage: StageName) -> &'static str {
    stage.as_str()
}

/// `root/cells/<hash>`.
pub fn cell_dir(root: &Path, hash: &str) -> PathBuf {
    root.join("cells").join(hash)
}

/// `root/<stage>/<hash>`: a stage trained once and shared by the cells whose configurations
/// agree on what it depends on (stage 1: data, stage 1 and seed; stage 2: everything but
/// post-processing); each cell holds a copy of its model, log and `kept.yaml`.
pub fn shared_stage_dir(root: &Path, stage: StageName, hash: &str) -> PathBuf {
    root.join(stage_dir(stage)).join(hash)
}

/// What a cell copies from a shared stage folder into its own.
pub const STAGE_COPIES: [&str; 3] = [WEIGHTS, LOG, KEPT];

/// `dir/predictions/<case>.nii.gz`.
pub fn prediction_path(dir: &Path, case: &str) -> PathBuf {
    dir.join("predictions").join(format!("{case}.nii.gz"))
}

/// `dir/probabilities/<case>.nii.gz`.
pub fn probability_path(dir: &Path, case: &str) -> PathBuf {
    dir.join("probabilities").join(format!("{case}.nii.gz"))
}

/// Every cell folder of a run root (sorted), finished or not.
pub fn cell_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let cells = root.join("cells");
    if !cells.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&cells)
        .map_err(|e| StoreError::io(&cells, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// What can go wrong reading or writing a run folder's records.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] metricunet_core::fsio::WriteError),
    #[error(transparent)]
    Core(#[from] metricunet_core::CoreError),
}

impl StoreError {
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

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Serialise `value` as YAML into `path` atomically.
pub fn write_yaml<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_norway::to_string(value).map_err(|e| StoreError::file(path, e.to_string()))?;
    Ok(metricunet_core::fsio::write_atomic(path, text.as_bytes())?)
}

/// Read a YAML file written by [`write_yaml`].
pub fn read_yaml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    serde_norway::from_str(&text).map_err(|e| StoreError::file(path, e.to_string()))
}
