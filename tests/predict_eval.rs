//! The pipeline on the real CT in `tests/data/totalseg-example/`: a model trained for a
//! few iterations predicts a mask in the CT's own geometry; `eval` of the reference label 22
//! against itself gives DSC 1. (The point is geometry, not accuracy.)

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::cli;

fn real() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/totalseg-example")
}

/// Set the stage-1 head's bias so that it marks every voxel (`+`) or none (`-`).
fn force_stage1(run: &Path, foreground: bool) {
    let path = run.join("stage1/model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu).expect("weights");
    let b = if foreground {
        [-20f32, 20.0]
    } else {
        [20f32, -20.0]
    };
    w.insert(
        "segb.bias".into(),
        Tensor::new(&b, &Device::Cpu).expect("bias"),
    );
    // and no say for the rest of the head
    let zero = w
        .get("segb.weight")
        .expect("segb")
        .zeros_like()
        .expect("zeros");
    w.insert("segb.weight".into(), zero);
    candle_core::safetensors::save(&w, &path).expect("save");
}

#[test]
fn predict_in_the_ct_geometry_and_evaluate() {
    let dir = tempfile::tempdir().expect("tmp");
    let run = dir.path().join("run");
    let cache = format!("data.cache_dir={}", dir.path().join("cache").display());
    let (ok, _, stderr) = cli(&[
        "train",
        "tests/fixtures/tiny.yaml",
        "--out",
        run.to_str().expect("utf8"),
        "--set",
        &cache,
    ]);
    assert!(ok, "{stderr}");
    force_stage1(&run, true);

    let ct = real().join("ct.nii.gz");
    let mask = dir.path().join("out/prostate.nii.gz");
    let prob = dir.path().join("out/prob.nii.gz");
    let (ok, stdout, stderr) = cli(&[
        "predict",
        "--model",
        run.to_str().expect("utf8"),
        "--input",
        ct.to_str().expect("utf8"),
        "--output",
        mask.to_str().expect("utf8"),
        "--probabilities",
        prob.to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("prostate.nii.gz"), "{stdout}");
    let source = metricunet_data::io::read_nifti(&ct).expect("ct");
    for out in [&mask, &prob] {
        let written = metricunet_data::io::read_nifti(out).expect("output");
        assert_eq!(written.volume.geometry.dims, source.volume.geometry.dims);
        assert!(
            written
                .volume
                .geometry
                .affine_distance(&source.volume.geometry)
                < 1e-4
        );
        assert_eq!(written.header.sform_code, source.header.sform_code);
    }
    let m = metricunet_data::io::read_nifti(&mask).expect("mask");
    assert!(m.volume.data.iter().all(|&v| v == 0.0 || v == 1.0));
    let p = metricunet_data::io::read_nifti(&prob).expect("prob");
    assert!(p.volume.data.iter().all(|&v| (0.0..=1.0).contains(&v)));

    // a folder in which one case fails: the others are written, and the exit is non-zero
    let inputs = dir.path().join("inputs");
    std::fs::create_dir_all(&inputs).expect("mkdir");
    std::fs::copy(&ct, inputs.join("good.nii.gz")).expect("copy");
    std::fs::write(inputs.join("broken.nii.gz"), b"not a nifti").expect("write");
    let outputs = dir.path().join("outputs");
    let (ok, stdout, stderr) = cli(&[
        "predict",
        "--model",
        run.to_str().expect("utf8"),
        "--input",
        inputs.to_str().expect("utf8"),
        "--output",
        outputs.to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("broken.nii.gz: FAILED") && stderr.contains("1 of 2 cases failed"),
        "{stderr}"
    );
    assert!(outputs.join("good.nii.gz").exists());
    assert!(!outputs.join("broken.nii.gz").exists());

    // eval: the reference against itself, and the prediction against the reference
    let labels = real().join("labels.nii.gz");
    let l = labels.to_str().expect("utf8");
    let csv = dir.path().join("metrics.csv");
    let (ok, stdout, stderr) = cli(&[
        "eval",
        "--pred",
        l,
        "--ref",
        l,
        "--label",
        "22",
        "--ref-label",
        "22",
        "--csv",
        csv.to_str().expect("utf8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("dsc   1.0000") && stdout.contains("asd   0.0000 mm"),
        "{stdout}"
    );
    let table = std::fs::read_to_string(&csv).expect("csv");
    assert!(
        table.starts_with("case,dsc,asd,sen,ppv,assd,hd95,"),
        "{table}"
    );
    let (ok, stdout, stderr) = cli(&[
        "eval",
        "--pred",
        mask.to_str().expect("utf8"),
        "--ref",
        l,
        "--ref-label",
        "22",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dsc"), "{stdout}");

    // a stage 1 that finds nothing is a clear error for that case
    force_stage1(&run, false);
    let (ok, stdout, stderr) = cli(&[
        "predict",
        "--model",
        run.to_str().expect("utf8"),
        "--input",
        ct.to_str().expect("utf8"),
        "--output",
        dir.path().join("none.nii.gz").to_str().expect("utf8"),
        "--device",
        "cpu",
    ]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("ct.nii.gz") && stderr.contains("found no prostate"),
        "{stderr}"
    );
    assert!(!dir.path().join("none.nii.gz").exists());
}

#[test]
fn eval_of_two_folders_writes_one_row_per_case() {
    let dir = tempfile::tempdir().expect("tmp");
    let (pred, reference) = (dir.path().join("pred"), dir.path().join("ref"));
    let g = metricunet_data::Geometry::axis_aligned([12, 12, 6], [0.9, 0.9, 2.5]);
    let cube = |lo: usize| {
        let mut v = metricunet_data::Volume::filled(0u8, g.clone());
        for z in 1..5 {
            for y in lo..lo + 5 {
                for x in lo..lo + 5 {
                    let i = v.index(x, y, z);
                    v.data[i] = 1;
                }
            }
        }
        v
    };
    for (name, p, r) in [
        ("a.nii.gz", cube(2), cube(2)),
        ("b.nii.gz", cube(3), cube(2)),
    ] {
        metricunet_data::io::write_nifti(&pred.join(name), &p, None).expect("pred");
        metricunet_data::io::write_nifti(&reference.join(name), &r, None).expect("ref");
    }
    // an empty prediction is a flagged row, not a failure
    let empty = metricunet_data::Volume::filled(0u8, g.clone());
    metricunet_data::io::write_nifti(&pred.join("c.nii.gz"), &empty, None).expect("pred");
    metricunet_data::io::write_nifti(&reference.join("c.nii.gz"), &cube(2), None).expect("ref");
    let csv = dir.path().join("table.csv");
    let (ok, stdout, stderr) = cli(&[
        "eval",
        "--pred",
        pred.to_str().expect("utf8"),
        "--ref",
        reference.to_str().expect("utf8"),
        "--csv",
        csv.to_str().expect("utf8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("shape: (3, 13)"), "{stdout}");
    let table = std::fs::read_to_string(&csv).expect("csv");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("case,dsc,asd,sen,ppv,assd,hd95,dsc_flag"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("a,1.0,0.0,1.0,1.0,0.0,0.0,"),
        "{table}"
    );
    // b: shifted by one voxel in x and y -> 4 x 4 x 4 of 5 x 5 x 4 overlap
    let dsc: f64 = lines[2]
        .split(',')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("dsc");
    assert!((dsc - 64.0 / 100.0).abs() < 1e-12, "{dsc}");
    assert!(
        lines[3].starts_with("c,0.0,NaN,0.0,NaN,NaN,NaN,") && lines[3].contains("prediction empty"),
        "{table}"
    );

    // a reference without a prediction is never dropped: an error naming it, or with
    // --allow-missing a flagged empty prediction
    std::fs::remove_file(pred.join("c.nii.gz")).expect("rm");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "eval".to_string(),
            "--pred".into(),
            pred.display().to_string(),
            "--ref".into(),
            reference.display().to_string(),
            "--csv".into(),
            csv.display().to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&[]);
    let (ok, stdout, stderr) = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("1 of 3 references have no prediction") && stderr.contains(": c "),
        "{stderr}"
    );
    let a = args(&["--allow-missing"]);
    let (ok, _, stderr) = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{stderr}");
    let table = std::fs::read_to_string(&csv).expect("csv");
    let c = table.lines().find(|l| l.starts_with("c,")).expect("row c");
    assert!(
        c.starts_with("c,0.0,") && c.contains("no prediction"),
        "{table}"
    );
    // every folder empty of predictions: all missing, named
    for name in ["a.nii.gz", "b.nii.gz"] {
        std::fs::remove_file(pred.join(name)).expect("rm");
    }
    let a = args(&[]);
    let (ok, _, stderr) = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && stderr.contains("3 of 3 references"), "{stderr}");
    // a prediction without a reference is an error too
    metricunet_data::io::write_nifti(&pred.join("z.nii.gz"), &cube(2), None).expect("pred");
    let a = args(&["--allow-missing"]);
    let (ok, _, stderr) = cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && stderr.contains("z.nii.gz") && stderr.contains("without a reference"),
        "{stderr}"
    );
}

#[test]
fn eval_errors_name_the_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let l = real().join("labels.nii.gz");
    let (ok, _, stderr) = cli(&[
        "eval",
        "--pred",
        "/no/such.nii.gz",
        "--ref",
        l.to_str().expect("utf8"),
    ]);
    assert!(!ok && stderr.contains("/no/such.nii.gz"), "{stderr}");
    // a mask on another grid
    let g = metricunet_data::Geometry::axis_aligned([4, 4, 4], [1.0; 3]);
    let other = dir.path().join("other.nii.gz");
    metricunet_data::io::write_nifti(&other, &metricunet_data::Volume::filled(1u8, g), None)
        .expect("write");
    let (ok, _, stderr) = cli(&[
        "eval",
        "--pred",
        other.to_str().expect("utf8"),
        "--ref",
        l.to_str().expect("utf8"),
    ]);
    assert!(
        !ok && stderr.contains("other.nii.gz") && stderr.contains("dims"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&[
        "predict", "--model", "/no/run", "--input", "x.nii.gz", "--output", "y.nii.gz",
    ]);
    assert!(!ok && stderr.contains("/no/run"), "{stderr}");
}
