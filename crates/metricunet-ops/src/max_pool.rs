//! The encoder's 2 x 2 max-pool with stride 2 as one op with its own backward.
//!
//! For `x (N, C, H, W)` with even H and W, `y[n, c, i, j]` is the largest of the window
//! `x[n, c, 2i..2i + 2, 2j..2j + 2]`, and the gradient goes to every position of the window
//! that equals it: `dx = dy[window] * (x == y[window])`. That is exactly what the tensor form
//! `reshape (N, C, H/2, 2, W/2, 2)` + `max(5)` + `max(3)` computes through candle's autograd
//! (a tie passes the whole gradient to each maximal position; after a ReLU the ties are
//! windows of zeros, whose gradient the ReLU's own backward stops), so training is the same
//! with either; the tensor form is kept for other devices and dtypes and behind
//! `METRICUNET_CANDLE_POOL=1`. candle 0.11's `max_pool2d` is not used: its backward scales the
//! gradient wrongly (`shared/notes/stack-facts.md`).
//!
//! Why an op of its own: the tensor form's backward runs candle's broadcast comparisons,
//! casts and products on 6-dimensional strided views on one thread. For the quickstart
//! network's three poolings (batch 8, 8/16/32 channels at 64/32/16 px) that backward took
//! 7 ms of a ~90 ms CPU training step (`bench train --profile`, session 14); here each plane
//! is one pass, the planes spread over the threads. A NaN in a window makes its maximum NaN
//! (the tensor form may drop it), so a diverged activation is not hidden by the pooling.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::conv_cpu::Elem;
use crate::cpu_values::{dense, env_flag, with_values, written_in_full};
use crate::profile::{self, Pass};
use std::mem::MaybeUninit;

const OP: &str = "max-pool-2x2";

/// Planes handed to one rayon task (so that the small planes of the lower levels are not one
/// task each).
const MIN_VALUES_PER_TASK: usize = 1 << 17;

/// The larger of `a` and `b`, NaN if either is (two comparisons and a select, no branch: the
/// loops below vectorise).
#[inline(always)]
fn max2<T: Elem>(a: T, b: T) -> T {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// Pooled output of one `(h, w)` plane into `out` (`h/2 x w/2`); `rows` holds `w` values.
fn pool_plane<T: Elem>(x: &[T], w: usize, out: &mut [MaybeUninit<T>], rows: &mut [T]) {
    let w2 = w / 2;
    for (i, o) in out.chunks_exact_mut(w2).enumerate() {
        let (top, bottom) = (&x[2 * i * w..][..w], &x[(2 * i + 1) * w..][..w]);
        // the larger of the two rows, then of each column pair
        for ((r, &t), &b) in rows.iter_mut().zip(top).zip(bottom) {
            *r = max2(t, b);
        }
        for (y, pair) in o.iter_mut().zip(rows.chunks_exact(2)) {
            y.write(max2(pair[0], pair[1]));
        }
    }
}

/// Input gradient of one plane: `dx = dy * (x == y)` per window; `spread` holds `2 w` values
/// (the output row and its gradient, each value twice).
fn backward_plane<T: Elem>(
    x: &[T],
    y: &[T],
    dy: &[T],
    w: usize,
    dx: &mut [MaybeUninit<T>],
    spread: &mut [T],
) {
    let w2 = w / 2;
    let zero = T::default();
    let (ys, gs) = spread.split_at_mut(w);
    for (i, (yr, gr)) in y.chunks_exact(w2).zip(dy.chunks_exact(w2)).enumerate() {
        for ((yp, gp), (&v, &g)) in ys
            .chunks_exact_mut(2)
            .zip(gs.chunks_exact_mut(2))
            .zip(yr.iter().zip(gr))
        {
            yp.fill(v);
            gp.fill(g);
        }
        for r in 2 * i..2 * i + 2 {
            let (xr, dr) = (&x[r * w..][..w], &mut dx[r * w..][..w]);
            for ((d, &xv), (&yv, &g)) in dr.iter_mut().zip(xr).zip(ys.iter().zip(gs.iter())) {
                d.write(if xv == yv { g } else { zero });
            }
        }
    }
}

/// Planes per rayon task for planes of `len` values.
fn planes_per_task(len: usize) -> usize {
    MIN_VALUES_PER_TASK.div_ceil(len.max(1)).max(1)
}

fn forward<T: Elem>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (len, out_len) = (h * w, (h / 2) * (w / 2));
    let per = planes_per_task(len);
    let fill = |out: &mut [MaybeUninit<T>]| {
        out.par_chunks_mut(per * out_len)
            .zip(x.par_chunks(per * len))
            .for_each(|(o, xs)| {
                let mut rows = vec![T::default(); w];
                for (op, xp) in o.chunks_exact_mut(out_len).zip(xs.chunks_exact(len)) {
                    pool_plane(xp, w, op, &mut rows);
                }
            })
    };
    // SAFETY: every plane's every output row is written
    unsafe { written_in_full(planes * out_len, fill) }
}

fn backward<T: Elem>(x: &[T], y: &[T], dy: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (len, out_len) = (h * w, (h / 2) * (w / 2));
    let per = planes_per_task(len);
    let fill = |dx: &mut [MaybeUninit<T>]| {
        dx.par_chunks_mut(per * len)
            .zip(x.par_chunks(per * len))
            .zip(
                y.par_chunks(per * out_len)
                    .zip(dy.par_chunks(per * out_len)),
            )
            .for_each(|((d, xs), (ys, gs))| {
                let mut spread = vec![T::default(); 2 * w];
                let parts = d
                    .chunks_exact_mut(len)
                    .zip(xs.chunks_exact(len))
                    .zip(ys.chunks_exact(out_len).zip(gs.chunks_exact(out_len)));
                for ((dp, xp), (yp, gp)) in parts {
                    backward_plane(xp, yp, gp, w, dp, &mut spread);
                }
            })
    };
    // SAFETY: every plane's every row pair is written
    unsafe { written_in_full(planes * len, fill) }
}

/// `(planes, h, w)` of an `(N, C, H, W)` input with even, non-zero H and W.
fn geometry(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match *dims {
        [n, c, h, w] if h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0 => Ok((n * c, h, w)),
        _ => candle_core::bail!(
            "{OP}: input {dims:?}: expected (N, C, H, W) with even, non-zero H and W"
        ),
    }
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let (planes, h, w) = geometry(dims)?;
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(forward(crate::cpu_values::slice(OP, s, l)?, planes, h, w))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(forward(crate::cpu_values::slice(OP, s, l)?, planes, h, w))
            }
            _ => candle_core::bail!("{OP}: f32 or f64 only"),
        };
        Ok((out, Shape::from((dims[0], dims[1], h / 2, w / 2))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        profile::timed(OP, Pass::Backward, x.device(), || {
            let dx = match x.dtype() {
                DType::F32 => input_grad::<f32>(x, y, dy)?,
                DType::F64 => input_grad::<f64>(x, y, dy)?,
                other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
            };
            Ok(Some(dx))
        })
    }
}

/// The input gradient as a CPU tensor of `x`'s shape.
fn input_grad<T: Elem + candle_core::WithDType>(
    x: &Tensor,
    y: &Tensor,
    dy: &Tensor,
) -> Result<Tensor> {
    let (planes, h, w) = geometry(x.dims())?;
    let dx = with_values::<T, _, 3>(OP, [x, y, dy], |[xv, yv, gv]| {
        backward(xv, yv, gv, planes, h, w)
    })?;
    Tensor::from_vec(dx, x.shape(), &Device::Cpu)
}

/// Whether `METRICUNET_CANDLE_POOL=1` asks for the tensor form (side-by-side runs).
fn candle_pool() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_flag(&FLAG, "METRICUNET_CANDLE_POOL", false)
}

/// The 2 x 2 max-pool with stride 2 of `x (N, C, H, W)` (H and W even): `(N, C, H/2, W/2)`,
/// with the gradient of the tensor form (module doc). The op of this module for f32 and f64
/// CPU tensors, else [`max_pool_2x2_tensor`].
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    profile::timed(OP, Pass::Forward, x.device(), || {
        geometry(x.dims())?;
        let op = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
        if op && !candle_pool() {
            dense(x)?.apply_op1(MaxPool2x2)
        } else {
            max_pool_2x2_tensor(x)
        }
    })
}

/// The same pooling as candle tensor ops (any device and float dtype, candle's autograd):
/// `reshape (N, C, H/2, 2, W/2, 2)`, then the maximum over the two window axes.
pub fn max_pool_2x2_tensor(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    geometry(x.dims())?;
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_values::testing::flat;
    use crate::testing::{check_gradient, random, weighted_sum};

    /// Values and gradient equal to the tensor form, f64, with ties (ReLU zeros, repeated
    /// values) and for a batch of planes smaller and one larger than a task.
    #[test]
    fn same_as_the_tensor_form() {
        for (k, shape) in [[1, 1, 2, 2], [2, 3, 4, 6], [3, 5, 64, 64]]
            .into_iter()
            .enumerate()
        {
            let len: usize = shape.iter().product();
            // ReLU-like zeros and values rounded to 0.25, so that many windows tie
            let v: Vec<f64> = random(len, 40 + k as u64)
                .into_iter()
                .map(|r| (r * 4.0).round().max(0.0) / 4.0)
                .collect();
            let x = candle_core::Var::from_vec(v, &shape[..], &Device::Cpu).expect("x");
            let up = Tensor::from_vec(
                random(len / 4, 50 + k as u64),
                (shape[0], shape[1], shape[2] / 2, shape[3] / 2),
                &Device::Cpu,
            )
            .expect("up");
            let run = |ours: bool| {
                let y = if ours {
                    max_pool_2x2(x.as_tensor())
                } else {
                    max_pool_2x2_tensor(x.as_tensor())
                }
                .expect("pool");
                let g = (&y * &up)
                    .and_then(|p| p.sum_all())
                    .and_then(|l| l.backward())
                    .expect("backward");
                [flat(&y), flat(g.get(x.as_tensor()).expect("dx"))]
            };
            // bit for bit: the same comparisons pick the same values
            let (ours, tensor_form) = (run(true), run(false));
            assert_eq!(ours[0], tensor_form[0], "output {shape:?}");
            assert_eq!(ours[1], tensor_form[1], "d x {shape:?}");
            assert!(ours[1].iter().filter(|g| **g != 0.0).count() >= len / 4);
        }
    }

    /// A hand-computed window: maximum 3 at one position, a tie of 2s in the other window.
    #[test]
    fn hand_computed_windows() {
        let x = candle_core::Var::from_vec(
            vec![1.0f32, 3.0, 2.0, 2.0, -1.0, 0.0, 2.0, -5.0],
            (1, 1, 2, 4),
            &Device::Cpu,
        )
        .expect("x");
        let y = max_pool_2x2(x.as_tensor()).expect("pool");
        assert_eq!(flat32(&y), vec![3.0, 2.0]);
        let dy = Tensor::from_vec(vec![10.0f32, 7.0], (1, 1, 1, 2), &Device::Cpu).expect("dy");
        let g = (&y * &dy)
            .and_then(|p| p.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        assert_eq!(
            flat32(g.get(x.as_tensor()).expect("dx")),
            vec![0.0, 10.0, 7.0, 7.0, 0.0, 0.0, 7.0, 0.0]
        );
    }

    /// A NaN anywhere in a window makes that window's maximum NaN (not hidden), and only it.
    #[test]
    fn nan_is_not_hidden() {
        for pos in 0..4 {
            let mut v = vec![1.0f32, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0];
            let (r, c) = (pos / 2, pos % 2);
            v[r * 4 + c] = f32::NAN;
            let x = Tensor::from_vec(v, (1, 1, 2, 4), &Device::Cpu).expect("x");
            let y = flat32(&max_pool_2x2(&x).expect("pool"));
            assert!(y[0].is_nan(), "NaN at window position {pos}: {y:?}");
            assert_eq!(y[1], 8.0);
        }
    }

    #[test]
    fn odd_sizes_are_refused_with_the_shape() {
        let x = Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).expect("x");
        let e = max_pool_2x2(&x).expect_err("odd height").to_string();
        assert!(e.contains("[1, 2, 3, 4]") && e.contains("even"), "{e}");
    }

    #[test]
    fn gradient_by_finite_differences() {
        let x = random(2 * 3 * 4 * 6, 61);
        check_gradient("max_pool_2x2", &x, &[2, 3, 4, 6], 144, &|t| {
            weighted_sum(&max_pool_2x2(t).expect("pool"), 62)
        });
    }

    fn flat32(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|f| f.to_vec1::<f32>())
            .expect("values")
    }
}
