//! A "same" convolution followed by training-mode BatchNorm + ReLU as one CPU op: the
//! [`crate::conv`] kernels and the [`crate::bn_relu`] passes, with one node in candle's graph
//! instead of two.
//!
//! Why: candle's backward stores the gradient of every node it passes as `zeros_like` plus an
//! `add` (its gradient store starts each entry at zero): a full extra allocation, zero-fill and
//! pass over the activation per node. With the convolution and the BatchNorm as one node the
//! gradient of the convolution's output stays inside the op: the BatchNorm backward hands it
//! straight to the convolution's input and weight gradients. The op keeps the convolution's
//! output and the batch statistics (as the two ops' graph kept them) and updates the running
//! statistics as [`crate::bn_relu`] does. Values and gradients are those of
//! [`crate::conv::conv2d_same`] (or [`crate::conv::conv2d_same_cat`]) followed by
//! [`crate::bn_relu::bias_batch_norm_relu`]: the same kernels in the same order, which the tests
//! below check value for value.
//!
//! The op's three operands: the input, the kernel and the per-channel parameters as one
//! `(3, C)` tensor `[gamma; bias; beta]`; for the decoder's convolution of the skip
//! concatenation `[a, b]`: `a`, `b` and one flat tensor `[kernel; gamma; bias; beta]` (candle's
//! custom ops take three operands; the kernel's gradient goes back through the concatenation).
//! Inference, other devices and dtypes, `METRICUNET_CANDLE_CONV=1`, `METRICUNET_CANDLE_BN=1`
//! and `METRICUNET_FUSED_CONV_BN=0` take the two separate ops.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use candle_nn::BatchNorm;

use crate::bn_relu::{self, BnRelu, ChannelOp, Float};
use crate::conv::{self, cat_geometry, geometry};
use crate::conv_cpu::Geometry;
use crate::cpu_values::{dense, env_flag, slice, with_values};
use crate::profile::{self, Pass};

const OP: &str = "conv-bn-relu";

/// What the forward keeps for the backward.
struct Kept {
    /// The convolution's output (N, C, H, W).
    z: Tensor,
    /// Its per-channel batch statistics.
    bn: BnRelu,
    /// The biased batch variance (for the running statistics).
    var: Vec<f64>,
}

type Shared = Arc<Mutex<Option<Arc<Kept>>>>;

/// The input: one tensor, or the concatenation of two whose first has `c1` channels (the
/// kernel, of shape `kernel`, then leads the parameter operand).
#[derive(Clone, Copy)]
enum Input {
    One,
    Cat { c1: usize, kernel: [usize; 4] },
}

struct ConvBnRelu {
    input: Input,
    eps: f64,
    kept: Shared,
}

impl ConvBnRelu {
    /// The convolution's geometry from the operands' shapes.
    fn geometry(&self, d1: &[usize], d2: &[usize]) -> Result<Geometry> {
        match self.input {
            Input::One => geometry(d1, d2),
            Input::Cat { c1, kernel } => {
                let (g, first) = cat_geometry(d1, d2, &kernel)?;
                if first != c1 {
                    candle_core::bail!("{OP}: {first} channels in the first input, {c1} expected")
                }
                Ok(g)
            }
        }
    }

    /// Values of the kernel before the parameters in the third operand (0 for one input).
    fn kernel_len(&self) -> usize {
        match self.input {
            Input::One => 0,
            Input::Cat { kernel, .. } => kernel.iter().product(),
        }
    }

    fn kept(&self) -> Result<Arc<Kept>> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        match kept.as_ref() {
            Some(k) => Ok(k.clone()),
            None => candle_core::bail!("{OP}: backward without a forward"),
        }
    }

    /// Forward of one dtype: the output, and what the backward needs.
    fn forward<T: Float>(
        &self,
        s: [(&CpuStorage, &Layout); 3],
        g: &Geometry,
    ) -> Result<(Vec<T>, Kept)> {
        let [(s1, l1), (s2, l2), (s3, l3)] = s;
        let (v1, v2, params) = (
            slice::<T>(OP, s1, l1)?,
            slice::<T>(OP, s2, l2)?,
            slice(OP, s3, l3)?,
        );
        let kl = self.kernel_len();
        let c = g.cout;
        if params.len() != kl + 3 * c {
            candle_core::bail!(
                "{OP}: {} parameter values, {} expected",
                params.len(),
                kl + 3 * c
            )
        }
        let z = match self.input {
            Input::One => conv::forward_parts(&[(v1, g.cin)], v2, g),
            Input::Cat { c1, .. } => {
                conv::forward_parts(&[(v1, c1), (v2, g.cin - c1)], &params[..kl], g)
            }
        };
        let hw = g.h * g.w;
        let (mean, var) = bn_relu::statistics(&z, c, hw);
        let bn = BnRelu::new(mean, &var, self.eps, hw);
        let y = bn.forward(&z, &params[kl..kl + 2 * c], &params[kl + 2 * c..]);
        let z = Tensor::from_vec(z, (g.batch, c, g.h, g.w), &Device::Cpu)?;
        Ok((y, Kept { z, bn, var }))
    }

    /// Backward of one dtype: the gradients of the three operands.
    fn backward<T: Float>(
        &self,
        [a1, a2, a3]: [&Tensor; 3],
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let kept = self.kept()?;
        let g = self.geometry(a1.dims(), a2.dims())?;
        let (kl, c) = (self.kernel_len(), g.cout);
        // the BatchNorm's backward: the gradient of the convolution's output, of gamma (and
        // the bias: 0) and of beta
        let [dz, dgb, dbeta] = with_values::<T, _, 4>(OP, [&kept.z, a3, y, dy], |[z, p, y, dy]| {
            kept.bn.backward(z, &p[kl..kl + 2 * c], y, dy)
        })?;
        // the convolution's input and kernel gradients from it
        let (hw, cin) = (g.h * g.w, g.cin);
        let input_grad = |w: &[T]| conv::input_grad(&dz, w, &g);
        // a gradient's values as a CPU tensor of its operand's shape
        let cpu = |v: Option<Vec<T>>, t: &Tensor| {
            v.map(|v| Tensor::from_vec(v, t.shape(), &Device::Cpu))
                .transpose()
        };
        let mut dparams: Vec<T> = Vec::with_capacity(kl + 3 * c);
        let (d1, d2) = match self.input {
            Input::One => {
                let dx = if a1.track_op() {
                    Some(with_values::<T, _, 1>(OP, [a2], |[w]| input_grad(w))?)
                } else {
                    None
                };
                let dw = if a2.track_op() {
                    Some(with_values::<T, _, 1>(OP, [a1], |[x]| {
                        conv::weight_grad_parts(&[(x, cin)], &dz, &g)
                    })?)
                } else {
                    None
                };
                (cpu(dx, a1)?, cpu(dw, a2)?)
            }
            Input::Cat { c1, .. } => {
                let c2 = cin - c1;
                let (da, db) = if a1.track_op() || a2.track_op() {
                    let full = with_values::<T, _, 1>(OP, [a3], |[p]| input_grad(&p[..kl]))?;
                    let (da, db) =
                        conv::split_channels(&full, [c1, c2], hw, [a1, a2].map(Tensor::track_op));
                    (cpu(da, a1)?, cpu(db, a2)?)
                } else {
                    (None, None)
                };
                if a3.track_op() {
                    let dw = with_values::<T, _, 2>(OP, [a1, a2], |[a, b]| {
                        conv::weight_grad_parts(&[(a, c1), (b, c2)], &dz, &g)
                    })?;
                    dparams.extend_from_slice(&dw);
                }
                (da, db)
            }
        };
        dparams.extend_from_slice(&dgb);
        dparams.extend_from_slice(&dbeta);
        let d3 = if a3.track_op() {
            Some(Tensor::from_vec(dparams, a3.shape(), &Device::Cpu)?)
        } else {
            None
        };
        Ok([d1, d2, d3])
    }
}

impl CustomOp3 for ConvBnRelu {
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
        let g = self.geometry(l1.dims(), l2.dims())?;
        let parts = [(s1, l1), (s2, l2), (s3, l3)];
        let (y, kept) = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let (y, kept) = self.forward::<f32>(parts, &g)?;
                (CpuStorage::F32(y), kept)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let (y, kept) = self.forward::<f64>(parts, &g)?;
                (CpuStorage::F64(y), kept)
            }
            _ => candle_core::bail!("{OP}: f32 or f64 only, all three alike"),
        };
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(kept));
        Ok((y, Shape::from((g.batch, g.cout, g.h, g.w))))
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::timed(OP, Pass::Backward, a1.device(), || {
            let [d1, d2, d3] = match a1.dtype() {
                DType::F32 => self.backward::<f32>([a1, a2, a3], res, grad)?,
                DType::F64 => self.backward::<f64>([a1, a2, a3], res, grad)?,
                other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
            };
            Ok((d1, d2, d3))
        })
    }
}

/// Whether the fused op applies: training, CPU, f32 / f64, an affine BatchNorm, and no switch
/// back to the separate or candle's ops.
fn fused(x: &Tensor, bn: &BatchNorm, train: bool) -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    train
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && bn.weight_and_bias().is_some()
        && !conv::candle_backward()
        && !bn_relu::candle_bn()
        && env_flag(&FLAG, "METRICUNET_FUSED_CONV_BN", true)
}

/// `(gamma, bias or 0, beta)` of a layer with `c` output channels, checked.
fn parameters(bias: Option<&Tensor>, bn: &BatchNorm, c: usize) -> Result<[Tensor; 3]> {
    let Some((gamma, beta)) = bn.weight_and_bias() else {
        candle_core::bail!("{OP}: the BatchNorm has no weight and bias")
    };
    if gamma.dims() != [c] || bias.is_some_and(|b| b.dims() != [c]) {
        candle_core::bail!(
            "{OP}: {c} output channels, BatchNorm {:?}, bias {:?}",
            gamma.dims(),
            bias.map(|b| b.dims().to_vec())
        )
    }
    let bias = match bias {
        Some(b) => b.clone(),
        None => gamma.zeros_like()?,
    };
    Ok([gamma.clone(), bias, beta.clone()])
}

/// Apply the op and update the BatchNorm's running statistics from what it kept.
fn apply(
    operands: [&Tensor; 3],
    input: Input,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
) -> Result<Tensor> {
    let kept: Shared = Arc::default();
    let op = ConvBnRelu {
        input,
        eps: bn.eps(),
        kept: kept.clone(),
    };
    let [a1, a2, a3] = operands;
    let y = dense(a1)?.apply_op3(&dense(a2)?, a3, op)?;
    let k = kept
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| candle_core::Error::Msg(format!("{OP}: no statistics after the forward")))?;
    let (n, _, h, w) = y.dims4()?;
    bn_relu::update_running_cpu(bn, &k.bn.mean, &k.var, bias, (n * h * w) as f64)?;
    Ok(y)
}

/// ReLU(BatchNorm(`x` convolved with `w` + `bias`)) (stride 1, padding k / 2): in training on
/// the CPU one op (module doc), else [`conv::conv2d_same`] then
/// [`bn_relu::bias_batch_norm_relu`].
pub fn conv_bn_relu(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    train: bool,
) -> Result<Tensor> {
    if !fused(x, bn, train) {
        return bn_relu::bias_batch_norm_relu(&conv::conv2d_same(x, w)?, bias, bn, train);
    }
    profile::timed(OP, Pass::Forward, x.device(), || {
        let params = Tensor::stack(&parameters(bias, bn, w.dim(0)?)?, 0)?;
        apply([x, w, &params], Input::One, bias, bn)
    })
}

/// [`conv_bn_relu`] of the channel concatenation `[a, b]`, without forming it (as
/// [`conv::conv2d_same_cat`]).
pub fn conv_cat_bn_relu(
    a: &Tensor,
    b: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    train: bool,
) -> Result<Tensor> {
    if !fused(a, bn, train) || b.dtype() != a.dtype() || w.dtype() != a.dtype() {
        return bn_relu::bias_batch_norm_relu(&conv::conv2d_same_cat(a, b, w)?, bias, bn, train);
    }
    profile::timed(OP, Pass::Forward, a.device(), || {
        let [gamma, bias_or_0, beta] = parameters(bias, bn, w.dim(0)?)?;
        let kernel: [usize; 4] = w
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg(format!("{OP}: kernel {:?}", w.dims())))?;
        let params = Tensor::cat(&[&w.flatten_all()?, &gamma, &bias_or_0, &beta], 0)?;
        let input = Input::Cat {
            c1: a.dim(1)?,
            kernel,
        };
        apply([a, b, &params], input, bias, bn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_values::testing::flat;
    use candle_core::Var;
    use candle_nn::{BatchNormConfig, VarBuilder, VarMap};

    /// One layer's trainable tensors and its BatchNorm, seeded.
    struct Layer {
        w: Var,
        bias: Var,
        bn: BatchNorm,
        _vars: VarMap,
    }

    fn layer(cin: usize, cout: usize, k: usize, dtype: DType, seed: u64) -> Layer {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, dtype, &Device::Cpu);
        let bn = candle_nn::batch_norm(cout, BatchNormConfig::default(), vb).expect("bn");
        let (gamma, beta) = bn.weight_and_bias().expect("affine");
        let set = |t: &Tensor, seed: u64, base: f64| {
            let v: Vec<f64> = crate::testing::random(t.elem_count(), seed)
                .into_iter()
                .map(|r| base + 0.5 * r)
                .collect();
            let v = Tensor::from_vec(v, t.dims(), &Device::Cpu).and_then(|v| v.to_dtype(dtype));
            Var::from_tensor(t)
                .expect("var")
                .set(&v.expect("values"))
                .expect("set");
        };
        set(gamma, seed, 1.0);
        set(beta, seed + 1, 0.0);
        let var = |shape: &[usize], seed: u64| {
            let v = crate::testing::random(shape.iter().product(), seed);
            let t = Tensor::from_vec(v, shape, &Device::Cpu).and_then(|t| t.to_dtype(dtype));
            Var::from_tensor(&t.expect("tensor")).expect("var")
        };
        Layer {
            w: var(&[cout, cin, k, k], seed + 2),
            bias: var(&[cout], seed + 3),
            bn,
            _vars: vars,
        }
    }

    /// Output, the gradients of the inputs, kernel, gamma, beta and bias, and the running
    /// statistics after the step, as f64 vectors.
    fn run(l: &Layer, inputs: &[Var], up: &Tensor, fused_op: bool) -> Vec<Vec<f64>> {
        let (gamma, beta) = l.bn.weight_and_bias().expect("affine");
        let (w, b) = (l.w.as_tensor(), Some(l.bias.as_tensor()));
        let y = match (inputs, fused_op) {
            ([x], true) => conv_bn_relu(x.as_tensor(), w, b, &l.bn, true),
            ([x], false) => bn_relu::bias_batch_norm_relu(
                &conv::conv2d_same(x.as_tensor(), w).expect("conv"),
                b,
                &l.bn,
                true,
            ),
            ([a, c], true) => conv_cat_bn_relu(a.as_tensor(), c.as_tensor(), w, b, &l.bn, true),
            ([a, c], false) => bn_relu::bias_batch_norm_relu(
                &conv::conv2d_same_cat(a.as_tensor(), c.as_tensor(), w).expect("conv"),
                b,
                &l.bn,
                true,
            ),
            _ => unreachable!("one or two inputs"),
        }
        .expect("forward");
        let grads = (&y * up)
            .and_then(|p| p.sum_all())
            .and_then(|s| s.backward())
            .expect("backward");
        let f64s = |t: &Tensor| flat(&t.to_dtype(DType::F64).expect("f64"));
        let mut out = vec![f64s(&y)];
        for t in inputs
            .iter()
            .map(|v| v.as_tensor())
            .chain([w, gamma, beta, l.bias.as_tensor()])
        {
            out.push(f64s(grads.get(t).expect("gradient")));
        }
        out.push(f64s(l.bn.running_mean()));
        out.push(f64s(l.bn.running_var()));
        out
    }

    /// The fused op gives the separate ops' output, gradients and running statistics value for
    /// value: one input and the concatenation, 3x3 and 1x1 kernels, f64 and f32, a batch
    /// smaller and one larger than the thread count.
    #[test]
    fn same_as_the_separate_ops() {
        for dtype in [DType::F64, DType::F32] {
            for (batch, k, cat) in [
                (1, 3, false),
                (5, 3, false),
                (3, 1, false),
                (1, 3, true),
                (5, 3, true),
            ] {
                let (c1, c2, cout, h, w) = (3, 2, 4, 6, 5);
                let cin = if cat { c1 + c2 } else { c1 };
                let input = |c: usize, seed: u64| {
                    let v = crate::testing::random(batch * c * h * w, seed);
                    let t = Tensor::from_vec(v, (batch, c, h, w), &Device::Cpu)
                        .and_then(|t| t.to_dtype(dtype));
                    Var::from_tensor(&t.expect("input")).expect("var")
                };
                let inputs = if cat {
                    vec![input(c1, 70), input(c2, 71)]
                } else {
                    vec![input(c1, 70)]
                };
                let up = Tensor::from_vec(
                    crate::testing::random(batch * cout * h * w, 72),
                    (batch, cout, h, w),
                    &Device::Cpu,
                )
                .and_then(|t| t.to_dtype(dtype))
                .expect("up");
                // two layers with the same start, one through each path
                let (ours, theirs) = (
                    layer(cin, cout, k, dtype, 80),
                    layer(cin, cout, k, dtype, 80),
                );
                let (a, b) = (
                    run(&ours, &inputs, &up, true),
                    run(&theirs, &inputs, &up, false),
                );
                let what = format!("{dtype:?}, batch {batch}, {k}x{k}, cat {cat}");
                assert_eq!(a.len(), b.len());
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(p, q, "{what}: part {i} (output, inputs' gradients, kernel, gamma, beta, bias, running mean, running var)");
                }
                // not trivially equal: the gradients are there and not all zero
                assert!(
                    a[1].iter().any(|v| *v != 0.0),
                    "{what}: input gradient all zero"
                );
            }
        }
    }

    /// A data input (not tracked) gets no gradient; the kernel's is unchanged.
    #[test]
    fn data_input_gets_no_gradient() {
        let l = layer(2, 3, 3, DType::F64, 90);
        let x = Tensor::from_vec(
            crate::testing::random(2 * 2 * 4 * 4, 91),
            (2, 2, 4, 4),
            &Device::Cpu,
        )
        .expect("x");
        let y =
            conv_bn_relu(&x, l.w.as_tensor(), Some(l.bias.as_tensor()), &l.bn, true).expect("y");
        let grads = y.sum_all().and_then(|s| s.backward()).expect("backward");
        assert!(grads.get(&x).is_none());
        assert!(grads.get(l.w.as_tensor()).is_some());
    }

    /// Finite differences of the fused op (input, kernel, gamma through a weighted sum), f64.
    #[test]
    fn gradient_by_finite_differences() {
        let l = layer(2, 3, 3, DType::F64, 95);
        let x = crate::testing::random(2 * 2 * 4 * 5, 96);
        crate::testing::check_gradient("conv_bn_relu input", &x, &[2, 2, 4, 5], 80, &|t| {
            let y = conv_bn_relu(t, l.w.as_tensor(), Some(l.bias.as_tensor()), &l.bn, true);
            crate::testing::weighted_sum(&y.expect("y"), 97)
        });
        let w = flat(l.w.as_tensor());
        let x = Tensor::from_vec(x, (2, 2, 4, 5), &Device::Cpu).expect("x");
        crate::testing::check_gradient("conv_bn_relu kernel", &w, &[3, 2, 3, 3], 54, &|t| {
            let y = conv_bn_relu(&x, t, Some(l.bias.as_tensor()), &l.bn, true);
            crate::testing::weighted_sum(&y.expect("y"), 97)
        });
    }
}
