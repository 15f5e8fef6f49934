//! The decoder's 2 x 2 transposed convolution with stride 2 (and its bias) as one op with its
//! own backward.
//!
//! With kernel = stride = 2 the output blocks do not overlap: for `x (N, Cin, H, W)`,
//! `w (Cin, Cout, 2, 2)` (candle's `ConvTranspose2d` layout) and `bias (Cout)`,
//!
//! ```text
//! y[n, o, 2i + a, 2j + b] = bias[o] + sum_c w[c, o, a, b] x[n, c, i, j]
//! ```
//!
//! so per image the forward is one matrix product `Z (4 Cout x HW) = W^T X` scattered into
//! the 2x-upsampled grid. Backward, with `G (4 Cout x HW)` the output gradient gathered back
//! from that grid: `dX = W G`, `dW += X G^T` and `dbias[o] = sum of G's four rows of o`.
//! Images are spread over the threads, each with its own weight and bias accumulators.
//!
//! candle's CPU path computes the same with a direct transposed-convolution loop, adds the
//! bias as a broadcast (its gradient a strided reduction over the whole output gradient on one
//! thread) and takes the backward through two im2col convolutions (the im2col single-threaded):
//! in the paper network at batch 30 these were about 0.5 s of a 7.8 s step, most of it on one
//! core. Checked against candle's `ConvTranspose2d` (values and the three gradients) below and
//! by finite differences in `tests/finite_differences.rs`. On other devices, other dtypes
//! and with `METRICUNET_CANDLE_CONV=1`, candle's own op is used.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

use crate::conv_cpu::{for_images, matmul, sum_over_images, Elem, OutPtr, Scratch};
use crate::cpu_values::{dense, env_flag, with_values, written_in_full};
use crate::profile::{self, Pass};
use std::mem::MaybeUninit;

const OP: &str = "conv-transpose-2x2";

/// Shapes of one transposed convolution.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    batch: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

impl Shapes {
    fn new(x: &[usize], w: &[usize], b: &[usize]) -> Result<Self> {
        match (x, w, b) {
            (&[batch, cin, h, wd], &[wcin, cout, 2, 2], &[bc]) if wcin == cin && bc == cout => {
                Ok(Self {
                    batch,
                    cin,
                    cout,
                    h,
                    w: wd,
                })
            }
            _ => candle_core::bail!(
                "{OP}: input {x:?}, kernel {w:?} and bias {b:?} do not fit \
                 (expected (N, C, H, W), (C, Cout, 2, 2) and (Cout))"
            ),
        }
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Rows of the per-image matrices `Z` and `G`: (o, a, b).
    fn rows(&self) -> usize {
        4 * self.cout
    }
}

/// Scatter `z (4 Cout x HW)` plus the bias into one output image `(Cout, 2H, 2W)`.
fn scatter<T: Elem>(z: &[T], bias: &[T], s: &Shapes, out: &mut [MaybeUninit<T>]) {
    let (hw, w2) = (s.hw(), 2 * s.w);
    for o in 0..s.cout {
        let plane = &mut out[o * 4 * hw..][..4 * hw];
        for tap in 0..4 {
            let (a, b) = (tap / 2, tap % 2);
            let row = &z[(4 * o + tap) * hw..][..hw];
            for i in 0..s.h {
                let dst = &mut plane[(2 * i + a) * w2 + b..];
                for (j, &v) in row[i * s.w..][..s.w].iter().enumerate() {
                    let mut y = bias[o];
                    y += v;
                    dst[2 * j].write(y);
                }
            }
        }
    }
}

/// Gather one output-gradient image `(Cout, 2H, 2W)` into `G (4 Cout x HW)`.
fn gather<T: Elem>(grad: &[T], s: &Shapes, g: &mut [T]) {
    let (hw, w2) = (s.hw(), 2 * s.w);
    for o in 0..s.cout {
        let plane = &grad[o * 4 * hw..][..4 * hw];
        for tap in 0..4 {
            let (a, b) = (tap / 2, tap % 2);
            let row = &mut g[(4 * o + tap) * hw..][..hw];
            for i in 0..s.h {
                let src = &plane[(2 * i + a) * w2 + b..];
                for (j, v) in row[i * s.w..][..s.w].iter_mut().enumerate() {
                    *v = src[2 * j];
                }
            }
        }
    }
}

/// Forward: `x (N, Cin, H, W)`, `w (Cin, Cout, 2, 2)`, `bias (Cout)` -> `(N, Cout, 2H, 2W)`.
fn forward<T: Elem>(x: &[T], w: &[T], bias: &[T], s: &Shapes) -> Vec<T> {
    let (hw, rows) = (s.hw(), s.rows());
    let zs = Scratch::new(s.batch);
    let fill = |out: &mut [MaybeUninit<T>]| {
        let ptr = OutPtr(out.as_mut_ptr());
        for_images(s.batch, |i, par| {
            // written in full by the product (no accumulation)
            zs.with(rows * hw, |z: &mut [T]| {
                let xi = &x[i * s.cin * hw..][..s.cin * hw];
                // SAFETY: W^T's (r, c) at c * rows + r < cin * rows = w.len(); x_i's (c, j)
                // at c * hw + j < cin * hw; z is rows x hw.
                unsafe {
                    matmul(
                        (rows, hw, s.cin),
                        (z.as_mut_ptr(), hw as isize, 1),
                        false,
                        (w.as_ptr(), 1, rows as isize),
                        (xi.as_ptr(), hw as isize, 1),
                        par,
                    );
                }
                // SAFETY: image i owns out[i * rows * hw .. (i + 1) * rows * hw]
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(ptr.get().add(i * rows * hw), rows * hw)
                };
                scatter(z, bias, s, dst);
            })
        })
    };
    // SAFETY: each image's scatter writes its (Cout, 2H, 2W) block in full (the 2 x 2 blocks
    // of the four taps tile it)
    unsafe { written_in_full(s.batch * rows * hw, fill) }
}

/// Backward: (dx, dw, dbias) from the output gradient.
fn backward<T: Elem>(x: &[T], w: &[T], grad: &[T], s: &Shapes) -> [Vec<T>; 3] {
    let (hw, rows) = (s.hw(), s.rows());
    let (wlen, blen) = (s.cin * rows, s.cout);
    let gs = Scratch::new(s.batch);
    let mut dw = Vec::new();
    let fill = |dx: &mut [MaybeUninit<T>]| {
        let ptr = OutPtr(dx.as_mut_ptr().cast::<T>());
        // image i: its dx, and its dW and dbias added to the accumulator `[dW, dbias]`
        let image = |i: usize, acc: &mut [T], par: Parallelism| {
            let (dw, db) = acc.split_at_mut(wlen);
            // written in full by the gather
            gs.with(rows * hw, |g: &mut [T]| {
                gather(&grad[i * rows * hw..][..rows * hw], s, g);
                let xi = &x[i * s.cin * hw..][..s.cin * hw];
                // SAFETY: image i owns dx[i * cin * hw .. (i + 1) * cin * hw], written (not
                // read: no accumulation) by the first product; W's (c, r) at c * rows + r <
                // w.len(); G's (r, j) at r * hw + j < rows * hw; x_i's (c, j) likewise; G^T's
                // (j, r) at r * hw + j; dW is cin x rows, laid out as w.
                unsafe {
                    let dxi = ptr.get().add(i * s.cin * hw);
                    matmul(
                        (s.cin, hw, rows),
                        (dxi, hw as isize, 1),
                        false,
                        (w.as_ptr(), rows as isize, 1),
                        (g.as_ptr(), hw as isize, 1),
                        par,
                    );
                    matmul(
                        (s.cin, rows, hw),
                        (dw.as_mut_ptr(), rows as isize, 1),
                        true,
                        (xi.as_ptr(), hw as isize, 1),
                        (g.as_ptr(), 1, hw as isize),
                        par,
                    );
                }
                for (o, sum) in db.iter_mut().enumerate() {
                    for v in &g[4 * o * hw..][..4 * hw] {
                        *sum += *v;
                    }
                }
            })
        };
        dw = sum_over_images(s.batch, wlen + blen, image);
    };
    // SAFETY: each image's first product writes its cin x hw block of dx; the images cover it
    let dx = unsafe { written_in_full(s.batch * s.cin * hw, fill) };
    let db = dw.split_off(wlen);
    [dx, dw, db]
}

struct ConvTranspose2x2;

fn cpu_forward<T: candle_core::WithDType + Elem>(
    parts: [(&CpuStorage, &Layout); 3],
    s: &Shapes,
) -> Result<Vec<T>> {
    let [(s1, l1), (s2, l2), (s3, l3)] = parts;
    let slice = crate::cpu_values::slice::<T>;
    Ok(forward(
        slice(OP, s1, l1)?,
        slice(OP, s2, l2)?,
        slice(OP, s3, l3)?,
        s,
    ))
}

fn cpu_backward<T: candle_core::WithDType + Elem>(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    grad: &Tensor,
) -> Result<[Tensor; 3]> {
    let s = Shapes::new(x.dims(), w.dims(), b.dims())?;
    let [dx, dw, db] =
        with_values::<T, _, 3>(OP, [x, w, grad], |[xv, wv, gv]| backward(xv, wv, gv, &s))?;
    Ok([
        Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
        Tensor::from_vec(dw, w.shape(), &Device::Cpu)?,
        Tensor::from_vec(db, b.shape(), &Device::Cpu)?,
    ])
}

impl CustomOp3 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        OP
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
        let s = Shapes::new(l1.dims(), l2.dims(), l3.dims())?;
        let parts = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(cpu_forward::<f32>(parts, &s)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(cpu_forward::<f64>(parts, &s)?)
            }
            _ => candle_core::bail!("{OP}: f32 or f64 only, all three alike"),
        };
        Ok((out, Shape::from((s.batch, s.cout, 2 * s.h, 2 * s.w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::timed(OP, Pass::Backward, x.device(), || {
            let [dx, dw, db] = match x.dtype() {
                DType::F32 => cpu_backward::<f32>(x, w, b, grad)?,
                DType::F64 => cpu_backward::<f64>(x, w, b, grad)?,
                other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
            };
            Ok((Some(dx), Some(dw), Some(db)))
        })
    }
}

/// Whether `METRICUNET_CANDLE_CONV=1` asks for candle's own convolutions (side-by-side runs).
fn candle_conv() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_flag(&FLAG, "METRICUNET_CANDLE_CONV", false)
}

/// `x (N, Cin, H, W)` through the 2 x 2, stride-2 transposed convolution with `w (Cin, Cout,
/// 2, 2)` and `bias (Cout)`: `(N, Cout, 2H, 2W)`, as candle's `ConvTranspose2d` with
/// `stride: 2` (no padding, output padding or dilation) computes it.
pub fn conv_transpose_2x2(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    profile::timed(OP, Pass::Forward, x.device(), || {
        if !crate::precision::bf16_for(x) {
            return forward_op(x, w, bias);
        }
        // bf16 product, f32 bias
        let y = crate::precision::in_conv_precision(x, w, |x, w| forward_op(x, w, None))?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    })
}

fn forward_op(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if w.rank() != 4 || w.dim(2)? != 2 || w.dim(3)? != 2 {
        candle_core::bail!("{OP}: needs a (Cin, Cout, 2, 2) kernel, got {:?}", w.dims())
    }
    if x.device().is_cuda() && !candle_conv() && gemm_on_device() {
        return conv_transpose_2x2_gemm(x, w, bias);
    }
    let cpu_op = !candle_conv()
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && bias.is_none_or(|b| b.dtype() == x.dtype());
    if !cpu_op {
        let y = x.conv_transpose2d(w, 0, 0, 2, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        };
    }
    let bias = match bias {
        Some(b) => dense(b)?,
        None => Tensor::zeros(w.dim(1)?, x.dtype(), x.device())?,
    };
    dense(x)?.apply_op3(&dense(w)?, &bias, ConvTranspose2x2)
}

/// Whether `METRICUNET_CUDA_CONVT_GEMM=1` asks for [`conv_transpose_2x2_gemm`] on CUDA (off
/// by default until measured on a GPU).
pub(crate) fn gemm_on_device() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_flag(&FLAG, "METRICUNET_CUDA_CONVT_GEMM", false)
}

/// The same transposed convolution as one matrix product for the whole batch, built from
/// candle's tensor ops (so any device, any float dtype, candle's autograd): the input as
/// `(N H W, Cin)` rows times `w` as `(Cin, Cout 2 2)`, the product's `(N, H, W, Cout, 2, 2)`
/// blocks permuted into the `(N, Cout, 2H, 2W)` grid. On CUDA this replaces candle's direct
/// transposed-convolution kernel (one thread per output value looping over the input
/// channels) by one cuBLAS product and two copies, backward included.
pub fn conv_transpose_2x2_gemm(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let (wcin, cout, k1, k2) = w.dims4()?;
    if wcin != cin || k1 != 2 || k2 != 2 {
        candle_core::bail!(
            "{OP}: input {:?} and kernel {:?} do not fit",
            x.dims(),
            w.dims()
        )
    }
    let rows = x
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((n * h * wd, cin))?;
    let z = rows.matmul(&w.reshape((cin, cout * 4))?)?;
    let y = z
        .reshape((n, h, wd, cout, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .contiguous()?
        .reshape((n, cout, 2 * h, 2 * wd))?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_values::testing::{assert_close, flat};
    use candle_core::Module;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Values and the three gradients of the CPU op and of the batch-wide product
    /// ([`conv_transpose_2x2_gemm`]) equal to candle's `ConvTranspose2d` (stride 2), f64, for
    /// a batch smaller and one larger than the thread count and odd spatial sizes.
    #[test]
    fn same_as_candle_conv_transpose() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for (n, cin, cout, h, w) in [(1, 3, 2, 2, 3), (5, 4, 3, 3, 5)] {
            let mut t = |shape: &[usize]| {
                let len: usize = shape.iter().product();
                let v: Vec<f64> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                candle_core::Var::from_vec(v, shape, &Device::Cpu).expect("var")
            };
            let (x, k, b) = (t(&[n, cin, h, w]), t(&[cin, cout, 2, 2]), t(&[cout]));
            let up = t(&[n, cout, 2 * h, 2 * w]).as_tensor().detach();
            let run = |way: usize| {
                let y = if way == 0 {
                    conv_transpose_2x2(x.as_tensor(), k.as_tensor(), Some(b.as_tensor()))
                } else if way == 1 {
                    conv_transpose_2x2_gemm(x.as_tensor(), k.as_tensor(), Some(b.as_tensor()))
                } else {
                    let cfg = candle_nn::ConvTranspose2dConfig {
                        stride: 2,
                        ..Default::default()
                    };
                    candle_nn::ConvTranspose2d::new(
                        k.as_tensor().clone(),
                        Some(b.as_tensor().clone()),
                        cfg,
                    )
                    .forward(x.as_tensor())
                }
                .expect("forward");
                let grads = (&y * &up)
                    .and_then(|p| p.sum_all())
                    .and_then(|l| l.backward())
                    .expect("backward");
                [
                    flat(&y),
                    flat(grads.get(x.as_tensor()).expect("dx")),
                    flat(grads.get(k.as_tensor()).expect("dw")),
                    flat(grads.get(b.as_tensor()).expect("db")),
                ]
            };
            let (ours, gemm, theirs) = (run(0), run(1), run(2));
            let names = ["output", "d x", "d w", "d bias"];
            assert_close(&names, &ours, &theirs, 1e-12);
            // the batch-wide product of the CUDA path, here on the CPU
            assert_close(&names, &gemm, &theirs, 1e-12);
        }
    }

    /// A hand-computed case: one input channel, one output channel, a 1 x 1 image.
    #[test]
    fn hand_computed_block() {
        let x = Tensor::from_vec(vec![2.0f32], (1, 1, 1, 1), &Device::Cpu).expect("x");
        let w =
            Tensor::from_vec(vec![1.0f32, -1.0, 0.5, 3.0], (1, 1, 2, 2), &Device::Cpu).expect("w");
        let b = Tensor::from_vec(vec![0.25f32], 1, &Device::Cpu).expect("b");
        let y = conv_transpose_2x2(&x, &w, Some(&b))
            .and_then(|y| y.flatten_all())
            .and_then(|y| y.to_vec1::<f32>())
            .expect("y");
        assert_eq!(y, vec![2.25, -1.75, 1.25, 6.25]);
    }
}
