//! Evaluation metrics on binary 3-D masks (DSC, ASD, ...), implemented as plugins.

use std::fmt::Debug;

use crate::error::{CoreError, Result};

/// A borrowed binary 3-D mask, `x` fastest: `index = x + nx * (y + ny * z)` (NIfTI order).
#[derive(Debug, Clone, Copy)]
pub struct MaskRef<'a> {
    data: &'a [bool],
    dims: [usize; 3],
}

impl<'a> MaskRef<'a> {
    /// Check that `data` holds `dims[0] * dims[1] * dims[2]` voxels.
    pub fn new(data: &'a [bool], dims: [usize; 3]) -> Result<Self> {
        let len = dims.iter().product::<usize>();
        if data.len() != len {
            return Err(CoreError::Shape(format!(
                "mask holds {} voxels, dims {dims:?} need {len}",
                data.len()
            )));
        }
        Ok(Self { data, dims })
    }
    /// Voxels, `x` fastest.
    pub fn data(&self) -> &'a [bool] {
        self.data
    }
    /// `[nx, ny, nz]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }
    /// Number of foreground voxels.
    pub fn count(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }
}

/// A metric's value. Undefined values (an empty mask where the metric needs a surface)
/// are `NaN` with a flag that says why, as nnU-Net and MetricsReloaded report them.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    pub value: f64,
    pub flag: Option<String>,
}

impl MetricValue {
    /// A defined value.
    pub fn ok(value: f64) -> Self {
        Self { value, flag: None }
    }
    /// `NaN` with the reason.
    pub fn undefined(reason: impl Into<String>) -> Self {
        Self {
            value: f64::NAN,
            flag: Some(reason.into()),
        }
    }
}

/// A metric comparing a predicted mask with a reference mask.
///
/// ```
/// use metricunet_core::{MaskRef, Metric, MetricValue, Result};
///
/// /// Predicted volume minus reference volume, in millilitres.
/// #[derive(Debug)]
/// struct VolumeError;
///
/// impl Metric for VolumeError {
///     fn unit(&self) -> &'static str { "mL" }
///     fn higher_is_better(&self) -> bool { false }
///     fn compute(&self, pred: &MaskRef<'_>, reference: &MaskRef<'_>, spacing_mm: [f64; 3]) -> Result<MetricValue> {
///         let voxel_ml = spacing_mm.iter().product::<f64>() / 1000.0;
///         Ok(MetricValue::ok((pred.count() as f64 - reference.count() as f64) * voxel_ml))
///     }
/// }
///
/// let (p, r) = ([true, true, false, false], [true, false, false, false]);
/// let v = VolumeError.compute(&MaskRef::new(&p, [4, 1, 1])?, &MaskRef::new(&r, [4, 1, 1])?, [10.0, 10.0, 10.0])?;
/// assert_eq!(v, MetricValue::ok(1.0));
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait Metric: Send + Sync + Debug {
    /// Unit for tables ("" for ratios, "mm" for distances).
    fn unit(&self) -> &'static str;
    /// Whether larger values are better (DSC) or worse (ASD).
    fn higher_is_better(&self) -> bool;
    /// The metric of `pred` against `reference` (same dims), with voxel spacing in mm.
    fn compute(
        &self,
        pred: &MaskRef<'_>,
        reference: &MaskRef<'_>,
        spacing_mm: [f64; 3],
    ) -> Result<MetricValue>;
}
