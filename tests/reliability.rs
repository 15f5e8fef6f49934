//! Faults a user meets (each failed before its fix): hashes that moved with a folder's
//! spelling, duplicate or oversized grids, errors that named the wrong thing, a second
//! `train` in one folder, a damaged cell blamed on a healthy one, temporary files that
//! outlived a rerun, one report folder shared by two run roots, shards that depended on the
//! submission.

use std::path::{Path, PathBuf};

use metricunet_core::ExperimentPlan;
use metricunet_runner::Shard;

mod common;
use common::{cli, plan_err};

const TINY: &str = "tests/fixtures/tiny.yaml";

fn tiny_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TINY)).expect("fixture")
}

fn plan_with(sets: &[&str]) -> Result<ExperimentPlan, metricunet_core::CoreError> {
    metricunet::link_plugins();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    ExperimentPlan::with_overrides(&tiny_text(), "tiny.yaml", &sets)
}

#[test]
fn hashes_ignore_where_the_cache_is_and_how_it_is_spelt() {
    let a = plan_with(&["data.cache_dir=runs/sweep/../cache"]).expect("a");
    let b = plan_with(&["data.cache_dir=/somewhere/else"]).expect("b");
    let c = plan_with(&[]).expect("default");
    for p in [&b, &c] {
        assert_eq!(
            a.cells[0].run_hash().expect("hash"),
            p.cells[0].run_hash().expect("hash")
        );
        assert_eq!(
            a.cells[0].stage1_hash().expect("hash"),
            p.cells[0].stage1_hash().expect("hash")
        );
    }
    // what is computed still changes them
    let d = plan_with(&["data.spacing_mm=[3.0, 3.0, 3.0]"]).expect("d");
    assert_ne!(
        a.cells[0].stage1_hash().expect("hash"),
        d.cells[0].stage1_hash().expect("hash")
    );
}

#[test]
fn duplicate_grid_values_are_refused_like_duplicate_seeds() {
    for values in ["[0.1, 0.1]", "[0.1, 0.01, 0.10]"] {
        let e = plan_err(&format!("grid:\n  metric.lambda: {values}\n"));
        assert!(
            e.contains("grid.metric.lambda") && e.contains("0.1 is listed twice"),
            "{e}"
        );
    }
    let e = plan_err("grid:\n  preset: [unet, metricunet-r, unet]\n");
    assert!(e.contains("unet is listed twice"), "{e}");
}

#[test]
fn grids_over_the_limit_are_refused_before_expanding() {
    let values: Vec<String> = (0..200)
        .map(|i| format!("{}", 0.001 * (i + 1) as f64))
        .collect();
    let seeds: Vec<String> = (0..60).map(|s| s.to_string()).collect();
    let e = plan_err(&format!(
        "seeds: [{}]\ngrid:\n  metric.lambda: [{}]\n",
        seeds.join(", "),
        values.join(", ")
    ));
    assert!(
        e.contains("12000 cells is over the limit of 10000")
            && e.contains("metric.lambda: 200")
            && e.contains("seeds: 60"),
        "{e}"
    );
    // a million seeds fail at once instead of after minutes and gigabytes
    let many: Vec<String> = (0..1_000_000).map(|s| s.to_string()).collect();
    let e = plan_err(&format!("seeds: [{}]\n", many.join(",")));
    assert!(e.contains("1000000 seeds is over the limit"), "{e}");
    // the limit itself is fine
    let seeds: Vec<String> = (0..50).map(|s| s.to_string()).collect();
    let p = common::plan(&format!(
        "seeds: [{}]\ngrid:\n  metric.lambda: [{}]\n",
        seeds.join(", "),
        values.join(", ")
    ))
    .expect("10000 cells");
    assert_eq!(p.cells.len(), metricunet_core::config::MAX_CELLS);
}

#[test]
fn set_errors_name_the_set_not_the_file() {
    let e = plan_with(&["metric.lambda=abc"]).unwrap_err().to_string();
    assert!(
        e.starts_with("--set `metric.lambda=abc`")
            && e.contains("lambda")
            && !e.contains("tiny.yaml"),
        "{e}"
    );
    let e = plan_with(&["nonsense"]).unwrap_err().to_string();
    assert!(
        e.starts_with("--set `nonsense`: expected path=value"),
        "{e}"
    );
    // an error of the file itself still names the file
    let e = ExperimentPlan::with_overrides("metric: {lambda: abc}\n", "mine.yaml", &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("mine.yaml"), "{e}");
}

#[test]
fn duplicate_keys_name_both_lines() {
    let e = plan_err("name: dup\nmetric:\n  lambda: 0.1\n  # a comment\n  lambda: 0.2\n");
    assert!(
        e.contains("`lambda` appears twice, at line 3 and line 5"),
        "{e}"
    );
    let e = plan_err("name: a\ndevice: cpu\nname: b\n");
    assert!(
        e.contains("`name` appears twice, at line 1 and line 3"),
        "{e}"
    );
}

#[test]
fn shards_are_fixed_by_the_sweep() {
    let s: Shard = "2/cells".parse().expect("per cell");
    assert!(s.owns(2) && !s.owns(0) && !s.owns(6));
    assert_eq!(s.to_string(), "2/cells");
    let s: Shard = "1/4".parse().expect("modulo");
    assert!(s.owns(1) && s.owns(5) && !s.owns(2));
    for bad in ["2/1", "4/4", "1/0", "x/cells", "3"] {
        let e = bad.parse::<Shard>().unwrap_err();
        assert!(e.contains(bad) && e.contains("I/cells"), "{e}");
    }
}

#[test]
fn a_second_train_in_one_folder_stops_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).expect("mkdir");
    // a live holder: this test process
    std::fs::write(
        out.join(".lock"),
        format!(
            "{} {}\n",
            metricunet_core::fsio::host_name(),
            std::process::id()
        ),
    )
    .expect("lock");
    let (ok, _, stderr) = cli(&[
        "train",
        TINY,
        "--out",
        out.to_str().expect("utf8"),
        "--resume",
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("is training in this folder")
            && stderr.contains(&format!("process {}", std::process::id())),
        "{stderr}"
    );
    assert!(!out.join("stage1").exists(), "nothing trained");
}

fn cells_of(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("cells"))
        .expect("cells")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_cells_temporaries_and_report_folders() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("elsewhere");
    let cache = format!("data.cache_dir={}", dir.path().join("cache").display());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "tests/fixtures/tiny-sweep.yaml",
            "--root",
            root.to_str().expect("utf8"),
            "--set",
            &cache,
        ];
        args.extend(extra);
        cli(&args)
    };
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    // a run root other than runs/<name> gets its own report folder, not reports/<name>
    assert!(root.join("report").join("report.md").exists(), "{stdout}");

    // one cell's metrics.csv loses its last row: the report names that file and leaves the
    // cell out; the healthy cell is reported
    let cells = cells_of(&root);
    assert_eq!(cells.len(), 2);
    let damaged = cells[0].join("metrics.csv");
    let text = std::fs::read_to_string(&damaged).expect("csv");
    let header = text.lines().next().expect("header").to_string();
    std::fs::write(&damaged, format!("{header}\n")).expect("truncate");
    let (ok, stdout, stderr) = cli(&["report", root.to_str().expect("utf8")]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 of 2 cells finished"), "{stdout}");
    assert!(
        stderr.contains(&damaged.display().to_string()) && stderr.contains("holds 0 rows"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&cells[1].join("metrics.csv").display().to_string()),
        "{stderr}"
    );

    // temporary files a killed process left at the root, in the report and in the phantom
    // folder go with the next successful run; the damaged cell is evaluated again
    let dead = |p: PathBuf| metricunet_core::fsio::temporary_path_of(&p, 4294967);
    let leftovers = [
        dead(root.join("plan.yaml")),
        dead(root.join("report").join("report.md")),
        dead(
            dir.path()
                .join("cache/phantom-s3-n5-64x16/imagesTr/phantom_000.nii.gz"),
        ),
    ];
    for p in &leftovers {
        assert!(p.parent().expect("parent").is_dir(), "{}", p.display());
        std::fs::write(p, b"half").expect("leftover");
    }
    let (ok, stdout, stderr) = run(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("re-evaluated"), "{stdout}");
    for p in &leftovers {
        assert!(!p.exists(), "{} survived a successful rerun", p.display());
    }
    let again = std::fs::read_to_string(&damaged).expect("csv");
    assert_eq!(again.lines().count(), text.lines().count(), "{again}");
    let (ok, stdout, _) = cli(&["report", root.to_str().expect("utf8")]);
    assert!(ok && stdout.contains("2 of 2 cells finished"), "{stdout}");
}

#[test]
fn a_cause_is_said_once() {
    let (ok, _, stderr) = cli(&["eval", "--pred", "/no/a.nii.gz", "--ref", "/no/b.nii.gz"]);
    assert!(!ok);
    assert_eq!(stderr.matches("file not found").count(), 1, "{stderr}");
    assert!(stderr.contains("/no/a.nii.gz"), "{stderr}");
}
