//! Segmentation backbones: networks that give both logits and a voxel-embedding map.

use candle_core::Tensor;

use crate::error::Result;

/// What a backbone computes for a batch `N x C_in x H x W`.
#[derive(Debug, Clone)]
pub struct BackboneOutput {
    /// Segmentation logits, `N x 2 x H x W` (background, foreground).
    pub logits: Tensor,
    /// The map the voxel-metric module samples from, `N x D x H x W` (MetricUNet: the
    /// 256-channel output of conv6d).
    pub embedding: Tensor,
}

/// What a backbone constructor needs to know besides its own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackboneContext {
    /// Input channels: adjacent axial slices (5 in stage 1, 3 in stage 2).
    pub in_channels: usize,
}

/// A segmentation network built from a `candle_nn::VarBuilder`.
///
/// ```
/// use candle_core::{Device, Module, Tensor};
/// use candle_nn::{Conv2d, Conv2dConfig, VarBuilder, VarMap};
/// use metricunet_core::{Backbone, BackboneOutput, Result};
///
/// /// One 1x1 convolution to 4 channels as the embedding, one 1x1 to 2 logits.
/// struct Tiny { embed: Conv2d, head: Conv2d }
///
/// impl Backbone for Tiny {
///     fn forward_t(&self, x: &Tensor, _train: bool) -> Result<BackboneOutput> {
///         let embedding = self.embed.forward(x)?.relu()?;
///         let logits = self.head.forward(&embedding)?;
///         Ok(BackboneOutput { logits, embedding })
///     }
///     fn embedding_channels(&self) -> usize { 4 }
/// }
///
/// let vars = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vars, candle_core::DType::F32, &Device::Cpu);
/// let cfg = Conv2dConfig::default();
/// let net = Tiny {
///     embed: candle_nn::conv2d(3, 4, 1, cfg, vb.pp("embed"))?,
///     head: candle_nn::conv2d(4, 2, 1, cfg, vb.pp("head"))?,
/// };
/// let out = net.forward_t(&Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu)?, true)?;
/// assert_eq!(out.logits.dims(), &[2, 2, 8, 8]);
/// assert_eq!(out.embedding.dims(), &[2, 4, 8, 8]);
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait Backbone: Send + Sync {
    /// Forward pass; `train` selects batch statistics (true) or running statistics.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<BackboneOutput>;
    /// Channels `D` of the embedding map.
    fn embedding_channels(&self) -> usize;
}
