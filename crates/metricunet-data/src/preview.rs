//! PNG previews of axial slices (grayscale CT through a HU window, reference contour in
//! colour), for READMEs and reports.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::volume::Volume;

/// Write axial slice `z` of `image` (HU) through `window` as an RGB PNG, upscaled by
/// `scale` (nearest), with the boundary of `mask` (if given) drawn in `color`. The front of
/// the patient is up: rows are flipped when the grid's y axis points anteriorly (RAS+).
pub fn write_slice_png(
    path: &Path,
    image: &Volume<f32>,
    z: usize,
    window: [f32; 2],
    mask: Option<(&Volume<u8>, u8, [u8; 3])>,
    scale: usize,
) -> Result<()> {
    let [nx, ny, nz] = image.geometry.dims;
    if z >= nz {
        return Err(DataError::Invalid(format!(
            "slice {z} outside a volume of {nz} slices"
        )));
    }
    let scale = scale.max(1);
    let (w, h) = (nx * scale, ny * scale);
    let plane = image.slice(z);
    let m = mask.map(|(m, value, color)| (m.slice(z), value, color));
    let mut rgb = vec![0u8; w * h * 3];
    let flip = image.geometry.affine[1][1] > 0.0;
    for y in 0..ny {
        let row = if flip { ny - 1 - y } else { y };
        for x in 0..nx {
            let v = plane[x + nx * y];
            let g = (((v - window[0]) / (window[1] - window[0])).clamp(0.0, 1.0) * 255.0) as u8;
            let mut px = [g, g, g];
            if let Some((ms, value, color)) = m {
                let at = |xx: usize, yy: usize| ms[xx + nx * yy] == value;
                let edge = at(x, y)
                    && (x == 0
                        || y == 0
                        || x + 1 == nx
                        || y + 1 == ny
                        || !at(x - 1, y)
                        || !at(x + 1, y)
                        || !at(x, y - 1)
                        || !at(x, y + 1));
                if edge {
                    px = color;
                }
            }
            for dy in 0..scale {
                for dx in 0..scale {
                    let o = ((row * scale + dy) * w + x * scale + dx) * 3;
                    rgb[o..o + 3].copy_from_slice(&px);
                }
            }
        }
    }
    Ok(metricunet_core::fsio::write_atomic_with(path, |file| {
        let mut enc = png::Encoder::new(file, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    })?)
}

/// Mean, standard deviation and count of `image` where `select` holds.
pub fn hu_stats(image: &Volume<f32>, select: impl Fn(usize) -> bool) -> (f64, f64, usize) {
    let (mut n, mut sum, mut sq) = (0usize, 0f64, 0f64);
    for (i, &v) in image.data.iter().enumerate() {
        if select(i) {
            n += 1;
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
        }
    }
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = sum / n as f64;
    (mean, (sq / n as f64 - mean * mean).max(0.0).sqrt(), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn png_has_the_expected_size_and_stats_are_exact() {
        let g = Geometry::axis_aligned([6, 4, 2], [1.0; 3]);
        let img = Volume::new((0..48).map(|v| v as f32).collect(), g.clone()).expect("v");
        let mut m = Volume::filled(0u8, g);
        m.data[7] = 1;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("s.png");
        write_slice_png(&p, &img, 1, [0.0, 47.0], Some((&m, 1, [255, 0, 0])), 2).expect("png");
        let bytes = std::fs::read(&p).expect("read");
        assert_eq!(&bytes[1..4], b"PNG");
        let (w, h) = (
            u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        );
        assert_eq!((w, h), (12, 8));
        assert!(write_slice_png(&p, &img, 2, [0.0, 1.0], None, 1).is_err());
        let (mean, sd, n) = hu_stats(&img, |i| i < 4);
        assert_eq!((mean, n), (1.5, 4));
        assert!((sd - 1.25f64.sqrt()).abs() < 1e-12);
    }
}
