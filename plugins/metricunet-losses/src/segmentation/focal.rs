//! `focal`: the focal loss of Lin et al. (2017, Eq. 5), the cross-entropy of each voxel
//! scaled down where it is already well classified:
//!
//! ```text
//! L = mean over voxels of  -alpha_t (1 - p_t)^gamma log p_t
//! ```
//!
//! `p_t` is the softmax probability of the voxel's own label, `alpha_t = alpha` on the
//! foreground and `1 - alpha` on the background. `gamma = 0` with `alpha = 0.5` is half the
//! cross-entropy. Defaults are Lin et al.'s (`gamma = 2`, `alpha = 0.25`).

use candle_core::Tensor;
use metricunet_core::seg_loss::{log_probabilities, SegmentationLoss};
use metricunet_core::{inventory, ParamSpec, Params, Result, SegLossPlugin};

/// Focal loss with its two parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FocalLoss {
    /// Focusing exponent (0 = weighted cross-entropy).
    pub gamma: f64,
    /// Weight of the foreground class (background: `1 - alpha`).
    pub alpha: f64,
}

impl SegmentationLoss for FocalLoss {
    fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let lp = log_probabilities(logits)?;
        let (bg, fg) = (
            lp.narrow(1, 0, 1)?.squeeze(1)?,
            lp.narrow(1, 1, 1)?.squeeze(1)?,
        );
        let other = labels.affine(-1.0, 1.0)?;
        // log p_t: the log-probability of each voxel's own label
        let log_pt = ((&fg * labels)? + (&bg * &other)?)?;
        let alpha_t = ((labels * self.alpha)? + (&other * (1.0 - self.alpha))?)?;
        let mut weight = alpha_t;
        if self.gamma != 0.0 {
            // (1 - p_t)^gamma; the offset keeps the power's gradient finite at p_t = 1
            let miss = (log_pt.exp()?.affine(-1.0, 1.0)?.relu()? + 1e-12)?;
            weight = (weight * miss.powf(self.gamma)?)?;
        }
        Ok((weight * log_pt)?.mean_all()?.neg()?)
    }
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec::float(
        "gamma",
        2.0,
        Some(0.0),
        Some(10.0),
        "focusing exponent (0 = weighted cross-entropy)",
    ),
    ParamSpec::float(
        "alpha",
        0.25,
        Some(0.0),
        Some(1.0),
        "weight of foreground voxels; background 1 - alpha",
    ),
];

inventory::submit! {
    SegLossPlugin {
        name: "focal",
        description: "focal loss -alpha_t (1 - p_t)^gamma log p_t, mean over voxels (Lin et al. 2017)",
        params: PARAMS,
        build: |p: &Params| -> Result<Box<dyn SegmentationLoss>> {
            Ok(Box::new(FocalLoss { gamma: p.f64("gamma")?, alpha: p.f64("alpha")? }))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_values() {
        // voxel 1: p(fg) = 3/4, label 1 -> p_t = 3/4; voxel 2: p(fg) = 1/4, label 1 -> 1/4
        let l = 3f64.ln();
        let logits = Tensor::new(&[[[[0f64, 0.0]], [[l, -l]]]], &Device::Cpu).expect("t");
        let labels = Tensor::new(&[[[1f64, 1.0]]], &Device::Cpu).expect("t");
        let value = |gamma, alpha| {
            FocalLoss { gamma, alpha }
                .forward(&logits, &labels)
                .and_then(|t| Ok(t.to_scalar::<f64>()?))
                .expect("loss")
        };
        let fl = |pt: f64, gamma: i32, alpha: f64| -alpha * (1.0 - pt).powi(gamma) * pt.ln();
        let want = (fl(0.75, 2, 0.25) + fl(0.25, 2, 0.25)) / 2.0;
        assert!(
            (value(2.0, 0.25) - want).abs() < 1e-9,
            "{}",
            value(2.0, 0.25)
        );
        // gamma 0, alpha 0.5: half the cross-entropy
        let ce = -(0.75f64.ln() + 0.25f64.ln()) / 2.0;
        assert!((value(0.0, 0.5) - ce / 2.0).abs() < 1e-12);
        // background voxels get 1 - alpha
        let bg = Tensor::new(&[[[0f64, 0.0]]], &Device::Cpu).expect("t");
        let v = FocalLoss {
            gamma: 0.0,
            alpha: 0.25,
        }
        .forward(&logits, &bg)
        .and_then(|t| Ok(t.to_scalar::<f64>()?))
        .expect("loss");
        let want = -0.75 * (0.25f64.ln() + 0.75f64.ln()) / 2.0;
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    }
}
