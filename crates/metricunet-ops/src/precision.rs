//! The arithmetic of the convolutions on CUDA, process-wide (set by training from
//! `training.precision`, by `bench` from `--precision`; strict f32 by default):
//!
//! - TF32: cuDNN convolutions ([`crate::cuda::cudnn_conv`]) may use TF32 tensor cores
//!   (PyTorch's default for convolutions); off, they use FMA math only.
//! - bf16: on CUDA, the same convolution, its skip-concatenating variant and the transposed
//!   convolution cast their f32 input and weight to bf16, compute in bf16 (cuDNN accumulates
//!   in f32) and return f32, so BatchNorm, the loss, the gradients of the f32 weights and the
//!   optimizer stay f32: what `torch.autocast(dtype=torch.bfloat16)` does for these layers.
//!
//! On the CPU neither applies (the ops compute in the tensors' dtype).

use std::sync::atomic::{AtomicBool, Ordering};

static TF32: AtomicBool = AtomicBool::new(false);
static BF16: AtomicBool = AtomicBool::new(false);

/// Let cuDNN convolutions use TF32.
pub fn set_tf32(on: bool) {
    TF32.store(on, Ordering::Relaxed);
}

/// Whether cuDNN convolutions may use TF32.
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// Compute CUDA convolutions in bf16.
pub fn set_bf16(on: bool) {
    BF16.store(on, Ordering::Relaxed);
}

/// Whether CUDA convolutions compute in bf16.
pub fn bf16() -> bool {
    BF16.load(Ordering::Relaxed)
}

/// Whether an f32 CUDA tensor's convolution computes in bf16.
pub(crate) fn bf16_for(x: &candle_core::Tensor) -> bool {
    bf16() && x.device().is_cuda() && x.dtype() == candle_core::DType::F32
}

/// `f` on bf16 copies of `x` and `w` when [`bf16_for`] `x`, its result cast back to f32
/// (candle's autograd carries the gradients through both casts); else `f(x, w)`.
pub(crate) fn in_conv_precision(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    f: impl FnOnce(
        &candle_core::Tensor,
        &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<candle_core::Tensor> {
    use candle_core::DType;
    if !bf16_for(x) {
        return f(x, w);
    }
    f(&x.to_dtype(DType::BF16)?, &w.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
}
