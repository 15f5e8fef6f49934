//! Validation during training: a [`Validator`] scores the network on held-out data with
//! the `Metric` plugins (no second DSC implementation); the loop calls it every
//! `validate_every` iterations and logs each score as a `val_<metric>` column.

use candle_core::Device;
use metricunet_core::config::PluginSpec;
use metricunet_core::{registry, Backbone, Comparison, MaskRef, Metric};

use crate::error::Result;
use crate::pool::PatchPool;

/// Scores a network during training.
pub trait Validator {
    /// The scores' names, in order (metric names: `dsc`, ...); fixed for a run, they are the
    /// log's `val_<name>` columns.
    fn names(&self) -> Vec<String>;
    /// The scores of `net` (BatchNorm in inference mode), `None` where undefined (both
    /// masks empty, say).
    fn validate(&mut self, net: &dyn Backbone, device: &Device) -> Result<Vec<Option<f64>>>;
}

/// The network's argmax on every validation patch, stacked into one volume (patch after
/// patch) and compared with the stacked labels by metric plugins: `dsc` gives the pooled
/// DSC `2 |P and G| / (|P| + |G|)` over all patch voxels.
pub struct PatchValidator<'a> {
    pool: &'a PatchPool,
    batch: usize,
    metrics: Vec<(String, Box<dyn Metric>)>,
}

impl<'a> PatchValidator<'a> {
    /// Score `pool` in batches of `batch` with the registered metrics `names`
    /// (`training.validation` in messages).
    pub fn new(pool: &'a PatchPool, batch: usize, names: &[&str]) -> Result<Self> {
        let metrics = names
            .iter()
            .map(|n| {
                registry::build_metric(&PluginSpec::named(n), "training.validation")
                    .map(|(m, _)| (n.to_string(), m))
            })
            .collect::<metricunet_core::Result<_>>()?;
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
