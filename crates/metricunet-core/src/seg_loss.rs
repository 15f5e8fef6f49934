//! Segmentation losses: the `L_seg` term of Eq. 4 (`L = L_seg + lambda * sum_t L_metric(t)`).
//!
//! The paper trains with cross-entropy (Eq. 3); Table IV's other methods and the usual
//! boundary-precise baselines train with Dice, focal or boundary losses. Each is a plugin
//! like a sampler (one `inventory::submit!` of a [`crate::SegLossPlugin`]); an experiment
//! combines them with weights (`model.segmentation_loss`, `stage1.segmentation_loss`):
//!
//! ```yaml
//! model:
//!   segmentation_loss: [{name: cross-entropy, weight: 1.0}, {name: dice, weight: 1.0}]
//! ```
//!
//! The weighted sum is what Eq. 4 calls `L_CE`; the metric term adds to it unchanged.

use std::fmt::Debug;

use candle_core::Tensor;

use crate::error::{CoreError, Result};
use crate::loss::zero_like_scalar;
use crate::registry;
use crate::schema::WeightedSpec;

/// A loss of a two-class segmentation against its binary reference.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use metricunet_core::seg_loss::{foreground_probability, SegmentationLoss};
///
/// /// Mean squared error of the foreground probability.
/// #[derive(Debug)]
/// struct Brier;
/// impl SegmentationLoss for Brier {
///     fn forward(&self, logits: &Tensor, labels: &Tensor) -> metricunet_core::Result<Tensor> {
///         Ok((foreground_probability(logits)? - labels)?.sqr()?.mean_all()?)
///     }
/// }
///
/// // one image of 1 x 2 voxels: equal logits (p = 0.5) against labels 1 and 0
/// let logits = Tensor::zeros((1, 2, 1, 2), candle_core::DType::F64, &Device::Cpu)?;
/// let labels = Tensor::new(&[[[1f64, 0.0]]], &Device::Cpu)?;
/// assert_eq!(Brier.forward(&logits, &labels)?.to_scalar::<f64>()?, 0.25);
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait SegmentationLoss: Send + Sync + Debug {
    /// The loss of `logits` (`N x 2 x H x W`, channel 1 the foreground) against `labels`
    /// (`N x H x W`, 0 or 1, the logits' dtype and device): a scalar tensor, differentiable
    /// with respect to the logits.
    fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor>;
}

/// The softmax probability of the foreground, `N x H x W`, differentiable.
pub fn foreground_probability(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, 1)?
        .narrow(1, 1, 1)?
        .squeeze(1)?)
}

/// The log-softmax of both classes, `N x 2 x H x W`, differentiable.
pub fn log_probabilities(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(logits, 1)?)
}

/// Labels as a `0/1` tensor of `N x H x W` in the dtype and on the device of `logits`.
pub fn labels_tensor(labels: &[u8], logits: &Tensor) -> Result<Tensor> {
    let (n, _, h, w) = logits.dims4()?;
    if labels.len() != n * h * w {
        return Err(CoreError::Shape(format!(
            "{} labels for a {n}x{h}x{w} batch",
            labels.len()
        )));
    }
    let v: Vec<f32> = labels.iter().map(|&l| f32::from(l != 0)).collect();
    Ok(Tensor::from_vec(v, (n, h, w), logits.device())?.to_dtype(logits.dtype())?)
}

/// One configured term: its logged name, weight and loss.
#[derive(Debug)]
struct Term {
    name: String,
    weight: f64,
    loss: Box<dyn SegmentationLoss>,
}

/// The weighted segmentation losses of one stage.
#[derive(Debug)]
pub struct SegLoss {
    terms: Vec<Term>,
}

/// The value of a [`SegLoss`] for one batch.
#[derive(Debug, Clone)]
pub struct SegLossValue {
    /// `sum_i weight_i * loss_i`.
    pub total: Tensor,
    /// Every term unweighted, by name (`dice`, `cross-entropy`, a second `dice#2`, ...).
    pub parts: Vec<(String, Tensor)>,
}

impl SegLoss {
    /// Build every listed loss from the registry; `path` (`model.segmentation_loss`) names
    /// the list in errors. The list must not be empty; weights must be finite and
    /// non-negative, and at least one positive.
    pub fn from_specs(specs: &[WeightedSpec], path: &str) -> Result<Self> {
        if specs.is_empty() {
            return Err(CoreError::Param {
                path: path.to_string(),
                message: "name at least one segmentation loss (e.g. `[cross-entropy]`)".into(),
            });
        }
        let mut terms = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(CoreError::Param {
                    path: format!("{at}.weight"),
                    message: format!("{} is not a finite non-negative weight", s.weight),
                });
            }
            let (loss, _) = registry::build_seg_loss(&s.spec, &at)?;
            let seen = specs[..i]
                .iter()
                .filter(|o| o.spec.name == s.spec.name)
                .count();
            let name = if seen == 0 {
                s.spec.name.clone()
            } else {
                format!("{}#{}", s.spec.name, seen + 1)
            };
            terms.push(Term {
                name,
                weight: s.weight,
                loss,
            });
        }
        if terms.iter().all(|t| t.weight == 0.0) {
            return Err(CoreError::Param {
                path: path.to_string(),
                message: "every weight is 0; give at least one loss a positive weight".into(),
            });
        }
        Ok(Self { terms })
    }

    /// The weighted sum of every term for `logits` (`N x 2 x H x W`) and the flat binary
    /// `labels` (`N x H x W`).
    pub fn forward(&self, logits: &Tensor, labels: &[u8]) -> Result<SegLossValue> {
        let target = labels_tensor(labels, logits)?;
        let mut parts = Vec::with_capacity(self.terms.len());
        let mut total = zero_like_scalar(logits)?;
        for t in &self.terms {
            let v = t.loss.forward(logits, &target)?;
            if !v.dims().is_empty() {
                return Err(CoreError::Shape(format!(
                    "segmentation loss `{}` returned a tensor of shape {:?}, not a scalar",
                    t.name,
                    v.dims()
                )));
            }
            let v = v.to_dtype(logits.dtype())?;
            let weighted = if t.weight == 1.0 {
                v.clone()
            } else {
                (&v * t.weight)?
            };
            total = (total + weighted)?;
            parts.push((t.name.clone(), v));
        }
        Ok(SegLossValue { total, parts })
    }
}
