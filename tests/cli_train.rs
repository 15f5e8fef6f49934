//! `metricunet train` as a user runs it, on the seconds-long `tests/fixtures/tiny.yaml`.

use std::path::Path;

mod common;

fn train(args: &[&str], cache: &Path) -> (bool, String, String) {
    let set = format!("data.cache_dir={}", cache.display());
    let mut all = vec!["train", "tests/fixtures/tiny.yaml", "--set", &set];
    all.extend_from_slice(args);
    common::cli(&all)
}

#[test]
fn trains_both_stages_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let run = dir.path().join("run");
    let r = run.to_str().expect("utf8");
    let (ok, stdout, stderr) = train(&["--out", r], &cache);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("stage1: 4 iterations") && stdout.contains("stage2: 6 iterations"),
        "{stdout}"
    );
    for f in [
        "config.yaml",
        "run.yaml",
        "split.yaml",
        "stage1/model.safetensors",
        "stage2/checkpoint.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(run.join("stage2/train_log.csv")).expect("log");
    assert_eq!(log.lines().count(), 7);
    assert!(log
        .lines()
        .next()
        .expect("header")
        .contains("contour-aware/triplet"));
    let run_yaml = std::fs::read_to_string(run.join("run.yaml")).expect("run.yaml");
    assert!(
        run_yaml.contains("device: cpu") && run_yaml.contains("config_hash:"),
        "{run_yaml}"
    );
    // a second start refuses to overwrite; --resume finds everything trained
    let (ok, _, stderr) = train(&["--out", r], &cache);
    assert!(!ok && stderr.contains("--resume"), "{stderr}");
    let (ok, stdout, stderr) = train(&["--out", r, "--resume"], &cache);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resumed at 6"), "{stdout}");
    // epochs replace iterations: 2 epochs of 24 patches at batch 2 = 24 iterations
    let epochs = dir.path().join("epochs");
    let (ok, stdout, stderr) = train(
        &[
            "--out",
            epochs.to_str().expect("utf8"),
            "--set",
            "stages=[stage2]",
            "--set",
            "training.epochs=2",
        ],
        &cache,
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("stage2: 24 iterations") && !stdout.contains("stage1"),
        "{stdout}"
    );
    // the preprocessed cases were cached
    assert!(
        std::fs::read_dir(cache.join("preprocessed"))
            .expect("cache")
            .count()
            >= 5
    );
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let (ok, _, stderr) = train(&["--set", "metric.lambda=[0.1]", "--out", "x"], &cache);
    assert!(!ok && stderr.contains("metric.lambda"), "{stderr}");
    let (ok, _, stderr) = train(&["--device", "tpu"], &cache);
    assert!(!ok && stderr.contains("cpu, cuda or auto"), "{stderr}");
    let (ok, _, stderr) = train(
        &[
            "--device",
            "cuda",
            "--out",
            dir.path().join("r").to_str().expect("utf8"),
        ],
        &cache,
    );
    assert!(!ok && stderr.contains("CUDA"), "{stderr}");
    let (ok, _, stderr) = common::cli(&["train", "experiments/table3.yaml"]);
    assert!(
        !ok && stderr.contains("30 grid cells") && stderr.contains("--cell"),
        "{stderr}"
    );
}

/// `kill -9` in the middle of training, then `--resume`: the same weights as a run that was
/// never interrupted.
#[test]
fn kill_9_then_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let cache_set = format!("data.cache_dir={}", cache.display());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let sets = [
        "--set",
        "stages=[stage2]",
        "--set",
        "training.iterations=500",
        "--set",
        "training.checkpoint_every=50",
        "--set",
        "training.validate_every=0",
        "--set",
        cache_set.as_str(),
    ];
    let mut args = vec!["--out", a.to_str().expect("utf8")];
    args.extend_from_slice(&sets);
    let (ok, _, stderr) = train(&args, &cache);
    assert!(ok, "{stderr}");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_metricunet"))
        .args([
            "train",
            "tests/fixtures/tiny.yaml",
            "--out",
            b.to_str().expect("utf8"),
        ])
        .args(sets)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let ckpt = b.join("stage2/checkpoint.safetensors");
    let t = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(t.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().expect("wait");
    assert!(
        !b.join("stage2/model.safetensors").exists(),
        "the run finished before it was killed"
    );

    let mut args = vec!["--out", b.to_str().expect("utf8"), "--resume"];
    args.extend_from_slice(&sets);
    let (ok, stdout, stderr) = train(&args, &cache);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("resumed at"), "{stdout}");
    let wa = std::fs::read(a.join("stage2/model.safetensors")).expect("a");
    let wb = std::fs::read(b.join("stage2/model.safetensors")).expect("b");
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
    let leftovers: Vec<String> = std::fs::read_dir(b.join("stage2"))
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
