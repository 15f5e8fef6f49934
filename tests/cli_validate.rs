//! `metricunet validate` as a user runs it.

mod common;

fn validate(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["validate"];
    all.extend_from_slice(args);
    common::cli(&all)
}

#[test]
fn prints_resolved_config_and_cells() {
    let (ok, out, err) = validate(&["experiments/table3.yaml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("resolved configuration of cell 0 (preset=unet)"),
        "{out}"
    );
    assert!(
        out.contains("30 cells = 10 grid combinations x 3 seeds"),
        "{out}"
    );
    assert!(out.contains("preset=metricunet-hcp"), "{out}");
    let (ok, out, _) = validate(&[
        "experiments/table3.yaml",
        "--cell",
        "27",
        "--set",
        "metric.lambda=0.1",
    ]);
    assert!(ok);
    assert!(
        out.contains("name: hard-negative")
            && out.contains("name: contour-aware")
            && out.contains("lambda: 0.1"),
        "{out}"
    );
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\nmetric:\n  samplers: [random]\n  lamda: 0.1\n",
    )
    .expect("write");
    let (ok, _, err) = validate(&[bad.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(
        err.contains("bad.yaml")
            && err.contains("metric.lamda")
            && err.contains("did you mean `lambda`"),
        "{err}"
    );
    assert!(err.contains("line 4 column 3"), "{err}");
    let (ok, _, err) = validate(&["no/such/file.yaml"]);
    assert!(!ok && err.contains("no/such/file.yaml"), "{err}");
    let (ok, _, err) = validate(&["experiments/table3.yaml", "--cell", "30"]);
    assert!(!ok && err.contains("30 cells"), "{err}");
}

/// The projected training time of the tiny sweep (one shared stage 1 of 4 iterations, two
/// stage 2 of 6): at 0.5 s per stage-2 step, stage 1's step scaled by its input (2 x 5 x 16 x
/// 16 over 2 x 3 x 16 x 16 values: 5/3), 4 x 0.5 x 5/3 + 12 x 0.5 = 9.3 s.
#[test]
fn projects_the_training_time_from_a_step_time_or_a_bench_result() {
    let (ok, out, err) = validate(&["tests/fixtures/tiny-sweep.yaml", "--step-seconds", "0.5"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("# total: 1 stage-1 and 2 stage-2 trainings, 16 iterations, 9 s projected"),
        "{out}"
    );
    assert!(out.contains("shared"), "{out}");
    // from a bench result at the stage-2 batch and size: 1 s a step
    let dir = tempfile::tempdir().expect("tmp");
    let bench = dir.path().join("bench.json");
    let json = |batch: usize| {
        format!(
            r#"{{"benchmark": "train", "device": "NVIDIA H200", "threads": 2, "results": [{{"label": "quickstart unet", "batch": {batch}, "size": 16, "steps": 5, "step_s": 1.0}}]}}"#
        )
    };
    std::fs::write(&bench, json(2)).expect("write");
    let b = bench.to_str().expect("utf8");
    let (ok, out, err) = validate(&["tests/fixtures/tiny-sweep.yaml", "--bench", b]);
    assert!(ok, "{err}");
    assert!(
        out.contains("16 iterations, 19 s projected") && out.contains("on NVIDIA H200"),
        "{out}"
    );
    // a bench result of another batch size is refused, naming what it has
    std::fs::write(&bench, json(8)).expect("write");
    let (ok, _, err) = validate(&["tests/fixtures/tiny-sweep.yaml", "--bench", b]);
    assert!(!ok);
    assert!(
        err.contains("batch 2") && err.contains("batch 8 size 16"),
        "{err}"
    );
    let (ok, _, err) = validate(&["tests/fixtures/tiny-sweep.yaml", "--step-seconds=-1"]);
    assert!(!ok && err.contains("--step-seconds"), "{err}");
    // `run --dry-run` prints the cells and the cost and trains nothing
    let root = dir.path().join("runs");
    let (ok, out, err) = common::cli(&[
        "run",
        "tests/fixtures/tiny-sweep.yaml",
        "--dry-run",
        "--step-seconds",
        "0.5",
        "--root",
        root.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 cells = 2 grid combinations x 1 seeds")
            && out.contains("9 s projected")
            && out.contains("dry run"),
        "{out}"
    );
    assert!(!root.exists(), "a dry run wrote {}", root.display());
}
