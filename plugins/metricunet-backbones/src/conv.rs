//! A "same" 2-D convolution (stride 1, padding k / 2, odd k, no bias) with its own backward.
//!
//! On the CPU (f32 and f64) forward, input gradient and weight gradient are the im2col-free
//! kernels of [`crate::conv_cpu`] (k * k matrix products per image over a zero-padded copy;
//! checked there against the definition by direct loops, and here against candle's own
//! convolution and finite differences in `tests/finite_differences.rs`). candle's CPU conv2d
//! forms the column matrix of the whole batch, and its backward computes the input gradient
//! with `conv_transpose2d`, several times slower than a conv2d of the same size.
//!
//! On CUDA (feature `cuda`) the forward is candle's CUDA conv2d and the backward is
//! tensor-level: the input gradient a conv2d of the output gradient with the flipped,
//! transposed kernel (for stride 1 and padding p = k / 2 a transposed convolution is a
//! convolution with the flipped kernel and padding k - 1 - p = p), the weight gradient a matrix
//! product per kernel tap; candle's CUDA `conv_transpose2d` kernel (a direct loop per output
//! element) is not used.

use candle_core::{
    CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

use crate::conv_cpu::{self, Elem, Geometry};

struct SameConv {
    padding: usize,
}

/// The values of a contiguous CPU storage in `layout`.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("conv2d-same: non-contiguous input {:?}", l.shape())
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

fn geometry(x: &[usize], w: &[usize]) -> Result<Geometry> {
    match (x, w) {
        (&[batch, cin, h, wd], &[cout, wcin, k, k2]) if wcin == cin && k == k2 && k % 2 == 1 => {
            Ok(Geometry {
                batch,
                cin,
                cout,
                h,
                w: wd,
                k,
            })
        }
        _ => candle_core::bail!("conv2d-same: input {x:?} and kernel {w:?} do not fit"),
    }
}

/// `f` on the values of CPU tensors (contiguous copies where needed).
fn with_values<T: WithDType, R>(
    tensors: [&Tensor; 2],
    f: impl FnOnce(&[T], &[T]) -> R,
) -> Result<R> {
    let [a, b] = tensors.map(dense);
    let (a, b) = (a?, b?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    match (&*sa, &*sb) {
        (Storage::Cpu(ca), Storage::Cpu(cb)) => Ok(f(slice(ca, la)?, slice(cb, lb)?)),
        _ => candle_core::bail!("conv2d-same: CPU tensors expected"),
    }
}

/// Input and weight gradient on the CPU.
fn cpu_backward<T: WithDType + Elem>(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let g = geometry(x.dims(), w.dims())?;
    let gx = with_values::<T, _>([grad, w], |gy, wv| conv_cpu::input_grad(gy, wv, &g))?;
    let gw = with_values::<T, _>([x, grad], |xv, gy| conv_cpu::weight_grad(xv, gy, &g))?;
    Ok((
        Tensor::from_vec(gx, x.shape(), &Device::Cpu)?,
        Tensor::from_vec(gw, w.shape(), &Device::Cpu)?,
    ))
}

impl CustomOp2 for SameConv {
    fn name(&self) -> &'static str {
        "conv2d-same"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.dims(), l2.dims())?;
        let shape = Shape::from((g.batch, g.cout, g.h, g.w));
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(conv_cpu::forward(slice(s1, l1)?, slice(s2, l2)?, &g))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(conv_cpu::forward(slice(s1, l1)?, slice(s2, l2)?, &g))
            }
            _ => candle_core::bail!("conv2d-same: f32 or f64 only"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        // a tensor over a copy of the storage (device-to-device; `conv2d_same` hands in
        // contiguous operands that start at offset 0), without a backward graph
        let wrap = |s: &candle_core::CudaStorage, l: &Layout| -> Result<Tensor> {
            if !l.is_contiguous() || l.start_offset() != 0 {
                candle_core::bail!("conv2d-same: non-contiguous input {:?}", l.shape())
            }
            Ok(Tensor::from_storage(
                Storage::Cuda(s.try_clone(l)?),
                l.shape().clone(),
                candle_core::op::BackpropOp::none(),
                false,
            ))
        };
        let y = wrap(s1, l1)?.conv2d(&wrap(s2, l2)?, self.padding, 1, 1, 1)?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            Storage::Cuda(c) if layout.is_contiguous() && layout.start_offset() == 0 => {
                Ok((c.try_clone(layout)?, shape))
            }
            _ => candle_core::bail!("conv2d-same: unexpected output layout"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if x.device().is_cpu() {
            let (gx, gw) = match x.dtype() {
                DType::F32 => cpu_backward::<f32>(x, w, grad)?,
                DType::F64 => cpu_backward::<f64>(x, w, grad)?,
                other => candle_core::bail!("conv2d-same: f32 or f64 only, got {other:?}"),
            };
            return Ok((Some(gx), Some(gw)));
        }
        let (n, cin, h, wd) = x.dims4()?;
        let (cout, _, k, _) = w.dims4()?;
        let p = self.padding;
        let grad = grad.contiguous()?;
        // input gradient: correlation of the output gradient with the flipped kernel, its
        // in- and out-channels swapped
        let wt = if k == 1 {
            w.transpose(0, 1)?.contiguous()?
        } else {
            w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?
        };
        let gx = grad.conv2d(&wt, p, 1, 1, 1)?;
        // weight gradient: per kernel tap, (cout, N*H*W) x (N*H*W, cin) with the shifted input
        let gt = grad.transpose(0, 1)?.reshape((cout, n * h * wd))?;
        let xt = x.transpose(0, 1)?; // (cin, N, H, W)
        let gw = if k == 1 {
            let cols = xt.contiguous()?.reshape((cin, n * h * wd))?;
            gt.matmul(&cols.t()?)?.reshape((cout, cin, 1, 1))?
        } else {
            let xp = xt.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            // one shifted copy at a time (stacking all k*k would hold k*k copies of the input)
            let mut taps = Vec::with_capacity(k * k);
            for ky in 0..k {
                for kx in 0..k {
                    let cols = xp
                        .narrow(2, ky, h)?
                        .narrow(3, kx, wd)?
                        .contiguous()?
                        .reshape((cin, n * h * wd))?;
                    taps.push(gt.matmul(&cols.t()?)?); // (cout, cin)
                }
            }
            Tensor::stack(&taps, 2)?.reshape((cout, cin, k, k))?
        };
        Ok((Some(gx), Some(gw)))
    }
}

/// Whether `METRICUNET_CANDLE_CONV=1` asks for candle's own convolution backward (for
/// side-by-side benchmarks).
fn candle_backward() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::env::var("METRICUNET_CANDLE_CONV").is_ok_and(|v| v == "1"))
}

/// `x` (N, C, H, W) convolved with `w` (Cout, C, k, k), stride 1, padding k / 2, no bias.
pub fn conv2d_same(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = w.dim(2)?;
    if k % 2 == 0 || w.dim(3)? != k {
        candle_core::bail!(
            "conv2d-same: needs an odd square kernel, got {:?}",
            w.dims()
        );
    }
    let supported = match x.device() {
        Device::Cpu => matches!(x.dtype(), DType::F32 | DType::F64),
        Device::Cuda(_) => cfg!(feature = "cuda"),
        _ => false,
    };
    if candle_backward() || !supported {
        return x.conv2d(w, k / 2, 1, 1, 1);
    }
    dense(x)?.apply_op2(&dense(w)?, SameConv { padding: k / 2 })
}

/// `t` itself where it is contiguous from offset 0, else a contiguous copy.
fn dense(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        Ok(t.clone())
    } else {
        t.force_contiguous()
    }
}
