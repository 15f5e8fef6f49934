//! `dice`: the soft Dice loss (Milletari et al. 2016, VNet, Table IV's [4]) on the
//! foreground probability `p` against the reference `g`, over the whole batch:
//!
//! ```text
//! L = 1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)
//! ```
//!
//! with sums over every voxel of the batch (so that patches without prostate still count
//! their false positives) and the smoothing `s` (default 1) keeping it defined when both
//! sums are 0.

use candle_core::Tensor;
use metricunet_core::seg_loss::{foreground_probability, SegmentationLoss};
use metricunet_core::{inventory, ParamSpec, Params, Result, SegLossPlugin};

/// Soft Dice over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiceLoss {
    /// Added to numerator and denominator.
    pub smooth: f64,
}

impl SegmentationLoss for DiceLoss {
    fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let p = foreground_probability(logits)?;
        let inter = (&p * labels)?.sum_all()?;
        let denom = ((p.sum_all()? + labels.sum_all()?)? + self.smooth)?;
        let ratio = ((inter * 2.0)? + self.smooth)?.div(&denom)?;
        Ok(ratio.affine(-1.0, 1.0)?)
    }
}

const PARAMS: &[ParamSpec] = &[ParamSpec::float(
    "smooth",
    1.0,
    Some(0.0),
    None,
    "added to numerator and denominator (keeps empty batches defined)",
)];

inventory::submit! {
    SegLossPlugin {
        name: "dice",
        description: "soft Dice loss on the foreground probability over the batch (VNet, Table IV [4])",
        params: PARAMS,
        build: |p: &Params| -> Result<Box<dyn SegmentationLoss>> {
            Ok(Box::new(DiceLoss { smooth: p.f64("smooth")? }))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_values() {
        // p = 3/4, 1/2, 1/4 (logit differences ln 3, 0, -ln 3) against g = 1, 1, 0:
        // sum(pg) = 5/4, sum(p) = 3/2, sum(g) = 2
        let l = 3f64.ln();
        let logits = Tensor::new(&[[[[0f64, 0.0, 0.0]], [[l, 0.0, -l]]]], &Device::Cpu).expect("t");
        let labels = Tensor::new(&[[[1f64, 1.0, 0.0]]], &Device::Cpu).expect("t");
        let value = |smooth| {
            DiceLoss { smooth }
                .forward(&logits, &labels)
                .and_then(|t| Ok(t.to_scalar::<f64>()?))
                .expect("loss")
        };
        assert!((value(0.0) - (1.0 - 2.5 / 3.5)).abs() < 1e-12);
        assert!((value(1.0) - (1.0 - 3.5 / 4.5)).abs() < 1e-12);
        // nothing predicted, nothing there: 0 with smoothing
        let empty = Tensor::new(&[[[[40f64]], [[-40.0]]]], &Device::Cpu).expect("t");
        let none = Tensor::new(&[[[0f64]]], &Device::Cpu).expect("t");
        let v = DiceLoss { smooth: 1.0 }
            .forward(&empty, &none)
            .and_then(|t| Ok(t.to_scalar::<f64>()?))
            .expect("loss");
        assert!(v.abs() < 1e-12, "{v}");
    }
}
