//! Everything between files on disk and the tensors that training and inference consume
//! (paper Section IV.A-B): NIfTI volumes, datasets, preprocessing, 2.5D patches, splits,
//! the on-disk cache, and the built-in pelvic-CT phantom.

pub mod cache;
pub mod dataset;
pub mod error;
pub mod io;
pub mod morphology;
pub mod patches;
pub mod phantom;
pub mod preprocess;
pub mod preview;
pub mod resample;
pub mod split;
pub mod volume;

pub use dataset::{Case, LoadedCase};
pub use error::{DataError, Result};
pub use volume::{Geometry, Volume};
