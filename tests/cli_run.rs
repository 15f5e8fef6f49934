//! `metricunet run` and `metricunet report` as a user runs them, on the seconds-long
//! `tests/fixtures/tiny-sweep.yaml` (UNet versus MetricUNet-HCP).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn run_args(root: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "run".into(),
        "tests/fixtures/tiny-sweep.yaml".into(),
        "--root".into(),
        root.display().to_string(),
        "--report-dir".into(),
        root.join("report").display().to_string(),
        "--set".into(),
        format!(
            "data.cache_dir={}",
            root.parent().expect("parent").join("cache").display()
        ),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(root: &Path, extra: &[&str]) -> (bool, String, String) {
    let args = run_args(root, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    common::cli(&refs)
}

fn cell_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("cells"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn state(cell: &Path) -> String {
    std::fs::read_to_string(cell.join("cell.yaml"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("state: ").map(String::from))
        .unwrap_or_default()
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn sweep_writes_cells_and_a_complete_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let (ok, stdout, stderr) = run(&root, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("preset=unet") && stdout.contains("preset=metricunet-hcp"),
        "{stdout}"
    );
    // one shared stage 1, two cells with everything a cell keeps
    assert_eq!(
        std::fs::read_dir(root.join("stage1"))
            .expect("stage1")
            .count(),
        1
    );
    let cells = cell_dirs(&root);
    assert_eq!(cells.len(), 2);
    for c in &cells {
        assert_eq!(state(c), "finished");
        for f in [
            "config.yaml",
            "run.yaml",
            "split.yaml",
            "metrics.csv",
            "stage1/model.safetensors",
            "stage2/model.safetensors",
            "stage2/train_log.csv",
            "predictions/phantom_002.nii.gz",
            "probabilities/phantom_002.nii.gz",
        ] {
            assert!(c.join(f).exists(), "{}: {f} missing", c.display());
        }
        let run_yaml = std::fs::read_to_string(c.join("run.yaml")).expect("run.yaml");
        assert!(run_yaml.contains("git_revision:") && run_yaml.contains("device: cpu"));
    }
    // the copied localisers are the shared one
    let shared = std::fs::read_dir(root.join("stage1"))
        .expect("ls")
        .next()
        .expect("one")
        .expect("entry")
        .path()
        .join("model.safetensors");
    for c in &cells {
        assert_eq!(
            std::fs::read(&shared).expect("shared"),
            std::fs::read(c.join("stage1/model.safetensors")).expect("copy")
        );
    }
    // the report: tables, figures, documents
    let rep = root.join("report");
    for f in [
        "per_case.csv",
        "per_case.parquet",
        "summary.csv",
        "summary.md",
        "report.md",
        "report.html",
        "figures/fig6_preset.png",
        "figures/fig6_preset.svg",
        "figures/fig7_anchors.png",
        "figures/fig7_anchors.svg",
        "figures/fig7_curves.png",
        "figures/fig7_curves.svg",
        "figures/fig8_phantom_002.png",
        "figures/fig8_phantom_002.svg",
        "figures/embedding_phantom_002.png",
        "figures/embedding_phantom_002.svg",
        "figures/samplers_preset_metricunet-hcp.png",
        "figures/samplers_preset_metricunet-hcp.svg",
        "figures/paired_preset_metricunet-hcp.png",
        "figures/worst_preset_unet.png",
        "figures/worst_preset_metricunet-hcp.svg",
    ] {
        assert!(rep.join(f).exists(), "report: {f} missing");
    }
    let per_case = std::fs::read_to_string(rep.join("per_case.csv")).expect("csv");
    let header = per_case.lines().next().expect("header");
    assert!(
        header.starts_with("experiment,cell,config,preset,seed,case,dsc,asd,sen,ppv"),
        "{header}"
    );
    assert_eq!(per_case.lines().count(), 3, "{per_case}");
    let md = std::fs::read_to_string(rep.join("report.md")).expect("md");
    assert!(
        md.contains("preset=unet (baseline)") && md.contains("Δ"),
        "{md}"
    );
    assert!(md.contains("![Fig. 6"), "{md}");
    assert!(
        md.contains("Worst test case of preset=unet") && md.contains("## Kept weights"),
        "{md}"
    );
    // which reduction lambda refers to
    assert!(
        md.contains("`metric.lambda` = ") && md.contains("`reduction: mean`"),
        "{md}"
    );
    // the sampler lab only for the configuration with samplers
    assert!(!rep.join("figures/samplers_preset_unet.png").exists());
    // the embedding view's separation number, per configuration (one seed here)
    let sep = md
        .split("## Embedding separation")
        .nth(1)
        .expect("an embedding separation section");
    for config in ["preset=unet", "preset=metricunet-hcp"] {
        let row = sep
            .lines()
            .find(|l| l.starts_with(&format!("| {config} |")))
            .unwrap_or_else(|| panic!("no separation row for {config}: {sep}"));
        let value: f64 = row
            .split('|')
            .nth(2)
            .expect("cell")
            .trim()
            .parse()
            .expect("a number");
        assert!(value.is_finite() && value > 0.0, "{row}");
    }
    // the paired difference comes with its bootstrap interval
    assert!(md.contains("[95 % CI]"), "{md}");
    let html = std::fs::read_to_string(rep.join("report.html")).expect("html");
    assert!(
        html.contains("data:image/png;base64,iVBOR"),
        "figures not embedded"
    );
    assert!(
        !html.contains("src=\"figures/"),
        "the HTML must not depend on files beside it"
    );
    // PNGs are real images of the intended size
    let png = std::fs::read(rep.join("figures/fig6_preset.png")).expect("png");
    assert_eq!(&png[1..4], b"PNG");

    // a second run recomputes nothing
    let before: Vec<_> = cells
        .iter()
        .map(|c| mtime(&c.join("metrics.csv")))
        .collect();
    let (ok, stdout, stderr) = run(&root, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("was finished").count(), 2, "{stdout}");
    let after: Vec<_> = cells
        .iter()
        .map(|c| mtime(&c.join("metrics.csv")))
        .collect();
    assert_eq!(before, after);
    // other metrics: evaluated again from the saved predictions, nothing retrained
    let weights = std::fs::read(cells[0].join("stage2/model.safetensors")).expect("w");
    let (ok, stdout, stderr) = run(
        &root,
        &["--set", "evaluation.metrics=[dsc, hd95]", "--no-report"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("re-evaluated").count(), 2, "{stdout}");
    let m = std::fs::read_to_string(cells[0].join("metrics.csv")).expect("metrics");
    assert!(m.starts_with("case,dsc,hd95,dsc_flag,hd95_flag"), "{m}");
    assert_eq!(
        std::fs::read(cells[0].join("stage2/model.safetensors")).expect("w"),
        weights
    );
    // and back to every metric
    let (ok, stdout, stderr) = run(&root, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("re-evaluated").count(), 2, "{stdout}");
    // `report` alone gives the same tables
    let (ok, stdout, stderr) = common::cli(&[
        "report",
        root.to_str().expect("utf8"),
        "--out",
        dir.path().join("rep2").to_str().expect("utf8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 of 2 cells finished"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rep2/per_case.csv")).expect("csv"),
        per_case
    );
}

/// `kill -9` while the second cell trains: the finished cell survives untouched, the rerun
/// resumes the other from its checkpoint, and no temporary file is left.
#[test]
fn kill_9_mid_sweep_then_rerun_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let slow = [
        "--set",
        "training.iterations=400",
        "--set",
        "training.checkpoint_every=20",
        "--set",
        "training.validate_every=0",
    ];
    let args = run_args(&root, &slow);
    let mut child = Command::new(env!("CARGO_BIN_EXE_metricunet"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // wait for one finished cell and a checkpoint of the other
    let t = Instant::now();
    let (done, killed_cell) = loop {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the sweep did not get far enough"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the sweep ended ({status}) before it could be killed");
        }
        let cells = cell_dirs(&root);
        let finished: Vec<&PathBuf> = cells.iter().filter(|c| state(c) == "finished").collect();
        let training: Vec<&PathBuf> = cells
            .iter()
            .filter(|c| {
                state(c) != "finished"
                    && root
                        .join("stage2")
                        .join(record_field(c, "stage2_hash"))
                        .join("checkpoint.safetensors")
                        .exists()
            })
            .collect();
        if let (Some(f), Some(k)) = (finished.first(), training.first()) {
            break ((*f).clone(), (*k).clone());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        !killed_cell.join("metrics.csv").exists(),
        "it finished before the kill"
    );
    let kept = mtime(&done.join("metrics.csv"));
    let weights = std::fs::read(done.join("stage2/model.safetensors")).expect("w");

    let (ok, stdout, stderr) = run(&root, &slow);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("was finished") && stdout.contains(" finished "),
        "{stdout}"
    );
    assert_eq!(
        mtime(&done.join("metrics.csv")),
        kept,
        "a finished cell was recomputed"
    );
    assert_eq!(
        std::fs::read(done.join("stage2/model.safetensors")).expect("w"),
        weights
    );
    assert_eq!(state(&killed_cell), "finished");
    let log = std::fs::read_to_string(killed_cell.join("stage2/train_log.csv")).expect("log");
    assert_eq!(
        log.lines().count(),
        401,
        "one log row per iteration after the resume"
    );
    let temporaries: Vec<String> = walk(&root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("tmp"))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A cell whose loss diverges is recorded as failed; the other finishes and is reported;
/// `--retry-failed` runs it again.
#[test]
fn a_failed_cell_is_recorded_and_the_others_go_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let grid = [
        "--set",
        "grid={preset: [unet], training.learning_rate: [0.01, 1.0e30]}",
    ];
    let (ok, stdout, stderr) = run(&root, &grid);
    assert!(!ok, "a failed cell must make the run fail: {stdout}");
    assert!(
        stderr.contains("1 of 2 cells failed") && stderr.contains("--retry-failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("FAILED") && stderr.contains("loss term"),
        "{stderr}"
    );
    let states: Vec<String> = cell_dirs(&root).iter().map(|c| state(c)).collect();
    assert!(
        states.contains(&"finished".into()) && states.contains(&"failed".into()),
        "{states:?}"
    );
    let md = std::fs::read_to_string(root.join("report/report.md")).expect("report");
    assert!(
        md.contains("Cells not in this report") && md.contains("failed"),
        "{md}"
    );
    // without --retry-failed the failure is reported, not rerun
    let (ok, _, stderr) = run(&root, &grid);
    assert!(!ok && stderr.contains("failed before"), "{stderr}");
    let (ok, _, stderr) = run(&root, &[grid[0], grid[1], "--retry-failed"]);
    assert!(!ok && stderr.contains("FAILED"), "{stderr}");
}

/// Two shards of one sweep in one root, then `report` merges them.
#[test]
fn shards_split_the_cells_and_report_merges_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let (ok, stdout, stderr) = run(&root, &["--shard", "1/2"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("other shard") && stdout.contains("metricunet report"),
        "{stdout}"
    );
    assert_eq!(cell_dirs(&root).len(), 1);
    // the report of a partial sweep says what is missing
    let out = dir.path().join("rep");
    let report = || {
        common::cli(&[
            "report",
            root.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ])
    };
    let (ok, stdout, stderr) = report();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 of 2 cells finished"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).expect("md");
    assert!(md.contains("not started"), "{md}");
    let (ok, _, stderr) = run(&root, &["--shard", "0/2"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = report();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("2 of 2 cells finished"), "{stdout}");
    // bad shard specs are clear errors
    for bad in ["2/2", "x", "1/0"] {
        let (ok, _, stderr) = run(&root, &["--shard", bad]);
        assert!(!ok && stderr.contains("expected I/N"), "{bad}: {stderr}");
    }
    let (ok, _, stderr) = common::cli(&["report", dir.path().to_str().expect("utf8")]);
    assert!(!ok && stderr.contains("plan.yaml"), "{stderr}");
}

/// A grid given with `--set`, a baseline named by grid settings: one Fig. 6 per varying axis.
#[test]
fn figures_follow_the_grid_axes_and_the_named_baseline() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let (ok, stdout, stderr) = run(
        &root,
        &[
            "--set",
            "grid={preset: [metricunet-r], metric.lambda: [0.1, 0.01]}",
            "--set",
            "report.baseline=metric.lambda=0.01",
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    let figs = root.join("report/figures");
    assert!(figs.join("fig6_metric.lambda.png").exists());
    // the preset does not vary: no box plot over it
    assert!(!figs.join("fig6_preset.png").exists());
    let summary = std::fs::read_to_string(root.join("report/summary.md")).expect("summary");
    assert!(
        summary.contains("metric.lambda=0.01 (baseline)"),
        "{summary}"
    );
}

/// `grid_mode: one-at-a-time` end to end: the baseline and each axis varied alone, one
/// Fig. 6 per axis drawn with the other axis held at the file's value (no pooled view),
/// and the report says which grid it was.
#[test]
fn a_one_at_a_time_grid_draws_each_axis_with_the_other_held() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("run");
    let (ok, stdout, stderr) = run(
        &root,
        &[
            "--set",
            "preset=metricunet-r",
            "--set",
            "grid_mode=one-at-a-time",
            "--set",
            "grid={metric.lambda: [0.1, 0.01], metric.loss.sigma: [0.7, 1.0]}",
            "--set",
            "report.baseline=base",
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    let mut labels: Vec<String> = cell_dirs(&root).iter().map(|c| label(c)).collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            "metric.lambda=0.01 metric.loss.sigma=0.7",
            "metric.lambda=0.01 metric.loss.sigma=1.0",
            "metric.lambda=0.1 metric.loss.sigma=0.7",
        ]
    );
    let plan = std::fs::read_to_string(root.join("plan.yaml")).expect("plan");
    assert!(plan.contains("grid_mode: one-at-a-time"), "{plan}");
    let figs = root.join("report/figures");
    for (axis, other, values) in [
        ("metric.lambda", "metric.loss.sigma = 0.7", ["0.1", "0.01"]),
        ("metric.loss.sigma", "metric.lambda = 0.01", ["0.7", "1.0"]),
    ] {
        let svg = std::fs::read_to_string(figs.join(format!("fig6_{axis}.svg"))).expect("svg");
        // one box per value of the axis (its tick labels), nothing else
        for v in values {
            assert!(
                svg.contains(&format!(">\n{v}\n</text>")),
                "{axis}: no box for {v}"
            );
        }
        assert!(!figs.join(format!("fig6_{axis}_at_baseline.png")).exists());
        let md = std::fs::read_to_string(root.join("report/report.md")).expect("md");
        assert!(
            md.contains(&format!("Fig. 6: DSC and ASD per {axis}, {other} held")),
            "{md}"
        );
        assert!(!md.contains("pooled over the other grid axes"), "{md}");
        assert!(md.contains("One-at-a-time grid"), "{md}");
    }
    // the same axes as a product grid (4 cells, 3 of them the configurations above): each
    // axis pooled over the other, labelled so, and held at the file's value beside it
    let root = dir.path().join("product");
    let (ok, stdout, stderr) = run(
        &root,
        &[
            "--set",
            "preset=metricunet-r",
            "--set",
            "grid={metric.lambda: [0.1, 0.01], metric.loss.sigma: [0.7, 1.0]}",
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(cell_dirs(&root).len(), 4);
    let figs = root.join("report/figures");
    let md = std::fs::read_to_string(root.join("report/report.md")).expect("md");
    for (axis, other) in [
        ("metric.lambda", "metric.loss.sigma = 0.7"),
        ("metric.loss.sigma", "metric.lambda = 0.01"),
    ] {
        assert!(figs.join(format!("fig6_{axis}.png")).exists());
        assert!(figs.join(format!("fig6_{axis}_at_baseline.png")).exists());
        assert!(
            md.contains(&format!(
                "Fig. 6: DSC and ASD per {axis}, pooled over the other grid axes"
            )) && md.contains(&format!("Fig. 6: DSC and ASD per {axis}, {other} held")),
            "{md}"
        );
    }
    assert!(md.contains("Grid (every combination)"), "{md}");
}

/// A top-level field of a cell's record, as text.
fn record_field(cell: &Path, field: &str) -> String {
    std::fs::read_to_string(cell.join("cell.yaml"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(": "))
                .map(|s| s.trim_matches('\'').to_string())
        })
        .unwrap_or_default()
}

/// The `label:` of a cell's record.
fn label(cell: &Path) -> String {
    record_field(cell, "label")
}

/// A grid over post-processing trains each stage once (the cells share one stage-2 folder
/// and hold the same weights) and predicts once per cell: `largest-component` gives the
/// largest component of the unprocessed cell's mask, `fill-holes` after it only adds voxels.
#[test]
fn a_postprocess_grid_trains_once_and_predicts_per_cell() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("runs");
    let cache = format!("data.cache_dir={}", dir.path().join("cache").display());
    let (ok, stdout, stderr) = common::cli(&[
        "run",
        "tests/fixtures/tiny-postprocess.yaml",
        "--root",
        root.to_str().expect("utf8"),
        "--no-report",
        "--set",
        &cache,
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    for stage in ["stage1", "stage2"] {
        let n = std::fs::read_dir(root.join(stage)).expect(stage).count();
        assert_eq!(n, 1, "{stage}: one shared training");
    }
    let cells = cell_dirs(&root);
    assert_eq!(cells.len(), 3);
    let by_label = |l: &str| -> PathBuf {
        cells
            .iter()
            .find(|c| label(c) == l)
            .unwrap_or_else(|| {
                panic!(
                    "no cell {l}: {:?}",
                    cells.iter().map(|c| label(c)).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let (raw, largest, filled) = (
        by_label("postprocess=[]"),
        by_label("postprocess=[largest-component]"),
        by_label("postprocess=[largest-component, fill-holes]"),
    );
    let weights = std::fs::read(raw.join("stage2/model.safetensors")).expect("w");
    for c in [&largest, &filled] {
        assert_eq!(
            std::fs::read(c.join("stage2/model.safetensors")).expect("w"),
            weights
        );
        assert!(c.join("stage2/kept.yaml").exists());
    }
    let trained_stage2 = cells
        .iter()
        .filter(|c| {
            let rec = std::fs::read_to_string(c.join("cell.yaml")).expect("cell.yaml");
            rec.lines()
                .find_map(|l| l.trim().strip_prefix("stage2_s: "))
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|s| s > 0.0)
        })
        .count();
    assert_eq!(trained_stage2, 1, "stage 2 trained by one cell only");
    let mask = |cell: &Path| -> (Vec<bool>, [usize; 3]) {
        let p = cell.join("predictions/phantom_002.nii.gz");
        let v = metricunet_data::io::read_nifti(&p)
            .expect("prediction")
            .volume;
        (v.data.iter().map(|&x| x != 0.0).collect(), v.geometry.dims)
    };
    let (r, dims) = mask(&raw);
    let (l, _) = mask(&largest);
    let (f, _) = mask(&filled);
    assert_eq!(l, metricunet_core::mask::largest_component(&r, dims));
    assert_eq!(f, metricunet_core::mask::fill_holes(&l, dims));
    assert!(l.iter().zip(&f).all(|(a, b)| !a || *b));
}

/// Two runs of one experiment on one machine, in two roots, give byte-identical
/// `metrics.csv` and weights in every cell.
#[test]
fn a_rerun_in_another_root_gives_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        let (ok, stdout, stderr) = run(root, &["--no-report"]);
        assert!(ok, "{stdout}\n{stderr}");
    }
    let (ca, cb) = (cell_dirs(&a), cell_dirs(&b));
    assert_eq!(ca.len(), 2);
    for (x, y) in ca.iter().zip(&cb) {
        assert_eq!(x.file_name(), y.file_name(), "the same cell hashes");
        for f in [
            "metrics.csv",
            "stage2/model.safetensors",
            "stage1/model.safetensors",
        ] {
            assert!(
                std::fs::read(x.join(f)).expect("a") == std::fs::read(y.join(f)).expect("b"),
                "{f} differs between two runs of {}",
                x.display()
            );
        }
    }
}

/// The sampler lab on the tiny sweep: the first cell with samplers (MetricUNet-HCP), its
/// counts per sampler (at most k per image), the figure, and clear refusals.
#[test]
fn samplers_show_draws_the_configured_samplers_of_a_batch() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("lab");
    let cache = format!("data.cache_dir={}", dir.path().join("cache").display());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "samplers",
            "show",
            "tests/fixtures/tiny-sweep.yaml",
            "--set",
            cache.as_str(),
            "--out",
            out.to_str().expect("utf8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        common::cli(&refs)
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("cell 1 (preset=metricunet-hcp)"),
        "{stdout}"
    );
    assert!(stdout.contains("as initialised"), "{stdout}");
    // a row per sampler: name, candidates, anchors (batch of 2 images, k = 20 each)
    for name in ["hard-negative", "contour-aware"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {stdout}"));
        let f: Vec<&str> = row.split_whitespace().collect();
        let (candidates, anchors): (usize, usize) =
            (f[1].parse().expect("count"), f[2].parse().expect("count"));
        assert!(anchors <= 40 && anchors <= candidates, "{row}");
        assert!(
            anchors > 0,
            "the tiny fixture's patches hold foreground: {row}"
        );
    }
    let png = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "png"))
        .expect("a PNG");
    assert_eq!(&std::fs::read(&png).expect("png")[1..4], b"PNG");
    // a cell without samplers, an unknown case: errors that say what to do
    let (ok, _, stderr) = run(&["--cell", "0"]);
    assert!(!ok && stderr.contains("configures no sampler"), "{stderr}");
    let (ok, _, stderr) = run(&["--case", "nope"]);
    assert!(
        !ok && stderr.contains("--case nope") && stderr.contains("phantom_"),
        "{stderr}"
    );
}
