//! Preprocessing of Section IV.B: resample to 1 x 1 x 1 mm (configurable), clip a HU window
//! to [0, 255], crop the body (threshold + largest connected component), and the geometry
//! that takes a prediction on the crop back to the CT's own grid.

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::morphology::{bounding_box, centroid, largest_component};
use crate::resample::{resample_linear, resample_nearest};
use crate::volume::{Geometry, Volume};

/// Preprocessing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessParams {
    /// Target spacing in mm (paper: 1 x 1 x 1).
    pub spacing_mm: [f64; 3],
    /// HU window mapped to [0, 255].
    pub hu_window: [f64; 2],
    /// Voxels above this HU belong to the body before the largest component is taken.
    pub body_threshold_hu: f64,
}

impl Default for PreprocessParams {
    fn default() -> Self {
        Self {
            spacing_mm: [1.0; 3],
            hu_window: [-1000.0, 1000.0],
            body_threshold_hu: -500.0,
        }
    }
}

impl From<&metricunet_core::config::DataConfig> for PreprocessParams {
    fn from(d: &metricunet_core::config::DataConfig) -> Self {
        Self {
            spacing_mm: d.spacing_mm,
            hu_window: d.hu_window,
            body_threshold_hu: d.body_threshold_hu,
        }
    }
}

impl PreprocessParams {
    /// A short text that changes whenever the output would (for cache keys).
    pub fn fingerprint(&self) -> String {
        format!(
            "sp{:?}-w{:?}-b{}-v1",
            self.spacing_mm, self.hu_window, self.body_threshold_hu
        )
    }
}

/// Map HU to [0, 255] through the window `[lo, hi]`.
#[inline]
pub fn window(hu: f32, lo: f32, hi: f32) -> f32 {
    ((hu.clamp(lo, hi) - lo) / (hi - lo)) * 255.0
}

/// A preprocessed case: the body crop at the target spacing, intensities in [0, 255],
/// and the geometry needed to put a prediction back on the original grid.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// Body crop, [0, 255].
    pub image: Volume<f32>,
    /// Binary label on the same crop, when the case has one.
    pub label: Option<Volume<u8>>,
    /// The whole CT resampled to the target spacing (geometry only).
    pub resampled: Geometry,
    /// Position of the crop's first voxel in `resampled`.
    pub crop_offset: [i64; 3],
    /// The CT's own grid.
    pub original: Geometry,
}

/// Resample, window and body-crop one case.
pub fn preprocess(
    image: &Volume<f32>,
    label: Option<&Volume<u8>>,
    p: &PreprocessParams,
) -> Result<Preprocessed> {
    if let Some(l) = label {
        if l.geometry.dims != image.geometry.dims {
            return Err(DataError::Invalid(format!(
                "label dims {:?} differ from image dims {:?}",
                l.geometry.dims, image.geometry.dims
            )));
        }
    }
    let target = image.geometry.with_spacing(p.spacing_mm);
    let [lo, hi] = [p.hu_window[0] as f32, p.hu_window[1] as f32];
    // The body is found on the CT's own grid (fewer voxels than 1 mm for typical CTs), and
    // only its bounding box is resampled.
    let threshold = p.body_threshold_hu as f32;
    let body: Vec<bool> = image.data.par_iter().map(|&v| v > threshold).collect();
    let body = largest_component(&body, image.geometry.dims);
    let (bmin, bmax) = bounding_box(&body, image.geometry.dims).ok_or_else(|| {
        DataError::Invalid(format!(
            "no voxel above the body threshold of {} HU: is this a CT in HU?",
            p.body_threshold_hu
        ))
    })?;
    let mut offset = [0i64; 3];
    let mut dims = [0usize; 3];
    for a in 0..3 {
        let ratio = image.geometry.spacing[a] / target.spacing[a];
        // target voxels whose centres lie within half a source voxel of the body's box
        let first = ((bmin[a] as f64 - 0.5) * ratio).ceil().max(0.0) as usize;
        let last = (((bmax[a] - 1) as f64 + 0.5) * ratio).floor() as usize;
        let last = last.min(target.dims[a] - 1).max(first);
        offset[a] = first as i64;
        dims[a] = last - first + 1;
    }
    let crop_grid = target.sub_grid(offset, dims);
    let original = image.geometry.clone();
    let windowed = resample_linear(image, &crop_grid, lo)?.map(|v| window(v, lo, hi));
    let label = match label {
        Some(l) => Some(resample_nearest(l, &crop_grid, 0)?),
        None => None,
    };
    Ok(Preprocessed {
        image: windowed,
        label,
        resampled: target,
        crop_offset: offset,
        original,
    })
}

impl Preprocessed {
    /// Put a mask predicted on the crop (or on any sub-grid of the resampled CT placed at
    /// `offset` within it) back onto the CT's own grid: paste into the resampled grid, then
    /// nearest-neighbour resampling to the original spacing. Nearest keeps the mask binary
    /// and never moves the boundary by more than half a voxel of the coarser grid.
    pub fn to_original(&self, mask: &Volume<u8>, offset: [i64; 3]) -> Result<Volume<u8>> {
        let mut full = Volume::filled(0u8, self.resampled.clone());
        full.paste(mask, offset);
        resample_nearest(&full, &self.original, 0)
    }

    /// The centroid of the label in crop voxels, if the case has a non-empty label.
    pub fn label_centroid(&self) -> Option<[f64; 3]> {
        let l = self.label.as_ref()?;
        let m: Vec<bool> = l.data.iter().map(|&v| v != 0).collect();
        centroid(&m, l.geometry.dims)
    }
}

/// Downsample by an integer factor (stage 1 works at 1/4): trilinear onto the grid with
/// `factor` times the spacing.
pub fn downsample(v: &Volume<f32>, factor: usize) -> Result<Volume<f32>> {
    let f = factor.max(1) as f64;
    let target = v.geometry.with_spacing(v.geometry.spacing.map(|s| s * f));
    resample_linear(v, &target, 0.0)
}

/// The `size` box centred on `center` (voxel coordinates), padded with `pad` where it
/// leaves the volume; returns the crop and its offset.
pub fn crop_around<T: Copy + Send + Sync>(
    v: &Volume<T>,
    center: [f64; 3],
    size: [usize; 3],
    pad: T,
) -> (Volume<T>, [i64; 3]) {
    let offset = [0, 1, 2].map(|a| (center[a] - size[a] as f64 / 2.0).round() as i64);
    (v.crop(offset, size, pad), offset)
}

/// Stage 1 input: the body crop downsampled by `factor` (image trilinear, label nearest).
pub fn stage1_volume(p: &Preprocessed, factor: usize) -> Result<(Volume<f32>, Option<Volume<u8>>)> {
    let image = downsample(&p.image, factor)?;
    let label = match &p.label {
        Some(l) => Some(resample_nearest(l, &image.geometry, 0)?),
        None => None,
    };
    Ok((image, label))
}

/// Stage 2 input: the `size` box around `center` (voxels of the body crop), padded with 0
/// (air after windowing). Returns image, label and the box's offset in the resampled CT
/// (what [`Preprocessed::to_original`] takes).
pub fn stage2_crop(
    p: &Preprocessed,
    center: [f64; 3],
    size: [usize; 3],
) -> (Volume<f32>, Option<Volume<u8>>, [i64; 3]) {
    let (image, offset) = crop_around(&p.image, center, size, 0.0);
    let label = p.label.as_ref().map(|l| l.crop(offset, size, 0));
    let in_resampled = [0, 1, 2].map(|a| offset[a] + p.crop_offset[a]);
    (image, label, in_resampled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 40 x 30 x 10 CT at 2 x 2 x 3 mm: air, a body box of water, and a small "organ".
    fn phantom() -> (Volume<f32>, Volume<u8>) {
        let g = Geometry::axis_aligned([40, 30, 10], [2.0, 2.0, 3.0]);
        let mut img = Volume::filled(-1000.0f32, g.clone());
        let mut lab = Volume::filled(0u8, g);
        for z in 0..10 {
            for y in 5..25 {
                for x in 8..32 {
                    let i = img.index(x, y, z);
                    img.data[i] = 40.0;
                    if (18..22).contains(&x) && (13..17).contains(&y) && (4..7).contains(&z) {
                        lab.data[i] = 1;
                    }
                }
            }
        }
        // an isolated bright speck outside the body is not part of the crop
        let i = img.index(1, 1, 1);
        img.data[i] = 500.0;
        (img, lab)
    }

    #[test]
    fn window_maps_to_0_255() {
        assert_eq!(window(-2000.0, -1000.0, 1000.0), 0.0);
        assert_eq!(window(0.0, -1000.0, 1000.0), 127.5);
        assert_eq!(window(3000.0, -1000.0, 1000.0), 255.0);
    }

    #[test]
    fn crops_the_body_and_pastes_back() {
        let (img, lab) = phantom();
        let p = preprocess(&img, Some(&lab), &PreprocessParams::default()).expect("preprocess");
        assert_eq!(p.resampled.dims, [80, 60, 30]);
        // body x 8..32 at 2 mm -> 16..64 at 1 mm, give or take the interpolated edge voxel
        assert!(
            (p.crop_offset[0] - 16).abs() <= 1 && (p.image.geometry.dims[0] as i64 - 48).abs() <= 2,
            "{p:?}"
        );
        assert!(p.image.data.iter().all(|v| (0.0..=255.0).contains(v)));
        let label = p.label.as_ref().expect("label");
        let back = p.to_original(label, p.crop_offset).expect("back");
        assert_eq!(back.geometry, img.geometry);
        assert_eq!(back.data, lab.data);
        let c = p.label_centroid().expect("centroid");
        // organ centre x = 20 voxels = 40 mm = resampled voxel 39.5 (first voxel centre at 0)
        assert!(
            (c[0] + p.crop_offset[0] as f64 - 39.5).abs() < 1.01,
            "{c:?}"
        );
    }

    #[test]
    fn stage_inputs_and_paste_back() {
        let (img, lab) = phantom();
        let p = preprocess(&img, Some(&lab), &PreprocessParams::default()).expect("preprocess");
        let (s1, l1) = stage1_volume(&p, 4).expect("stage 1");
        assert_eq!(s1.geometry.spacing, [4.0; 3]);
        assert_eq!(l1.expect("label").geometry.dims, s1.geometry.dims);
        let c = p.label_centroid().expect("centroid");
        let (s2, l2, off) = stage2_crop(&p, c, [16, 16, 16]);
        assert_eq!(s2.geometry.dims, [16, 16, 16]);
        let l2 = l2.expect("label");
        // the whole organ (8 x 8 x 9 mm) fits in the 16 mm box around its centroid
        let total = p
            .label
            .as_ref()
            .map(|l| l.data.iter().filter(|&&v| v != 0).count());
        assert_eq!(Some(l2.data.iter().filter(|&&v| v != 0).count()), total);
        assert_eq!(p.to_original(&l2, off).expect("back").data, lab.data);
    }

    #[test]
    fn no_body_is_a_clear_error() {
        let g = Geometry::axis_aligned([8, 8, 8], [1.0; 3]);
        let e = preprocess(
            &Volume::filled(-1000.0, g),
            None,
            &PreprocessParams::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("body threshold"), "{e}");
    }

    #[test]
    fn crop_around_pads_and_downsample_quarters() {
        let g = Geometry::axis_aligned([16, 16, 16], [1.0; 3]);
        let v = Volume::filled(1.0f32, g);
        let (c, off) = crop_around(&v, [1.0, 8.0, 8.0], [8, 8, 8], -1.0);
        assert_eq!(off, [-3, 4, 4]);
        assert_eq!(c.get(0, 0, 0), -1.0);
        assert_eq!(c.get(3, 0, 0), 1.0);
        let d = downsample(&v, 4).expect("down");
        assert_eq!(d.geometry.dims, [4, 4, 4]);
        assert_eq!(d.geometry.spacing, [4.0; 3]);
    }
}
