//! Losses, registered by name with `inventory`: the metric loss of the MetricUNet paper
//! (`triplet-pair`, Eq. 2) and the segmentation losses of [`segmentation`] (`cross-entropy`,
//! Eq. 3, and the baselines `dice`, `focal`, `boundary`).

pub mod segmentation;
mod triplet_pair;

pub use triplet_pair::{Reduction, TripletPairLoss};

/// Call from a binary to make sure this crate (and its registrations) is linked.
pub fn link() {}
