//! `cross-entropy`: the voxel-wise cross-entropy of Eq. 3, the mean over all voxels of
//! `-log p(label)` under the softmax of the two logits. The paper's segmentation loss and
//! the default of both stages.

use candle_core::{DType, Tensor};
use metricunet_core::seg_loss::SegmentationLoss;
use metricunet_core::{inventory, Params, Result, SegLossPlugin};

/// Eq. 3, mean over the `N x H x W` voxels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrossEntropy;

impl SegmentationLoss for CrossEntropy {
    fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = logits.dims4()?;
        let flat = logits.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
        let target = labels.flatten_all()?.to_dtype(DType::U32)?;
        Ok(candle_nn::loss::cross_entropy(&flat, &target)?)
    }
}

inventory::submit! {
    SegLossPlugin {
        name: "cross-entropy",
        description: "voxel-wise cross-entropy, mean over voxels (paper Eq. 3; the default)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn SegmentationLoss>> { Ok(Box::new(CrossEntropy)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_the_mean_negative_log_softmax() {
        // two voxels: logits (0, ln 3) labelled 1 -> p = 3/4; (0, 0) labelled 0 -> p = 1/2
        let logits = Tensor::new(&[[[[0f64, 0.0]], [[3f64.ln(), 0.0]]]], &Device::Cpu).expect("t");
        let labels = Tensor::new(&[[[1f64, 0.0]]], &Device::Cpu).expect("t");
        let got = CrossEntropy
            .forward(&logits, &labels)
            .and_then(|t| Ok(t.to_scalar::<f64>()?))
            .expect("loss");
        let want = -((0.75f64).ln() + (0.5f64).ln()) / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
