//! What a run did, cell by cell, and its printed table.

use std::fmt;
use std::path::PathBuf;

/// What happened to one cell in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum CellOutcome {
    /// Trained and evaluated now.
    Finished,
    /// Found finished; nothing recomputed.
    AlreadyFinished,
    /// Found finished with other metrics than configured: evaluated again from its saved
    /// predictions (no training).
    Reevaluated,
    /// Failed now (the error is recorded in its `cell.yaml`).
    Failed(String),
    /// Recorded as failed by an earlier run and not retried.
    FailedBefore(String),
    /// Another process holds the cell's lock.
    Busy(String),
    /// Another shard's cell.
    OtherShard,
}

/// One cell's line of the run summary.
#[derive(Debug, Clone)]
pub struct CellSummary {
    pub index: usize,
    pub label: String,
    pub seed: u64,
    pub hash: String,
    pub outcome: CellOutcome,
    pub seconds: f64,
    /// Mean DSC over the test cases, when finished.
    pub mean_dsc: Option<f64>,
}

/// What `run_plan` did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub root: PathBuf,
    pub device: String,
    pub cells: Vec<CellSummary>,
}

impl RunSummary {
    /// Cells that failed now or before.
    pub fn failed(&self) -> usize {
        self.cells
            .iter()
            .filter(|c| {
                matches!(
                    c.outcome,
                    CellOutcome::Failed(_) | CellOutcome::FailedBefore(_)
                )
            })
            .count()
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "run folder: {} (device {})",
            self.root.display(),
            self.device
        )?;
        writeln!(
            f,
            "{:>4}  {:<16}  {:>5}  {:<14}  {:>8}  {:>6}  label",
            "cell", "hash", "seed", "state", "time", "DSC"
        )?;
        for c in &self.cells {
            let state = match &c.outcome {
                CellOutcome::Finished => "finished",
                CellOutcome::AlreadyFinished => "was finished",
                CellOutcome::Reevaluated => "re-evaluated",
                CellOutcome::Failed(_) => "FAILED",
                CellOutcome::FailedBefore(_) => "failed before",
                CellOutcome::Busy(_) => "busy elsewhere",
                CellOutcome::OtherShard => "other shard",
            };
            writeln!(
                f,
                "{:>4}  {:<16}  {:>5}  {:<14}  {:>7.0}s  {:>6}  {}",
                c.index,
                c.hash,
                c.seed,
                state,
                c.seconds,
                c.mean_dsc
                    .map(|d| format!("{d:.3}"))
                    .unwrap_or_else(|| "-".into()),
                c.label
            )?;
            match &c.outcome {
                CellOutcome::Failed(e) | CellOutcome::FailedBefore(e) => {
                    writeln!(f, "      error: {e}")?
                }
                CellOutcome::Busy(h) => writeln!(f, "      held by {h}")?,
                _ => {}
            }
        }
        Ok(())
    }
}
