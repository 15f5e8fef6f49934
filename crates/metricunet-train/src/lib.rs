//! Training of one stage (the stage-1 localiser or the stage-2 segmenter): patches in,
//! checkpoints and a per-iteration loss table out. SGD with momentum and weight decay
//! (PyTorch semantics), poly learning-rate decay, Eq. 4 through the voxel-metric module,
//! validation DSC, atomic checkpoints with optimizer and RNG state, exact resume.

pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod optim;
pub mod pool;
pub mod trainer;

pub use device::select_device;
pub use error::{Result, TrainError};
pub use optim::{poly_lr, Sgd};
pub use pool::PatchPool;
pub use trainer::{train_stage, IterationLog, ModelSpec, StageSpec, TrainOutcome};
