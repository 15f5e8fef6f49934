//! BatchNorm in training mode followed by ReLU, fused into one CPU op with its own backward.
//!
//! candle's `BatchNorm::forward_train` copies the input to channel-major order, builds the
//! centred input, its square, the normalised and the scaled and shifted tensor (each a full
//! copy, each kept by the autograd graph), and ReLU adds one more; the backward walks all of
//! them. Here the forward is one pass over the input (after one pass for the statistics) and
//! the graph keeps only the input and the output; the backward is the closed form of the
//! BatchNorm gradient (two passes):
//!
//! ```text
//! g      = dL/dy * [y > 0]
//! dbeta  = sum g,   dgamma = sum g * xhat,   xhat = (x - mean) / sqrt(var + eps)
//! dx     = gamma / sqrt(var + eps) * (g - dbeta / M - xhat * dgamma / M)
//! ```
//!
//! over the `M = N H W` values of each channel. Statistics are accumulated in f64. A bias of
//! the convolution before the BatchNorm is folded in: in training mode a per-channel constant
//! only moves the batch mean, so the output does not depend on it and its exact gradient is 0
//! (candle computed that zero, up to rounding, as a strided reduction over the whole output
//! gradient: 8 % of a training step); it still enters the running mean. The running
//! statistics are updated as candle does (momentum, unbiased variance). Checked against
//! candle's BatchNorm + ReLU (values and gradients) below and by finite differences in
//! `tests/finite_differences.rs`. On other devices, and with `METRICUNET_CANDLE_BN=1`, candle's
//! own ops are used.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, Var, WithDType};
use candle_nn::{BatchNorm, ModuleT};
use rayon::prelude::*;

use crate::conv_cpu::Elem;
use crate::cpu_values::{dense, env_flag, with_values, written_in_full};
use crate::profile::{self, Pass};
use crate::simd::vectorised;
use std::mem::MaybeUninit;

/// Per-channel batch statistics, kept by the op for its backward.
pub(crate) struct BnRelu {
    pub(crate) mean: Vec<f64>,
    pub(crate) invstd: Vec<f64>,
    /// Values per (image, channel) block.
    pub(crate) hw: usize,
}

impl BnRelu {
    /// From a batch's per-channel `mean` and biased `var` (in f64), the BatchNorm's `eps` and
    /// the values per (image, channel) block.
    pub(crate) fn new(mean: Vec<f64>, var: &[f64], eps: f64, hw: usize) -> Self {
        BnRelu {
            invstd: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
            mean,
            hw,
        }
    }
}

/// Whether `METRICUNET_CANDLE_BN=1` asks for candle's BatchNorm (for side-by-side runs).
pub(crate) fn candle_bn() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_flag(&FLAG, "METRICUNET_CANDLE_BN", false)
}

const OP: &str = "bn-relu";

/// The profile's name of training-mode BatchNorm + ReLU, forward and backward, CPU and CUDA.
pub(crate) const PROFILE_NAME: &str = "batch-norm-relu";

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    crate::cpu_values::slice(OP, s, l)
}

/// Independent partial sums per reduction: eight lanes break the chain of dependent f64
/// additions (one add latency per value) so the compiler can vectorise the sums.
const LANES: usize = 8;

/// `sum f(the planes' values at j)` over the positions `j` of `K` planes of equal length,
/// accumulated in [`LANES`] lanes (value `j` in lane `j % LANES`, the last `len % LANES` in
/// lane 0). Whole chunks of `LANES` values are read as arrays (one length check per chunk),
/// so the lanes are one vector. One sum per pass: with two sums in one loop the compiler
/// packed each lane's pair into a vector instead (two values per instruction, not eight).
#[inline(always)]
fn lane_sum<T: Copy, const K: usize>(planes: [&[T]; K], f: impl Fn([T; K]) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let len = planes.first().map_or(0, |p| p.len());
    let chunks = len / LANES;
    let planes = planes.map(|p| &p[..len]);
    for c in 0..chunks {
        // one chunk of each plane as an array (one length check per chunk, none per value)
        let values: [[T; LANES]; K] = std::array::from_fn(|k| {
            let chunk = &planes[k][c * LANES..][..LANES];
            std::array::from_fn(|l| chunk[l])
        });
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(std::array::from_fn(|k| values[k][l]));
        }
    }
    for j in chunks * LANES..len {
        acc[0] += f(planes.map(|p| p[j]));
    }
    acc.iter().sum()
}

/// Per-channel mean and biased variance of `x` (N, C, H*W), in f64.
pub(crate) fn statistics<T: Elem + Into<f64>>(
    x: &[T],
    c: usize,
    hw: usize,
) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / (c * hw).max(1);
    let m = (n * hw).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (s, s2) = vectorised(
                #[inline(always)]
                || channel_sums(x, (c, hw, ch)),
            );
            let mean = s / m;
            (mean, (s2 / m - mean * mean).max(0.0))
        })
        .unzip()
}

/// `(sum x, sum x^2)` over channel `ch` of `x` (N, C, H*W); inlined into each instruction
/// set's copy ([`vectorised`]).
#[inline(always)]
fn channel_sums<T: Elem + Into<f64>>(x: &[T], (c, hw, ch): (usize, usize, usize)) -> (f64, f64) {
    let n = x.len() / (c * hw).max(1);
    let (mut s, mut s2) = (0.0f64, 0.0f64);
    for i in 0..n {
        let xb = &x[(i * c + ch) * hw..][..hw];
        s += lane_sum([xb], |[v]| v.into());
        s2 += lane_sum([xb], |[v]| {
            let v: f64 = v.into();
            v * v
        });
    }
    (s, s2)
}

/// `y = max(0, x a + b)` over one plane; inlined into each instruction set's copy
/// ([`vectorised`]).
#[inline(always)]
fn affine_relu_plane<T: Float>(y: &mut [MaybeUninit<T>], x: &[T], a: f64, b: f64) {
    for (o, &v) in y.iter_mut().zip(x) {
        o.write(T::from_f64((v.into() * a + b).max(0.0)));
    }
}

/// Over the values of channel `ch` of `(N, C, H*W)` tensors, with `g = dy` where the ReLU's
/// output `y > 0` and 0 elsewhere: `(sum g, sum g * (x - centre))`.
#[inline(always)]
fn masked_sums<T: Float>(
    x: &[T],
    y: &[T],
    dy: &[T],
    (c, hw, ch): (usize, usize, usize),
    centre: f64,
) -> (f64, f64) {
    let n = x.len() / (c * hw).max(1);
    let (mut sg, mut sgx) = (0.0f64, 0.0f64);
    for i in 0..n {
        let at = (i * c + ch) * hw;
        let (xb, yb, dyb) = (&x[at..][..hw], &y[at..][..hw], &dy[at..][..hw]);
        let g = |y: T, dy: T| -> f64 {
            if y.into() > 0.0 {
                dy.into()
            } else {
                0.0
            }
        };
        sg += lane_sum([yb, dyb], |[y, dy]| g(y, dy));
        sgx += lane_sum([xb, yb, dyb], |[x, y, dy]| g(y, dy) * (x.into() - centre));
    }
    (sg, sgx)
}

/// The input gradient of ReLU(BatchNorm(x)) over one plane: `dx = k (g - mb - xhat mg)` with
/// `g = dy` where `y > 0`, `xhat = (x - mu) is`; inlined into each instruction set's copy
/// ([`vectorised`]).
#[inline(always)]
fn bn_relu_grad_plane<T: Float>(
    dx: &mut [MaybeUninit<T>],
    [x, y, dy]: [&[T]; 3],
    [mu, is, k, mb, mg]: [f64; 5],
) {
    for (((o, &xv), &yv), &gv) in dx.iter_mut().zip(x).zip(y).zip(dy) {
        let g = if yv.into() > 0.0 { gv.into() } else { 0.0 };
        let xhat = (xv.into() - mu) * is;
        o.write(T::from_f64(k * (g - mb - xhat * mg)));
    }
}

/// The input gradient of `max(0, x k + b)` over one plane: `dy k` where `y > 0`, else 0;
/// inlined into each instruction set's copy ([`vectorised`]).
#[inline(always)]
fn relu_grad_plane<T: Float>(dx: &mut [MaybeUninit<T>], y: &[T], dy: &[T], k: f64) {
    for ((o, &yv), &gv) in dx.iter_mut().zip(y).zip(dy) {
        o.write(T::from_f64(if yv.into() > 0.0 {
            gv.into() * k
        } else {
            0.0
        }));
    }
}

/// f32 or f64 (`WithDType::from_f64` converts back).
pub(crate) trait Float: Elem + Into<f64> + WithDType {}
impl Float for f32 {}
impl Float for f64 {}

/// A per-channel op of an `(N, C, H, W)` input and two per-channel operands, with its own
/// backward on the CPU; [`Fused`] makes it a candle op.
pub(crate) trait ChannelOp: Send + Sync {
    const NAME: &'static str;
    /// The output for the input `x` and the operands `a`, `b`.
    fn forward<T: Float>(&self, x: &[T], a: &[T], b: &[T]) -> Vec<T>;
    /// The gradients of `x`, `a` and `b` from the input, `a`, the output `y` and its gradient.
    fn backward<T: Float>(&self, x: &[T], a: &[T], y: &[T], dy: &[T]) -> [Vec<T>; 3];
}

/// A [`ChannelOp`] as a candle `CustomOp3` (CPU, f32 or f64).
struct Fused<O>(O);

impl<O: ChannelOp> CustomOp3 for Fused<O> {
    fn name(&self) -> &'static str {
        O::NAME
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
        let out = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.0.forward::<f32>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.0.forward::<f64>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            _ => candle_core::bail!("{}: f32 or f64 only", O::NAME),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::timed(O::NAME, Pass::Backward, x.device(), || {
            self.backward(x, a, b, res, grad)
        })
    }
}

impl<O: ChannelOp> Fused<O> {
    fn backward(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // `grad` may be strided: `with_values` makes it contiguous
        let t = [x, a, res, grad];
        let [dx, da, db] = match x.dtype() {
            DType::F32 => with_values::<f32, _, 4>(O::NAME, t, |[x, a, y, dy]| {
                self.0.backward(x, a, y, dy).map(flat_tensor)
            })?,
            DType::F64 => with_values::<f64, _, 4>(O::NAME, t, |[x, a, y, dy]| {
                self.0.backward(x, a, y, dy).map(flat_tensor)
            })?,
            other => candle_core::bail!("{}: f32 or f64 only, got {other:?}", O::NAME),
        };
        Ok((
            Some(dx?.reshape(x.shape())?),
            Some(da?.reshape(a.shape())?),
            Some(db?.reshape(b.shape())?),
        ))
    }
}

/// A CPU vector as a 1-D tensor.
fn flat_tensor<T: WithDType>(v: Vec<T>) -> Result<Tensor> {
    let len = v.len();
    Tensor::from_vec(v, len, &candle_core::Device::Cpu)
}

impl ChannelOp for BnRelu {
    const NAME: &'static str = PROFILE_NAME;

    /// `gb`: the BatchNorm weight, then the convolution bias (`2 x C`).
    fn forward<T: Float>(&self, x: &[T], gb: &[T], beta: &[T]) -> Vec<T> {
        let c = self.mean.len();
        let gamma = &gb[..c];
        let fill = |y: &mut [MaybeUninit<T>]| {
            y.par_chunks_mut(self.hw)
                .zip(x.par_chunks(self.hw))
                .enumerate()
                .for_each(|(block, (yb, xb))| {
                    let ch = block % c;
                    let scale = gamma[ch].into() * self.invstd[ch];
                    let shift = beta[ch].into() - self.mean[ch] * scale;
                    vectorised(
                        #[inline(always)]
                        || affine_relu_plane(yb, xb, scale, shift),
                    )
                })
        };
        // SAFETY: the planes cover the output, each written in full
        unsafe { written_in_full(x.len(), fill) }
    }

    /// (dx, [dgamma, dbias = 0], dbeta).
    fn backward<T: Float>(&self, x: &[T], gb: &[T], y: &[T], dy: &[T]) -> [Vec<T>; 3] {
        let (c, hw) = (self.mean.len(), self.hw);
        let gamma = &gb[..c];
        let n = x.len() / (c * hw).max(1);
        let m = (n * hw).max(1) as f64;
        // per channel: sum g, sum g * xhat (g = dy where y > 0)
        let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (sg, sgx) = vectorised(
                    #[inline(always)]
                    || masked_sums(x, y, dy, (c, hw, ch), self.mean[ch]),
                );
                (sg, sgx * self.invstd[ch])
            })
            .unzip();
        let fill = |dx: &mut [MaybeUninit<T>]| {
            dx.par_chunks_mut(hw).enumerate().for_each(|(block, out)| {
                let ch = block % c;
                let at = block * hw;
                let (mu, is) = (self.mean[ch], self.invstd[ch]);
                let k = gamma[ch].into() * is;
                let (mb, mg) = (dbeta[ch] / m, dgamma[ch] / m);
                let (xb, yb, dyb) = (&x[at..][..hw], &y[at..][..hw], &dy[at..][..hw]);
                vectorised(
                    #[inline(always)]
                    || bn_relu_grad_plane(out, [xb, yb, dyb], [mu, is, k, mb, mg]),
                )
            })
        };
        // SAFETY: the planes cover the input gradient, each written in full
        let dx = unsafe { written_in_full(x.len(), fill) };
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        let mut dgb = cast(dgamma);
        dgb.resize(2 * c, T::default());
        [dx, dgb, cast(dbeta)]
    }
}

/// Inference-mode BatchNorm + ReLU as one pass: `y = max(0, x * scale[c] + shift[c])` with
/// the per-channel `scale = gamma / sqrt(running_var + eps)` and `shift = beta + (bias -
/// running_mean) * scale` computed by candle from the parameters (so gradients still reach
/// them through the tiny `(C)` tensors). candle's eval BatchNorm is four broadcast passes over
/// the activation plus one for the bias and one for the ReLU (about 5 % of a whole-case
/// inference).
struct AffineRelu {
    hw: usize,
}

impl ChannelOp for AffineRelu {
    const NAME: &'static str = "affine-relu";

    fn forward<T: Float>(&self, x: &[T], scale: &[T], shift: &[T]) -> Vec<T> {
        let c = scale.len();
        let fill = |y: &mut [MaybeUninit<T>]| {
            y.par_chunks_mut(self.hw)
                .zip(x.par_chunks(self.hw))
                .enumerate()
                .for_each(|(block, (yb, xb))| {
                    let (a, b) = (scale[block % c].into(), shift[block % c].into());
                    vectorised(
                        #[inline(always)]
                        || affine_relu_plane(yb, xb, a, b),
                    )
                })
        };
        // SAFETY: the planes cover the output, each written in full
        unsafe { written_in_full(x.len(), fill) }
    }

    /// (dx, dscale, dshift).
    fn backward<T: Float>(&self, x: &[T], scale: &[T], y: &[T], dy: &[T]) -> [Vec<T>; 3] {
        let (c, hw) = (scale.len(), self.hw);
        let (dshift, dscale): (Vec<f64>, Vec<f64>) = (0..c)
            .into_par_iter()
            .map(|ch| {
                vectorised(
                    #[inline(always)]
                    || masked_sums(x, y, dy, (c, hw, ch), 0.0),
                )
            })
            .unzip();
        let fill = |dx: &mut [MaybeUninit<T>]| {
            dx.par_chunks_mut(hw).enumerate().for_each(|(block, out)| {
                let k = scale[block % c].into();
                let at = block * hw;
                vectorised(
                    #[inline(always)]
                    || relu_grad_plane(out, &y[at..][..hw], &dy[at..][..hw], k),
                )
            })
        };
        // SAFETY: the planes cover the input gradient, each written in full
        let dx = unsafe { written_in_full(x.len(), fill) };
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect::<Vec<T>>();
        [dx, cast(dscale), cast(dshift)]
    }
}

/// Inference mode through [`AffineRelu`] (CPU, f32 / f64).
fn eval_batch_norm_relu(
    x: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    gamma: &Tensor,
    beta: &Tensor,
) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let dt = x.dtype();
    let rm = bn.running_mean().detach().to_dtype(dt)?;
    let rv = bn.running_var().detach().to_dtype(dt)?;
    if gamma.dims() != [c] || rm.dims() != [c] || bias.is_some_and(|b| b.dims() != [c]) {
        candle_core::bail!(
            "bn-relu: {c} channels in the input, {:?} in the BatchNorm, bias {:?}",
            gamma.dims(),
            bias.map(|b| b.dims().to_vec())
        )
    }
    let scale = (gamma / (rv + bn.eps())?.sqrt()?)?;
    let centre = match bias {
        Some(b) => (b - &rm)?,
        None => rm.neg()?,
    };
    let shift = (beta + (centre * &scale)?)?;
    dense(x)?.apply_op3(&scale, &shift, Fused(AffineRelu { hw: h * w }))
}

/// ReLU(BatchNorm(x)) for an `(N, C, H, W)` input; `train` uses (and updates) batch
/// statistics as candle's `BatchNorm::forward_t` does.
pub fn batch_norm_relu(x: &Tensor, bn: &BatchNorm, train: bool) -> Result<Tensor> {
    bias_batch_norm_relu(x, None, bn, train)
}

/// ReLU(BatchNorm(x + bias)) (`bias` per channel: a convolution's) for an `(N, C, H, W)`
/// input; `train` uses (and updates) batch statistics as candle's `BatchNorm::forward_t`
/// does.
pub fn bias_batch_norm_relu(
    x: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    train: bool,
) -> Result<Tensor> {
    profile::timed(PROFILE_NAME, Pass::Forward, x.device(), || {
        forward_op(x, bias, bn, train)
    })
}

fn forward_op(x: &Tensor, bias: Option<&Tensor>, bn: &BatchNorm, train: bool) -> Result<Tensor> {
    let on_device = x.device().is_cpu() || (train && cfg!(feature = "cuda") && cuda_switch());
    let fused = !candle_bn()
        && on_device
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.rank() == 4
        && bn.weight_and_bias().is_some();
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| fused) else {
        let x = match bias {
            Some(b) => x.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
            None => x.clone(),
        };
        return bn.forward_t(&x, train)?.relu();
    };
    if !train {
        return eval_batch_norm_relu(x, bias, bn, gamma, beta);
    }
    let (n, c, h, w) = x.dims4()?;
    if gamma.dims() != [c]
        || bn.running_mean().dims() != [c]
        || bias.is_some_and(|b| b.dims() != [c])
    {
        candle_core::bail!(
            "bn-relu: {c} channels in the input, {:?} in the BatchNorm, bias {:?}",
            gamma.dims(),
            bias.map(|b| b.dims().to_vec())
        )
    }
    let x = dense(x)?;
    let m = (n * h * w) as f64;
    // the weight and the bias as one (2, C) operand (candle's custom ops take three)
    let gb = match bias {
        Some(b) => Tensor::stack(&[gamma, b], 0)?.contiguous()?,
        None => Tensor::stack(&[gamma, &gamma.zeros_like()?], 0)?.contiguous()?,
    };
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        let stats = crate::cuda::bn_relu::statistics(&x)?;
        update_running(bn, &stats.get(0)?, &stats.get(1)?, bias, m)?;
        let op = crate::cuda::bn_relu::BnReluCuda {
            stats,
            eps: bn.eps(),
        };
        return x.apply_op3(&gb, &dense(beta)?, op);
    }
    let (mean, var) = match x.dtype() {
        DType::F32 => with_values::<f32, _, 1>(OP, [&x], |[v]| statistics(v, c, h * w))?,
        _ => with_values::<f64, _, 1>(OP, [&x], |[v]| statistics(v, c, h * w))?,
    };
    update_running_cpu(bn, &mean, &var, bias, m)?;
    let op = BnRelu::new(mean, &var, bn.eps(), h * w);
    x.apply_op3(&gb, &dense(beta)?, Fused(op))
}

/// Whether `METRICUNET_CUDA_BN=1` asks for the CUDA kernels (always `false` without `cuda`).
fn cuda_switch() -> bool {
    #[cfg(feature = "cuda")]
    return crate::cuda::bn_relu::enabled();
    #[cfg(not(feature = "cuda"))]
    false
}

/// [`update_running`] from statistics computed on the CPU (f64 per channel).
pub(crate) fn update_running_cpu(
    bn: &BatchNorm,
    mean: &[f64],
    var: &[f64],
    bias: Option<&Tensor>,
    m: f64,
) -> Result<()> {
    let dev = &candle_core::Device::Cpu;
    let (mean, var) = (
        Tensor::from_slice(mean, mean.len(), dev)?,
        Tensor::from_slice(var, var.len(), dev)?,
    );
    update_running(bn, &mean, &var, bias, m)
}

/// The running statistics updated as candle updates them, from the batch's per-channel `mean`
/// and biased `var` over `m = N H W` values: the bias moves the mean; the variance enters
/// unbiased.
pub(crate) fn update_running(
    bn: &BatchNorm,
    mean: &Tensor,
    var: &Tensor,
    bias: Option<&Tensor>,
    m: f64,
) -> Result<()> {
    let momentum = bn.momentum();
    let rm = Var::from_tensor(bn.running_mean())?;
    let rv = Var::from_tensor(bn.running_var())?;
    let mut batch_mean = mean.to_dtype(rm.dtype())?;
    if let Some(b) = bias {
        batch_mean = (batch_mean + b.detach().to_dtype(rm.dtype())?)?;
    }
    let var_t = var.to_dtype(rv.dtype())?;
    rm.set(&((rm.as_tensor().detach() * (1.0 - momentum))? + (batch_mean * momentum)?)?)?;
    let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    rv.set(&((rv.as_tensor().detach() * (1.0 - momentum))? + (var_t * (momentum * unbiased))?)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_values::testing::{assert_close, flat};
    use candle_core::Device;
    use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Values, gradients (input, weight, bias) and running statistics against candle's
    /// BatchNorm + ReLU, in f64.
    #[test]
    fn same_as_candle_batch_norm_and_relu() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (n, c, h, w) = (3, 4, 5, 6);
        let make = |vars: &VarMap| {
            let vb = VarBuilder::from_varmap(vars, DType::F64, &Device::Cpu);
            candle_nn::batch_norm(c, BatchNormConfig::default(), vb).expect("bn")
        };
        let (va, vb) = (VarMap::new(), VarMap::new());
        let (bn_a, bn_b) = (make(&va), make(&vb));
        // the same non-trivial weight and bias in both
        let gw: Vec<f64> = (0..c).map(|_| rng.random_range(0.5..1.5)).collect();
        let gb: Vec<f64> = (0..c).map(|_| rng.random_range(-0.5..0.5)).collect();
        for bn in [&bn_a, &bn_b] {
            let (g, b) = bn.weight_and_bias().expect("affine");
            Var::from_tensor(g)
                .unwrap()
                .set(&Tensor::new(gw.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            Var::from_tensor(b)
                .unwrap()
                .set(&Tensor::new(gb.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let xs: Vec<f64> = (0..n * c * h * w)
            .map(|_| rng.random_range(-2.0..3.0))
            .collect();
        let up: Vec<f64> = (0..n * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let up = Tensor::from_vec(up, (n, c, h, w), &Device::Cpu).unwrap();
        let mut results = Vec::new();
        for (fused, bn) in [(true, &bn_a), (false, &bn_b)] {
            let x = Var::from_vec(xs.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let y = if fused {
                batch_norm_relu(x.as_tensor(), bn, true).unwrap()
            } else {
                bn.forward_t(x.as_tensor(), true).unwrap().relu().unwrap()
            };
            let loss = (&y * &up).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let (g, b) = bn.weight_and_bias().unwrap();
            results.push([
                flat(&y),
                flat(grads.get(x.as_tensor()).unwrap()),
                flat(grads.get(g).unwrap()),
                flat(grads.get(b).unwrap()),
                flat(bn.running_mean()),
                flat(bn.running_var()),
            ]);
        }
        let names = [
            "output",
            "dx",
            "dgamma",
            "dbeta",
            "running mean",
            "running var",
        ];
        assert_close(&names, &results[0], &results[1], 1e-10);
        // the running statistics moved
        assert!(results[0][5].iter().any(|v| v.abs() > 1e-3));
    }

    /// Inference mode (with a convolution bias): values and the gradients of the input,
    /// weight, bias of the BatchNorm and convolution bias against candle's bias add,
    /// BatchNorm (running statistics) and ReLU, in f64.
    #[test]
    fn eval_mode_same_as_candle() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (n, c, h, w) = (2, 3, 4, 5);
        let mut r = |len: usize, lo: f64, hi: f64| -> Vec<f64> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let (gw, gb, rm, rv) = (
            r(c, 0.5, 1.5),
            r(c, -0.5, 0.5),
            r(c, -1.0, 1.0),
            r(c, 0.2, 2.0),
        );
        let (xs, bs, up) = (
            r(n * c * h * w, -2.0, 3.0),
            r(c, -0.5, 0.5),
            r(n * c * h * w, -1.0, 1.0),
        );
        let up = Tensor::from_vec(up, (n, c, h, w), &Device::Cpu).unwrap();
        let mut results = Vec::new();
        for fused in [true, false] {
            let vars = VarMap::new();
            let vb = VarBuilder::from_varmap(&vars, DType::F64, &Device::Cpu);
            let bn = candle_nn::batch_norm(c, BatchNormConfig::default(), vb).expect("bn");
            let (g, b) = bn.weight_and_bias().expect("affine");
            let set = |t: &Tensor, v: &[f64]| {
                Var::from_tensor(t)
                    .unwrap()
                    .set(&Tensor::new(v, &Device::Cpu).unwrap())
                    .unwrap()
            };
            set(g, &gw);
            set(b, &gb);
            set(bn.running_mean(), &rm);
            set(bn.running_var(), &rv);
            let x = Var::from_vec(xs.clone(), (n, c, h, w), &Device::Cpu).unwrap();
            let bias = Var::from_vec(bs.clone(), c, &Device::Cpu).unwrap();
            let y = if fused {
                bias_batch_norm_relu(x.as_tensor(), Some(bias.as_tensor()), &bn, false).unwrap()
            } else {
                let xb = x
                    .as_tensor()
                    .broadcast_add(&bias.as_tensor().reshape((1, c, 1, 1)).unwrap())
                    .unwrap();
                bn.forward_t(&xb, false).unwrap().relu().unwrap()
            };
            let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            results.push([
                flat(&y),
                flat(grads.get(x.as_tensor()).unwrap()),
                flat(grads.get(g).unwrap()),
                flat(grads.get(b).unwrap()),
                flat(grads.get(bias.as_tensor()).unwrap()),
                flat(bn.running_mean()),
            ]);
        }
        let names = ["output", "dx", "dgamma", "dbeta", "dbias", "running mean"];
        assert_close(&names, &results[0], &results[1], 1e-10);
        // some outputs clipped by the ReLU, some not
        assert!(results[0][0].contains(&0.0) && results[0][0].iter().any(|v| *v > 0.0));
        // inference leaves the running statistics alone
        assert_eq!(results[0][5], rm);
    }

    /// The passes and sums compiled for each instruction set give the same bits (f32 and f64,
    /// a plane whose size is not a multiple of the sums' lanes).
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        use crate::simd::testing::{assert_same_bits, at_every_level};
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (n, c, hw) = (2, 3, 37);
        let mut draw = |lo: f64, hi: f64, k: usize| -> Vec<f64> {
            (0..k).map(|_| rng.random_range(lo..hi)).collect()
        };
        let x = draw(-2.0, 3.0, n * c * hw);
        let dy = draw(-1.0, 1.0, n * c * hw);
        let gb = draw(0.5, 1.5, 2 * c);
        let beta = draw(-0.5, 0.5, c);
        fn run<T: Float>(
            x: &[T],
            dy: &[T],
            gb: &[T],
            beta: &[T],
            c: usize,
            hw: usize,
        ) -> Vec<Vec<f64>> {
            let wide = |v: &[T]| v.iter().map(|&a| a.into()).collect::<Vec<f64>>();
            let (mean, var) = statistics(x, c, hw);
            let op = BnRelu::new(mean.clone(), &var, 1e-5, hw);
            let y = op.forward(x, gb, beta);
            let [dx, dgb, dbeta] = op.backward(x, gb, &y, dy);
            let affine = AffineRelu { hw };
            let ya = affine.forward(x, &gb[..c], beta);
            let [dxa, dscale, dshift] = affine.backward(x, &gb[..c], &ya, dy);
            let mut out = vec![mean, var];
            out.extend(
                [y, dx, dgb, dbeta, ya, dxa, dscale, dshift]
                    .iter()
                    .map(|v| wide(v)),
            );
            out
        }
        assert_same_bits(
            "batch-norm-relu f64",
            &at_every_level(|| run(&x, &dy, &gb, &beta, c, hw)),
        );
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x, dy, gb, beta) = (f(&x), f(&dy), f(&gb), f(&beta));
        assert_same_bits(
            "batch-norm-relu f32",
            &at_every_level(|| run(&x, &dy, &gb, &beta, c, hw)),
        );
    }
}
