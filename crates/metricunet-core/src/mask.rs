//! Binary-mask algorithms shared by data preparation, stage-1 localisation and the
//! post-processing plugins (one connected-component labelling for all of them), and the exact
//! Euclidean distance transform of the surface metrics and the boundary loss. Masks are
//! flat, `dims = [nx, ny, nz]`, x fastest; neighbours are the 6 face neighbours.

use rayon::prelude::*;

/// The 6-connected components of the voxels where `inside` holds: a label per voxel (0 =
/// outside, components numbered from 1 in scan order) and each component's size (index
/// `label - 1`).
pub fn components(dims: [usize; 3], inside: impl Fn(usize) -> bool) -> (Vec<u32>, Vec<usize>) {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let mut label = vec![0u32; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..n {
        if label[start] != 0 || !inside(start) {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        let mut size = 0usize;
        label[start] = id;
        stack.push(start);
        while let Some(v) = stack.pop() {
            size += 1;
            let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
            let mut visit = |w: usize| {
                if label[w] == 0 && inside(w) {
                    label[w] = id;
                    stack.push(w);
                }
            };
            if x > 0 {
                visit(v - 1);
            }
            if x + 1 < nx {
                visit(v + 1);
            }
            if y > 0 {
                visit(v - nx);
            }
            if y + 1 < ny {
                visit(v + nx);
            }
            if z > 0 {
                visit(v - nx * ny);
            }
            if z + 1 < nz {
                visit(v + nx * ny);
            }
        }
        sizes.push(size);
    }
    (label, sizes)
}

/// The largest 6-connected component of `mask` (the first in scan order among equals); all
/// false when `mask` is empty.
pub fn largest_component(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let (label, sizes) = components(dims, |v| mask[v]);
    let Some(best) = sizes
        .iter()
        .enumerate()
        .fold(None, |b: Option<(usize, usize)>, (i, &s)| match b {
            Some((_, bs)) if bs >= s => b,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i as u32 + 1)
    else {
        return vec![false; mask.len()];
    };
    label.iter().map(|&l| l == best).collect()
}

/// `mask` with its holes filled: every background voxel not 6-connected to the volume's
/// border becomes foreground (3D, as scipy's `binary_fill_holes` with its default
/// structure).
pub fn fill_holes(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = dims;
    let (label, sizes) = components(dims, |v| !mask[v]);
    let mut open = vec![false; sizes.len() + 1];
    for (v, &l) in label.iter().enumerate() {
        let (x, y, z) = (v % nx, (v / nx) % ny, v / (nx * ny));
        if l != 0 && (x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz) {
            open[l as usize] = true;
        }
    }
    mask.iter()
        .zip(&label)
        .map(|(&m, &l)| m || !open[l as usize])
        .collect()
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
    fn components_and_the_largest() {
        let dims = [6, 4, 3];
        let mut m = vec![false; 72];
        // a 2-voxel blob and a 4-voxel line; diagonal neighbours do not connect
        m[0] = true;
        m[1] = true;
        for x in 2..6 {
            m[x + 6 * 2 + 24] = true;
        }
        m[1 + 6 + 24] = true;
        let (_, sizes) = components(dims, |v| m[v]);
        assert_eq!(sizes, [2, 1, 4]);
        let l = largest_component(&m, dims);
        assert_eq!(l.iter().filter(|&&b| b).count(), 4);
        assert!(l[2 + 12 + 24] && !l[0]);
        assert!(largest_component(&[false; 72], dims).iter().all(|&b| !b));
    }

    #[test]
    fn holes_inside_are_filled_and_open_cavities_are_not() {
        // a 5 x 5 x 5 hollow cube (shell 1 voxel) in a 7^3 volume: its 3^3 inside is a hole
        let dims = [7, 7, 7];
        let at = |x: usize, y: usize, z: usize| (z * 7 + y) * 7 + x;
        let mut m = vec![false; 343];
        for z in 1..6 {
            for y in 1..6 {
                for x in 1..6 {
                    let shell = [x, y, z].iter().any(|&c| c == 1 || c == 5);
                    m[at(x, y, z)] = shell;
                }
            }
        }
        let f = fill_holes(&m, dims);
        assert_eq!(f.iter().filter(|&&b| b).count(), 125);
        assert!(f[at(3, 3, 3)] && !f[at(0, 0, 0)]);
        // a hole opened to the outside through one face voxel stays open
        m[at(3, 3, 1)] = false;
        let f = fill_holes(&m, dims);
        assert!(!f[at(3, 3, 3)]);
        assert_eq!(f, m);
    }
}
