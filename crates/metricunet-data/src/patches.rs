//! 2.5D training patches (Section IV.B): `slices` adjacent axial slices as channels, the
//! label of the middle slice, `H x W` in-plane (H along y, W along x). Slices beyond the
//! volume repeat the edge slice; in-plane, the patch is padded with 0 (air after windowing).

use rand::Rng;

use crate::error::{DataError, Result};
use crate::volume::Volume;

/// How patches are drawn from one case.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchSpec {
    /// `[H, W]`.
    pub size: [usize; 2],
    /// Odd number of adjacent slices.
    pub slices: usize,
    pub per_case: usize,
    /// Share of patches centred on a foreground voxel (the rest anywhere).
    pub foreground_share: f64,
}

/// A batch-ready set of patches: `inputs` is `n x slices x H x W`, `labels` `n x H x W`.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    pub n: usize,
    pub slices: usize,
    pub h: usize,
    pub w: usize,
    pub inputs: Vec<f32>,
    pub labels: Vec<u8>,
    /// Centre voxel `(x, y, z)` of each patch.
    pub centers: Vec<[usize; 3]>,
}

impl Patches {
    fn empty(spec: &PatchSpec) -> Self {
        Self {
            n: 0,
            slices: spec.slices,
            h: spec.size[0],
            w: spec.size[1],
            inputs: Vec::new(),
            labels: Vec::new(),
            centers: Vec::new(),
        }
    }

    /// Append another set with the same patch shape.
    pub fn extend(&mut self, other: Patches) -> Result<()> {
        if (other.slices, other.h, other.w) != (self.slices, self.h, self.w) {
            return Err(DataError::Invalid("patch shapes differ".into()));
        }
        self.n += other.n;
        self.inputs.extend(other.inputs);
        self.labels.extend(other.labels);
        self.centers.extend(other.centers);
        Ok(())
    }

    /// Patches that contain foreground in their label.
    pub fn foreground_count(&self) -> usize {
        self.labels
            .chunks(self.h * self.w)
            .filter(|l| l.iter().any(|&v| v != 0))
            .count()
    }
}

/// Copy the `slices x H x W` stack centred on `(cx, cy, cz)` into `out`.
fn copy_stack(
    image: &Volume<f32>,
    center: [usize; 3],
    slices: usize,
    size: [usize; 2],
    out: &mut Vec<f32>,
) {
    let [nx, ny, nz] = image.geometry.dims;
    let (h, w) = (size[0], size[1]);
    let half = (slices / 2) as i64;
    let (x0, y0) = (
        center[0] as i64 - (w / 2) as i64,
        center[1] as i64 - (h / 2) as i64,
    );
    for s in 0..slices as i64 {
        let z = (center[2] as i64 + s - half).clamp(0, nz as i64 - 1) as usize;
        let plane = image.slice(z);
        for y in 0..h as i64 {
            let sy = y0 + y;
            for x in 0..w as i64 {
                let sx = x0 + x;
                let inside = sx >= 0 && sy >= 0 && (sx as usize) < nx && (sy as usize) < ny;
                out.push(if inside {
                    plane[sx as usize + nx * sy as usize]
                } else {
                    0.0
                });
            }
        }
    }
}

fn copy_label(label: &Volume<u8>, center: [usize; 3], size: [usize; 2], out: &mut Vec<u8>) {
    let [nx, ny, _] = label.geometry.dims;
    let plane = label.slice(center[2]);
    let (x0, y0) = (
        center[0] as i64 - (size[1] / 2) as i64,
        center[1] as i64 - (size[0] / 2) as i64,
    );
    for y in 0..size[0] as i64 {
        for x in 0..size[1] as i64 {
            let (sx, sy) = (x0 + x, y0 + y);
            let inside = sx >= 0 && sy >= 0 && (sx as usize) < nx && (sy as usize) < ny;
            out.push(if inside {
                plane[sx as usize + nx * sy as usize]
            } else {
                0
            });
        }
    }
}

/// Draw `spec.per_case` patches from one case: `round(per_case * foreground_share)` centred
/// on foreground voxels (all of them anywhere when the label is empty), the rest anywhere.
pub fn extract_patches<R: Rng + ?Sized>(
    image: &Volume<f32>,
    label: &Volume<u8>,
    spec: &PatchSpec,
    rng: &mut R,
) -> Result<Patches> {
    if image.geometry.dims != label.geometry.dims {
        return Err(DataError::Invalid(format!(
            "image dims {:?} and label dims {:?} differ",
            image.geometry.dims, label.geometry.dims
        )));
    }
    if spec.slices.is_multiple_of(2) || spec.size.contains(&0) {
        return Err(DataError::Invalid(format!(
            "patch {:?} x {} slices: need an odd slice count and a positive size",
            spec.size, spec.slices
        )));
    }
    let [nx, ny, nz] = image.geometry.dims;
    if nx * ny * nz == 0 {
        return Err(DataError::Invalid("empty volume".into()));
    }
    let fg: Vec<usize> = label
        .data
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != 0)
        .map(|(i, _)| i)
        .collect();
    let n_fg = if fg.is_empty() {
        0
    } else {
        (spec.per_case as f64 * spec.foreground_share).round() as usize
    };
    let mut out = Patches::empty(spec);
    let (hw, c) = (spec.size[0] * spec.size[1], spec.slices);
    out.inputs.reserve(spec.per_case * c * hw);
    out.labels.reserve(spec.per_case * hw);
    for p in 0..spec.per_case {
        let center = if p < n_fg {
            let v = fg[rng.random_range(0..fg.len())];
            [v % nx, (v / nx) % ny, v / (nx * ny)]
        } else {
            [
                rng.random_range(0..nx),
                rng.random_range(0..ny),
                rng.random_range(0..nz),
            ]
        };
        copy_stack(image, center, c, spec.size, &mut out.inputs);
        copy_label(label, center, spec.size, &mut out.labels);
        out.centers.push(center);
        out.n += 1;
    }
    Ok(out)
}

/// The whole axial slice `z` with its context: `slices x ny x nx` (inference runs on
/// whole slices, no patch voting).
pub fn slice_stack(image: &Volume<f32>, z: usize, slices: usize) -> Vec<f32> {
    let [nx, ny, _] = image.geometry.dims;
    let mut out = Vec::with_capacity(slices * nx * ny);
    copy_stack(image, [nx / 2, ny / 2, z], slices, [ny, nx], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// value = 100 z + 10 y + x; label = 1 on x = 5 in slice 2
    fn vol() -> (Volume<f32>, Volume<u8>) {
        let g = Geometry::axis_aligned([8, 6, 4], [1.0; 3]);
        let data: Vec<f32> = (0..4)
            .flat_map(|z| {
                (0..6).flat_map(move |y| (0..8).map(move |x| (100 * z + 10 * y + x) as f32))
            })
            .collect();
        let mut lab = Volume::filled(0u8, g.clone());
        for y in 0..6 {
            let i = lab.index(5, y, 2);
            lab.data[i] = 1;
        }
        (Volume::new(data, g).expect("v"), lab)
    }

    #[test]
    fn stack_layout_padding_and_edge_slices() {
        let (v, _) = vol();
        let mut out = Vec::new();
        copy_stack(&v, [1, 1, 0], 3, [4, 4], &mut out);
        // channel 0 = slice -1 -> clamped to 0; patch origin (x, y) = (-1, -1)
        assert_eq!(&out[..4], &[0.0, 0.0, 0.0, 0.0]); // row y = -1 is padding
        assert_eq!(&out[4..8], &[0.0, 0.0, 1.0, 2.0]); // y = 0: x = -1 pad, then 0, 1, 2
        assert_eq!(out[16 + 5], 0.0 + 0.0); // channel 1 (z = 0), y = 0, x = 0
        assert_eq!(out[32 + 5], 100.0); // channel 2 (z = 1)
        assert_eq!(slice_stack(&v, 3, 3).len(), 3 * 48);
        assert_eq!(slice_stack(&v, 3, 3)[2 * 48 + 9], 300.0 + 10.0 + 1.0); // z = 4 clamps to 3
    }

    #[test]
    fn foreground_share_and_determinism() {
        let (v, l) = vol();
        let spec = PatchSpec {
            size: [4, 4],
            slices: 3,
            per_case: 20,
            foreground_share: 0.5,
        };
        let p = extract_patches(&v, &l, &spec, &mut ChaCha8Rng::seed_from_u64(1)).expect("patches");
        assert_eq!(
            (p.n, p.inputs.len(), p.labels.len()),
            (20, 20 * 48, 20 * 16)
        );
        assert!(p.centers[..10].iter().all(|c| c[0] == 5 && c[2] == 2));
        assert!(p.foreground_count() >= 10);
        // the middle channel of a patch centred on (x, y, z) holds that voxel at (h/2, w/2)
        let c = p.centers[0];
        assert_eq!(
            p.inputs[16 + 2 * 4 + 2],
            (100 * c[2] + 10 * c[1] + c[0]) as f32
        );
        assert_eq!(
            p,
            extract_patches(&v, &l, &spec, &mut ChaCha8Rng::seed_from_u64(1)).expect("again")
        );
        let empty = Volume::filled(0u8, l.geometry.clone());
        let q =
            extract_patches(&v, &empty, &spec, &mut ChaCha8Rng::seed_from_u64(1)).expect("no fg");
        assert_eq!(q.n, 20);
        let bad = PatchSpec { slices: 2, ..spec };
        assert!(extract_patches(&v, &l, &bad, &mut ChaCha8Rng::seed_from_u64(1)).is_err());
    }
}
