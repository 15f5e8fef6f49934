//! Tests of the phantom generator.

use super::*;

fn small() -> PhantomSize {
    PhantomSize {
        in_plane: 96,
        slices: 24,
    }
}

#[test]
fn deterministic_for_a_seed_and_varied_across_cases() {
    let a = generate(7, 0, &small());
    let b = generate(7, 0, &small());
    assert_eq!(a.image.data, b.image.data);
    assert_eq!(a.labels.data, b.labels.data);
    let c = generate(7, 1, &small());
    assert_ne!(a.subject, c.subject);
    assert_ne!(generate(8, 0, &small()).subject, a.subject);
}

#[test]
fn written_dataset_reads_back_as_msd() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = write_dataset(dir.path(), 2, 3, &small(), &|_| {}).expect("write");
    let found = crate::dataset::discover_msd(dir.path()).expect("discover");
    assert_eq!(found, cases);
    let loaded = crate::dataset::load_case(&found[1], &std::collections::BTreeMap::from([(1, 1)]))
        .expect("load");
    let direct = generate(3, 1, &small());
    assert_eq!(loaded.image.volume.data, direct.image.data);
    assert!(
        loaded
            .image
            .volume
            .geometry
            .affine_distance(&direct.image.geometry)
            < 1e-4
    );
    let fg = loaded
        .label
        .as_ref()
        .map(|l| l.data.iter().filter(|&&v| v == 1).count());
    assert_eq!(
        fg,
        Some(
            direct
                .labels
                .data
                .iter()
                .filter(|&&v| v == labels::PROSTATE)
                .count()
        )
    );
    assert!(std::fs::read_to_string(dir.path().join("dataset.json"))
        .expect("json")
        .contains("\"numTraining\": 2"));
}

#[test]
fn every_structure_is_present_with_plausible_hu() {
    for i in 0..3 {
        let c = generate(
            1,
            i,
            &PhantomSize {
                in_plane: 160,
                slices: 40,
            },
        );
        let mean = |l: u8| {
            let v: Vec<f32> = c
                .image
                .data
                .iter()
                .zip(&c.labels.data)
                .filter(|(_, &m)| m == l)
                .map(|(v, _)| *v)
                .collect();
            assert!(!v.is_empty(), "case {i}: label {l} missing");
            v.iter().sum::<f32>() / v.len() as f32
        };
        let (p, b, bone, fat) = (
            mean(labels::PROSTATE),
            mean(labels::BLADDER),
            mean(labels::BONE),
            mean(labels::FAT),
        );
        assert!((10.0..60.0).contains(&p), "prostate {p}");
        assert!((-20.0..40.0).contains(&b), "bladder {b}");
        assert!(bone > 200.0, "bone {bone}");
        assert!((-130.0..-40.0).contains(&fat), "fat {fat}");
        assert!(c.image.data.iter().any(|&v| v < -900.0), "no air");
        let s = &c.subject;
        let [fx, fz] = [512.0 / 160.0, 100.0 / 40.0];
        assert!(
            (0.9 * fx..1.4 * fx).contains(&s.spacing[0]) && (fz..=3.0 * fz).contains(&s.spacing[2])
        );
    }
}
