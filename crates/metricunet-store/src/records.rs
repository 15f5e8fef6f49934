//! The records of a run folder: `cell.yaml` ([`CellRecord`]), `plan.yaml` ([`PlanRecord`])
//! and `run.yaml` ([`RunInfo`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use metricunet_core::config::{inline_yaml, GridMode};
use metricunet_core::ExperimentPlan;
use serde::{Deserialize, Serialize};

use crate::{read_yaml, write_yaml, Result, StoreError, CELL_RECORD, KEPT, PLAN, RUN_INFO};

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

/// How an attempt ended (`running` while it runs, or when its process was killed before the
/// next attempt looked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Running,
    Finished,
    Failed,
    /// Killed: marked so by the next attempt at the cell.
    Interrupted,
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
    pub outcome: AttemptOutcome,
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
    /// The hash of its stage 2's training (the cell's configuration without
    /// post-processing): its folder `stage2/<hash>` is shared by cells that differ only in
    /// post-processing.
    #[serde(default)]
    pub stage2_hash: String,
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
    /// Which weights each stage kept (`stage1`, `stage2`), from their `kept.yaml`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kept: BTreeMap<String, KeptRecord>,
}

/// A stage folder's `kept.yaml`: which iteration's weights its model holds and their
/// validation scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptRecord {
    /// `best` or `last` (`training.keep`).
    pub rule: String,
    /// The iteration whose weights the model holds.
    pub iteration: usize,
    /// Iterations trained.
    pub trained: usize,
    /// Its whole-case validation scores (`dsc`, `asd`, ...; empty when not validated).
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
}

impl KeptRecord {
    /// Read `dir/kept.yaml`, if there.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(KEPT);
        if !p.exists() {
            return Ok(None);
        }
        read_yaml(&p).map(Some)
    }
    /// Write `dir/kept.yaml` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_yaml(&dir.join(KEPT), self)
    }
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

/// `RUN_ROOT/plan.yaml`: the cells of the experiment as last run, for `report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub experiment: String,
    pub description: String,
    /// The experiment file and the `--set` overrides it was run with.
    pub source: String,
    pub sets: Vec<String>,
    /// Grid axes (dotted paths) in grid order.
    pub axes: Vec<String>,
    /// How the grid was expanded (`product` in plans written before this field existed).
    #[serde(default)]
    pub grid_mode: GridMode,
    /// The file's own value of each grid axis that has one (as in cell labels), which a
    /// one-at-a-time grid holds the other axes at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<(String, String)>,
    pub cells: Vec<PlanCell>,
}

/// One cell of [`PlanRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCell {
    pub index: usize,
    pub label: String,
    pub seed: u64,
    pub hash: String,
}

impl PlanRecord {
    /// The plan of `plan` as run from `source` with `sets`.
    pub fn of(plan: &ExperimentPlan, source: &str, sets: &[String]) -> Result<Self> {
        let cells = plan
            .cells
            .iter()
            .map(|c| {
                Ok(PlanCell {
                    index: c.index,
                    label: c.label(),
                    seed: c.seed,
                    hash: c.run_hash()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            experiment: plan.base.name.clone(),
            description: plan.base.description.clone(),
            source: source.to_string(),
            sets: sets.to_vec(),
            // from the cells, so that a grid given with --set counts too
            axes: plan
                .cells
                .first()
                .map(|c| c.overrides.iter().map(|(k, _)| k.clone()).collect())
                .unwrap_or_default(),
            grid_mode: plan.grid_mode,
            baseline: plan
                .baseline
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), inline_yaml(v))))
                .collect(),
            cells,
        })
    }

    /// Read `root/plan.yaml`.
    pub fn read(root: &Path) -> Result<Self> {
        let p = root.join(PLAN);
        if !p.exists() {
            return Err(StoreError::file(
                &p,
                "missing: is this a run folder of `metricunet run`?",
            ));
        }
        read_yaml(&p)
    }

    /// Write `root/plan.yaml` atomically.
    pub fn write(&self, root: &Path) -> Result<()> {
        write_yaml(&root.join(PLAN), self)
    }
}

/// `run.yaml` of a cell or `train` folder: what made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub metricunet_version: String,
    pub git_revision: String,
    /// The hash of the configuration the folder's stage 2 (or `train` folder) was made by.
    pub config_hash: String,
    /// The hash of its stage 1's configuration.
    pub stage1_hash: String,
    pub seed: u64,
    pub device: String,
    pub host: String,
}

impl RunInfo {
    /// This binary's version and checkout, with the folder's hashes, seed and device.
    pub fn current(config_hash: &str, stage1_hash: &str, seed: u64, device: &str) -> Self {
        Self {
            metricunet_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: git_revision(),
            config_hash: config_hash.to_string(),
            stage1_hash: stage1_hash.to_string(),
            seed,
            device: device.to_string(),
            host: metricunet_core::fsio::host_name(),
        }
    }

    /// Read `dir/run.yaml`.
    pub fn read(dir: &Path) -> Result<Self> {
        read_yaml(&dir.join(RUN_INFO))
    }

    /// Write `dir/run.yaml` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_yaml(&dir.join(RUN_INFO), self)
    }
}

impl From<&CellRecord> for RunInfo {
    /// The `run.yaml` of a cell: what its record says.
    fn from(r: &CellRecord) -> Self {
        Self {
            metricunet_version: r.metricunet_version.clone(),
            git_revision: r.git_revision.clone(),
            config_hash: r.hash.clone(),
            stage1_hash: r.stage1_hash.clone(),
            seed: r.seed,
            device: r.device.clone(),
            host: r.host.clone(),
        }
    }
}
