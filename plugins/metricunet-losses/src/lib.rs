//! Metric losses of the MetricUNet paper, registered by name with `inventory`.

mod triplet_pair;

pub use triplet_pair::{Reduction, TripletPairLoss};

/// Call from a binary to make sure this crate (and its registrations) is linked.
pub fn link() {}
