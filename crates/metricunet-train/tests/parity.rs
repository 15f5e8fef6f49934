//! The one-step snapshot behind `metricunet bench parity` (CUDA against CPU): its SGD step is
//! the hand formula, and the comparison measures what it says.

use candle_core::{DType, Device};
use metricunet_core::config::{MetricConfig, PluginSpec};
use metricunet_train::bench::{
    compare_steps, one_step, profile_steps, relative_difference, within_rounding, StepCase,
    StepDifference, StepSnapshot,
};
use serde_norway::{Mapping, Value};

fn case(samplers: &[&str]) -> StepCase {
    metricunet_backbones::link();
    metricunet_samplers::link();
    metricunet_losses::link();
    let mut params = Mapping::new();
    let list = |v: &[i64]| Value::Sequence(v.iter().map(|&x| Value::from(x)).collect());
    params.insert("encoder".into(), list(&[4, 8]));
    params.insert("decoder".into(), list(&[6]));
    let mut metric = MetricConfig::default();
    if !samplers.is_empty() {
        metric.samplers = samplers.iter().map(|s| PluginSpec::named(s)).collect();
        metric.loss = PluginSpec::named("triplet-pair");
    }
    StepCase {
        label: "tiny".into(),
        backbone: PluginSpec {
            name: if samplers.is_empty() {
                "unet"
            } else {
                "metricunet"
            }
            .into(),
            params,
        },
        in_channels: 3,
        size: 16,
        batch: 2,
        metric,
    }
}

/// Euclidean norm of all gradients together.
fn grad_norm(s: &StepSnapshot) -> f64 {
    s.grads
        .iter()
        .flat_map(|(_, g)| g)
        .map(|v| v.powi(2))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn relative_difference_by_hand() {
    // ||(0, 0, -1)|| / ||(1, 2, 3)|| = 1 / sqrt(14)
    let r = relative_difference(&[1.0, 2.0, 2.0], &[1.0, 2.0, 3.0]);
    assert!((r - 1.0 / 14f64.sqrt()).abs() < 1e-12, "{r}");
    // against zeros: the absolute norm
    assert!((relative_difference(&[3.0, 4.0], &[0.0, 0.0]) - 5.0).abs() < 1e-12);
    assert!(relative_difference(&[1.0], &[1.0, 2.0]).is_infinite());
}

#[test]
fn one_step_is_the_sgd_formula_and_reproducible() {
    let c = case(&["random"]);
    let a = one_step(&c, &Device::Cpu, DType::F32).unwrap();
    assert!(a.loss.is_finite() && a.loss > 0.0);
    assert!(!a.grads.is_empty());
    // first step of SGD (momentum 0.9, weight decay 1e-4, lr 0.01): w - 0.01 (g + 1e-4 w)
    for (name, g) in &a.grads {
        let w0 = &a.before.iter().find(|(n, _)| n == name).unwrap().1;
        let w1 = &a.after.iter().find(|(n, _)| n == name).unwrap().1;
        for ((w0, w1), g) in w0.iter().zip(w1).zip(g) {
            let want = w0 - 0.01 * (g + 1e-4 * w0);
            assert!(
                (w1 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{name}: {w1} vs {want}"
            );
        }
    }
    // the same step again: identical to the last bit
    let b = one_step(&c, &Device::Cpu, DType::F32).unwrap();
    let d = compare_steps(&b, &a).unwrap();
    assert_eq!(d.max(), 0.0, "{d:?}");
}

#[test]
fn comparison_reports_the_worst_tensor() {
    let c = case(&[]);
    let a = one_step(&c, &Device::Cpu, DType::F32).unwrap();
    let mut b = a.clone();
    // perturb one gradient by 1 % of its norm
    let (name, g) = &mut b.grads[1];
    let norm = g.iter().map(|v| v.powi(2)).sum::<f64>().sqrt();
    g[0] += 0.01 * norm;
    let name = name.clone();
    let d = compare_steps(&b, &a).unwrap();
    assert_eq!(d.worst_grad.0, name);
    assert!((d.worst_grad.1 - 0.01).abs() < 1e-4, "{d:?}");
    // over all gradients together: 1 % of that tensor's norm over the norm of all
    let all = grad_norm(&a);
    assert!(
        (d.grads - 0.01 * norm / all).abs() < 1e-4 * d.grads,
        "{d:?}"
    );
    assert_eq!(d.logits, 0.0);
    assert_eq!(d.loss, 0.0);
    assert_eq!(d.after, 0.0);
}

/// A gradient that is zero up to rounding is compared on the scale of the whole gradient.
#[test]
fn numerically_zero_gradient_uses_the_whole_scale() {
    let mut a = one_step(&case(&[]), &Device::Cpu, DType::F32).unwrap();
    let (name, g) = &mut a.grads[0];
    g.iter_mut().for_each(|v| *v = 0.0);
    g[0] = 1e-9;
    let name = name.clone();
    let total = grad_norm(&a);
    let mut b = a.clone();
    b.grads[0].1[0] = -1e-9;
    let d = compare_steps(&b, &a).unwrap();
    // 2e-9 against 1e-4 x the whole norm, not against 1e-9 (which would read 2.0)
    assert!(d.worst_grad.1 < 1e-3, "{name}: {d:?}");
    assert!(
        (d.worst_grad.1 - 2e-9 / (1e-4 * total)).abs() < 1e-9,
        "{d:?}"
    );
}

/// The f64 step (the reference of `bench parity`) and the f32 step differ by f32 rounding:
/// small, but not zero.
#[test]
fn f32_step_is_close_to_the_f64_step() {
    let c = case(&["random"]);
    let a = one_step(&c, &Device::Cpu, DType::F32).unwrap();
    let b = one_step(&c, &Device::Cpu, DType::F64).unwrap();
    let d = compare_steps(&a, &b).unwrap();
    assert!(d.max() > 0.0 && d.max() < 1e-4, "{d:?}");
}

fn diff(all: f64) -> StepDifference {
    StepDifference {
        loss: all / 10.0,
        logits: all / 10.0,
        grads: all,
        after: all / 100.0,
        worst_grad: ("w".into(), all),
        worst_after: ("w".into(), all),
    }
}

/// The verdict: within the tolerance, or within 3x the CPU's own f32 error; NaN fails.
#[test]
fn verdict_of_a_device_check() {
    // the H200's HCP step: 1.3e-3 from f64 where the CPU's f32 step is 7.6e-4 from it
    assert!(within_rounding(&diff(1.3e-3), &diff(7.6e-4), 1e-3, 3.0));
    // TF32: 2.3e-2 where f32 rounding is 2.7e-4
    assert!(!within_rounding(&diff(2.3e-2), &diff(2.7e-4), 1e-3, 3.0));
    // below the tolerance passes whatever the CPU's error
    assert!(within_rounding(&diff(9e-4), &diff(0.0), 1e-3, 3.0));
    assert!(!within_rounding(&diff(f64::NAN), &diff(1e-4), 1e-3, 3.0));
}

/// `bench train --profile`: every op of the tiny network shows up with its calls per step
/// (encoder 4/8, decoder 6: eight 3x3 convolutions and the 1x1 head, one of them reading the
/// skip concatenation; nine BatchNorm + ReLU; one transposed convolution), the phases and the
/// rest are there, and the shares add up to one.
#[test]
fn profile_names_every_op_once_per_call() {
    let rows = profile_steps(&case(&["random"]), &Device::Cpu, 1, 2).unwrap();
    let calls = |op: &str, pass: &str| {
        rows.iter()
            .find(|r| r.op == op && r.pass == pass)
            .map(|r| r.calls_per_step)
            .unwrap_or_else(|| panic!("no row {op} {pass}: {rows:?}"))
    };
    // every convolution + BatchNorm + ReLU of the UNet as one op in training, forward and
    // backward once each; the head's last 1x1 convolution alone
    let layers = calls("conv-bn-relu", "forward");
    assert!(layers >= 5.0, "{rows:?}");
    assert_eq!(calls("conv-bn-relu", "backward"), layers, "{rows:?}");
    assert_eq!(calls("conv2d-same", "forward"), 1.0, "{rows:?}");
    assert_eq!(calls("conv2d-same", "backward"), 1.0, "{rows:?}");
    assert!(
        !rows.iter().any(|r| r.op == "batch-norm-relu"),
        "no separate BatchNorm in training: {rows:?}"
    );
    assert_eq!(calls("conv-transpose-2x2", "forward"), 1.0, "{rows:?}");
    assert_eq!(calls("conv-transpose-2x2", "backward"), 1.0, "{rows:?}");
    assert_eq!(
        calls("max-pool-2x2", "forward"),
        calls("max-pool-2x2", "backward"),
        "{rows:?}"
    );
    assert_eq!(calls("loss + metric module", "forward"), 1.0, "{rows:?}");
    assert_eq!(calls("optimizer (SGD)", "-"), 1.0, "{rows:?}");
    for pass in ["forward", "backward"] {
        assert!(rows
            .iter()
            .any(|r| r.op == "other (candle ops)" && r.pass == pass));
    }
    let total: f64 = rows.iter().map(|r| r.share).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    assert!(rows
        .windows(2)
        .all(|w| w[0].seconds_per_step >= w[1].seconds_per_step));
    assert!(
        !metricunet_ops::profile::enabled(),
        "profiling is switched off again"
    );
}
