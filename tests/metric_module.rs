//! The voxel-metric module end to end: Eq. 4 assembled from registered samplers and loss,
//! checked against hand values, its own parts, and central finite differences.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use metricunet_core::{registry, BackboneContext, VoxelMetricModule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn module(yaml: &str) -> VoxelMetricModule {
    let plan = common::plan(yaml).expect("valid experiment");
    VoxelMetricModule::from_config(
        &plan.cells[0].config.model.segmentation_loss,
        "model.segmentation_loss",
        &plan.cells[0].config.metric,
    )
    .expect("module")
}

/// Two 6x6 images: a 3x3 square of foreground in the first, none in the second.
fn labels() -> Vec<u8> {
    let mut l = vec![0u8; 72];
    for y in 1..4 {
        for x in 2..5 {
            l[y * 6 + x] = 1;
        }
    }
    l
}

fn random(shape: (usize, usize, usize, usize), seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shape.0 * shape.1 * shape.2 * shape.3)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

fn scalars(m: &VoxelMetricModule, logits: &Tensor, emb: &Tensor, seed: u64) -> Vec<(String, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    m.step_loss(logits, emb, &labels(), &mut rng)
        .expect("step")
        .scalars()
        .expect("scalars")
}

fn get(s: &[(String, f64)], key: &str) -> f64 {
    s.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no `{key}` in {s:?}"))
}

#[test]
fn cross_entropy_of_uniform_logits_is_ln2() {
    let m = module("preset: unet\n");
    let logits = Tensor::zeros((2, 2, 6, 6), DType::F64, &Device::Cpu).expect("t");
    let emb = Tensor::zeros((2, 4, 6, 6), DType::F64, &Device::Cpu).expect("t");
    let s = scalars(&m, &logits, &emb, 0);
    assert!((get(&s, "seg") - std::f64::consts::LN_2).abs() < 1e-12);
    // no samplers: the total is the cross-entropy alone
    assert_eq!(s.len(), 2);
    assert_eq!(get(&s, "total"), get(&s, "seg"));
}

#[test]
fn total_is_eq4_of_its_parts() {
    let m = module("preset: metricunet-hcp\nmetric: {lambda: 0.25}\n");
    assert_eq!(
        m.samplers()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["hard-negative", "contour-aware"]
    );
    let logits = Tensor::from_vec(random((2, 2, 6, 6), 1), (2, 2, 6, 6), &Device::Cpu).expect("t");
    let emb = Tensor::from_vec(random((2, 5, 6, 6), 2), (2, 5, 6, 6), &Device::Cpu).expect("t");
    let s = scalars(&m, &logits, &emb, 3);
    let metric: f64 = ["hard-negative", "contour-aware"]
        .iter()
        .map(|n| get(&s, &format!("{n}/triplet")) + get(&s, &format!("{n}/pair")))
        .sum();
    assert!(metric > 0.0);
    assert!(
        (get(&s, "total") - (get(&s, "seg") + 0.25 * metric)).abs() < 1e-12,
        "{s:?}"
    );
    // only the first image has foreground: at most k anchors each, contour has 8 voxels
    assert_eq!(get(&s, "contour-aware/anchors"), 8.0);
    assert!(get(&s, "hard-negative/anchors") <= 9.0);
    // same seed, same step; another seed, other tuples
    assert_eq!(s, scalars(&m, &logits, &emb, 3));
    assert_ne!(s, scalars(&m, &logits, &emb, 4));
}

#[test]
fn batch_without_foreground_contributes_zero_not_nan() {
    let m = module("preset: metricunet-hrp\n");
    let logits = Tensor::from_vec(random((2, 2, 6, 6), 5), (2, 2, 6, 6), &Device::Cpu).expect("t");
    let emb = Tensor::from_vec(random((2, 3, 6, 6), 6), (2, 3, 6, 6), &Device::Cpu).expect("t");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let step = m
        .step_loss(&logits, &emb, &[0u8; 72], &mut rng)
        .expect("step");
    assert!(step.first_non_finite().expect("scalars").is_none());
    let s = step.scalars().expect("scalars");
    assert_eq!(get(&s, "random/triplet"), 0.0);
    assert_eq!(get(&s, "hard-negative/anchors"), 0.0);
    assert_eq!(get(&s, "total"), get(&s, "seg"));
}

#[test]
fn shapes_are_checked() {
    let m = module("preset: metricunet-r\n");
    let logits = Tensor::zeros((2, 2, 6, 6), DType::F32, &Device::Cpu).expect("t");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let wrong_grid = Tensor::zeros((2, 4, 3, 3), DType::F32, &Device::Cpu).expect("t");
    assert!(m
        .step_loss(&logits, &wrong_grid, &labels(), &mut rng)
        .is_err());
    let emb = Tensor::zeros((2, 4, 6, 6), DType::F32, &Device::Cpu).expect("t");
    assert!(m
        .step_loss(&logits, &emb, &labels()[..10], &mut rng)
        .is_err());
}

/// d(Eq. 4)/d(logits) and d(Eq. 4)/d(embedding) against central finite differences in f64,
/// with every sampler and the pair term on.
#[test]
fn gradient_of_eq4_matches_finite_differences() {
    let m = module(
        "preset: metricunet-hrp\nmetric:\n  lambda: 0.5\n  loss: {name: triplet-pair, sigma: 2.0}\n  samplers: [{name: hard-negative, k: 4}, {name: random, k: 3, m: 2}]\n",
    );
    let (ls, es) = ((2, 2, 6, 6), (2, 3, 6, 6));
    let (l0, e0) = (random(ls, 7), random(es, 8));
    let lv = Var::from_vec(l0.clone(), ls, &Device::Cpu).expect("var");
    let ev = Var::from_vec(e0.clone(), es, &Device::Cpu).expect("var");
    let total = |l: &Tensor, e: &Tensor| {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        m.step_loss(l, e, &labels(), &mut rng).expect("step").total
    };
    let grads = total(lv.as_tensor(), ev.as_tensor())
        .backward()
        .expect("backward");
    let eps = 1e-6;
    for (which, base, var, shape) in [("logits", &l0, &lv, ls), ("embedding", &e0, &ev, es)] {
        let g = grads
            .get(var)
            .expect("grad")
            .flatten_all()
            .and_then(|t| t.to_vec1::<f64>())
            .expect("vec");
        let mut nonzero = 0;
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, shape, &Device::Cpu).expect("t");
                let s = if which == "logits" {
                    total(&t, ev.as_tensor())
                } else {
                    total(lv.as_tensor(), &t)
                };
                s.to_scalar::<f64>().expect("scalar")
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-4);
            assert!(
                err < 1e-5,
                "{which}[{i}]: finite difference {fd}, backward {}",
                g[i]
            );
            nonzero += usize::from(g[i] != 0.0);
        }
        assert!(nonzero > 20, "{which}: only {nonzero} non-zero gradients");
    }
}

/// The module consumes a registered backbone's output as is.
#[test]
fn runs_on_a_small_registered_backbone() {
    let plan = common::plan("preset: metricunet-hcp\nmodel:\n  backbone: {name: metricunet, encoder: [4, 8, 8, 8], decoder: [8, 8, 6]}\n")
        .expect("valid");
    let cfg = &plan.cells[0].config;
    let plugin = registry::backbone(&cfg.model.backbone.name, "model.backbone").expect("backbone");
    let params = plugin
        .params(&cfg.model.backbone.params, "model.backbone")
        .expect("params");
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let net = (plugin.build)(
        &params,
        &BackboneContext {
            in_channels: cfg.model.patches.slices,
        },
        vb,
    )
    .expect("build");
    let x = Tensor::from_vec(
        random((2, 3, 8, 8), 3)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        (2, 3, 8, 8),
        &Device::Cpu,
    )
    .expect("x");
    let out = net.forward_t(&x, true).expect("forward");
    let m = VoxelMetricModule::from_config(
        &cfg.model.segmentation_loss,
        "model.segmentation_loss",
        &cfg.metric,
    )
    .expect("module");
    let labels: Vec<u8> = (0..128)
        .map(|i| u8::from(i % 64 >= 18 && i % 64 < 46 && i % 8 > 1 && i % 8 < 6))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let step = m
        .step_loss(&out.logits, &out.embedding, &labels, &mut rng)
        .expect("step");
    assert!(step.first_non_finite().expect("scalars").is_none());
    let grads = step.total.backward().expect("backward");
    let d = vars.data().lock().expect("lock");
    assert!(grads
        .get(d.get("conv1a.conv.weight").expect("var"))
        .is_some());
}

/// What `samplers show` draws, on a hand-built batch: per sampler the candidate count of
/// each image and the anchors, positives and negatives, exactly those of a training step
/// with the same seed.
#[test]
fn sampler_draws_and_counts_on_a_hand_built_batch() {
    let m = module(
        "metric:\n  samplers:\n    - {name: random, k: 5}\n    - {name: hard-negative, tau: 0.1}\n    - {name: contour-aware}\n",
    );
    // P(foreground) 0.95 everywhere but three foreground voxels at 0.5 (unsure: |p - 1| > tau)
    let unsure = [8usize, 15, 22];
    let mut logits = vec![0.0f64; 2 * 2 * 36];
    for n in 0..2 {
        for v in 0..36 {
            let p: f64 = if n == 0 && unsure.contains(&v) {
                0.5
            } else {
                0.95
            };
            logits[(n * 2 + 1) * 36 + v] = (p / (1.0 - p)).ln();
        }
    }
    let logits = Tensor::from_vec(logits, (2, 2, 6, 6), &Device::Cpu).expect("t");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let d = m.draw(&logits, &labels(), &mut rng).expect("draw");
    let probs = d
        .probabilities
        .as_ref()
        .expect("hard-negative reads probabilities");
    assert!((probs[8] - 0.5).abs() < 1e-6 && (probs[0] - 0.95).abs() < 1e-6);
    let names: Vec<&str> = d.samplers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["random", "hard-negative", "contour-aware"]);
    // candidates per image: 9 foreground voxels, the 3 unsure ones, the 8-voxel ring
    let counts: Vec<Vec<usize>> = d.samplers.iter().map(|s| s.candidates.clone()).collect();
    assert_eq!(counts, [vec![9, 0], vec![3, 0], vec![8, 0]]);
    let anchors: Vec<usize> = d.samplers.iter().map(|s| s.tuples.len()).collect();
    assert_eq!(anchors, [5, 3, 8]);
    let sorted = |v: &[usize]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&d.samplers[1].tuples.anchors), unsure);
    let ring: Vec<usize> = (0..36).filter(|&v| labels()[v] == 1 && v != 15).collect();
    assert_eq!(sorted(&d.samplers[2].tuples.anchors), ring);
    for s in &d.samplers {
        assert!(s.tuples.positives.iter().all(|&v| labels()[v] == 1));
        assert!(s.tuples.negatives.iter().all(|&v| labels()[v] == 0));
    }
    // a training step with the same seed draws the same tuples (the anchors it logs)
    let emb = Tensor::zeros((2, 4, 6, 6), DType::F64, &Device::Cpu).expect("t");
    let s = scalars(&m, &logits, &emb, 5);
    assert_eq!(get(&s, "random/anchors"), 5.0);
    assert_eq!(get(&s, "hard-negative/anchors"), 3.0);
    assert_eq!(get(&s, "contour-aware/anchors"), 8.0);
    let again = m
        .draw(&logits, &labels(), &mut ChaCha8Rng::seed_from_u64(5))
        .expect("draw");
    assert_eq!(again, d);
}
