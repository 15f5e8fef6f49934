//! Resampling between grids that share their axes (the same directions, any spacing and
//! origin): trilinear for images, nearest neighbour for labels. Separable index tables and
//! rayon over slices keep a 512 x 512 x 200 CT well under a second per pass on 2 cores.

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::volume::{Geometry, Volume};

/// For each target index along one axis: the continuous source index.
fn axis_map(src: &Geometry, tgt: &Geometry) -> Result<[(f64, f64); 3]> {
    let a = nalgebra::Matrix4::from_fn(|r, c| src.affine[r][c]);
    let inv = a
        .try_inverse()
        .ok_or_else(|| DataError::Invalid("source affine is singular".into()))?;
    let b = nalgebra::Matrix4::from_fn(|r, c| tgt.affine[r][c]);
    let m = inv * b; // target voxel -> source voxel
    for r in 0..3 {
        for c in 0..3 {
            if r != c && m[(r, c)].abs() > 1e-6 {
                return Err(DataError::Invalid(format!(
                    "grids are not axis-aligned with each other (voxel map {m}); only resampling along the same axes is supported"
                )));
            }
        }
    }
    Ok([0, 1, 2].map(|a| (m[(a, a)], m[(a, 3)])))
}

/// Source positions of one axis: `None` outside the source (more than half a voxel beyond
/// its edge voxels), else the clamped continuous index.
fn positions(scale: f64, shift: f64, n_tgt: usize, n_src: usize) -> Vec<Option<f64>> {
    (0..n_tgt)
        .map(|i| {
            let p = scale * i as f64 + shift;
            (p >= -0.5 && p <= n_src as f64 - 0.5).then(|| p.clamp(0.0, (n_src - 1) as f64))
        })
        .collect()
}

/// Trilinear interpolation of `src` onto `target`; voxels outside the source get `fill`.
pub fn resample_linear(src: &Volume<f32>, target: &Geometry, fill: f32) -> Result<Volume<f32>> {
    let maps = axis_map(&src.geometry, target)?;
    let [sx, sy, sz] = src.geometry.dims;
    let [tx, ty, tz] = target.dims;
    let w = |a: usize, n_t: usize, n_s: usize| -> Vec<Option<(usize, usize, f32)>> {
        positions(maps[a].0, maps[a].1, n_t, n_s)
            .into_iter()
            .map(|p| {
                p.map(|p| {
                    let i0 = p.floor() as usize;
                    let i1 = (i0 + 1).min(n_s - 1);
                    (i0, i1, (p - i0 as f64) as f32)
                })
            })
            .collect()
    };
    let (wx, wy, wz) = (w(0, tx, sx), w(1, ty, sy), w(2, tz, sz));
    let plane = sx * sy;
    let mut data = vec![fill; target.len()];
    data.par_chunks_mut((tx * ty).max(1))
        .enumerate()
        .for_each(|(k, out)| {
            let Some((z0, z1, fz)) = wz[k] else { return };
            for (j, wyj) in wy.iter().enumerate() {
                let Some((y0, y1, fy)) = *wyj else { continue };
                let rows = [
                    z0 * plane + y0 * sx,
                    z0 * plane + y1 * sx,
                    z1 * plane + y0 * sx,
                    z1 * plane + y1 * sx,
                ];
                for (i, wxi) in wx.iter().enumerate() {
                    let Some((x0, x1, fx)) = *wxi else { continue };
                    let lerp =
                        |r: usize| src.data[r + x0] + (src.data[r + x1] - src.data[r + x0]) * fx;
                    let (a, b, c, d) = (lerp(rows[0]), lerp(rows[1]), lerp(rows[2]), lerp(rows[3]));
                    let lo = a + (b - a) * fy;
                    let hi = c + (d - c) * fy;
                    out[i + tx * j] = lo + (hi - lo) * fz;
                }
            }
        });
    Ok(Volume {
        data,
        geometry: target.clone(),
    })
}

/// Nearest-neighbour resampling (labels); voxels outside the source get `fill`.
pub fn resample_nearest<T: Copy + Send + Sync>(
    src: &Volume<T>,
    target: &Geometry,
    fill: T,
) -> Result<Volume<T>> {
    let maps = axis_map(&src.geometry, target)?;
    let [sx, sy, sz] = src.geometry.dims;
    let [tx, ty, tz] = target.dims;
    let near = |a: usize, n_t: usize, n_s: usize| -> Vec<Option<usize>> {
        positions(maps[a].0, maps[a].1, n_t, n_s)
            .into_iter()
            .map(|p| p.map(|p| (p.round() as usize).min(n_s - 1)))
            .collect()
    };
    let (nx, ny, nz) = (near(0, tx, sx), near(1, ty, sy), near(2, tz, sz));
    let mut data = vec![fill; target.len()];
    data.par_chunks_mut((tx * ty).max(1))
        .enumerate()
        .for_each(|(k, out)| {
            let Some(z) = nz[k] else { return };
            for (j, yj) in ny.iter().enumerate() {
                let Some(y) = *yj else { continue };
                let row = (z * sy + y) * sx;
                for (i, xi) in nx.iter().enumerate() {
                    if let Some(x) = *xi {
                        out[i + tx * j] = src.data[row + x];
                    }
                }
            }
        });
    Ok(Volume {
        data,
        geometry: target.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear ramp is reproduced exactly by trilinear interpolation.
    #[test]
    fn linear_ramp_is_exact() {
        let g = Geometry::axis_aligned([6, 5, 4], [0.8, 1.2, 3.0]);
        let f = |x: f64, y: f64, z: f64| (2.0 * x - 0.5 * y + 0.25 * z) as f32;
        let mut data = Vec::new();
        for k in 0..4 {
            for j in 0..5 {
                for i in 0..6 {
                    data.push(f(i as f64 * 0.8, j as f64 * 1.2, k as f64 * 3.0));
                }
            }
        }
        let v = Volume::new(data, g.clone()).expect("v");
        let t = g.with_spacing([1.0, 1.0, 1.0]);
        assert_eq!(t.dims, [5, 6, 12]);
        let r = resample_linear(&v, &t, -1.0).expect("resample");
        for k in 0..10 {
            // z beyond 9 mm is past the last source slice and clamps
            for j in 0..5 {
                for i in 0..4 {
                    let want = f(i as f64, j as f64, k as f64);
                    assert!(
                        (r.get(i, j, k) - want).abs() < 1e-4,
                        "({i},{j},{k}) {} vs {want}",
                        r.get(i, j, k)
                    );
                }
            }
        }
    }

    #[test]
    fn nearest_round_trip_keeps_labels() {
        let g = Geometry::axis_aligned([8, 8, 4], [1.0, 1.0, 2.5]);
        let data: Vec<u8> = (0..256).map(|i| u8::from((i / 8) % 3 == 0)).collect();
        let v = Volume::new(data, g.clone()).expect("v");
        let fine = resample_nearest(&v, &g.with_spacing([0.5, 0.5, 0.5]), 0).expect("up");
        assert_eq!(fine.geometry.dims, [16, 16, 20]);
        let back = resample_nearest(&fine, &g, 0).expect("down");
        assert_eq!(back.data, v.data);
    }

    #[test]
    fn outside_the_source_gets_the_fill_value() {
        let g = Geometry::axis_aligned([4, 4, 4], [1.0; 3]);
        let v = Volume::filled(7.0f32, g.clone());
        let shifted = g.sub_grid([2, 0, 0], [4, 4, 4]);
        let r = resample_linear(&v, &shifted, -5.0).expect("r");
        assert_eq!(r.get(1, 0, 0), 7.0);
        assert_eq!(r.get(2, 0, 0), -5.0); // source x = 4: beyond the last voxel + 0.5
    }
}
