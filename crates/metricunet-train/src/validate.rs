//! Validation during training: a [`Validator`] scores the network on held-out data with
//! the `Metric` plugins (no second DSC implementation); the loop calls it every
//! `validate_every` iterations and logs each score as a `val_<metric>` column.
//!
//! [`CaseValidator`] is what runs use: whole validation volumes segmented slice by slice
//! through the code path prediction uses ([`metricunet_model::infer`]), so its DSC is the
//! test cases' DSC, not a patch's. [`PatchValidator`] scores patches (cheap; the training
//! loop's own tests use it).

use candle_core::Device;
use metricunet_core::config::PluginSpec;
use metricunet_core::{registry, Backbone, Comparison, MaskRef, Metric};
use metricunet_data::morphology::centroid;
use metricunet_data::Volume;
use metricunet_model::infer::{localise, segment_slices};
use metricunet_model::ModelSpec;

use crate::error::{Result, TrainError};
use crate::keep::{Ranking, LOCALISER, SEGMENTATION};
use crate::pool::PatchPool;

/// Scores a network during training.
pub trait Validator {
    /// The scores' names, in order (metric names: `dsc`, ...); fixed for a run, they are the
    /// log's `val_<name>` columns.
    fn names(&self) -> Vec<String>;
    /// The scores of `net` (BatchNorm in inference mode), `None` where undefined (both
    /// masks empty, say).
    fn validate(&mut self, net: &dyn Backbone, device: &Device) -> Result<Vec<Option<f64>>>;
    /// The order in which the scores decide the best validation point (`training.keep:
    /// best`); by default DSC, ties by ASD.
    fn ranking(&self) -> Ranking {
        SEGMENTATION
    }
}

/// The network's argmax on every validation patch, stacked into one volume (patch after
/// patch) and compared with the stacked labels by metric plugins: `dsc` gives the pooled
/// DSC `2 |P and G| / (|P| + |G|)` over all patch voxels.
pub struct PatchValidator<'a> {
    pool: &'a PatchPool,
    batch: usize,
    metrics: Vec<(String, Box<dyn Metric>)>,
}

/// The registered metrics `names` (`training.validation` in messages).
fn build_metrics(names: &[&str]) -> Result<Vec<(String, Box<dyn Metric>)>> {
    Ok(names
        .iter()
        .map(|n| {
            registry::build_metric(&PluginSpec::named(n), "training.validation")
                .map(|(m, _)| (n.to_string(), m))
        })
        .collect::<metricunet_core::Result<_>>()?)
}

impl<'a> PatchValidator<'a> {
    /// Score `pool` in batches of `batch` with the registered metrics `names`.
    pub fn new(pool: &'a PatchPool, batch: usize, names: &[&str]) -> Result<Self> {
        let metrics = build_metrics(names)?;
        Ok(Self {
            pool,
            batch: batch.max(1),
            metrics,
        })
    }
}

impl Validator for PatchValidator<'_> {
    fn names(&self) -> Vec<String> {
        self.metrics.iter().map(|(n, _)| n.clone()).collect()
    }

    fn validate(&mut self, net: &dyn Backbone, device: &Device) -> Result<Vec<Option<f64>>> {
        let pool = self.pool;
        let (mut pred, mut reference) = (Vec::new(), Vec::new());
        let idx: Vec<usize> = (0..pool.n).collect();
        for chunk in idx.chunks(self.batch) {
            let (x, labels) = pool.batch(chunk, device)?;
            let logits = net.forward_t(&x, false)?.logits;
            let argmax = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
            pred.extend(argmax.iter().map(|&v| v == 1));
            reference.extend(labels.iter().map(|&l| l != 0));
        }
        let dims = [pool.w, pool.h, pool.n];
        let c = Comparison::new(
            MaskRef::new(&pred, dims)?,
            MaskRef::new(&reference, dims)?,
            [1.0; 3],
        )?;
        self.metrics
            .iter()
            .map(|(_, m)| {
                let v = m.compute(&c)?.value;
                Ok(v.is_finite().then_some(v))
            })
            .collect()
    }
}

/// One whole validation volume: the image the network segments (values in [0, 255]) and its
/// reference label on the same grid.
pub struct ValidationCase {
    /// Named in messages.
    pub id: String,
    pub image: Volume<f32>,
    pub label: Volume<u8>,
}

/// Whole-case validation: every case's volume segmented slice by slice as at test time
/// (softmax > 0.5), each metric computed per case in mm (the volume's spacing) and averaged
/// over the cases where it is defined. With [`CaseValidator::localising`] (stage 1) it also
/// scores the localisation: `loc_mm`, the mean distance between the predicted centroid
/// (largest component, as prediction takes it) and the reference label's centroid over the
/// cases where something was found, and `not_found`, how many cases had no foreground.
pub struct CaseValidator {
    spec: ModelSpec,
    cases: Vec<ValidationCase>,
    /// Each case's reference as a mask and its centroid (voxels), computed once.
    references: Vec<(Vec<bool>, Option<[f64; 3]>)>,
    batch: usize,
    metrics: Vec<(String, Box<dyn Metric>)>,
    localising: bool,
}

/// Validation scores a localiser adds (after the metrics).
pub const LOCALISATION: [&str; 2] = ["loc_mm", "not_found"];

impl CaseValidator {
    /// Validate the network built as `spec` on `cases` (each with a non-empty label), `batch`
    /// slices per forward pass, with the registered metrics `names`.
    pub fn new(
        spec: ModelSpec,
        cases: Vec<ValidationCase>,
        batch: usize,
        names: &[&str],
    ) -> Result<Self> {
        for c in &cases {
            if c.image.geometry.dims != c.label.geometry.dims {
                return Err(TrainError::Invalid(format!(
                    "validation case {}: image dims {:?}, label dims {:?}",
                    c.id, c.image.geometry.dims, c.label.geometry.dims
                )));
            }
            if !c.label.data.iter().any(|&v| v != 0) {
                return Err(TrainError::Invalid(format!(
                    "validation case {}: the label is empty (nothing to validate against)",
                    c.id
                )));
            }
        }
        let references = cases
            .iter()
            .map(|c| {
                let m: Vec<bool> = c.label.data.iter().map(|&v| v != 0).collect();
                let at = centroid(&m, c.label.geometry.dims);
                (m, at)
            })
            .collect();
        Ok(Self {
            spec,
            cases,
            references,
            batch: batch.max(1),
            metrics: build_metrics(names)?,
            localising: false,
        })
    }

    /// Also score the localisation (`loc_mm`, `not_found`), as stage 1 needs; the best
    /// validation point is then the one that found the most cases, then the smallest
    /// centroid error ([`LOCALISER`]).
    pub fn localising(mut self) -> Self {
        self.localising = true;
        self
    }
}

impl Validator for CaseValidator {
    fn ranking(&self) -> Ranking {
        if self.localising {
            LOCALISER
        } else {
            SEGMENTATION
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metrics.iter().map(|(n, _)| n.clone()).collect();
        if self.localising {
            names.extend(LOCALISATION.map(String::from));
        }
        names
    }

    fn validate(&mut self, net: &dyn Backbone, device: &Device) -> Result<Vec<Option<f64>>> {
        let mut sums = vec![(0.0f64, 0usize); self.metrics.len()];
        let (mut loc_sum, mut found, mut not_found) = (0.0f64, 0usize, 0usize);
        for (case, (reference, ref_centroid)) in self.cases.iter().zip(&self.references) {
            let prob = segment_slices(net, &self.spec, &case.image, self.batch, device)?;
            let g = &case.label.geometry;
            let pred: Vec<bool> = prob.data.iter().map(|&v| v > 0.5).collect();
            let c = Comparison::new(
                MaskRef::new(&pred, g.dims)?,
                MaskRef::new(reference, g.dims)?,
                g.spacing,
            )?;
            for ((_, m), (sum, n)) in self.metrics.iter().zip(sums.iter_mut()) {
                let v = m.compute(&c)?.value;
                if v.is_finite() {
                    *sum += v;
                    *n += 1;
                }
            }
            if self.localising {
                match (localise(&prob), *ref_centroid) {
                    (Some(p), Some(r)) => {
                        let d2: f64 = (0..3).map(|a| ((p[a] - r[a]) * g.spacing[a]).powi(2)).sum();
                        loc_sum += d2.sqrt();
                        found += 1;
                    }
                    _ => not_found += 1,
                }
            }
        }
        let mut scores: Vec<Option<f64>> = sums
            .iter()
            .map(|&(sum, n)| (n > 0).then(|| sum / n as f64))
            .collect();
        if self.localising {
            scores.push((found > 0).then(|| loc_sum / found as f64));
            scores.push(Some(not_found as f64));
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use metricunet_core::BackboneOutput;
    use metricunet_data::Geometry;

    /// Foreground where the middle input slice is above 0.5 (intensity 127.5).
    struct Threshold;

    impl Backbone for Threshold {
        fn forward_t(&self, x: &Tensor, _: bool) -> metricunet_core::Result<BackboneOutput> {
            let mid = x.narrow(1, 1, 1)?;
            let fg = ((mid - 0.5)? * 100.0)?;
            let logits = Tensor::cat(&[fg.zeros_like()?, fg], 1)?;
            Ok(BackboneOutput {
                embedding: logits.clone(),
                logits,
            })
        }
        fn embedding_channels(&self) -> usize {
            2
        }
    }

    fn case(id: &str, bright: bool) -> ValidationCase {
        let g = Geometry::axis_aligned([16, 16, 6], [2.0, 2.0, 3.0]);
        let (mut image, mut label) = (
            Volume::filled(50f32, g.clone()),
            Volume::filled(0u8, g.clone()),
        );
        for z in 1..3 {
            for y in 4..8 {
                for x in 4..9 {
                    let i = (z * 16 + y) * 16 + x;
                    if bright && x < 8 {
                        image.data[i] = 200.0;
                    }
                    if x > 4 {
                        label.data[i] = 1;
                    }
                }
            }
        }
        ValidationCase {
            id: id.into(),
            image,
            label,
        }
    }

    /// Two cases: one predicted as a box shifted by one voxel (2 mm) from its reference
    /// (DSC 2 * 24 / (32 + 32) = 0.75), one where nothing is found (DSC 0).
    #[test]
    fn whole_cases_are_scored_per_case_with_the_localisation() {
        metricunet_metrics::link();
        let spec = ModelSpec {
            name: "stage1".into(),
            backbone: PluginSpec::named("unet"),
            in_channels: 3,
        };
        let mut v = CaseValidator::new(
            spec.clone(),
            vec![case("a", true), case("b", false)],
            4,
            &["dsc", "sen"],
        )
        .expect("validator")
        .localising();
        assert_eq!(v.names(), ["dsc", "sen", "loc_mm", "not_found"]);
        let got = v.validate(&Threshold, &Device::Cpu).expect("validate");
        assert_eq!(got[0], Some((0.75 + 0.0) / 2.0));
        assert_eq!(got[1], Some((24.0 / 32.0 + 0.0) / 2.0));
        let loc = got[2].expect("loc");
        assert!((loc - 2.0).abs() < 1e-12, "{loc}");
        assert_eq!(got[3], Some(1.0));
        // an empty reference cannot be validated against, and says which case
        let mut empty = case("c", true);
        empty.label.data.fill(0);
        let e = CaseValidator::new(spec, vec![empty], 4, &["dsc"])
            .err()
            .expect("error")
            .to_string();
        assert!(e.contains("case c") && e.contains("empty"), "{e}");
    }
}
