//! A 3-D volume on a voxel grid with its world geometry.

use crate::error::{DataError, Result};

/// Where a voxel grid lies in the world: size, spacing in mm, and the voxel-to-world affine
/// (NIfTI convention: `world = affine * [i, j, k, 1]`, rows of a 4x4 matrix).
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Voxel size in mm along x, y, z.
    pub spacing: [f64; 3],
    pub affine: [[f64; 4]; 4],
}

impl Geometry {
    /// An axis-aligned grid with origin 0.
    pub fn axis_aligned(dims: [usize; 3], spacing: [f64; 3]) -> Self {
        let mut affine = [[0.0; 4]; 4];
        for (i, s) in spacing.iter().enumerate() {
            affine[i][i] = *s;
        }
        affine[3][3] = 1.0;
        Self {
            dims,
            spacing,
            affine,
        }
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// True for a grid without voxels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same world region sampled with another spacing: the first voxel centre stays in
    /// place, the direction of each axis is kept, and the size is rounded to cover the same
    /// extent (`round(n * old / new)`, at least 1).
    pub fn with_spacing(&self, spacing: [f64; 3]) -> Self {
        let mut dims = [0; 3];
        let mut affine = self.affine;
        for a in 0..3 {
            dims[a] =
                ((self.dims[a] as f64 * self.spacing[a] / spacing[a]).round() as usize).max(1);
            let ratio = spacing[a] / self.spacing[a];
            for row in affine.iter_mut().take(3) {
                row[a] *= ratio;
            }
        }
        Self {
            dims,
            spacing,
            affine,
        }
    }

    /// The sub-grid starting at voxel `offset` with `dims` voxels (may reach outside).
    pub fn sub_grid(&self, offset: [i64; 3], dims: [usize; 3]) -> Self {
        let mut affine = self.affine;
        for (r, row) in affine.iter_mut().enumerate().take(3) {
            row[3] = (0..3)
                .map(|a| self.affine[r][a] * offset[a] as f64)
                .sum::<f64>()
                + self.affine[r][3];
        }
        Self {
            dims,
            spacing: self.spacing,
            affine,
        }
    }

    /// Largest absolute difference between two affines (mm).
    pub fn affine_distance(&self, other: &Geometry) -> f64 {
        let mut d: f64 = 0.0;
        for r in 0..4 {
            for c in 0..4 {
                d = d.max((self.affine[r][c] - other.affine[r][c]).abs());
            }
        }
        d
    }
}

/// Voxels of type `T`, `x` fastest: `index = x + nx * (y + ny * z)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    pub data: Vec<T>,
    pub geometry: Geometry,
}

impl<T: Copy + Send + Sync> Volume<T> {
    /// Check that `data` fills `geometry`.
    pub fn new(data: Vec<T>, geometry: Geometry) -> Result<Self> {
        if data.len() != geometry.len() {
            return Err(DataError::Invalid(format!(
                "volume holds {} voxels, dims {:?} need {}",
                data.len(),
                geometry.dims,
                geometry.len()
            )));
        }
        Ok(Self { data, geometry })
    }

    /// A volume filled with `value`.
    pub fn filled(value: T, geometry: Geometry) -> Self {
        Self {
            data: vec![value; geometry.len()],
            geometry,
        }
    }

    /// `[nx, ny, nz]`.
    pub fn dims(&self) -> [usize; 3] {
        self.geometry.dims
    }

    /// Flat index of voxel `(x, y, z)`.
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        let [nx, ny, _] = self.geometry.dims;
        x + nx * (y + ny * z)
    }

    /// Voxel `(x, y, z)`.
    #[inline]
    pub fn get(&self, x: usize, y: usize, z: usize) -> T {
        self.data[self.index(x, y, z)]
    }

    /// Axial slice `z` (`nx * ny` values, x fastest).
    pub fn slice(&self, z: usize) -> &[T] {
        let n = self.geometry.dims[0] * self.geometry.dims[1];
        &self.data[z * n..(z + 1) * n]
    }

    /// The same grid with every voxel mapped by `f`.
    pub fn map<U: Copy + Send + Sync>(&self, f: impl Fn(T) -> U + Sync) -> Volume<U> {
        use rayon::prelude::*;
        Volume {
            data: self.data.par_iter().map(|&v| f(v)).collect(),
            geometry: self.geometry.clone(),
        }
    }

    /// The box `offset .. offset + dims`, with `pad` where it leaves the volume.
    pub fn crop(&self, offset: [i64; 3], dims: [usize; 3], pad: T) -> Volume<T> {
        use rayon::prelude::*;
        let [nx, ny, nz] = self.geometry.dims;
        let plane = dims[0] * dims[1];
        let mut data = vec![pad; dims.iter().product()];
        data.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(z, out)| {
                let sz = z as i64 + offset[2];
                if sz < 0 || sz >= nz as i64 {
                    return;
                }
                for y in 0..dims[1] {
                    let sy = y as i64 + offset[1];
                    if sy < 0 || sy >= ny as i64 {
                        continue;
                    }
                    for x in 0..dims[0] {
                        let sx = x as i64 + offset[0];
                        if sx >= 0 && sx < nx as i64 {
                            out[x + dims[0] * y] =
                                self.data[sx as usize + nx * (sy as usize + ny * sz as usize)];
                        }
                    }
                }
            });
        Volume {
            data,
            geometry: self.geometry.sub_grid(offset, dims),
        }
    }

    /// Write `part` (a crop taken at `offset`) back into this volume; voxels outside are
    /// dropped.
    pub fn paste(&mut self, part: &Volume<T>, offset: [i64; 3]) {
        let [nx, ny, nz] = self.geometry.dims;
        let [px, py, pz] = part.geometry.dims;
        for z in 0..pz {
            let tz = z as i64 + offset[2];
            if tz < 0 || tz >= nz as i64 {
                continue;
            }
            for y in 0..py {
                let ty = y as i64 + offset[1];
                if ty < 0 || ty >= ny as i64 {
                    continue;
                }
                for x in 0..px {
                    let tx = x as i64 + offset[0];
                    if tx >= 0 && tx < nx as i64 {
                        self.data[tx as usize + nx * (ty as usize + ny * tz as usize)] =
                            part.data[x + px * (y + py * z)];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_and_paste_round_trip_with_padding() {
        let g = Geometry::axis_aligned([4, 3, 2], [1.0, 2.0, 3.0]);
        let v = Volume::new((0..24).collect::<Vec<i32>>(), g).expect("volume");
        assert_eq!(v.get(3, 2, 1), 23);
        let c = v.crop([-1, 1, 0], [3, 3, 2], -1);
        // first row of the crop: x = -1 (pad), 0, 1 at y = 1, z = 0
        assert_eq!(&c.data[..3], &[-1, 4, 5]);
        assert_eq!(c.data[3 + 3 * 2], -1); // y = 3 is outside
        assert_eq!(c.geometry.affine[0][3], -1.0);
        assert_eq!(c.geometry.affine[1][3], 2.0);
        let mut back = Volume::filled(0, v.geometry.clone());
        back.paste(&c, [-1, 1, 0]);
        assert_eq!(back.get(1, 1, 0), 5);
        assert_eq!(back.get(1, 0, 0), 0);
    }

    #[test]
    fn with_spacing_keeps_extent_and_first_voxel() {
        let mut g = Geometry::axis_aligned([100, 80, 30], [0.9, 0.9, 3.0]);
        g.affine[0][3] = 10.0;
        let r = g.with_spacing([1.0, 1.0, 1.0]);
        assert_eq!(r.dims, [90, 72, 90]);
        assert_eq!(r.affine[0][0], 1.0);
        assert_eq!(r.affine[2][2], 1.0);
        assert_eq!(r.affine[0][3], 10.0);
    }
}
