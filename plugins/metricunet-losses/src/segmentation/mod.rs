//! Segmentation losses (`L_seg` of Eq. 4), registered by name: the paper's `cross-entropy`
//! and the baselines of Table IV and of boundary-precise segmentation: `dice`, `focal`,
//! `boundary`. Each is combined with others by weight in `model.segmentation_loss`.

mod boundary;
mod cross_entropy;
mod dice;
mod focal;

pub use boundary::{signed_distance_maps, BoundaryLoss};
pub use cross_entropy::CrossEntropy;
pub use dice::DiceLoss;
pub use focal::FocalLoss;
