//! A "same" 2-D convolution (stride 1, padding k / 2, odd k, no bias) with its own backward.
//!
//! On the CPU (f32 and f64) forward, input gradient and weight gradient are the im2col-free
//! kernels of [`crate::conv_cpu`] (k * k matrix products per image over a zero-padded copy;
//! checked there against the definition by direct loops, and here against candle's own
//! convolution and finite differences in `tests/finite_differences.rs`) or, for the 3x3
//! layers [`crate::winograd::chosen`] picks (`METRICUNET_WINOGRAD`), Winograd F(2x2, 3x3)
//! (checked against the direct kernels, and by finite differences in `tests/winograd_op.rs`).
//! candle's CPU conv2d
//! forms the column matrix of the whole batch, and its backward computes the input gradient
//! with `conv_transpose2d`, several times slower than a conv2d of the same size.
//!
//! On CUDA (feature `cuda`) the forward is candle's CUDA conv2d and the backward is
//! tensor-level: the input gradient a conv2d of the output gradient with the flipped,
//! transposed kernel (for stride 1 and padding p = k / 2 a transposed convolution is a
//! convolution with the flipped kernel and padding k - 1 - p = p), the weight gradient a matrix
//! product per kernel tap; candle's CUDA `conv_transpose2d` kernel (a direct loop per output
//! element) is not used. With the `cudnn` feature and `METRICUNET_CUDNN_CONV=1` all three
//! passes go through cuDNN instead ([`crate::cuda::cudnn_conv`]).

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, WithDType};

use crate::conv_cpu::{self, Elem, Geometry};
use crate::cpu_values::{dense, env_flag, with_values};
use crate::profile::{self, Pass};
use crate::winograd;

/// The CPU forward through the path [`winograd::chosen`] picks for this layer.
pub(crate) fn forward_parts<T: Elem>(parts: &[(&[T], usize)], w: &[T], g: &Geometry) -> Vec<T> {
    if winograd::chosen(g) {
        winograd::forward_parts(parts, w, g)
    } else {
        conv_cpu::forward_parts(parts, w, g)
    }
}

/// The CPU input gradient through the path [`winograd::chosen`] picks.
pub(crate) fn input_grad<T: Elem>(grad: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    if winograd::chosen(g) {
        winograd::input_grad(grad, w, g)
    } else {
        conv_cpu::input_grad(grad, w, g)
    }
}

/// The CPU weight gradient through the path [`winograd::chosen`] picks.
pub(crate) fn weight_grad_parts<T: Elem>(x: &[(&[T], usize)], grad: &[T], g: &Geometry) -> Vec<T> {
    if winograd::chosen(g) {
        winograd::weight_grad_parts(x, grad, g)
    } else {
        conv_cpu::weight_grad_parts(x, grad, g)
    }
}

const OP: &str = "conv2d-same";

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    crate::cpu_values::slice(OP, s, l)
}

struct SameConv {
    padding: usize,
}

pub(crate) fn geometry(x: &[usize], w: &[usize]) -> Result<Geometry> {
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

/// Input and weight gradient on the CPU.
/// The gradients of the input and of the kernel, each only where candle's graph tracks that
/// operand (the first layer's input is data; a detached input or a frozen kernel needs none).
fn cpu_backward<T: WithDType + Elem>(
    x: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let g = geometry(x.dims(), w.dims())?;
    let gx = if x.track_op() {
        let gx = with_values::<T, _, 2>(OP, [grad, w], |[gy, wv]| input_grad(gy, wv, &g))?;
        Some(Tensor::from_vec(gx, x.shape(), &Device::Cpu)?)
    } else {
        None
    };
    let gw = if w.track_op() {
        let gw = with_values::<T, _, 2>(OP, [x, grad], |[xv, gy]| {
            weight_grad_parts(&[(xv, g.cin)], gy, &g)
        })?;
        Some(Tensor::from_vec(gw, w.shape(), &Device::Cpu)?)
    } else {
        None
    };
    Ok((gx, gw))
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
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(forward_parts(
                &[(slice(s1, l1)?, g.cin)],
                slice(s2, l2)?,
                &g,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(forward_parts(
                &[(slice(s1, l1)?, g.cin)],
                slice(s2, l2)?,
                &g,
            )),
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
        #[cfg(feature = "cudnn")]
        if crate::cuda::cudnn_conv::enabled() {
            return crate::cuda::cudnn_conv::forward(s1, l1, s2, l2);
        }
        // a tensor over a copy of the storage (device-to-device; `conv2d_same` hands in
        // contiguous operands that start at offset 0), without a backward graph
        let wrap = |s: &candle_core::CudaStorage, l: &Layout| -> Result<Tensor> {
            if !l.is_contiguous() || l.start_offset() != 0 {
                candle_core::bail!("conv2d-same: non-contiguous input {:?}", l.shape())
            }
            Ok(Tensor::from_storage(
                candle_core::Storage::Cuda(s.try_clone(l)?),
                l.shape().clone(),
                candle_core::op::BackpropOp::none(),
                false,
            ))
        };
        let y = wrap(s1, l1)?.conv2d(&wrap(s2, l2)?, self.padding, 1, 1, 1)?;
        let shape = y.shape().clone();
        let (storage, layout) = y.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cuda(c)
                if layout.is_contiguous() && layout.start_offset() == 0 =>
            {
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
        profile::timed(OP, Pass::Backward, x.device(), || self.backward(x, w, grad))
    }
}

impl SameConv {
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if x.device().is_cpu() {
            return match x.dtype() {
                DType::F32 => cpu_backward::<f32>(x, w, grad),
                DType::F64 => cpu_backward::<f64>(x, w, grad),
                other => candle_core::bail!("conv2d-same: f32 or f64 only, got {other:?}"),
            };
        }
        #[cfg(feature = "cudnn")]
        if crate::cuda::cudnn_conv::enabled() {
            let (gx, gw) = crate::cuda::cudnn_conv::backward(x, w, grad)?;
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
pub(crate) fn candle_backward() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_flag(&FLAG, "METRICUNET_CANDLE_CONV", false)
}

/// `x` (N, C, H, W) convolved with `w` (Cout, C, k, k), stride 1, padding k / 2, no bias.
pub fn conv2d_same(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    profile::timed(OP, Pass::Forward, x.device(), || {
        crate::precision::in_conv_precision(x, w, same_forward)
    })
}

fn same_forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
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

/// The "same" convolution of the channel concatenation `[a, b]` (CPU), without forming it:
/// the padded image of each picture is built from both inputs, and the input gradient is
/// split back. Saves the concatenated tensor that the graph would otherwise keep (the
/// decoder's skip connections: 141 MB at the paper network's top level, batch 30).
struct SameConvCat {
    padding: usize,
}

/// Geometry of the concatenation of `a` (N, c1, H, W) and `b` (N, c2, H, W) convolved with `w`.
pub(crate) fn cat_geometry(a: &[usize], b: &[usize], w: &[usize]) -> Result<(Geometry, usize)> {
    match (a, b) {
        (&[n, c1, h, wd], &[n2, c2, h2, wd2]) if n == n2 && h == h2 && wd == wd2 => {
            Ok((geometry(&[n, c1 + c2, h, wd], w)?, c1))
        }
        _ => candle_core::bail!("conv2d-same-cat: inputs {a:?} and {b:?} do not concatenate"),
    }
}

fn cat_forward<T: WithDType + Elem>(
    s: [(&CpuStorage, &Layout); 3],
    g: &Geometry,
    c1: usize,
) -> Result<Vec<T>> {
    let (a, b, w) = (
        slice(s[0].0, s[0].1)?,
        slice(s[1].0, s[1].1)?,
        slice(s[2].0, s[2].1)?,
    );
    Ok(forward_parts(&[(a, c1), (b, g.cin - c1)], w, g))
}

/// The two parts of an `(N, c1 + c2, H, W)` gradient `full` (`hw` values per channel) as the
/// gradients of the concatenation's inputs `(N, c1, H, W)` and `(N, c2, H, W)`, each only where
/// `wanted`.
pub(crate) fn split_channels<T: Copy>(
    full: &[T],
    [c1, c2]: [usize; 2],
    hw: usize,
    wanted: [bool; 2],
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    let images = full.len() / ((c1 + c2) * hw).max(1);
    let part = |from: usize, c: usize, wanted: bool| {
        wanted.then(|| {
            let mut v = Vec::with_capacity(images * c * hw);
            for image in full.chunks_exact((c1 + c2) * hw) {
                v.extend_from_slice(&image[from * hw..][..c * hw]);
            }
            v
        })
    };
    (part(0, c1, wanted[0]), part(c1, c2, wanted[1]))
}

/// Input gradients (split) and weight gradient on the CPU, each only where candle's graph
/// tracks that operand.
fn cat_backward<T: WithDType + Elem>(
    a: &Tensor,
    b: &Tensor,
    w: &Tensor,
    grad: &Tensor,
) -> Result<[Option<Tensor>; 3]> {
    let (g, c1) = cat_geometry(a.dims(), b.dims(), w.dims())?;
    let c2 = g.cin - c1;
    let cpu = |v: Option<Vec<T>>, t: &Tensor| {
        v.map(|v| Tensor::from_vec(v, t.shape(), &Device::Cpu))
            .transpose()
    };
    let (ga, gb) = if a.track_op() || b.track_op() {
        let gx = with_values::<T, _, 2>(OP, [grad, w], |[gy, wv]| input_grad(gy, wv, &g))?;
        split_channels(&gx, [c1, c2], g.h * g.w, [a.track_op(), b.track_op()])
    } else {
        (None, None)
    };
    let gw = if w.track_op() {
        Some(with_values::<T, _, 3>(OP, [a, b, grad], |[av, bv, gy]| {
            weight_grad_parts(&[(av, c1), (bv, c2)], gy, &g)
        })?)
    } else {
        None
    };
    Ok([cpu(ga, a)?, cpu(gb, b)?, cpu(gw, w)?])
}

impl candle_core::CustomOp3 for SameConvCat {
    fn name(&self) -> &'static str {
        "conv2d-same-cat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, c1) = cat_geometry(l1.dims(), l2.dims(), l3.dims())?;
        if g.k / 2 != self.padding {
            candle_core::bail!(
                "conv2d-same-cat: padding {} for a {} kernel",
                self.padding,
                g.k
            )
        }
        let parts = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(cat_forward::<f32>(parts, &g, c1)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(cat_forward::<f64>(parts, &g, c1)?)
            }
            _ => candle_core::bail!("conv2d-same-cat: f32 or f64 only, all three alike"),
        };
        Ok((out, Shape::from((g.batch, g.cout, g.h, g.w))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::timed("conv2d-same-cat", Pass::Backward, a.device(), || {
            let [ga, gb, gw] = match a.dtype() {
                DType::F32 => cat_backward::<f32>(a, b, w, grad)?,
                DType::F64 => cat_backward::<f64>(a, b, w, grad)?,
                other => candle_core::bail!("conv2d-same-cat: f32 or f64 only, got {other:?}"),
            };
            Ok((ga, gb, gw))
        })
    }
}

/// [`conv2d_same`] of the channel concatenation of `a` and `b` (both (N, c_i, H, W)): on the
/// CPU without forming the concatenation, elsewhere (and with `METRICUNET_CANDLE_CONV=1`)
/// `cat` then [`conv2d_same`].
pub fn conv2d_same_cat(a: &Tensor, b: &Tensor, w: &Tensor) -> Result<Tensor> {
    profile::timed("conv2d-same-cat", Pass::Forward, a.device(), || {
        same_cat_forward(a, b, w)
    })
}

fn same_cat_forward(a: &Tensor, b: &Tensor, w: &Tensor) -> Result<Tensor> {
    let cpu_op = !candle_backward()
        && a.device().is_cpu()
        && b.device().is_cpu()
        && matches!(a.dtype(), DType::F32 | DType::F64)
        && a.dtype() == b.dtype()
        && w.dtype() == a.dtype();
    if !cpu_op {
        return conv2d_same(&Tensor::cat(&[a, b], 1)?, w);
    }
    let k = w.dim(2)?;
    dense(a)?.apply_op3(&dense(b)?, &dense(w)?, SameConvCat { padding: k / 2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_values::testing::{assert_close, flat};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Values and all three gradients equal to `cat` + [`conv2d_same`] (f64).
    #[test]
    fn cat_convolution_is_the_convolution_of_the_concatenation() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            candle_core::Var::from_vec(v, shape, &Device::Cpu).expect("var")
        };
        let (a, b, w) = (t(&[2, 3, 5, 6]), t(&[2, 4, 5, 6]), t(&[5, 7, 3, 3]));
        let up = t(&[2, 5, 5, 6]).as_tensor().detach();
        let run = |fused: bool| {
            let y = if fused {
                conv2d_same_cat(a.as_tensor(), b.as_tensor(), w.as_tensor())
            } else {
                conv2d_same(
                    &Tensor::cat(&[a.as_tensor(), b.as_tensor()], 1).expect("cat"),
                    w.as_tensor(),
                )
            }
            .expect("conv");
            let grads = (&y * &up)
                .expect("mul")
                .sum_all()
                .expect("sum")
                .backward()
                .expect("bwd");
            [
                flat(&y),
                flat(grads.get(a.as_tensor()).expect("ga")),
                flat(grads.get(b.as_tensor()).expect("gb")),
                flat(grads.get(w.as_tensor()).expect("gw")),
            ]
        };
        let (x, y) = (run(true), run(false));
        assert_close(&["output", "d a", "d b", "d w"], &x, &y, 1e-12);
    }

    /// An input the graph does not track (data, or detached) gets no gradient, and the
    /// kernel's gradient is the same as with a tracked input; a constant kernel likewise.
    #[test]
    fn untracked_operands_get_no_gradient() {
        let x = crate::testing::random(2 * 3 * 5 * 6, 12);
        let w = crate::testing::random(4 * 3 * 3 * 3, 13);
        let up = Tensor::from_vec(
            crate::testing::random(2 * 4 * 5 * 6, 14),
            (2, 4, 5, 6),
            &Device::Cpu,
        )
        .expect("up");
        let grads = |x_var: bool, w_var: bool| {
            let xt = candle_core::Var::from_vec(x.clone(), (2, 3, 5, 6), &Device::Cpu).expect("x");
            let wt = candle_core::Var::from_vec(w.clone(), (4, 3, 3, 3), &Device::Cpu).expect("w");
            let xa = if x_var {
                xt.as_tensor().clone()
            } else {
                xt.as_tensor().detach()
            };
            let wa = if w_var {
                wt.as_tensor().clone()
            } else {
                wt.as_tensor().detach()
            };
            let g = conv2d_same(&xa, &wa)
                .and_then(|y| y * &up)
                .and_then(|p| p.sum_all())
                .and_then(|l| l.backward())
                .expect("backward");
            (g.get(&xa).map(flat), g.get(&wa).map(flat))
        };
        let (gx, gw) = grads(true, true);
        let (no_x, gw_alone) = grads(false, true);
        assert!(no_x.is_none(), "an untracked input got a gradient");
        assert_eq!(gw_alone, gw);
        let (gx_alone, no_w) = grads(true, false);
        assert!(no_w.is_none(), "a constant kernel got a gradient");
        assert_eq!(gx_alone, gx);
        assert!(gx.is_some_and(|g| g.iter().any(|v| *v != 0.0)));
        // the concatenation's convolution: a detached second input gets none, the first input's
        // and the kernel's gradients are unchanged
        let (a, w5) = (x.clone(), crate::testing::random(4 * 5 * 9, 15));
        let b = crate::testing::random(2 * 2 * 5 * 6, 16);
        let cat_grads = |b_var: bool| {
            let at = candle_core::Var::from_vec(a.clone(), (2, 3, 5, 6), &Device::Cpu).expect("a");
            let bt = candle_core::Var::from_vec(b.clone(), (2, 2, 5, 6), &Device::Cpu).expect("b");
            let wt = candle_core::Var::from_vec(w5.clone(), (4, 5, 3, 3), &Device::Cpu).expect("w");
            let bb = if b_var {
                bt.as_tensor().clone()
            } else {
                bt.as_tensor().detach()
            };
            let g = conv2d_same_cat(at.as_tensor(), &bb, wt.as_tensor())
                .and_then(|y| y * &up)
                .and_then(|p| p.sum_all())
                .and_then(|l| l.backward())
                .expect("backward");
            [at.as_tensor(), &bb, wt.as_tensor()].map(|t| g.get(t).map(flat))
        };
        let (both, first) = (cat_grads(true), cat_grads(false));
        assert!(both[1].is_some() && first[1].is_none());
        assert_eq!(first[0], both[0]);
        assert_eq!(first[2], both[2]);
    }
}
