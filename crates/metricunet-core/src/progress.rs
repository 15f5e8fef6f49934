//! Progress of long loops (training iterations, cells, test cases), reported to whoever
//! shows it. The machinery (train, runner) reports through [`Progress`]; the binary draws
//! bars (indicatif) and tests pass [`Silent`]. No library crate draws anything itself.

use std::sync::Arc;

/// Where progress goes: a factory of tasks shown side by side.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A new task called `label`, of `len` steps (`None`: unknown, shown as a spinner).
    fn task(&self, label: &str, len: Option<u64>) -> Box<dyn ProgressTask>;
}

/// One task's progress. Dropping it ends it (its bar is cleared).
pub trait ProgressTask: Send {
    /// Steps done so far.
    fn set_position(&self, position: u64);
    /// `n` more steps done.
    fn advance(&self, n: u64);
    /// A short status after the bar ("loss 0.41, 38 samples/s").
    fn set_message(&self, message: String);
}

/// Shows nothing (tests, `--quiet`, libraries used without a terminal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

struct SilentTask;

impl ProgressTask for SilentTask {
    fn set_position(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn set_message(&self, _: String) {}
}

impl Progress for Silent {
    fn task(&self, _: &str, _: Option<u64>) -> Box<dyn ProgressTask> {
        Box::new(SilentTask)
    }
}

/// A shared handle, as the runner keeps it.
pub type SharedProgress = Arc<dyn Progress>;

/// [`Silent`] as a shared handle.
pub fn silent() -> SharedProgress {
    Arc::new(Silent)
}
