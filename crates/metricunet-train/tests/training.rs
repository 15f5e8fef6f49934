//! Training end to end on tiny synthetic patches: learning happens, runs are reproducible,
//! a killed run resumes to the same weights, bad states stop with a clear message.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::Device;
use metricunet_core::config::PlateauConfig;
use metricunet_core::config::{
    default_segmentation_loss, MetricConfig, PluginSpec, TrainingConfig,
};
use metricunet_data::patches::Patches;
use metricunet_train::{
    train_stage, ModelSpec, PatchPool, PatchValidator, StageSpec, TrainError, TrainEvent, Validator,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_norway::{Mapping, Value};

fn link() {
    metricunet_backbones::link();
    metricunet_samplers::link();
    metricunet_losses::link();
    metricunet_metrics::link();
}

/// 16 x 16 patches with a bright noisy disc of random centre and radius on a darker noisy
/// background; label = the disc.
fn pool(n: usize, seed: u64) -> PatchPool {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (h, w, c) = (16usize, 16usize, 3usize);
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let (cy, cx, r) = (
            rng.random_range(4.0..12.0),
            rng.random_range(4.0..12.0),
            rng.random_range(2.0..5.0f32),
        );
        let mut lab = vec![0u8; h * w];
        for (i, l) in lab.iter_mut().enumerate() {
            let (y, x) = ((i / w) as f32, (i % w) as f32);
            *l = u8::from((y - cy).powi(2) + (x - cx).powi(2) < r * r);
        }
        for _ in 0..c {
            for &l in &lab {
                inputs.push(100.0 + 60.0 * f32::from(l) + rng.random_range(-30.0..30.0));
            }
        }
        labels.extend(lab);
    }
    PatchPool::from_patches(Patches {
        n,
        slices: c,
        h,
        w,
        inputs,
        labels,
        centers: vec![[0, 0, 0]; n],
    })
}

fn spec(iterations: usize, samplers: &[&str]) -> StageSpec {
    let mut bb = Mapping::new();
    bb.insert("encoder".into(), Value::Sequence(vec![4.into(), 8.into()]));
    bb.insert("decoder".into(), Value::Sequence(vec![6.into()]));
    StageSpec {
        model: ModelSpec {
            name: "stage2".into(),
            backbone: PluginSpec {
                name: "metricunet".into(),
                params: bb,
            },
            in_channels: 3,
        },
        training: TrainingConfig {
            iterations,
            batch_size: 4,
            learning_rate: 0.05,
            validate_every: 10,
            checkpoint_every: 3,
            ..TrainingConfig::default()
        },
        segmentation_loss: default_segmentation_loss(),
        metric: MetricConfig {
            lambda: 0.01,
            samplers: samplers.iter().map(|s| PluginSpec::named(s)).collect(),
            ..MetricConfig::default()
        },
        seed: 7,
        config_hash: "test-config".into(),
    }
}

fn run(
    spec: &StageSpec,
    dir: &Path,
    resume: bool,
    stop_at: Option<usize>,
) -> Result<metricunet_train::TrainOutcome, TrainError> {
    link();
    let (train, val) = (pool(32, 1), pool(8, 2));
    let mut validator = PatchValidator::new(&val, 4, &["dsc"])?;
    train_stage(
        spec,
        &train,
        Some(&mut validator as &mut dyn Validator),
        &Device::Cpu,
        dir,
        resume,
        &mut |event| match event {
            TrainEvent::Iteration(row) if Some(row.iteration) == stop_at => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
}

/// The log without the timing column.
fn log_rows(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("train_log.csv")).expect("log");
    let header: Vec<&str> = text.lines().next().expect("header").split(',').collect();
    let t = header
        .iter()
        .position(|c| *c == "samples_per_s")
        .expect("timing column");
    text.lines()
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| *i != t)
                .map(|(_, c)| c)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[test]
fn learns_the_toy_task_and_logs_every_term() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = run(
        &spec(40, &["hard-negative", "contour-aware"]),
        dir.path(),
        false,
        None,
    )
    .expect("train");
    assert!(out.finished && out.weights.exists());
    let rows = log_rows(dir.path());
    assert_eq!(rows.len(), 41);
    let header = &rows[0];
    for col in [
        "iteration",
        "lr",
        "seg",
        "hard-negative/triplet",
        "hard-negative/pair",
        "contour-aware/anchors",
        "total",
        "val_dsc",
    ] {
        assert!(
            header.split(',').any(|c| c == col),
            "{col} missing from {header}"
        );
    }
    let ce = |row: &str| -> f64 {
        row.split(',')
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("ce")
    };
    let first: f64 = rows[1..6].iter().map(|r| ce(r)).sum::<f64>() / 5.0;
    let last: f64 = rows[36..].iter().map(|r| ce(r)).sum::<f64>() / 5.0;
    assert!(
        last < 0.7 * first,
        "cross-entropy did not fall: {first} -> {last}"
    );
    let dsc = out.last_val_dsc.expect("validation DSC");
    assert!(dsc > 0.5, "validation DSC {dsc}");
}

#[test]
fn same_seed_same_curve() {
    let (a, b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let s = spec(6, &["random"]);
    run(&s, a.path(), false, None).expect("a");
    run(&s, b.path(), false, None).expect("b");
    assert_eq!(log_rows(a.path()), log_rows(b.path()));
    let mut other = s.clone();
    other.seed = 8;
    let c = tempfile::tempdir().expect("tmp");
    run(&other, c.path(), false, None).expect("c");
    assert_ne!(log_rows(a.path()), log_rows(c.path()));
}

#[test]
fn killed_run_resumes_to_the_same_weights() {
    let s = spec(8, &["hard-negative", "random"]);
    let whole = tempfile::tempdir().expect("tmp");
    run(&s, whole.path(), false, None).expect("uninterrupted");
    let killed = tempfile::tempdir().expect("tmp");
    // stopped after iteration 5: the last checkpoint is from iteration 3
    let part = run(&s, killed.path(), false, Some(5)).expect("part");
    assert!(!part.finished && !killed.path().join("model.safetensors").exists());
    // a second start without --resume refuses to overwrite
    let e = run(&s, killed.path(), false, None).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    // another configuration's checkpoint is refused
    let mut other = s.clone();
    other.config_hash = "other".into();
    let e = run(&other, killed.path(), true, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("configuration"), "{e}");
    let resumed = run(&s, killed.path(), true, None).expect("resume");
    assert_eq!(resumed.resumed_from, Some(3));
    let a = std::fs::read(whole.path().join("model.safetensors")).expect("a");
    let b = std::fs::read(killed.path().join("model.safetensors")).expect("b");
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(log_rows(whole.path()), log_rows(killed.path()));
}

#[test]
fn non_finite_loss_names_iteration_and_term() {
    link();
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = spec(20, &["random"]);
    s.training.learning_rate = 1e12; // diverges within a few steps
    let e = train_stage(
        &s,
        &pool(8, 1),
        None,
        &Device::Cpu,
        dir.path(),
        false,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    match &e {
        TrainError::NonFinite {
            iteration,
            term,
            value,
        } => {
            assert!(*iteration >= 1 && *iteration <= 20);
            assert!(!value.is_finite());
            assert!(
                ["seg", "random/triplet", "random/pair", "total"].contains(&term.as_str()),
                "{term}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("iteration {iteration}"))
                    && msg.contains(&format!("`{term}`")),
                "{msg}"
            );
        }
        other => panic!("expected a non-finite error, got {other}"),
    }
}

/// Validation through the metric plugin equals the pooled DSC counted by hand, and a plateau
/// rule ends training early as a finished run; killed and resumed, the run stops at the same
/// iteration with the same weights (the rule replays the log it keeps).
#[test]
fn plateau_stops_early_and_resumes_to_the_same_stop() {
    link();
    let mut s = spec(60, &["random"]);
    s.training.validate_every = 2;
    s.training.checkpoint_every = 4;
    // min_delta 1: no validation can improve by more, so the third one after the first stops
    s.training.plateau = Some(PlateauConfig {
        patience: 2,
        min_delta: 1.0,
    });
    let whole = tempfile::tempdir().expect("tmp");
    let out = run(&s, whole.path(), false, None).expect("train");
    assert!(out.finished && out.iterations == 6, "{out:?}");
    assert!(
        out.stopped_early
            .as_deref()
            .is_some_and(|r| r.contains("has not improved")),
        "{out:?}"
    );
    assert_eq!(log_rows(whole.path()).len(), 7);
    // killed after iteration 5 (checkpoint at 4), resumed: stops at 6 again
    let killed = tempfile::tempdir().expect("tmp");
    run(&s, killed.path(), false, Some(5)).expect("part");
    let resumed = run(&s, killed.path(), true, None).expect("resume");
    assert_eq!((resumed.resumed_from, resumed.iterations), (Some(4), 6));
    let a = std::fs::read(whole.path().join("model.safetensors")).expect("a");
    let b = std::fs::read(killed.path().join("model.safetensors")).expect("b");
    assert!(a == b, "resumed weights differ");
    assert_eq!(log_rows(whole.path()), log_rows(killed.path()));
    // a run resumed after it stopped does not train further
    let again = run(&s, whole.path(), true, None).expect("again");
    assert_eq!((again.iterations, again.resumed_from), (6, Some(6)));
    assert_eq!(
        std::fs::read(whole.path().join("model.safetensors")).expect("a2"),
        a
    );
}

/// The validator's DSC is the pooled DSC of the argmax over every validation voxel.
#[test]
fn patch_validation_is_the_pooled_dsc() {
    link();
    let val = pool(6, 3);
    let s = spec(1, &[]);
    let vars = candle_nn::VarMap::new();
    let net = s.model.build(&vars, 3, &Device::Cpu).expect("net");
    let mut v = PatchValidator::new(&val, 4, &["dsc", "sen"]).expect("validator");
    assert_eq!(v.names(), ["dsc", "sen"]);
    let got = v.validate(net.as_ref(), &Device::Cpu).expect("validate");
    let (x, labels) = val
        .batch(&(0..6).collect::<Vec<_>>(), &Device::Cpu)
        .expect("batch");
    let pred: Vec<u32> = net
        .forward_t(&x, false)
        .expect("forward")
        .logits
        .argmax(1)
        .expect("argmax")
        .flatten_all()
        .expect("flat")
        .to_vec1()
        .expect("vec");
    let (mut tp, mut p, mut g) = (0f64, 0f64, 0f64);
    for (&a, &b) in pred.iter().zip(&labels) {
        tp += f64::from(a == 1 && b != 0);
        p += f64::from(a == 1);
        g += f64::from(b != 0);
    }
    assert_eq!(got[0], Some(2.0 * tp / (p + g)));
    assert_eq!(got[1], Some(tp / g));
    // an unknown metric is named
    let e = PatchValidator::new(&val, 4, &["dcs"])
        .err()
        .expect("error")
        .to_string();
    assert!(e.contains("dcs"), "{e}");
}

/// The validation scores of every validated log row: (iteration, dsc).
fn validated(dir: &Path) -> Vec<(usize, f64)> {
    let text = std::fs::read_to_string(dir.join("train_log.csv")).expect("log");
    let header: Vec<&str> = text.lines().next().expect("header").split(',').collect();
    let col = header
        .iter()
        .position(|c| *c == "val_dsc")
        .expect("val_dsc");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f[0].parse().ok()?, f[col].parse().ok()?))
        })
        .collect()
}

/// `keep: best` writes the weights of the validation point with the highest DSC (they score
/// that DSC again when loaded), records it in `kept.yaml`, and a run killed after that point
/// and resumed from a later checkpoint keeps the same weights; `keep: last` keeps the last.
#[test]
fn keep_best_keeps_the_best_validation_point_across_a_resume() {
    link();
    let mut s = spec(15, &["random"]);
    s.training.validate_every = 3;
    s.training.checkpoint_every = 6;
    s.training.learning_rate = 0.3;
    s.training.poly_power = 0.0; // a constant, high rate: a noisy curve whose best is not the last
    let whole = tempfile::tempdir().expect("tmp");
    let out = run(&s, whole.path(), false, None).expect("train");
    let points = validated(whole.path());
    assert_eq!(points.len(), 5, "{points:?}");
    let best = points
        .iter()
        .fold(points[0], |b, &p| if p.1 > b.1 { p } else { b });
    let kept = out.kept.clone().expect("kept");
    assert_eq!(kept.iteration, best.0, "{points:?}");
    assert!(
        best.0 < 12 && best.1 > 0.0,
        "not a test of keeping: {points:?}"
    );
    let record = metricunet_store::KeptRecord::read(whole.path())
        .expect("read")
        .expect("kept.yaml");
    assert_eq!(
        (record.rule.as_str(), record.iteration, record.trained),
        ("best", best.0, 15)
    );
    let dsc = *record.scores.get("dsc").expect("dsc");
    assert!((dsc - best.1).abs() < 1e-4, "{dsc} vs the log's {}", best.1);
    // the kept weights, loaded, score what was logged at that iteration
    let (_, net) = s
        .model
        .load(&whole.path().join("model.safetensors"), &Device::Cpu)
        .expect("load");
    let val = pool(8, 2);
    let mut v = PatchValidator::new(&val, 4, &["dsc"]).expect("validator");
    let again = v.validate(net.as_ref(), &Device::Cpu).expect("validate")[0].expect("dsc");
    assert_eq!(again, dsc);
    // killed after the checkpoint at 12 (which holds the best of 9) and resumed: the same
    // model
    let killed = tempfile::tempdir().expect("tmp");
    run(&s, killed.path(), false, Some(14)).expect("part");
    let resumed = run(&s, killed.path(), true, None).expect("resume");
    assert_eq!(resumed.resumed_from, Some(12));
    assert_eq!(resumed.kept, out.kept);
    assert!(
        std::fs::read(whole.path().join("model.safetensors")).expect("a")
            == std::fs::read(killed.path().join("model.safetensors")).expect("b"),
        "resumed best weights differ"
    );
    // keep: last keeps iteration 15
    let mut last = s.clone();
    last.training.keep = metricunet_core::config::Keep::Last;
    let l = tempfile::tempdir().expect("tmp");
    let out = run(&last, l.path(), false, None).expect("last");
    let k = out.kept.expect("kept");
    assert_eq!(k.iteration, 15);
    assert_eq!(k.rule, metricunet_core::config::Keep::Last);
}
