//! The one-step snapshot behind `metricunet bench parity` (CUDA against CPU): its SGD step is
//! the hand formula, and the comparison measures what it says.

use candle_core::Device;
use metricunet_core::config::{MetricConfig, PluginSpec};
use metricunet_train::bench::{compare_steps, one_step, relative_difference, StepCase};
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
    let a = one_step(&c, &Device::Cpu).unwrap();
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
    let b = one_step(&c, &Device::Cpu).unwrap();
    let d = compare_steps(&b, &a).unwrap();
    assert_eq!(d.max(), 0.0, "{d:?}");
}

#[test]
fn comparison_reports_the_worst_tensor() {
    let c = case(&[]);
    let a = one_step(&c, &Device::Cpu).unwrap();
    let mut b = a.clone();
    // perturb one gradient by 1 % of its norm
    let (name, g) = &mut b.grads[1];
    let norm = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    g[0] += (0.01 * norm) as f32;
    let name = name.clone();
    let d = compare_steps(&b, &a).unwrap();
    assert_eq!(d.grad.0, name);
    assert!((d.grad.1 - 0.01).abs() < 1e-4, "{d:?}");
    assert_eq!(d.logits, 0.0);
    assert_eq!(d.loss, 0.0);
}
