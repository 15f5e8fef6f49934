//! The paper's pipeline at test time (Section III.A-B, Fig. 3) and the evaluation of its
//! output: a CT file in, a prostate mask in the CT's own geometry out; metrics per case.

pub mod embedding;
pub mod evaluate;
pub mod predict;

pub use evaluate::{evaluate_masks, CaseMetrics, MetricEntry};
pub use predict::{Pipeline, PredictError, Prediction};
