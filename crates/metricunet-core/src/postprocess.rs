//! Post-processing: steps applied in order to stage 2's binary mask on the CT's grid
//! (`postprocess:` in an experiment), before it is written and evaluated. A step is a
//! plugin like a sampler: one `inventory::submit!` of a [`crate::PostprocessPlugin`].
//! Post-processing changes predictions, never training: a cell that differs from another
//! only in it shares that cell's trained stage 2.

use crate::error::Result;

/// One post-processing step.
pub trait PostProcess: Send + Sync {
    /// The mask after this step (`dims = [nx, ny, nz]`, x fastest; spacing in mm).
    fn apply(&self, mask: &[bool], dims: [usize; 3], spacing_mm: [f64; 3]) -> Result<Vec<bool>>;
}
