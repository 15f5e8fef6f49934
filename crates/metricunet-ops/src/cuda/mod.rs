//! The CUDA twins of the CPU ops (feature `cuda`), each behind its own switch and off by
//! default until measured on a GPU:
//!
//! - [`bn_relu`]: BatchNorm (training mode) + ReLU as six small kernels (statistics in two,
//!   forward, backward in three) instead of candle's ~10 kernels per layer
//!   (`METRICUNET_CUDA_BN=1`);
//! - `cudnn_conv` (feature `cudnn`): the same convolution's forward, data gradient and filter
//!   gradient through cuDNN with the algorithm cached per shape and one reused workspace
//!   (`METRICUNET_CUDNN_CONV=1`; strict f32 or TF32 by [`crate::precision`]).
//!
//! The helpers here turn candle tensors into cudarc views and device buffers back into tensors.

pub mod bn_relu;
#[cfg(feature = "cudnn")]
pub mod cudnn_conv;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor, WithDType};

/// The element types the kernels are compiled for, with their kernel-name suffix.
pub trait Kernel: CudaDType + DeviceRepr + WithDType {
    const SUFFIX: &'static str;
}

impl Kernel for f32 {
    const SUFFIX: &'static str = "f32";
}

impl Kernel for f64 {
    const SUFFIX: &'static str = "f64";
}

/// The contiguous values of `l` in `s`.
pub(crate) fn view<'a, T: CudaDType>(
    op: &str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("{op}: needs a contiguous operand, got {:?}", l.shape())
    }
    let start = l.start_offset();
    Ok(s.as_cuda_slice::<T>()?
        .slice(start..start + l.shape().elem_count()))
}

/// The CUDA storage of `t` (read-locked) with its layout, for [`view`].
pub(crate) fn storage<'a>(
    op: &str,
    t: &'a Tensor,
) -> Result<(candle_core::StorageRef<'a>, &'a Layout)> {
    let (s, l) = t.storage_and_layout();
    if !matches!(&*s, Storage::Cuda(_)) {
        candle_core::bail!("{op}: expected a CUDA tensor, got one on {:?}", t.device())
    }
    Ok((s, l))
}

/// The CUDA storage inside a read guard from [`storage`].
pub(crate) fn cuda(s: &Storage) -> Result<&CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("expected CUDA storage"),
    }
}

/// A device buffer as a tensor of `shape` without a backward graph.
pub(crate) fn tensor<T: CudaDType>(
    slice: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}
