//! Reading and writing NIfTI-1 volumes (`.nii`, `.nii.gz`) with their geometry.
//!
//! Values come out as `f32` with `scl_slope` / `scl_inter` applied, whatever the stored
//! type (int8-64, uint8-64, float32/64). The affine is the sform when its code is set, else
//! the qform (computed here: nifti-rs 0.18's `qform_affine` is off by up to 1e-3 for
//! flipped, rotated qforms), else the plain pixel spacing.

use std::path::{Path, PathBuf};

use ndarray::{Array3, ShapeBuilder};
use nifti::writer::WriterOptions;
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, ReaderOptions};

use crate::error::{DataError, Result};
use crate::volume::{Geometry, Volume};

/// A volume read from disk with the header it came with (kept so that outputs written
/// "like" the source carry the same orientation codes, units and description).
#[derive(Debug, Clone)]
pub struct NiftiVolume {
    pub volume: Volume<f32>,
    pub header: NiftiHeader,
    pub path: PathBuf,
}

/// Read a 3-D NIfTI file (a 4-D file with one time point is accepted).
pub fn read_nifti(path: &Path) -> Result<NiftiVolume> {
    let nifti_err = |message: String| DataError::Nifti {
        path: path.to_path_buf(),
        message,
    };
    if !path.exists() {
        return Err(DataError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        ));
    }
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| nifti_err(e.to_string()))?;
    let header = obj.header().clone();
    let dim = header.dim().map_err(|e| nifti_err(e.to_string()))?.to_vec();
    let dims3 = match dim.as_slice() {
        [x, y, z] | [x, y, z, 1] => [*x as usize, *y as usize, *z as usize],
        other => {
            return Err(nifti_err(format!(
                "expected a 3-D volume, got dimensions {other:?}"
            )))
        }
    };
    let spacing = [1, 2, 3].map(|i| f64::from(header.pixdim[i]).abs());
    if spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(nifti_err(format!(
            "voxel spacing {spacing:?} (pixdim[1..4]) is not positive"
        )));
    }
    let affine = header_affine(&header);
    let arr = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| nifti_err(e.to_string()))?;
    // nifti-rs returns Fortran order (x fastest) indexed [x, y, z(, t)]: its memory order
    // is ours.
    let data: Vec<f32> = match arr.as_slice_memory_order() {
        Some(s) if !arr.is_standard_layout() || dims3.iter().filter(|&&d| d > 1).count() <= 1 => {
            s.to_vec()
        }
        _ => arr.t().iter().copied().collect(),
    };
    let volume = Volume::new(
        data,
        Geometry {
            dims: dims3,
            spacing,
            affine,
        },
    )
    .map_err(|e| nifti_err(e.to_string()))?;
    Ok(NiftiVolume {
        volume,
        header,
        path: path.to_path_buf(),
    })
}

/// The voxel-to-world affine: sform, else qform, else the spacing.
pub fn header_affine(h: &NiftiHeader) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    m[3][3] = 1.0;
    if h.sform_code != 0 {
        for (r, row) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
            for c in 0..4 {
                m[r][c] = f64::from(row[c]);
            }
        }
        return m;
    }
    let (dx, dy, dz) = (
        f64::from(h.pixdim[1]),
        f64::from(h.pixdim[2]),
        f64::from(h.pixdim[3]),
    );
    if h.qform_code == 0 {
        m[0][0] = dx.abs();
        m[1][1] = dy.abs();
        m[2][2] = dz.abs();
        return m;
    }
    let (b, c, d) = (
        f64::from(h.quatern_b),
        f64::from(h.quatern_c),
        f64::from(h.quatern_d),
    );
    let s = b * b + c * c + d * d;
    // f32-rounded fields make 1 - s slightly positive where the true `a` is 0.
    let a = if 1.0 - s < 1e-6 {
        0.0
    } else {
        (1.0 - s).sqrt()
    };
    let r = [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ];
    let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let scale = [dx.abs(), dy.abs(), qfac * dz.abs()];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = r[i][j] * scale[j];
        }
    }
    m[0][3] = f64::from(h.quatern_x);
    m[1][3] = f64::from(h.quatern_y);
    m[2][3] = f64::from(h.quatern_z);
    m
}

/// Element types that can be written.
pub trait WriteElement: nifti::DataElement + bytemuck::Pod + Copy + Send + Sync {}
impl WriteElement for f32 {}
impl WriteElement for u8 {}
impl WriteElement for i16 {}

/// Write `volume` as NIfTI (`.nii` or `.nii.gz` by the name), atomically: the data goes to
/// a temporary file beside `path` that is renamed over it only once complete.
///
/// With `reference`, every header field but size, type and scaling comes from it (the
/// source CT's header for a prediction on its grid); the geometry of `volume` is then
/// checked against it. Without, a header with the volume's affine (sform, code 2) is made.
pub fn write_nifti<T: WriteElement>(
    path: &Path,
    volume: &Volume<T>,
    reference: Option<&NiftiHeader>,
) -> Result<()> {
    let mut header = match reference {
        Some(h) => h.clone(),
        None => NiftiHeader::default(),
    };
    let g = &volume.geometry;
    let ref_matches = reference.is_some_and(|h| {
        let rg = Geometry {
            dims: g.dims,
            spacing: g.spacing,
            affine: header_affine(h),
        };
        rg.affine_distance(g) < 1e-4
    });
    if !ref_matches {
        let m = nalgebra::Matrix4::from_fn(|r, c| g.affine[r][c] as f32);
        header.set_affine(&m);
        header.pixdim[1] = g.spacing[0] as f32;
        header.pixdim[2] = g.spacing[1] as f32;
        header.pixdim[3] = g.spacing[2] as f32;
        header.xyzt_units = 2; // mm
    }
    let arr = Array3::from_shape_vec((g.dims[0], g.dims[1], g.dims[2]).f(), volume.data.clone())
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        DataError::Invalid(format!(
            "{}: output path needs a file name ending in .nii or .nii.gz",
            path.display()
        ))
    })?;
    let ext = if name.ends_with(".nii.gz") {
        "nii.gz"
    } else if name.ends_with(".nii") {
        "nii"
    } else {
        return Err(DataError::Invalid(format!(
            "{}: output name must end in .nii or .nii.gz",
            path.display()
        )));
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    // nifti-rs rewrites everything after the first dot of the stem: keep the temporary
    // name free of other dots.
    let stem = name
        .trim_end_matches(".gz")
        .trim_end_matches(".nii")
        .replace('.', "_");
    let tmp = dir.join(format!(".{stem}_tmp{}.{ext}", std::process::id()));
    let written = WriterOptions::new(&tmp)
        .reference_header(&header)
        .write_nifti(&arr);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Nifti {
            path: path.to_path_buf(),
            message: format!("writing failed: {e}"),
        });
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_keeps_values_and_geometry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = Geometry::axis_aligned([5, 4, 3], [0.8, 0.9, 2.5]);
        g.affine[0][0] = -0.8; // a flipped x axis
        g.affine[0][3] = 40.0;
        g.affine[2][3] = -12.5;
        let v = Volume::new((0..60).map(|i| i as f32 * 1.5 - 20.0).collect(), g.clone())
            .expect("volume");
        for name in ["a.nii.gz", "b.nii"] {
            let p = dir.path().join(name);
            write_nifti(&p, &v, None).expect("write");
            let back = read_nifti(&p).expect("read");
            assert_eq!(back.volume.data, v.data);
            assert_eq!(back.volume.geometry.dims, [5, 4, 3]);
            assert!(back.volume.geometry.affine_distance(&g) < 1e-5);
            assert!((back.volume.geometry.spacing[2] - 2.5).abs() < 1e-6);
        }
        // labels as uint8 with the first file's header as reference
        let first = read_nifti(&dir.path().join("a.nii.gz")).expect("read");
        let labels = v.map(|x| u8::from(x > 0.0));
        let p = dir.path().join("labels.nii.gz");
        write_nifti(&p, &labels, Some(&first.header)).expect("write");
        let back = read_nifti(&p).expect("read");
        assert_eq!(
            back.volume.data,
            labels
                .data
                .iter()
                .map(|&l| f32::from(l))
                .collect::<Vec<_>>()
        );
        assert!(back.volume.geometry.affine_distance(&g) < 1e-5);
        // no temporary file left behind
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    /// qform-only header: 90 degrees about z with qfac = -1 (a flipped slice axis).
    #[test]
    fn qform_affine_from_the_quaternion() {
        let mut h = NiftiHeader {
            sform_code: 0,
            qform_code: 1,
            pixdim: [-1.0, 0.5, 0.75, 2.0, 0.0, 0.0, 0.0, 0.0],
            // rotation by 90 degrees about z: a = cos 45, d = sin 45 (b = c = 0)
            quatern_b: 0.0,
            quatern_c: 0.0,
            quatern_d: std::f32::consts::FRAC_1_SQRT_2,
            quatern_x: 10.0,
            quatern_y: -20.0,
            quatern_z: 30.0,
            ..Default::default()
        };
        let m = header_affine(&h);
        // R = [[0 -1 0] [1 0 0] [0 0 1]], columns scaled by (0.5, 0.75, -2)
        let want = [
            [0.0, -0.75, 0.0, 10.0],
            [0.5, 0.0, 0.0, -20.0],
            [0.0, 0.0, -2.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        for (r, row) in want.iter().enumerate() {
            for (c, w) in row.iter().enumerate() {
                assert!((m[r][c] - w).abs() < 1e-6, "[{r}][{c}] {} vs {w}", m[r][c]);
            }
        }
        // b, c, d of a 180-degree rotation about x (a = 0): f32 rounding must not leak into a
        h.quatern_b = 1.0;
        h.quatern_d = 0.0;
        h.pixdim[0] = 1.0;
        let m = header_affine(&h);
        assert!(
            (m[1][1] + 0.75).abs() < 1e-9 && m[1][2].abs() < 1e-9 && (m[2][2] + 2.0).abs() < 1e-9,
            "{m:?}"
        );
    }

    /// Stored integers with scl_slope / scl_inter come out scaled.
    #[test]
    fn scaling_is_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Volume::new(
            (0..24).map(|i| i as i16).collect(),
            Geometry::axis_aligned([4, 3, 2], [1.0; 3]),
        )
        .expect("v");
        let p = dir.path().join("scaled.nii");
        write_nifti(&p, &v, None).expect("write");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[112..116].copy_from_slice(&2.0f32.to_le_bytes()); // scl_slope
        bytes[116..120].copy_from_slice(&(-1024.0f32).to_le_bytes()); // scl_inter
        std::fs::write(&p, &bytes).expect("patch");
        let back = read_nifti(&p).expect("read");
        assert_eq!(
            back.volume.data,
            (0..24).map(|i| (2 * i - 1024) as f32).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.nii.gz");
        assert!(read_nifti(&missing)
            .unwrap_err()
            .to_string()
            .contains("missing.nii.gz"));
        let junk = dir.path().join("junk.nii");
        std::fs::write(&junk, b"not a nifti file at all").expect("write");
        let e = read_nifti(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.nii") && e.contains("NIfTI"), "{e}");
        // a truncated file
        let v = Volume::new(
            vec![1.0f32; 1000],
            Geometry::axis_aligned([10, 10, 10], [1.0; 3]),
        )
        .expect("v");
        let good = dir.path().join("good.nii");
        write_nifti(&good, &v, None).expect("write");
        let bytes = std::fs::read(&good).expect("read");
        let cut = dir.path().join("cut.nii");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
        assert!(read_nifti(&cut)
            .unwrap_err()
            .to_string()
            .contains("cut.nii"));
        let gz = dir.path().join("good.nii.gz");
        write_nifti(&gz, &v, None).expect("write");
        let bytes = std::fs::read(&gz).expect("read");
        let cutgz = dir.path().join("cut.nii.gz");
        std::fs::write(&cutgz, &bytes[..bytes.len() / 2]).expect("write");
        assert!(read_nifti(&cutgz)
            .unwrap_err()
            .to_string()
            .contains("cut.nii.gz"));
        assert!(write_nifti(&dir.path().join("x.png"), &v, None).is_err());
    }
}
