//! Runs metricunet experiments: every grid cell x seed in a folder keyed by the hash of its
//! resolved configuration, stage 1 trained once and shared, finished cells never recomputed,
//! failed cells recorded, `--shard I/N` for job arrays. See [`record`] for the folder layout.

pub mod data;
pub mod error;
pub mod fsutil;
pub mod lock;
pub mod record;
pub mod run;
pub mod stage;

pub use error::{Result, RunError};
pub use record::{CellRecord, CellState, TestCase};
pub use run::{run_plan, CellOutcome, PlanRecord, RunOptions, RunSummary, Shard};
