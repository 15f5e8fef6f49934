//! Reading and writing NIfTI-1 volumes (`.nii`, `.nii.gz`) with their geometry.
//!
//! Values come out as `f32` with `scl_slope` / `scl_inter` applied, whatever the stored
//! type (int8-64, uint8-64, float32/64). The affine is the sform when its code is set, else
//! the qform (computed here: nifti-rs 0.18's `qform_affine` is off by up to 1e-3 for
//! flipped, rotated qforms), else the plain pixel spacing.
//!
//! Before any voxel is read, the header is checked: a NIfTI-2 file is named as such (not
//! read), a volume over [`MAX_VOXELS`] is refused, and a stream shorter than the header
//! claims is refused, so memory is bounded by what the file really holds. A `scl_slope` of 0
//! or NaN means "unscaled", as nibabel reads it.

use std::path::{Path, PathBuf};

use std::io::Read as _;

use ndarray::{Array3, ShapeBuilder};
use nifti::volume::InMemNiftiVolume;
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
    check_header(path)?;
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
    let mut volume = obj.into_volume();
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    if !slope.is_finite() || slope == 0.0 || !inter.is_finite() {
        // nibabel: a slope of 0 or NaN leaves the values unscaled; a NaN intercept is 0
        let mut scaled = header.clone();
        (scaled.scl_slope, scaled.scl_inter) = if !slope.is_finite() || slope == 0.0 {
            (1.0, 0.0)
        } else {
            (slope, 0.0)
        };
        volume = InMemNiftiVolume::from_raw_data(&scaled, volume.into_raw_data())
            .map_err(|e| nifti_err(e.to_string()))?;
    }
    let arr = volume
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

/// The largest volume read (voxels): 2^29, e.g. 1024 x 1024 x 512. A CT of 512 x 512 x 1000
/// slices is half of it.
pub const MAX_VOXELS: u64 = 1 << 29;

/// Whether `path` is gzip-compressed (by its first two bytes, whatever its name).
fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let n = f.read(&mut magic).map_err(|e| DataError::io(path, e))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// A reader of the file's (decompressed) bytes.
fn stream(path: &Path) -> Result<Box<dyn std::io::Read>> {
    let f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| DataError::io(path, e))?);
    Ok(if is_gzip(path)? {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    })
}

/// The file's data length without decompressing: its size, or for gzip the size its last
/// member records (a lower bound of the whole stream; `None` when it cannot tell).
fn stored_length(path: &Path) -> Result<Option<u64>> {
    use std::io::{Seek, SeekFrom};
    let len = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    if !is_gzip(path)? {
        return Ok(Some(len));
    }
    if len < 18 {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut isize = [0u8; 4];
    f.seek(SeekFrom::End(-4))
        .and_then(|_| f.read_exact(&mut isize))
        .map_err(|e| DataError::io(path, e))?;
    // ISIZE is the last member's size modulo 2^32: never more than the stream's length
    Ok(Some(u64::from(u32::from_le_bytes(isize))))
}

/// Check what a file claims before its data is read: NIfTI-1 (not 2), a size under
/// [`MAX_VOXELS`], and a stream that holds at least the header's voxel bytes.
fn check_header(path: &Path) -> Result<()> {
    let nifti_err = |message: String| DataError::Nifti {
        path: path.to_path_buf(),
        message,
    };
    let mut first = [0u8; 4];
    stream(path)?
        .read_exact(&mut first)
        .map_err(|e| nifti_err(format!("cannot read the header: {e}")))?;
    match (i32::from_le_bytes(first), i32::from_be_bytes(first)) {
        (348, _) | (_, 348) => {}
        (540, _) | (_, 540) => {
            return Err(nifti_err(
                "this is a NIfTI-2 file, which metricunet does not read; save it as NIfTI-1 (nibabel: nib.Nifti1Image(img.get_fdata(), img.affine).to_filename(...))".into(),
            ))
        }
        (n, _) => {
            return Err(nifti_err(format!(
                "header size {n}: not a NIfTI-1 file (expected 348)"
            )))
        }
    }
    let header = NiftiHeader::from_reader(stream(path)?).map_err(|e| nifti_err(e.to_string()))?;
    let dim = header.dim().map_err(|e| nifti_err(e.to_string()))?;
    let voxels: u64 = dim.iter().map(|&d| u64::from(d)).product();
    if voxels > MAX_VOXELS {
        return Err(nifti_err(format!(
            "the header claims {dim:?} = {voxels} voxels, over the limit of {MAX_VOXELS}"
        )));
    }
    let datatype = header.data_type().map_err(|e| nifti_err(e.to_string()))?;
    let offset = u64::try_from(header.vox_offset.max(348.0) as i64).unwrap_or(352);
    let needed = offset + voxels * datatype.size_of() as u64;
    if stored_length(path)?.is_some_and(|n| n >= needed) {
        return Ok(());
    }
    let held = std::io::copy(&mut stream(path)?.take(needed), &mut std::io::sink())
        .map_err(|e| nifti_err(format!("the data stream is damaged: {e}")))?;
    if held < needed {
        return Err(nifti_err(format!(
            "the header claims {dim:?} voxels of {datatype:?} ({needed} bytes with the header), the file holds {held}: truncated or a wrong header"
        )));
    }
    Ok(())
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
    if !(name.ends_with(".nii.gz") || name.ends_with(".nii")) {
        return Err(DataError::Invalid(format!(
            "{}: output name must end in .nii or .nii.gz",
            path.display()
        )));
    }
    // the temporary name ends in the target's name, so the writer sees its extension; for
    // `.nii` it also rewrites what follows the stem's first dot, so move what it wrote back
    Ok(metricunet_core::fsio::write_atomic_at(path, |tmp| {
        WriterOptions::new(tmp)
            .reference_header(&header)
            .write_nifti(&arr)
            .map_err(|e| e.to_string())?;
        if !tmp.exists() {
            let ext = if name.ends_with(".gz") {
                "nii.gz"
            } else {
                "nii"
            };
            let written = tmp.with_extension("").with_extension(ext);
            std::fs::rename(&written, tmp).map_err(|e| format!("{}: {e}", written.display()))?;
        }
        Ok(())
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small i16 volume written as `.nii`, its bytes, and the values.
    fn small_nii(dir: &Path) -> (PathBuf, Vec<u8>, Vec<f32>) {
        let v = Volume::new(
            (0..60).map(|i| i as f32 - 20.0).collect(),
            Geometry::axis_aligned([5, 4, 3], [1.0, 1.0, 2.0]),
        )
        .expect("volume");
        let p = dir.join("v.nii");
        write_nifti(&p, &v.map(|x| x as i16), None).expect("write");
        let bytes = std::fs::read(&p).expect("bytes");
        (p, bytes, v.data)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn nan_or_zero_slope_reads_unscaled_like_nibabel() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (p, bytes, values) = small_nii(dir.path());
        // scl_slope is the float at byte 112, scl_inter at 116
        for (slope, inter) in [
            (f32::NAN, 0.0),
            (0.0, 5.0),
            (f32::NAN, f32::NAN),
            (2.0, f32::NAN),
        ] {
            let mut b = bytes.clone();
            b[112..116].copy_from_slice(&slope.to_le_bytes());
            b[116..120].copy_from_slice(&inter.to_le_bytes());
            std::fs::write(&p, &b).expect("patch");
            let back = read_nifti(&p).expect("read").volume.data;
            let scale = if slope == 2.0 { 2.0 } else { 1.0 };
            let want: Vec<f32> = values.iter().map(|v| v * scale).collect();
            assert_eq!(back, want, "slope {slope} inter {inter}");
        }
    }

    #[test]
    fn header_claims_are_checked_before_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, bytes, _) = small_nii(dir.path());
        let with_dims = |d: [u16; 3]| {
            let mut b = bytes.clone();
            for (i, v) in d.iter().enumerate() {
                b[42 + 2 * i..44 + 2 * i].copy_from_slice(&v.to_le_bytes());
            }
            b
        };
        // 30000^3 voxels in a small gzip file: refused by the limit, nothing allocated
        let p = dir.path().join("huge.nii.gz");
        std::fs::write(&p, gzip(&with_dims([30000, 30000, 30000]))).expect("w");
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(
            e.contains("huge.nii.gz") && e.contains("over the limit"),
            "{e}"
        );
        // under the limit but more than the stream holds: refused as truncated
        for name in ["short.nii.gz", "short.nii"] {
            let p = dir.path().join(name);
            let b = with_dims([400, 400, 400]);
            std::fs::write(&p, if name.ends_with(".gz") { gzip(&b) } else { b }).expect("w");
            let e = read_nifti(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("the file holds"), "{e}");
        }
        // the same dims with the data there read
        let p = dir.path().join("whole.nii.gz");
        std::fs::write(&p, gzip(&bytes)).expect("w");
        assert_eq!(read_nifti(&p).expect("whole").volume.data.len(), 60);
        // NIfTI-2 is named as such
        let p = dir.path().join("two.nii");
        let mut b = vec![0u8; 600];
        b[..4].copy_from_slice(&540i32.to_le_bytes());
        std::fs::write(&p, b).expect("w");
        let e = read_nifti(&p).unwrap_err().to_string();
        assert!(e.contains("two.nii") && e.contains("NIfTI-2"), "{e}");
    }

    #[test]
    fn write_then_read_keeps_values_and_geometry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut g = Geometry::axis_aligned([5, 4, 3], [0.8, 0.9, 2.5]);
        g.affine[0][0] = -0.8; // a flipped x axis
        g.affine[0][3] = 40.0;
        g.affine[2][3] = -12.5;
        let v = Volume::new((0..60).map(|i| i as f32 * 1.5 - 20.0).collect(), g.clone())
            .expect("volume");
        for name in ["a.nii.gz", "b.nii", "c.d.nii"] {
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
