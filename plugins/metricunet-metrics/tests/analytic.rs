//! Metrics against independent references: analytic shapes and a brute-force medpy.

use metricunet_core::{registry, Comparison, MaskRef, Metric, MetricValue};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn metric(name: &str) -> Box<dyn Metric> {
    metricunet_metrics::link();
    let p = registry::metric(name, "test").expect("registered");
    let params = p.params(&Default::default(), "test").expect("params");
    (p.build)(&params).expect("build")
}

fn value(name: &str, a: &[bool], b: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> MetricValue {
    let (ma, mb) = (
        MaskRef::new(a, dims).expect("a"),
        MaskRef::new(b, dims).expect("b"),
    );
    metric(name)
        .compute(&Comparison::new(ma, mb, spacing).expect("comparison"))
        .expect("compute")
}

fn v(name: &str, a: &[bool], b: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> f64 {
    value(name, a, b, dims, spacing).value
}

fn mask(dims: [usize; 3], f: impl Fn(usize, usize, usize) -> bool) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    (0..nx * ny * nz)
        .map(|i| f(i % nx, (i / nx) % ny, i / (nx * ny)))
        .collect()
}

/// medpy, written out independently: surface = mask XOR erosion (6-neighbourhood, border
/// value 0); distances by comparing every pair of surface voxels.
fn brute(a: &[bool], b: &[bool], dims: [usize; 3], sp: [f64; 3]) -> (Vec<f64>, Vec<f64>) {
    let [nx, ny, nz] = dims;
    let at = |m: &[bool], x: i64, y: i64, z: i64| {
        x >= 0
            && y >= 0
            && z >= 0
            && (x as usize) < nx
            && (y as usize) < ny
            && (z as usize) < nz
            && m[x as usize + nx * (y as usize + ny * z as usize)]
    };
    let surf = |m: &[bool]| -> Vec<[f64; 3]> {
        let mut out = Vec::new();
        for z in 0..nz as i64 {
            for y in 0..ny as i64 {
                for x in 0..nx as i64 {
                    let eroded = at(m, x, y, z)
                        && [
                            (1, 0, 0),
                            (-1, 0, 0),
                            (0, 1, 0),
                            (0, -1, 0),
                            (0, 0, 1),
                            (0, 0, -1),
                        ]
                        .iter()
                        .all(|(dx, dy, dz)| at(m, x + dx, y + dy, z + dz));
                    if at(m, x, y, z) && !eroded {
                        out.push([x as f64 * sp[0], y as f64 * sp[1], z as f64 * sp[2]]);
                    }
                }
            }
        }
        out
    };
    let (sa, sb) = (surf(a), surf(b));
    let directed = |from: &[[f64; 3]], to: &[[f64; 3]]| -> Vec<f64> {
        from.iter()
            .map(|p| {
                to.iter()
                    .map(|q| {
                        ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2))
                            .sqrt()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    };
    (directed(&sa, &sb), directed(&sb, &sa))
}

fn np_percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let r = q / 100.0 * (v.len() - 1) as f64;
    let i = r.floor() as usize;
    if i + 1 < v.len() {
        v[i] + (v[i + 1] - v[i]) * (r - i as f64)
    } else {
        v[i]
    }
}

#[test]
fn surface_metrics_equal_brute_force_medpy() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (dims, sp) in [
        ([12, 10, 8], [0.8, 0.8, 2.5]),
        ([9, 11, 7], [1.0, 1.0, 1.0]),
        ([10, 8, 9], [1.3, 0.6, 1.9]),
    ] {
        // two overlapping random blobs of cubes, one touching the volume border
        let blob = |rng: &mut ChaCha8Rng| -> Vec<bool> {
            let boxes: Vec<([usize; 3], [usize; 3])> = (0..4)
                .map(|_| {
                    let lo = [
                        rng.random_range(0..dims[0] - 3),
                        rng.random_range(0..dims[1] - 3),
                        rng.random_range(0..dims[2] - 3),
                    ];
                    (
                        lo,
                        [
                            lo[0] + rng.random_range(2..5),
                            lo[1] + rng.random_range(2..5),
                            lo[2] + rng.random_range(2..5),
                        ],
                    )
                })
                .collect();
            mask(dims, |x, y, z| {
                boxes.iter().any(|(l, h)| {
                    x >= l[0] && x < h[0] && y >= l[1] && y < h[1] && z >= l[2] && z < h[2]
                })
            })
        };
        let (a, b) = (blob(&mut rng), blob(&mut rng));
        let (ab, ba) = brute(&a, &b, dims, sp);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let asd = 0.5 * (mean(&ab) + mean(&ba));
        let assd = (ab.iter().sum::<f64>() + ba.iter().sum::<f64>()) / (ab.len() + ba.len()) as f64;
        let hd95 = np_percentile(ab.iter().chain(&ba).copied().collect(), 95.0);
        assert!((v("asd", &a, &b, dims, sp) - asd).abs() < 1e-9);
        assert!((v("assd", &a, &b, dims, sp) - assd).abs() < 1e-9);
        assert!((v("hd95", &a, &b, dims, sp) - hd95).abs() < 1e-9);
        // symmetric metrics are symmetric; SEN and PPV swap
        for m in ["dsc", "asd", "assd", "hd95"] {
            assert!(
                (v(m, &a, &b, dims, sp) - v(m, &b, &a, dims, sp)).abs() < 1e-12,
                "{m}"
            );
        }
        assert_eq!(v("sen", &a, &b, dims, sp), v("ppv", &b, &a, dims, sp));
    }
}

#[test]
fn a_mask_against_itself() {
    let dims = [20, 20, 10];
    let m = mask(dims, |x, y, z| {
        (x as i64 - 10).pow(2) + (y as i64 - 10).pow(2) + (z as i64 - 5).pow(2) * 4 < 40
    });
    for (name, want) in [
        ("dsc", 1.0),
        ("sen", 1.0),
        ("ppv", 1.0),
        ("asd", 0.0),
        ("assd", 0.0),
        ("hd95", 0.0),
    ] {
        assert_eq!(v(name, &m, &m, dims, [0.7, 0.7, 3.0]), want, "{name}");
    }
}

/// A box and the same box shifted by t voxels along x (spacing sx): overlap (L - t) / L, and
/// the farthest surface point is exactly t * sx away.
#[test]
fn shifted_box() {
    let dims = [30, 20, 16];
    let sp = [1.5, 0.8, 2.0];
    let (l, t) = (10usize, 3usize);
    let a = mask(dims, |x, y, z| {
        (5..5 + l).contains(&x) && (4..14).contains(&y) && (3..11).contains(&z)
    });
    let b = mask(dims, |x, y, z| {
        (5 + t..5 + l + t).contains(&x) && (4..14).contains(&y) && (3..11).contains(&z)
    });
    assert!((v("dsc", &a, &b, dims, sp) - (l - t) as f64 / l as f64).abs() < 1e-12);
    assert!((v("sen", &a, &b, dims, sp) - 0.7).abs() < 1e-12);
    let (ma, mb) = (
        MaskRef::new(&a, dims).expect("a"),
        MaskRef::new(&b, dims).expect("b"),
    );
    metricunet_metrics::link();
    let hd100 = registry::metric("hd95", "t").expect("hd");
    let mut map = serde_norway::Mapping::new();
    map.insert("percentile".into(), 100.0.into());
    let hd = (hd100.build)(&hd100.params(&map, "t").expect("params")).expect("build");
    let c = Comparison::new(ma, mb, sp).expect("comparison");
    assert!((hd.compute(&c).expect("hd").value - t as f64 * sp[0]).abs() < 1e-12);
    assert!(v("hd95", &a, &b, dims, sp) <= t as f64 * sp[0] + 1e-12);
}

/// Concentric spheres of radii 10 and 14 mm: every surface distance is about 4 mm (up to the
/// voxelisation of the surfaces), at isotropic and anisotropic spacing.
#[test]
fn concentric_spheres() {
    for sp in [[1.0, 1.0, 1.0], [0.8, 0.8, 2.0], [0.5, 1.2, 1.5]] {
        let dims = [
            (40.0 / sp[0]) as usize,
            (40.0 / sp[1]) as usize,
            (40.0 / sp[2]) as usize,
        ];
        let ball = |r: f64| {
            mask(dims, |x, y, z| {
                let p = [
                    x as f64 * sp[0] - 20.0,
                    y as f64 * sp[1] - 20.0,
                    z as f64 * sp[2] - 20.0,
                ];
                p[0] * p[0] + p[1] * p[1] + p[2] * p[2] <= r * r
            })
        };
        let (inner, outer) = (ball(10.0), ball(14.0));
        let max_sp = sp.iter().cloned().fold(0.0, f64::max);
        for m in ["asd", "assd"] {
            let d = v(m, &inner, &outer, dims, sp);
            assert!((d - 4.0).abs() < 0.5 * max_sp + 0.1, "{m} at {sp:?}: {d}");
        }
        let hd = v("hd95", &inner, &outer, dims, sp);
        assert!(hd >= 3.5 && hd <= 4.0 + max_sp, "hd95 at {sp:?}: {hd}");
        let dsc = v("dsc", &inner, &outer, dims, sp);
        let want = 2.0 * 1000.0 / (1000.0 + 2744.0); // volumes r^3
        assert!((dsc - want).abs() < 0.03, "dsc {dsc} vs {want}");
    }
}

#[test]
fn empty_masks_are_flagged_not_panics() {
    let dims = [4, 4, 4];
    let empty = vec![false; 64];
    let one = mask(dims, |x, y, z| x == 1 && y == 1 && z == 1);
    let d = value("dsc", &empty, &empty, dims, [1.0; 3]);
    assert!(d.value.is_nan() && d.flag.as_deref() == Some("both masks empty"));
    assert_eq!(v("dsc", &empty, &one, dims, [1.0; 3]), 0.0);
    assert_eq!(
        value("sen", &one, &empty, dims, [1.0; 3]).flag.as_deref(),
        Some("reference empty")
    );
    assert_eq!(
        value("ppv", &empty, &one, dims, [1.0; 3]).flag.as_deref(),
        Some("prediction empty")
    );
    for m in ["asd", "assd", "hd95"] {
        let r = value(m, &empty, &one, dims, [1.0; 3]);
        assert!(
            r.value.is_nan() && r.flag.as_deref() == Some("prediction empty"),
            "{m}"
        );
    }
    let (a, b) = (
        MaskRef::new(&one, dims).expect("a"),
        MaskRef::new(&[false; 8], [2, 2, 2]).expect("b"),
    );
    assert!(Comparison::new(a, b, [1.0; 3]).is_err());
}
