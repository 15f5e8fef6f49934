//! Core of metricunet: the traits every plugin implements ([`Sampler`], [`MetricLoss`],
//! [`SegmentationLoss`],
//! [`Backbone`], [`Metric`], [`PostProcess`]), the `inventory` registries that find them by name, the
//! experiment schema with its grid, the Table II presets, and the online voxel-metric
//! module that combines samplers and losses into Eq. 4 of the MetricUNet paper.
//!
//! This crate names no concrete plugin: implementations live in the `plugins/` crates
//! and register themselves (see [`registry`]).

pub mod backbone;
pub mod checks;
pub mod config;
pub mod error;
pub mod fsio;
pub mod loss;
pub mod mask;
pub mod metric;
pub mod metric_module;
pub mod params;
pub mod plan;
pub mod postprocess;
pub mod presets;
pub mod progress;
pub mod registry;
pub mod sampler;
pub mod schema;
pub mod seg_loss;
pub mod yaml_path;

pub use backbone::{Backbone, BackboneContext, BackboneOutput};
pub use config::{Cell, Experiment, ExperimentPlan, PluginSpec};
pub use error::{CoreError, Result};
pub use loss::{gather_voxels, LossTerms, MetricLoss};
pub use metric::{Comparison, MaskRef, Metric, MetricValue};
pub use metric_module::{BatchDraw, SamplerDraw, StepLoss, VoxelMetricModule};
pub use params::{ParamKind, ParamSpec, ParamValue, Params};
pub use postprocess::PostProcess;
pub use progress::{Progress, ProgressTask, SharedProgress, Silent};
pub use registry::{
    BackbonePlugin, LossPlugin, MetricPlugin, PluginKind, PostprocessPlugin, SamplerPlugin,
    SegLossPlugin,
};
pub use sampler::{draw_tuples, Draw, SampleBatch, SampleItem, Sampler, Tuples};
pub use seg_loss::{SegLoss, SegmentationLoss};

// Re-exported so plugin crates register without depending on inventory's version directly.
pub use inventory;
