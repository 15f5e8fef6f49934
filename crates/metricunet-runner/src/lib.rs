//! Runs metricunet experiments: every grid cell x seed in a folder keyed by the hash of its
//! resolved configuration, stage 1 trained once and shared, finished cells never recomputed,
//! failed cells recorded, `--shard I/N` for job arrays. The folder layout and its records
//! are `metricunet_store`'s.

pub mod data;
pub mod error;
pub mod lock;
pub mod run;
pub mod shard;
pub mod stage;
pub mod summary;

pub use error::{Result, RunError};
pub use run::{run_plan, RunOptions};
pub use shard::Shard;
pub use summary::{CellOutcome, CellSummary, RunSummary};
