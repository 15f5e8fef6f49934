//! Segmentation backbones, registered by name with `inventory`:
//!
//! - `unet`: the UNet of the paper's Table I (the baseline).
//! - `metricunet`: the same network; its conv6d map is the embedding the voxel-metric
//!   module samples from (the `unet` plugin exposes the same map, but Table II's baseline
//!   trains without samplers).
//! - `metricunet-sep`: Table II's -Sep variant: the segmentation head sees the embedding
//!   detached, so the layers up to conv6d learn only from the metric loss and the head only
//!   from cross-entropy.
//! - `unet-light`: the light stage-1 UNet on 5-slice inputs (fewer, narrower levels).
//!
//! The networks only: the ops they run on (the CPU convolution, transposed convolution and
//! fused BatchNorm + ReLU kernels) live in `metricunet-ops`.

pub mod layers;
mod unet;
mod unet_light;

pub use unet::{
    max_pool_2x2, trainable_parameters, UNet, UNetConfig, PAPER_DECODER, PAPER_ENCODER,
};

/// Call from a binary to make sure this crate (and its registrations) is linked.
pub fn link() {}
