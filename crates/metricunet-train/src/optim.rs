//! SGD with momentum and weight decay, with PyTorch's semantics (`torch.optim.SGD`,
//! dampening 0, no Nesterov): `d = g + wd * p; b = d` on the first step, then
//! `b = momentum * b + d`; `p -= lr * b`. Variables without a gradient (BatchNorm running
//! statistics, a detached head's inputs) are left untouched, weight decay included.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;

/// The learning rate of the paper's "poly" schedule: `base * (1 - it / total) ^ power`.
pub fn poly_lr(base: f64, iteration: usize, total: usize, power: f64) -> f64 {
    let frac = (iteration as f64 / total.max(1) as f64).min(1.0);
    base * (1.0 - frac).powf(power)
}

/// SGD with momentum; the momentum buffers are named like the variables they belong to.
#[derive(Debug, Clone)]
pub struct Sgd {
    pub momentum: f64,
    pub weight_decay: f64,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(momentum: f64, weight_decay: f64) -> Self {
        Self {
            momentum,
            weight_decay,
            buffers: BTreeMap::new(),
        }
    }

    /// One update of every named variable that has a gradient in `grads`.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        for (name, var) in vars {
            let Some(g) = grads.get(var) else { continue };
            // Detached: a gradient (and so a momentum buffer made from it) would otherwise
            // keep its step's whole autograd graph alive, and each buffer the previous one:
            // memory grew by one step's activations per iteration (OOM after ~150 steps of
            // the quickstart network at batch 8 x 64 x 64).
            let mut d = g.detach();
            if self.weight_decay != 0.0 {
                d = (d + (var.as_tensor() * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let b = match self.buffers.get(name) {
                    Some(b) => ((b * self.momentum)? + &d)?.detach(),
                    None => d.clone(),
                };
                self.buffers.insert(name.clone(), b.clone());
                d = b;
            }
            var.set(&(var.as_tensor() - (d * lr)?)?.detach())?;
        }
        Ok(())
    }

    /// Momentum buffers, for checkpoints.
    pub fn buffers(&self) -> &BTreeMap<String, Tensor> {
        &self.buffers
    }

    /// Replace the momentum buffers (from a checkpoint).
    pub fn set_buffers(&mut self, buffers: BTreeMap<String, Tensor>) {
        self.buffers = buffers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two steps on f(p) = p^2 / 2 (gradient p), hand-computed as torch.optim.SGD does.
    #[test]
    fn matches_pytorch_semantics() {
        let p = Var::new(&[2.0f64], &Device::Cpu).expect("var");
        let frozen = Var::new(&[5.0f64], &Device::Cpu).expect("var");
        let vars = vec![
            ("p".to_string(), p.clone()),
            ("frozen".to_string(), frozen.clone()),
        ];
        let mut opt = Sgd::new(0.9, 0.1);
        let (lr, mut want_p, mut buf) = (0.5f64, 2.0f64, None::<f64>);
        for _ in 0..2 {
            let loss = (p.as_tensor().sqr().expect("sq") * 0.5)
                .and_then(|t| t.sum_all())
                .expect("loss");
            let grads = loss.backward().expect("backward");
            opt.step(&vars, &grads, lr).expect("step");
            let d = want_p + 0.1 * want_p;
            let b = match buf {
                Some(b) => 0.9 * b + d,
                None => d,
            };
            buf = Some(b);
            want_p -= lr * b;
            let got = p.as_tensor().to_vec1::<f64>().expect("vec")[0];
            assert!((got - want_p).abs() < 1e-12, "{got} vs {want_p}");
        }
        // p: 2 -> 2 - 0.5 * 2.2 = 0.9 -> b = 0.9 * 2.2 + 0.99 = 2.97 -> 0.9 - 1.485 = -0.585
        assert!((want_p + 0.585).abs() < 1e-12);
        assert_eq!(frozen.as_tensor().to_vec1::<f64>().expect("vec"), vec![5.0]);
        assert_eq!(opt.buffers().len(), 1);
        let _ = DType::F64;
    }

    #[test]
    fn poly_schedule() {
        assert_eq!(poly_lr(0.01, 0, 100, 0.9), 0.01);
        assert!((poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
    }
}
