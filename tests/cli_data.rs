//! `metricunet phantom`, `realism` and `bench preprocess` as a user runs them.

mod common;

use common::cli as run;

#[test]
fn phantom_writes_a_decathlon_dataset() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("ph");
    let o = out.to_str().expect("utf8");
    let (ok, stdout, stderr) = run(&[
        "phantom",
        "--cases",
        "3",
        "--seed",
        "5",
        "--in-plane",
        "48",
        "--slices",
        "12",
        "--out",
        o,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("wrote 3 phantom cases"), "{stdout}");
    for i in 0..3 {
        assert!(out.join(format!("imagesTr/phantom_00{i}.nii.gz")).exists());
        assert!(out.join(format!("labelsTr/phantom_00{i}.nii.gz")).exists());
    }
    let cases = metricunet_data::dataset::discover_msd(&out).expect("msd");
    assert_eq!(cases.len(), 3);
    // the same seed gives the same files
    let again = dir.path().join("again");
    let (ok, _, _) = run(&[
        "phantom",
        "--cases",
        "1",
        "--seed",
        "5",
        "--in-plane",
        "48",
        "--slices",
        "12",
        "--out",
        again.to_str().expect("utf8"),
    ]);
    assert!(ok);
    let a = metricunet_data::io::read_nifti(&out.join("imagesTr/phantom_000.nii.gz")).expect("a");
    let b = metricunet_data::io::read_nifti(&again.join("imagesTr/phantom_000.nii.gz")).expect("b");
    assert_eq!(a.volume.data, b.volume.data);
    let (ok, _, stderr) = run(&["phantom", "--cases", "0", "--out", o]);
    assert!(!ok && stderr.contains("--cases"), "{stderr}");
}

#[test]
fn realism_and_bench_print_their_tables() {
    let dir = tempfile::tempdir().expect("tmp");
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/totalseg-example");
    let out = dir.path().join("realism");
    let (ok, stdout, stderr) = run(&[
        "realism",
        "--real",
        real.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--cases",
        "1",
    ]);
    assert!(ok, "{stderr}");
    for s in [
        "| prostate | 12.2 +- 28.4 | 549 |",
        "| bladder |",
        "| bone |",
        "| fat |",
    ] {
        assert!(stdout.contains(s), "{s} missing:\n{stdout}");
    }
    assert!(
        out.join("real_ct.png").exists()
            && out.join("phantom_ct.png").exists()
            && out.join("realism.md").exists()
    );
    let (ok, _, stderr) = run(&[
        "realism",
        "--real",
        "/no/such/dir",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(!ok && stderr.contains("/no/such/dir"), "{stderr}");
    let (ok, stdout, stderr) = run(&[
        "bench",
        "preprocess",
        "--in-plane",
        "64",
        "--slices",
        "16",
        "--repeats",
        "1",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("resample to 1 mm + window + body crop:"),
        "{stdout}"
    );
}
