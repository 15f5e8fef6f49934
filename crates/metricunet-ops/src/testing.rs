//! Test support shared by the ops' and the networks' tests: seeded inputs and the central
//! finite-difference check of a gradient (in f64). These helpers assert: they are for tests.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in [-1, 1), seeded.
pub fn random(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Assert that d f / d x from candle's backward matches central differences (step 1e-5,
/// relative error under 1e-4) at every element of `x`, or at `max_checks` evenly spread
/// elements, and that the gradient is not all zero. `f` maps an f64 tensor of `shape` to a
/// scalar. Prints the worst relative error.
pub fn check_gradient(
    name: &str,
    x: &[f64],
    shape: &[usize],
    max_checks: usize,
    f: &dyn Fn(&Tensor) -> Tensor,
) {
    let var = Var::from_vec(x.to_vec(), shape, &Device::Cpu).expect("var");
    let grads = f(var.as_tensor()).backward().expect("backward");
    let g = grads
        .get(&var)
        .expect("gradient")
        .flatten_all()
        .and_then(|t| t.to_vec1::<f64>())
        .expect("vec");
    let eval = |v: Vec<f64>| {
        f(&Tensor::from_vec(v, shape, &Device::Cpu).expect("t"))
            .to_scalar::<f64>()
            .expect("scalar")
    };
    let eps = 1e-5;
    let step = (x.len() / max_checks).max(1);
    let mut worst: f64 = 0.0;
    for i in (0..x.len()).step_by(step) {
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[i] += eps;
        down[i] -= eps;
        let fd = (eval(up) - eval(down)) / (2.0 * eps);
        let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "{name}: d/dx[{i}] finite difference {fd}, backward {}",
            g[i]
        );
    }
    assert!(g.iter().any(|v| *v != 0.0), "{name}: gradient is all zero");
    eprintln!("{name}: worst relative error {worst:.2e}");
}

/// A fixed random weighting of `t` summed, so that the scalar depends on every element.
pub fn weighted_sum(t: &Tensor, seed: u64) -> Tensor {
    let w = Tensor::from_vec(random(t.elem_count(), seed), t.dims(), &Device::Cpu).expect("w");
    (t * w).and_then(|p| p.sum_all()).expect("sum")
}
