//! Surface-distance metrics in mm: ASD (paper Eq. 6), pooled ASSD, HD95.

use std::sync::Arc;

use metricunet_core::{
    inventory, Comparison, CoreError, Metric, MetricPlugin, MetricValue, ParamSpec, Params, Result,
};

use crate::distance::{percentile, surface_distances, SurfaceDistances};
use crate::overlap::counts;

/// The surface distances of a comparison (computed once, shared by ASD, ASSD and HD95), or
/// the undefined value when a mask is empty.
fn distances(c: &Comparison<'_>) -> Result<Result<Arc<SurfaceDistances>, MetricValue>> {
    let k = counts(c)?;
    let why = match (k.p, k.g) {
        (0, 0) => Some("both masks empty"),
        (0, _) => Some("prediction empty"),
        (_, 0) => Some("reference empty"),
        _ => None,
    };
    if let Some(why) = why {
        return Ok(Err(MetricValue::undefined(why)));
    }
    // both masks are non-empty here, so the distances exist
    let d = c.cached(|c| {
        surface_distances(
            c.pred().data(),
            c.reference().data(),
            c.pred().dims(),
            c.spacing_mm(),
        )
        .ok_or_else(|| CoreError::Shape("surface distances of an empty mask".into()))
    })?;
    Ok(Ok(d))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Paper Eq. 6: the average of the two directed mean surface distances.
#[derive(Debug)]
struct Asd;

/// Pooled symmetric mean: all distances of both directions averaged together (medpy 0.5
/// `assd`, MONAI).
#[derive(Debug)]
struct Assd;

/// Percentile of both directions pooled (medpy `hd95` for 95).
#[derive(Debug)]
struct Hd {
    q: f64,
}

impl Metric for Asd {
    fn unit(&self) -> &'static str {
        "mm"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        Ok(match distances(c)? {
            Ok(d) => MetricValue::ok(0.5 * (mean(&d.ref_to_pred) + mean(&d.pred_to_ref))),
            Err(v) => v,
        })
    }
}

impl Metric for Assd {
    fn unit(&self) -> &'static str {
        "mm"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        Ok(match distances(c)? {
            Ok(d) => {
                let n = d.ref_to_pred.len() + d.pred_to_ref.len();
                MetricValue::ok(
                    (d.ref_to_pred.iter().sum::<f64>() + d.pred_to_ref.iter().sum::<f64>())
                        / n as f64,
                )
            }
            Err(v) => v,
        })
    }
}

impl Metric for Hd {
    fn unit(&self) -> &'static str {
        "mm"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        Ok(match distances(c)? {
            Ok(d) => {
                let mut all: Vec<f64> = d
                    .ref_to_pred
                    .iter()
                    .chain(&d.pred_to_ref)
                    .copied()
                    .collect();
                MetricValue::ok(percentile(&mut all, self.q))
            }
            Err(v) => v,
        })
    }
}

inventory::submit! {
    MetricPlugin {
        name: "asd",
        description: "average surface distance in mm, paper Eq. 6: mean of the two directed means",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Asd)) },
    }
}

inventory::submit! {
    MetricPlugin {
        name: "assd",
        description: "symmetric surface distance in mm: all distances of both directions pooled (medpy 0.5 assd, MONAI)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Assd)) },
    }
}

inventory::submit! {
    MetricPlugin {
        name: "hd95",
        description: "Hausdorff distance percentile in mm over both directions pooled (medpy hd95)",
        params: &[ParamSpec::float("percentile", 95.0, Some(0.0), Some(100.0), "percentile (100 = Hausdorff distance)")],
        build: |p: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Hd { q: p.f64("percentile")? })) },
    }
}
