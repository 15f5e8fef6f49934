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
