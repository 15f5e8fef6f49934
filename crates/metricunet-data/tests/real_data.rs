//! The real pelvic CT in `tests/data/totalseg-example/` end to end: load, map label 22
//! (prostate), resample, crop, extract patches, write a volume back; geometry and values are
//! compared with what nibabel 5 reads from the same files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use metricunet_data::cache::load_preprocessed;
use metricunet_data::dataset::{load_case, Case};
use metricunet_data::io::{read_nifti, write_nifti};
use metricunet_data::patches::{extract_patches, PatchSpec};
use metricunet_data::preprocess::{stage1_volume, stage2_crop, PreprocessParams};
use rand::SeedableRng;

fn example_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/totalseg-example");
    assert!(
        dir.join("ct.nii.gz").exists(),
        "the real-data example is expected at {} (kept in the repository with its licence note)",
        dir.display()
    );
    dir
}

fn case() -> Case {
    let d = example_dir();
    Case {
        id: "totalseg-example".into(),
        image: d.join("ct.nii.gz"),
        label: Some(d.join("labels.nii.gz")),
    }
}

#[test]
fn reads_like_nibabel() {
    let ct = read_nifti(&case().image).expect("ct");
    let g = &ct.volume.geometry;
    assert_eq!(g.dims, [122, 101, 112]);
    assert_eq!(g.spacing, [3.0, 3.0, 3.0]);
    // nibabel: affine rows [3 0 0 -177.9563] [0 3 0 11.319] [0 0 3 94.3018]
    let want = [
        [3.0, 0.0, 0.0, -177.9563],
        [0.0, 3.0, 0.0, 11.319],
        [0.0, 0.0, 3.0, 94.3018],
        [0.0, 0.0, 0.0, 1.0],
    ];
    for (r, row) in want.iter().enumerate() {
        for (c, w) in row.iter().enumerate() {
            assert!(
                (g.affine[r][c] - w).abs() < 1e-3,
                "affine[{r}][{c}] = {}",
                g.affine[r][c]
            );
        }
    }
    // nibabel: get_fdata()[10, 20, 30] = -132, sum = -496851173
    assert_eq!(ct.volume.get(10, 20, 30), -132.0);
    let sum: f64 = ct.volume.data.iter().map(|&v| f64::from(v)).sum();
    assert_eq!(sum, -496_851_173.0);
    let loaded = load_case(&case(), &BTreeMap::from([(22, 1)])).expect("case");
    let label = loaded.label.expect("label");
    // nibabel: 549 prostate voxels, mean 12.2 HU
    let fg: Vec<usize> = label
        .data
        .iter()
        .enumerate()
        .filter(|(_, &v)| v == 1)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fg.len(), 549);
    let mean = fg
        .iter()
        .map(|&i| f64::from(ct.volume.data[i]))
        .sum::<f64>()
        / 549.0;
    assert!((mean - 12.2).abs() < 0.05, "{mean}");
}

#[test]
fn preprocess_patches_and_write_back() {
    let map = BTreeMap::from([(22, 1)]);
    let params = PreprocessParams {
        hu_window: [-200.0, 300.0],
        ..Default::default()
    };
    let p = load_preprocessed(&case(), &map, &params, None).expect("preprocess");
    assert_eq!(p.resampled.dims, [366, 303, 336]);
    assert_eq!(p.resampled.spacing, [1.0; 3]);
    let label = p.label.as_ref().expect("label");
    let n = label.data.iter().filter(|&&v| v != 0).count();
    // 549 voxels of 27 mL each: 14.8 mL, give or take the nearest-neighbour edges
    assert!((n as f64 - 549.0 * 27.0).abs() < 0.1 * 549.0 * 27.0, "{n}");
    // the body crop is smaller than the field of view and holds the whole prostate
    assert!(p
        .image
        .geometry
        .dims
        .iter()
        .zip(p.resampled.dims)
        .all(|(a, b)| *a <= b));
    assert!(p.image.data.iter().all(|v| (0.0..=255.0).contains(v)));

    // stage 1: 1/4 resolution, 64 x 64 x 5 patches
    let (s1, l1) = stage1_volume(&p, 4).expect("stage 1");
    let spec1 = PatchSpec {
        size: [64, 64],
        slices: 5,
        per_case: 12,
        foreground_share: 0.5,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let patches =
        extract_patches(&s1, l1.as_ref().expect("label"), &spec1, &mut rng).expect("patches");
    assert_eq!((patches.n, patches.inputs.len()), (12, 12 * 5 * 64 * 64));
    assert!(patches.foreground_count() >= 6);

    // stage 2: 128^3 around the prostate (it lies on the lowest slices: the box is padded)
    let c = p.label_centroid().expect("centroid");
    let (s2, l2, offset) = stage2_crop(&p, c, [128, 128, 128]);
    let l2 = l2.expect("label");
    assert_eq!(l2.data.iter().filter(|&&v| v != 0).count(), n);
    assert!(offset[2] < 0, "the crop reaches below the scan");
    let spec2 = PatchSpec {
        size: [64, 64],
        slices: 3,
        per_case: 8,
        foreground_share: 1.0,
    };
    let patches = extract_patches(&s2, &l2, &spec2, &mut rng).expect("patches");
    assert_eq!(patches.foreground_count(), 8);

    // write the crop's label back on the CT's grid with the CT's header
    let back = p.to_original(&l2, offset).expect("to original");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("prostate.nii.gz");
    let ct = read_nifti(&case().image).expect("ct");
    write_nifti(&out, &back, Some(&ct.header)).expect("write");
    let reread = read_nifti(&out).expect("reread");
    assert_eq!(reread.volume.geometry.dims, ct.volume.geometry.dims);
    assert!(reread.volume.geometry.affine_distance(&ct.volume.geometry) < 1e-4);
    let mapped = load_case(&case(), &map)
        .expect("case")
        .label
        .expect("label");
    assert_eq!(
        reread.volume.data,
        mapped
            .data
            .iter()
            .map(|&v| f32::from(v))
            .collect::<Vec<_>>()
    );
}
