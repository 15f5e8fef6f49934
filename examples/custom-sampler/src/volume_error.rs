// A metric of this crate: the absolute volume error in mL (lower is better). The README's
// "Adding a metric" block is this file.
use metricunet_core::{inventory, Comparison, Metric, MetricPlugin, MetricValue, Params, Result};

/// |predicted volume - reference volume| in millilitres.
#[derive(Debug)]
struct VolumeError;

impl Metric for VolumeError {
    fn unit(&self) -> &'static str {
        "mL"
    }
    fn higher_is_better(&self) -> bool {
        false
    }
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        let voxel_ml = c.spacing_mm().iter().product::<f64>() / 1000.0;
        let diff = c.pred().count() as f64 - c.reference().count() as f64;
        Ok(MetricValue::ok(diff.abs() * voxel_ml))
    }
}

inventory::submit! {
    MetricPlugin {
        name: "volume-error",
        description: "absolute volume error |V_pred - V_ref| in mL",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(VolumeError)) },
    }
}
