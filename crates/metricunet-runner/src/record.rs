//! The layout of a run folder and the record each cell keeps.
//!
//! ```text
//! RUN_ROOT/                      default runs/<experiment name>
//!   plan.yaml                    the cells of the experiment as last run (source, --set, axes)
//!   stage1/<stage-1 hash>/       one localiser per data + stage-1 settings + seed
//!   cells/<cell hash>/           one grid cell x seed
//!     cell.yaml                  this record: state, label, seed, device, times, error
//!     config.yaml run.yaml       resolved configuration; version, git revision, device
//!     split.yaml                 train / val / test case ids
//!     stage1/model.safetensors   copy of the shared localiser (the folder predicts alone)
//!     stage2/                    training log, checkpoint, model
//!     predictions/<case>.nii.gz  test-case masks on the CT's grid
//!     probabilities/<case>.nii.gz  foreground probability of the report's figure cases
//!     metrics.csv                per test case: every metric and its flag
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsutil::{read_yaml, write_yaml};

/// Where a cell stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Started and not finished: killed, or running elsewhere.
    Running,
    Finished,
    Failed,
}

/// Seconds spent in each phase of a cell (cumulative over resumed attempts, each phase
/// recorded as soon as it ends, so a kill loses at most the phase it interrupted).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    /// Training the shared stage 1 (only in the cell that trained it).
    pub stage1_s: f64,
    pub stage2_s: f64,
    pub predict_s: f64,
    /// Working time, waits excluded.
    pub total_s: f64,
    /// Waiting for another process's stage 1 (not counted in `total_s`).
    pub waited_s: f64,
}

/// One run of a cell by one process: a killed one stays `running` until the next attempt
/// marks it `interrupted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    /// Working seconds of this attempt, as last recorded.
    pub seconds: f64,
    /// running, finished, failed or interrupted.
    pub outcome: String,
    /// The stage-2 iteration this attempt resumed from (its checkpoint), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2_resumed_from: Option<usize>,
}

/// `cells/<hash>/cell.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRecord {
    pub experiment: String,
    /// Index in the experiment's expansion (grid product, then seeds).
    pub index: usize,
    /// Grid values, e.g. `metric.lambda=0.1 metric.loss.sigma=0.5`, or `base`.
    pub label: String,
    /// The grid values one by one (path, value as YAML text).
    pub overrides: Vec<(String, String)>,
    pub seed: u64,
    pub hash: String,
    pub stage1_hash: String,
    pub state: CellState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub device: String,
    pub host: String,
    pub metricunet_version: String,
    pub git_revision: String,
    pub timings: Timings,
    /// Unix seconds of the last state change.
    pub updated: u64,
    /// Test cases evaluated, with their files (for the report's figures).
    #[serde(default)]
    pub test_cases: Vec<TestCase>,
    /// Every attempt at this cell, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// A test case's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

impl CellRecord {
    /// Read `dir/cell.yaml`, if there.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(CELL_RECORD);
        if !p.exists() {
            return Ok(None);
        }
        read_yaml(&p).map(Some)
    }
    /// Write `dir/cell.yaml` atomically.
    pub fn write(&mut self, dir: &Path) -> Result<()> {
        self.updated = now();
        write_yaml(&dir.join(CELL_RECORD), self)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub const CELL_RECORD: &str = "cell.yaml";
pub const METRICS: &str = "metrics.csv";

/// `root/cells/<hash>`.
pub fn cell_dir(root: &Path, hash: &str) -> PathBuf {
    root.join("cells").join(hash)
}

/// `root/stage1/<hash>`.
pub fn stage1_dir(root: &Path, hash: &str) -> PathBuf {
    root.join("stage1").join(hash)
}

/// Every cell folder of a run root (sorted), finished or not.
pub fn cell_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let cells = root.join("cells");
    if !cells.is_dir() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&cells)
        .map_err(|e| crate::RunError::io(&cells, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// The git revision of the current directory's checkout, or `unknown`.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}
