//! The out-of-tree sampler through this crate's binary: listed by `plugins`, refused with a
//! hint when misspelt, and trained with from YAML (the repository's tiny fixture without its
//! preset, whose samplers would contradict).

use std::process::Command;

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_custom-sampler"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("run custom-sampler");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_binary_lists_and_trains_with_the_new_sampler() {
    let (ok, stdout, stderr) = cli(&["plugins"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("interior") && stdout.contains("anchors away from the boundary"),
        "{stdout}"
    );
    assert!(
        stdout.contains("volume-error") && stdout.contains("in mL"),
        "{stdout}"
    );
    // the built-in plugins are all there too
    assert!(
        stdout.contains("contour-aware") && stdout.contains("hd95"),
        "{stdout}"
    );

    let (ok, _, stderr) = cli(&[
        "validate",
        "tests/fixtures/tiny.yaml",
        "--set",
        "preset=null",
        "--set",
        "metric.samplers=[{name: interiour}]",
    ]);
    assert!(
        !ok && stderr.contains("did you mean `interior`"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    let cache = format!("data.cache_dir={}", dir.path().join("cache").display());
    let (ok, stdout, stderr) = cli(&[
        "train",
        "tests/fixtures/tiny.yaml",
        "--set",
        "preset=null",
        "--set",
        "metric.samplers=[{name: interior, k: 4}]",
        "--set",
        &cache,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let config = std::fs::read_to_string(out.join("config.yaml")).expect("config");
    assert!(config.contains("name: interior"), "{config}");
    // the training log has the sampler's own columns
    let log = std::fs::read_to_string(out.join("stage2").join("train_log.csv")).expect("log");
    assert!(
        log.lines().next().is_some_and(|h| h.contains("interior")),
        "{log}"
    );
}

/// The crate's metric is computed by `eval` beside the built-in ones, with its unit.
#[test]
fn eval_computes_the_new_metric() {
    let labels = "tests/data/totalseg-example/labels.nii.gz";
    let (ok, stdout, stderr) = cli(&[
        "eval",
        "--pred",
        labels,
        "--ref",
        labels,
        "--label",
        "22",
        "--ref-label",
        "22",
    ]);
    assert!(ok, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("volume-error"))
        .unwrap_or_else(|| panic!("no volume-error row: {stdout}"));
    assert!(row.contains("mL") && row.contains("0.0"), "{row}");
}
