//! Every segmentation loss's gradient with respect to the logits against central finite
//! differences (f64), on a batch of two 6 x 5 slices whose labels have a contour, an empty
//! slice's worth of background and voxels on both sides of the decision.

use candle_core::{Device, Tensor};
use metricunet_core::registry;
use metricunet_core::schema::PluginSpec;
use metricunet_ops::testing::{check_gradient, random};

const N: usize = 2;
const H: usize = 6;
const W: usize = 5;

/// A blob in the first slice, nothing in the second.
fn labels() -> Vec<f64> {
    (0..N * H * W)
        .map(|v| {
            let (i, r, c) = (v / (H * W), (v / W) % H, v % W);
            f64::from(i == 0 && (1..=3).contains(&r) && (1..=3).contains(&c) && (r, c) != (3, 3))
        })
        .collect()
}

fn check(spec: &str) {
    metricunet_losses::link();
    let spec: PluginSpec = serde_norway::from_str(spec).expect("spec");
    let (loss, _) = registry::build_seg_loss(&spec, "test").expect("build");
    let target = Tensor::from_vec(labels(), (N, H, W), &Device::Cpu).expect("labels");
    // logits spread over [-2, 2): probabilities well inside (0, 1)
    let x: Vec<f64> = random(N * 2 * H * W, 7).iter().map(|v| 2.0 * v).collect();
    check_gradient(&spec.name, &x, &[N, 2, H, W], 120, &|t| {
        loss.forward(t, &target).expect("forward")
    });
}

#[test]
fn cross_entropy_gradient() {
    check("cross-entropy");
}

#[test]
fn dice_gradient() {
    check("{name: dice, smooth: 1.0}");
    check("{name: dice, smooth: 0.0}");
}

#[test]
fn focal_gradient() {
    check("{name: focal, gamma: 2.0, alpha: 0.25}");
    check("{name: focal, gamma: 0.5, alpha: 0.7}");
}

#[test]
fn boundary_gradient() {
    check("boundary");
}
