//! The ops metricunet's networks are built from, beside candle's own: CPU kernels written
//! for this project's shapes, as candle custom ops with their own backward. Networks (the
//! backbone plugins) call these; each op has an environment switch back to candle's op for
//! A/B comparisons (`METRICUNET_CANDLE_CONV` for the convolutions and the transposed
//! convolution, `METRICUNET_CANDLE_BN`, `METRICUNET_CANDLE_POOL`; `METRICUNET_WINOGRAD=0` keeps the direct 3x3 path;
//! `METRICUNET_AVX512=0` makes their matrix products take the gemm crate's AVX2 + FMA kernels,
//! as on a CPU without AVX-512; `METRICUNET_DIRECT_CONV=0` switches off the direct AVX-512
//! kernel of the narrow layers; `METRICUNET_CHANNELS_LAST_WGRAD=0` the channels-last weight
//! gradient). On CUDA the same convolution is candle's CUDA convolution with
//! a tensor-level backward and the other ops are candle's, unless a CUDA twin is switched on
//! (module `cuda`).
//!
//! - [`conv`]: the 3x3 / 1x1 "same" convolution and the decoder's convolution that reads the
//!   skip concatenation from both inputs, without an im2col matrix ([`conv_cpu`] holds the
//!   kernels; [`winograd`] the F(2x2, 3x3) kernels it takes for the 3x3 layers where they
//!   were measured to win; `direct` the AVX-512 kernel of the narrow layers' forward and input gradient).
//! - [`conv_transpose`]: the decoder's 2x2 stride-2 transposed convolution with its bias.
//! - [`bn_relu`]: bias + BatchNorm + ReLU in one pass (training and inference modes).
//! - [`conv_bn_relu`]: the convolution and the training-mode BatchNorm + ReLU after it as one
//!   op (one node in candle's graph; `METRICUNET_FUSED_CONV_BN=0` keeps them apart).
//! - [`max_pool`]: the encoder's 2x2 max-pool with its own backward.
//! - [`profile`]: per-op wall time with device waits, for `bench train --profile`.
//! - `transpose`: the strided transposition of the weight gradient's channels-last copy (16 x 16
//!   AVX-512 blocks for f32).
//! - [`testing`]: the finite-difference gradient check the ops' and networks' tests share.
//! - [`precision`]: strict f32, TF32 or bf16 for the CUDA convolutions (`training.precision`).
//! - [`device_memory`]: the CUDA memory pool's high-water marks and the switch that keeps it.
//! - `cuda` (feature `cuda`): the CUDA twins, each behind its own switch, off by default.

pub mod bn_relu;
pub mod conv;
pub mod conv_bn_relu;
pub mod conv_cpu;
pub mod conv_transpose;
mod cpu_values;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_memory;
mod direct;
pub mod max_pool;
pub mod precision;
pub mod profile;
pub mod simd;
pub mod testing;
mod transpose;
pub mod winograd;

pub use cpu_values::env_switch;

/// The CUDA paths of this crate switched on in this process (empty without the `cuda`
/// feature), for run records and benchmark tables: `cudnn-conv` (`METRICUNET_CUDNN_CONV=1`),
/// `cuda-bn` (`METRICUNET_CUDA_BN=1`), `convt-gemm` (`METRICUNET_CUDA_CONVT_GEMM=1`),
/// `pool-keep` (`METRICUNET_CUDA_POOL_KEEP=1`), then the precision (`tf32`, `bf16`) where not
/// strict f32.
pub fn cuda_paths() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut paths = Vec::new();
    #[cfg(feature = "cudnn")]
    if cuda::cudnn_conv::enabled() {
        paths.push("cudnn-conv");
    }
    #[cfg(feature = "cuda")]
    {
        if cuda::bn_relu::enabled() {
            paths.push("cuda-bn");
        }
        if conv_transpose::gemm_on_device() {
            paths.push("convt-gemm");
        }
        if device_memory::pool_keep_asked() {
            paths.push("pool-keep");
        }
        if precision::tf32() {
            paths.push("tf32");
        }
        if precision::bf16() {
            paths.push("bf16");
        }
    }
    paths
}
