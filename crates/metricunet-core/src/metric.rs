//! Evaluation metrics on binary 3-D masks (DSC, ASD, ...), implemented as plugins.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::error::{CoreError, Result};

/// Inclusive-exclusive bounding box `(min, max + 1)` of the set voxels of a mask with
/// `dims` (x fastest), if any.
pub fn bounding_box(mask: &[bool], dims: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    let [nx, ny, _] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut any = false;
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let p = [v % nx, (v / nx) % ny, v / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
        any = true;
    }
    any.then_some((lo, hi))
}

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

/// A prediction, its reference and the voxel spacing, plus a cache where metrics share
/// expensive intermediate results (surface distances, say) by type: the first metric that
/// needs a `T` computes it, the others reuse it.
pub struct Comparison<'a> {
    pred: MaskRef<'a>,
    reference: MaskRef<'a>,
    spacing_mm: [f64; 3],
    cache: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl<'a> Comparison<'a> {
    /// Check that both masks have the same dims.
    pub fn new(pred: MaskRef<'a>, reference: MaskRef<'a>, spacing_mm: [f64; 3]) -> Result<Self> {
        if pred.dims() != reference.dims() {
            return Err(CoreError::Shape(format!(
                "prediction dims {:?} differ from reference dims {:?}",
                pred.dims(),
                reference.dims()
            )));
        }
        Ok(Self {
            pred,
            reference,
            spacing_mm,
            cache: Mutex::new(HashMap::new()),
        })
    }
    /// The predicted mask.
    pub fn pred(&self) -> &MaskRef<'a> {
        &self.pred
    }
    /// The reference mask.
    pub fn reference(&self) -> &MaskRef<'a> {
        &self.reference
    }
    /// Voxel spacing in mm (x, y, z).
    pub fn spacing_mm(&self) -> [f64; 3] {
        self.spacing_mm
    }
    /// The cached `T`, computed by `make` the first time any metric asks for it.
    pub fn cached<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce(&Self) -> Result<T>,
    ) -> Result<Arc<T>> {
        let key = TypeId::of::<T>();
        if let Some(v) = self
            .cache
            .lock()
            .map_err(|_| CoreError::Shape("metric cache poisoned".into()))?
            .get(&key)
        {
            if let Ok(t) = Arc::clone(v).downcast::<T>() {
                return Ok(t);
            }
        }
        let made = Arc::new(make(self)?);
        let erased: Arc<dyn Any + Send + Sync> = made.clone();
        self.cache
            .lock()
            .map_err(|_| CoreError::Shape("metric cache poisoned".into()))?
            .insert(key, erased);
        Ok(made)
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
/// use metricunet_core::{Comparison, MaskRef, Metric, MetricValue, Result};
///
/// /// Predicted volume minus reference volume, in millilitres.
/// #[derive(Debug)]
/// struct VolumeError;
///
/// impl Metric for VolumeError {
///     fn unit(&self) -> &'static str { "mL" }
///     fn higher_is_better(&self) -> bool { false }
///     fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
///         let voxel_ml = c.spacing_mm().iter().product::<f64>() / 1000.0;
///         Ok(MetricValue::ok((c.pred().count() as f64 - c.reference().count() as f64) * voxel_ml))
///     }
/// }
///
/// let (p, r) = ([true, true, false, false], [true, false, false, false]);
/// let c = Comparison::new(MaskRef::new(&p, [4, 1, 1])?, MaskRef::new(&r, [4, 1, 1])?, [10.0, 10.0, 10.0])?;
/// let v = VolumeError.compute(&c)?;
/// assert_eq!(v, MetricValue::ok(1.0));
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait Metric: Send + Sync + Debug {
    /// Unit for tables ("" for ratios, "mm" for distances).
    fn unit(&self) -> &'static str;
    /// Whether larger values are better (DSC) or worse (ASD).
    fn higher_is_better(&self) -> bool;
    /// The metric of the comparison's prediction against its reference.
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue>;
}
