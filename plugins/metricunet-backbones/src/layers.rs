//! The layers of the UNets, each variable with its initialisation declared where it is
//! created (`VarBuilder::get_with_hints`); a seeded build (`metricunet_model::SeededVars`)
//! draws every variable from the init declared here.
//!
//! | variable | init |
//! |---|---|
//! | convolution and transposed-convolution weights | Kaiming (He) normal: std `sqrt(2 / fan_in)` |
//! | their biases | uniform in `+-1 / sqrt(fan_in)` |
//! | BatchNorm scale, shift, running mean, running variance | 1, 0, 0, 1 (candle's `batch_norm`) |
//!
//! `fan_in` is the product of the weight's dimensions after the first: `cin * k * k` for a
//! convolution `[cout, cin, k, k]`, `cout * k * k` for a transposed one `[cin, cout, k, k]`
//! (the fan-in of its backward, which is a convolution). Kaiming normal suits the ReLU after
//! every convolution; it is not PyTorch's default (`kaiming_uniform` with `a = sqrt(5)`, i.e.
//! uniform in `+-1 / sqrt(fan_in)`, a third of the variance). Candle's own `conv2d` draws
//! biases from `+-1 / sqrt(cin)` and its `conv_transpose2d` weights uniformly; these
//! constructors keep the distributions the project trained with before inits were declared.

use candle_core::{Result, Shape};
use candle_nn::init::DEFAULT_KAIMING_NORMAL;
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Init, VarBuilder};

/// Uniform in `+-1 / sqrt(fan_in)` of a weight of shape `weight`.
fn bias_init(weight: &Shape) -> Init {
    let fan_in: usize = weight.dims().iter().skip(1).product();
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A `k x k` convolution `cin -> cout` with bias (variables `weight`, `bias` under `vb`).
pub fn conv2d(
    cin: usize,
    cout: usize,
    k: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    let shape = Shape::from((cout, cin / cfg.groups, k, k));
    let weight = vb.get_with_hints(shape.clone(), "weight", DEFAULT_KAIMING_NORMAL)?;
    let bias = vb.get_with_hints(cout, "bias", bias_init(&shape))?;
    Ok(Conv2d::new(weight, Some(bias), cfg))
}

/// A `k x k` transposed convolution `cin -> cout` with bias.
pub fn conv_transpose2d(
    cin: usize,
    cout: usize,
    k: usize,
    cfg: ConvTranspose2dConfig,
    vb: VarBuilder<'_>,
) -> Result<ConvTranspose2d> {
    let shape = Shape::from((cin, cout, k, k));
    let weight = vb.get_with_hints(shape.clone(), "weight", DEFAULT_KAIMING_NORMAL)?;
    let bias = vb.get_with_hints(cout, "bias", bias_init(&shape))?;
    Ok(ConvTranspose2d::new(weight, Some(bias), cfg))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;

    /// Every variable is drawn from the init declared here: moments of a large layer match
    /// the declared distributions, and bounds hold exactly.
    #[test]
    fn declared_inits_are_what_a_seeded_build_draws() {
        let vars = VarMap::new();
        let vb = VarBuilder::from_backend(
            Box::new(metricunet_model::SeededVars::new(&vars, 7)),
            DType::F32,
            Device::Cpu,
        );
        let conv = conv2d(64, 128, 3, Conv2dConfig::default(), vb.pp("c")).expect("conv");
        let up =
            conv_transpose2d(128, 32, 2, ConvTranspose2dConfig::default(), vb.pp("u")).expect("up");
        let stats = |t: &candle_core::Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let max = v.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            (mean, var.sqrt(), max)
        };
        // conv weight: 73,728 draws of N(0, sqrt(2 / 576))
        let (mean, std, _) = stats(conv.weight());
        let want = (2.0f64 / 576.0).sqrt();
        assert!(mean.abs() < 0.01 * want * 10.0, "mean {mean}");
        assert!((std / want - 1.0).abs() < 0.02, "std {std} want {want}");
        // conv bias: 128 draws within +-1/24
        let (_, _, max) = stats(conv.bias().expect("bias"));
        assert!(max <= 1.0 / 24.0 && max > 0.5 / 24.0, "bias max {max}");
        // transposed weight [128, 32, 2, 2]: fan-in 32 * 4
        let (_, std, _) = stats(up.weight());
        let want = (2.0f64 / 128.0).sqrt();
        assert!((std / want - 1.0).abs() < 0.03, "std {std} want {want}");
        let (_, _, max) = stats(up.bias().expect("bias"));
        assert!(max <= 1.0 / 128f64.sqrt(), "bias max {max}");
    }
}
