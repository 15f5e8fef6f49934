//! Training of one stage (the stage-1 localiser or the stage-2 segmenter): patches in,
//! checkpoints and a per-iteration loss table out. SGD with momentum and weight decay
//! (PyTorch semantics), poly learning-rate decay, Eq. 4 through the voxel-metric module,
//! validation through the metric plugins, stop rules, atomic checkpoints with optimizer and
//! RNG state, exact resume. The loop (`trainer`) is assembled from those parts.

pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod keep;
pub mod log;
pub mod optim;
pub mod pool;
pub mod stop;
pub mod trainer;
pub mod validate;

pub use checkpoint::Checkpointer;
pub use device::select_device;
pub use error::{Result, TrainError};
pub use log::TrainLog;
pub use optim::{poly_lr, Sgd};
pub use pool::PatchPool;
pub use stop::{Plateau, StopRule};
pub use trainer::{
    train_stage, IterationLog, KeptWeights, ModelSpec, StageSpec, TrainEvent, TrainOutcome,
};
pub use validate::{CaseValidator, PatchValidator, ValidationCase, Validator};
