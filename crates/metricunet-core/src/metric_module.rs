//! The online voxel-metric module (paper Section III.B.2-3): every configured sampler draws
//! tuples from the batch, the metric loss scores them on the embedding map, and the total
//! training loss is Eq. 4, `L = L_seg + lambda * sum_t L_metric(t)`, with `L_seg` the stage's
//! weighted segmentation losses (the paper's cross-entropy, Eq. 3, by default).

use candle_core::{DType, Tensor};
use rand::RngCore;

use crate::error::{CoreError, Result};
use crate::loss::{scalar_f64, zero_like_scalar, LossTerms, MetricLoss};
use crate::registry;
use crate::sampler::{SampleBatch, Sampler, Tuples};
use crate::schema::WeightedSpec;
use crate::seg_loss::SegLoss;

/// A sampler with the name it is logged under.
#[derive(Debug)]
pub struct NamedSampler {
    /// Registry name, with `#2`, `#3`, ... appended when a name is configured twice.
    pub name: String,
    pub sampler: Box<dyn Sampler>,
}

/// The voxel-metric module: the segmentation loss beside it, samplers, one metric loss, and
/// the weight `lambda`.
#[derive(Debug)]
pub struct VoxelMetricModule {
    seg: SegLoss,
    samplers: Vec<NamedSampler>,
    loss: Box<dyn MetricLoss>,
    lambda: f64,
}

/// One sampler's contribution to a training step.
#[derive(Debug, Clone)]
pub struct SamplerLoss {
    pub name: String,
    /// Anchors drawn this step.
    pub anchors: usize,
    /// The metric loss of those tuples (unweighted).
    pub terms: LossTerms,
}

/// Every term of Eq. 4 for one training step.
#[derive(Debug, Clone)]
pub struct StepLoss {
    /// The weighted segmentation losses (Eq. 3's cross-entropy by default).
    pub seg: Tensor,
    /// Each segmentation loss unweighted, by name.
    pub seg_parts: Vec<(String, Tensor)>,
    /// Per-sampler metric losses, Eq. 2.
    pub metric: Vec<SamplerLoss>,
    /// `seg + lambda * sum(metric totals)`, Eq. 4.
    pub total: Tensor,
}

impl StepLoss {
    /// Every term as `(name, value)`: `seg`, `seg/<loss>` for each segmentation loss when
    /// there are several, `<sampler>/<part>`, `<sampler>/anchors`, `total`.
    pub fn scalars(&self) -> Result<Vec<(String, f64)>> {
        let mut out = vec![("seg".to_string(), scalar_f64(&self.seg)?)];
        if self.seg_parts.len() > 1 {
            for (name, t) in &self.seg_parts {
                out.push((format!("seg/{name}"), scalar_f64(t)?));
            }
        }
        for s in &self.metric {
            for (part, t) in &s.terms.parts {
                out.push((format!("{}/{part}", s.name), scalar_f64(t)?));
            }
            out.push((format!("{}/anchors", s.name), s.anchors as f64));
        }
        out.push(("total".to_string(), scalar_f64(&self.total)?));
        Ok(out)
    }

    /// The first term that is NaN or infinite, if any, as `(name, value)`.
    pub fn first_non_finite(&self) -> Result<Option<(String, f64)>> {
        Ok(self.scalars()?.into_iter().find(|(_, v)| !v.is_finite()))
    }
}

impl VoxelMetricModule {
    /// A module from already-built parts. `lambda` must be finite and non-negative.
    pub fn new(
        seg: SegLoss,
        samplers: Vec<NamedSampler>,
        loss: Box<dyn MetricLoss>,
        lambda: f64,
    ) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(CoreError::Param {
                path: "metric.lambda".into(),
                message: format!("{lambda} is not a finite non-negative weight"),
            });
        }
        Ok(Self {
            seg,
            samplers,
            loss,
            lambda,
        })
    }

    /// Build the segmentation losses (`seg`, found at YAML `seg_path`), samplers and metric
    /// loss from the registry as configured.
    pub fn from_config(
        seg: &[WeightedSpec],
        seg_path: &str,
        metric: &crate::schema::MetricConfig,
    ) -> Result<Self> {
        let seg = SegLoss::from_specs(seg, seg_path)?;
        let mut samplers = Vec::new();
        for (i, spec) in metric.samplers.iter().enumerate() {
            let (sampler, _) = registry::build_sampler(spec, &format!("metric.samplers[{i}]"))?;
            let seen = metric.samplers[..i]
                .iter()
                .filter(|s| s.name == spec.name)
                .count();
            let name = if seen == 0 {
                spec.name.clone()
            } else {
                format!("{}#{}", spec.name, seen + 1)
            };
            samplers.push(NamedSampler { name, sampler });
        }
        let (loss, _) = registry::build_loss(&metric.loss, "metric.loss")?;
        Self::new(seg, samplers, loss, metric.lambda)
    }

    /// Configured samplers, in order.
    pub fn samplers(&self) -> &[NamedSampler] {
        &self.samplers
    }
    /// The weight of the metric losses.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
    /// The metric loss.
    pub fn loss(&self) -> &dyn MetricLoss {
        self.loss.as_ref()
    }
    /// The segmentation losses.
    pub fn segmentation_loss(&self) -> &SegLoss {
        &self.seg
    }

    /// Eq. 4 for one batch. `logits` is `N x 2 x H x W`, `embedding` `N x D x H x W`,
    /// `labels` the binary reference (`N x H x W`, flat). The samplers draw from `rng`
    /// in configuration order, so a seeded `rng` gives a reproducible step.
    pub fn step_loss(
        &self,
        logits: &Tensor,
        embedding: &Tensor,
        labels: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<StepLoss> {
        let (n, c, h, w) = logits.dims4()?;
        let (en, _, eh, ew) = embedding.dims4()?;
        if c != 2 || (en, eh, ew) != (n, h, w) {
            return Err(CoreError::Shape(format!(
                "logits {:?} must be N x 2 x H x W on the grid of the embedding {:?}",
                logits.dims(),
                embedding.dims()
            )));
        }
        if labels.len() != n * h * w {
            return Err(CoreError::Shape(format!(
                "{} labels for a {n}x{h}x{w} batch",
                labels.len()
            )));
        }
        let seg = self.seg.forward(logits, labels)?;
        let active = !self.samplers.is_empty();
        let (_, drawn) = self.sample(logits, labels, rng)?;
        let mut metric = Vec::with_capacity(self.samplers.len());
        let mut sum = zero_like_scalar(&seg.total)?;
        for d in drawn {
            let terms = self.loss.forward(embedding, &d.tuples)?;
            sum = (sum + terms.total.to_dtype(seg.total.dtype())?)?;
            metric.push(SamplerLoss {
                name: d.name,
                anchors: d.tuples.len(),
                terms,
            });
        }
        let total = if active {
            (&seg.total + (sum * self.lambda)?)?
        } else {
            seg.total.clone()
        };
        Ok(StepLoss {
            seg: seg.total,
            seg_parts: seg.parts,
            metric,
            total,
        })
    }
}

/// What one sampler drew from a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerDraw {
    /// The name it is logged under.
    pub name: String,
    /// Per image: how many voxels were anchor candidates (empty unless asked for).
    pub candidates: Vec<usize>,
    /// The drawn tuples (flat batch indices).
    pub tuples: Tuples,
}

/// Every sampler's draw from one batch and the foreground probabilities they saw.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchDraw {
    /// Softmax foreground probability per voxel (`N x H x W` flat), when a sampler read it.
    pub probabilities: Option<Vec<f32>>,
    pub samplers: Vec<SamplerDraw>,
}

impl VoxelMetricModule {
    /// What every configured sampler draws from a batch (`logits` `N x 2 x H x W`, `labels`
    /// flat `N x H x W`), in configuration order from `rng`, exactly as a training step
    /// draws them, with the candidate count of every image and the probabilities the
    /// samplers saw: what `metricunet samplers show` draws.
    pub fn draw(&self, logits: &Tensor, labels: &[u8], rng: &mut dyn RngCore) -> Result<BatchDraw> {
        let (n, _, h, w) = logits.dims4()?;
        let (probabilities, mut samplers) = self.sample(logits, labels, rng)?;
        let batch = SampleBatch::new(labels, probabilities.as_deref(), n, h, w)?;
        for (d, s) in samplers.iter_mut().zip(&self.samplers) {
            d.candidates = (0..n)
                .map(|i| s.sampler.candidates(&batch.item(i)).map(|c| c.len()))
                .collect::<Result<_>>()?;
        }
        Ok(BatchDraw {
            probabilities,
            samplers,
        })
    }

    /// Each sampler's tuples from `logits` and `labels` (no candidate counts), and the
    /// foreground probabilities when a sampler reads them (computed only then).
    fn sample(
        &self,
        logits: &Tensor,
        labels: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<(Option<Vec<f32>>, Vec<SamplerDraw>)> {
        if self.samplers.is_empty() {
            return Ok((None, Vec::new()));
        }
        let (n, _, h, w) = logits.dims4()?;
        let probabilities = if self
            .samplers
            .iter()
            .any(|s| s.sampler.needs_probabilities())
        {
            Some(foreground_probabilities(logits)?)
        } else {
            None
        };
        let batch = SampleBatch::new(labels, probabilities.as_deref(), n, h, w)?;
        let draws = self
            .samplers
            .iter()
            .map(|s| {
                let tuples = s.sampler.sample(&batch, rng)?;
                tuples.check()?;
                Ok(SamplerDraw {
                    name: s.name.clone(),
                    candidates: Vec::new(),
                    tuples,
                })
            })
            .collect::<Result<_>>()?;
        Ok((probabilities, draws))
    }
}

/// Softmax foreground probability per voxel (detached, on the host), `N x H x W` flat.
pub fn foreground_probabilities(logits: &Tensor) -> Result<Vec<f32>> {
    let p = candle_nn::ops::softmax(&logits.detach(), 1)?.narrow(1, 1, 1)?;
    Ok(p.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
