//! Surfaces, the exact Euclidean distance transform, and directed surface distances.

use rayon::prelude::*;

/// Voxels of `mask` with a background 6-neighbour (or on the volume's border).
pub fn surface(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let mut out = vec![false; mask.len()];
    out.par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(z, o)| {
            for y in 0..ny {
                for x in 0..nx {
                    let v = x + nx * y + plane * z;
                    if !mask[v] {
                        continue;
                    }
                    let interior = x > 0
                        && x + 1 < nx
                        && y > 0
                        && y + 1 < ny
                        && z > 0
                        && z + 1 < nz
                        && mask[v - 1]
                        && mask[v + 1]
                        && mask[v - nx]
                        && mask[v + nx]
                        && mask[v - plane]
                        && mask[v + plane];
                    o[x + nx * y] = !interior;
                }
            }
        });
    out
}

/// One line of the 1-D squared distance transform (Felzenszwalb & Huttenlocher 2012) with
/// sample spacing `s`: `out[p] = min_q (s (p - q))^2 + f[q]`.
fn edt_line(f: &[f64], s: f64, out: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let x = |i: usize| i as f64 * s;
    let mut k = 0usize;
    // skip leading infinite samples: no parabola
    let Some(first) = f.iter().position(|v| v.is_finite()) else {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    };
    v[0] = first;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in first + 1..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            let r = v[k];
            let sq = ((f[q] + x(q) * x(q)) - (f[r] + x(r) * x(r))) / (2.0 * (x(q) - x(r)));
            if sq <= z[k] {
                if k == 0 {
                    v[0] = q;
                    z[1] = f64::INFINITY;
                    break;
                }
                k -= 1;
            } else {
                k += 1;
                v[k] = q;
                z[k] = sq;
                z[k + 1] = f64::INFINITY;
                break;
            }
        }
    }
    let mut k = 0usize;
    for (p, o) in out.iter_mut().enumerate() {
        while z[k + 1] < x(p) {
            k += 1;
        }
        let d = x(p) - x(v[k]);
        *o = d * d + f[v[k]];
    }
}

/// Squared Euclidean distance (mm^2) from every voxel to the nearest `feature` voxel, with
/// voxel `spacing` (mm); infinite where there is no feature at all.
pub fn edt_squared(feature: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let mut d: Vec<f64> = feature
        .iter()
        .map(|&f| if f { 0.0 } else { f64::INFINITY })
        .collect();
    // x: contiguous lines
    d.par_chunks_mut(nx.max(1)).for_each(|line| {
        let f = line.to_vec();
        let (mut v, mut z) = (vec![0usize; nx], vec![0f64; nx + 1]);
        edt_line(&f, spacing[0], line, &mut v, &mut z);
    });
    // y: columns of each plane
    d.par_chunks_mut(plane.max(1)).for_each(|pl| {
        let (mut f, mut o, mut v, mut z) = (
            vec![0f64; ny],
            vec![0f64; ny],
            vec![0usize; ny],
            vec![0f64; ny + 1],
        );
        for x in 0..nx {
            for y in 0..ny {
                f[y] = pl[x + nx * y];
            }
            edt_line(&f, spacing[1], &mut o, &mut v, &mut z);
            for y in 0..ny {
                pl[x + nx * y] = o[y];
            }
        }
    });
    // z: one row of lines per y, computed in parallel, written back in order
    let rows: Vec<Vec<f64>> = (0..ny)
        .into_par_iter()
        .map(|y| {
            let (mut f, mut o, mut v, mut z) = (
                vec![0f64; nz],
                vec![0f64; nz],
                vec![0usize; nz],
                vec![0f64; nz + 1],
            );
            let mut row = vec![0f64; nx * nz];
            for x in 0..nx {
                for k in 0..nz {
                    f[k] = d[x + nx * y + plane * k];
                }
                edt_line(&f, spacing[2], &mut o, &mut v, &mut z);
                row[x * nz..(x + 1) * nz].copy_from_slice(&o);
            }
            row
        })
        .collect();
    for (y, row) in rows.iter().enumerate() {
        for x in 0..nx {
            for k in 0..nz {
                d[x + nx * y + plane * k] = row[x * nz + k];
            }
        }
    }
    d
}

/// Distances (mm) of each surface voxel of one mask to the other mask's surface, both ways.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfaceDistances {
    /// From every surface voxel of the prediction to the reference surface.
    pub pred_to_ref: Vec<f64>,
    /// From every surface voxel of the reference to the prediction surface.
    pub ref_to_pred: Vec<f64>,
}

/// Surface distances of two masks on the same grid; `None` when either mask is empty.
/// Work is limited to the bounding box of both masks (exact: all surface voxels lie in it).
pub fn surface_distances(
    pred: &[bool],
    reference: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Option<SurfaceDistances> {
    let [nx, ny, _] = dims;
    let bbox = |m: &[bool]| metricunet_core::metric::bounding_box(m, dims);
    let (pl, ph) = bbox(pred)?;
    let (rl, rh) = bbox(reference)?;
    let lo = [0, 1, 2].map(|a| pl[a].min(rl[a]));
    let hi = [0, 1, 2].map(|a| ph[a].max(rh[a]));
    let sub = [0, 1, 2].map(|a| hi[a] - lo[a]);
    // Both masks are empty outside the box, so the surface of the box's copy (its border
    // counting as background, like the volume's) equals the surface on the whole grid.
    let cut = |m: &[bool]| -> Vec<bool> {
        let mut out = Vec::with_capacity(sub.iter().product());
        for z in lo[2]..hi[2] {
            for y in lo[1]..hi[1] {
                let row = nx * (y + ny * z);
                out.extend_from_slice(&m[row + lo[0]..row + hi[0]]);
            }
        }
        surface(&out, sub)
    };
    let (sp, sr) = (cut(pred), cut(reference));
    let (dp, dr) = (
        edt_squared(&sp, sub, spacing),
        edt_squared(&sr, sub, spacing),
    );
    let pick = |s: &[bool], d: &[f64]| -> Vec<f64> {
        s.iter()
            .zip(d)
            .filter(|(&b, _)| b)
            .map(|(_, &v)| v.sqrt())
            .collect()
    };
    Some(SurfaceDistances {
        pred_to_ref: pick(&sp, &dr),
        ref_to_pred: pick(&sr, &dp),
    })
}

/// numpy's default (linear) percentile of `values` (sorted in place).
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = q / 100.0 * (values.len() - 1) as f64;
    let (i, frac) = (rank.floor() as usize, rank - rank.floor());
    if i + 1 < values.len() {
        values[i] + (values[i + 1] - values[i]) * frac
    } else {
        values[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Brute force: every pair of points.
    fn brute(feature: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
        let [nx, ny, _] = dims;
        let pts: Vec<[f64; 3]> = feature
            .iter()
            .enumerate()
            .filter(|(_, &f)| f)
            .map(|(v, _)| {
                [
                    (v % nx) as f64 * spacing[0],
                    ((v / nx) % ny) as f64 * spacing[1],
                    (v / (nx * ny)) as f64 * spacing[2],
                ]
            })
            .collect();
        (0..feature.len())
            .map(|v| {
                let p = [
                    (v % nx) as f64 * spacing[0],
                    ((v / nx) % ny) as f64 * spacing[1],
                    (v / (nx * ny)) as f64 * spacing[2],
                ];
                pts.iter()
                    .map(|q| (0..3).map(|a| (p[a] - q[a]).powi(2)).sum::<f64>())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn edt_equals_brute_force_with_anisotropic_spacing() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (dims, spacing, density) in [
            ([7, 5, 6], [0.7, 1.3, 2.5], 0.05),
            ([9, 4, 3], [1.0, 1.0, 1.0], 0.02),
            ([5, 8, 7], [3.0, 0.5, 1.1], 0.2),
        ] {
            let n: usize = dims.iter().product();
            let feature: Vec<bool> = (0..n).map(|_| rng.random_bool(density)).collect();
            let got = edt_squared(&feature, dims, spacing);
            let want = brute(&feature, dims, spacing);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-9 || (g.is_infinite() && w.is_infinite()),
                    "{g} vs {w}"
                );
            }
        }
        assert!(edt_squared(&[false; 8], [2, 2, 2], [1.0; 3])
            .iter()
            .all(|d| d.is_infinite()));
    }

    #[test]
    fn surface_of_a_box_and_border_voxels() {
        let dims = [5, 5, 5];
        let m: Vec<bool> = (0..125)
            .map(|v| {
                (1..4).contains(&(v % 5))
                    && (1..4).contains(&((v / 5) % 5))
                    && (1..4).contains(&(v / 25))
            })
            .collect();
        let s = surface(&m, dims);
        assert_eq!(s.iter().filter(|&&b| b).count(), 26); // 27 voxels, only the centre is interior
        assert!(!s[2 + 5 * 2 + 25 * 2]);
        // a full volume: every voxel touches the border
        assert_eq!(
            surface(&[true; 27], [3, 3, 3])
                .iter()
                .filter(|&&b| b)
                .count(),
            26
        );
    }

    #[test]
    fn percentile_is_numpys_linear() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 50.0), 2.5);
        assert!((percentile(&mut v, 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&mut [7.0], 95.0), 7.0);
        assert!(percentile(&mut [], 95.0).is_nan());
    }
}
