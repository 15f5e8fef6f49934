//! The ops metricunet's networks are built from, beside candle's own: CPU kernels written
//! for this project's shapes, as candle custom ops with their own backward. Networks (the
//! backbone plugins) call these; each op has an environment switch back to candle's op for
//! A/B comparisons (`METRICUNET_CANDLE_CONV`, `METRICUNET_CANDLE_CONVT`,
//! `METRICUNET_CANDLE_BN`; `METRICUNET_WINOGRAD=0` keeps the direct 3x3 path;
//! `METRICUNET_AVX512=0` makes their matrix products take the gemm crate's AVX2 + FMA kernels,
//! as on a CPU without AVX-512), and on other devices each falls back to candle's op.
//!
//! - [`conv`]: the 3x3 / 1x1 "same" convolution and the decoder's convolution that reads the
//!   skip concatenation from both inputs, without an im2col matrix ([`conv_cpu`] holds the
//!   kernels; [`winograd`] the F(2x2, 3x3) kernels it takes for the 3x3 layers where they
//!   were measured to win).
//! - [`conv_transpose`]: the decoder's 2x2 stride-2 transposed convolution with its bias.
//! - [`bn_relu`]: bias + BatchNorm + ReLU in one pass (training and inference modes).
//! - [`testing`]: the finite-difference gradient check the ops' and networks' tests share.
//!
//! CUDA kernels belong here too, beside their CPU twins.

pub mod bn_relu;
pub mod conv;
pub mod conv_cpu;
pub mod conv_transpose;
mod cpu_values;
pub mod simd;
pub mod testing;
pub mod winograd;
