//! Surfaces and directed surface distances (the distance transform is `metricunet_core::mask`'s).

use metricunet_core::mask::edt_squared;
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
