//! `boundary`: the boundary loss of Kervadec et al. (2019, MIDL; MedIA 2021),
//!
//! ```text
//! L = mean over voxels of  phi(q) p(q)
//! ```
//!
//! with `p` the foreground probability and `phi` the signed distance (in pixels) of each
//! voxel to the reference contour of its slice: positive outside the prostate (the distance
//! to the nearest prostate pixel), zero on its border pixels and negative inside (minus the
//! distance to the nearest background pixel, plus one), as in the authors' `one_hot2dist`.
//! A slice without prostate (or without background) has `phi = 0`: the loss says nothing
//! there, so it is meant beside a region loss (`dice`), as the authors use it. The maps are
//! computed from each batch's labels with the exact distance transform of
//! `metricunet_core::mask` (a 64 x 64 slice takes microseconds).

use candle_core::{DType, Tensor};
use metricunet_core::mask::edt_squared;
use metricunet_core::seg_loss::{foreground_probability, SegmentationLoss};
use metricunet_core::{inventory, Params, Result, SegLossPlugin};

/// Kervadec et al.'s boundary loss on the foreground probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoundaryLoss;

/// The signed distance maps of `n` binary slices of `h x w` (row-major, flat), in pixels.
pub fn signed_distance_maps(labels: &[bool], n: usize, h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    let mut out = vec![0f32; labels.len()];
    for (i, slice) in labels.chunks(plane.max(1)).enumerate().take(n) {
        let inside = slice.iter().filter(|&&v| v).count();
        if inside == 0 || inside == plane {
            continue;
        }
        let outside: Vec<bool> = slice.iter().map(|&v| !v).collect();
        // squared distance to the nearest prostate pixel and to the nearest background pixel
        let to_inside = edt_squared(slice, [w, h, 1], [1.0; 3]);
        let to_outside = edt_squared(&outside, [w, h, 1], [1.0; 3]);
        for (j, o) in out[i * plane..(i + 1) * plane].iter_mut().enumerate() {
            *o = if slice[j] {
                -(to_outside[j].sqrt() - 1.0) as f32
            } else {
                to_inside[j].sqrt() as f32
            };
        }
    }
    out
}

impl SegmentationLoss for BoundaryLoss {
    fn forward(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (n, _, h, w) = logits.dims4()?;
        let host: Vec<bool> = labels
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| v > 0.5)
            .collect();
        let phi = Tensor::from_vec(
            signed_distance_maps(&host, n, h, w),
            (n, h, w),
            logits.device(),
        )?
        .to_dtype(logits.dtype())?;
        Ok((foreground_probability(logits)? * phi)?.mean_all()?)
    }
}

inventory::submit! {
    SegLossPlugin {
        name: "boundary",
        description: "boundary loss: mean of signed distance to the reference contour x foreground probability (Kervadec et al.; use beside dice)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn SegmentationLoss>> { Ok(Box::new(BoundaryLoss)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn signed_distances_of_a_square() {
        // 7 x 7 slice with a 3 x 3 square at rows/columns 2..=4
        let (h, w) = (7, 7);
        let m: Vec<bool> = (0..49)
            .map(|v| (2..=4).contains(&(v / w)) && (2..=4).contains(&(v % w)))
            .collect();
        let phi = signed_distance_maps(&m, 1, h, w);
        let at = |r: usize, c: usize| phi[r * w + c];
        assert_eq!(at(3, 3), -1.0); // centre: 2 pixels from the background, minus 1
        assert_eq!(at(2, 2), 0.0); // border pixel of the square
        assert_eq!(at(2, 1), 1.0); // next to it, outside
        assert_eq!(at(0, 3), 2.0);
        assert!((at(0, 0) - 8f32.sqrt()).abs() < 1e-6); // to the corner pixel (2, 2)
                                                        // an empty slice and a full one have no contour: zero
        assert!(signed_distance_maps(&[false; 4], 1, 2, 2)
            .iter()
            .all(|&v| v == 0.0));
        assert!(signed_distance_maps(&[true; 4], 1, 2, 2)
            .iter()
            .all(|&v| v == 0.0));
    }

    #[test]
    fn loss_is_the_mean_of_distance_times_probability() {
        // a 1 x 3 slice labelled [0, 1, 1]
        let l = 3f64.ln();
        let logits = Tensor::new(&[[[[0f64, 0.0, 0.0]], [[l, 0.0, -l]]]], &Device::Cpu).expect("t");
        let labels = Tensor::new(&[[[0f64, 1.0, 1.0]]], &Device::Cpu).expect("t");
        let got = BoundaryLoss
            .forward(&logits, &labels)
            .and_then(|t| Ok(t.to_scalar::<f64>()?))
            .expect("loss");
        // phi = [1, 0, -1] (the image's edge is not background), p = [3/4, 1/2, 1/4]
        assert!((got - (0.75 - 0.25) / 3.0).abs() < 1e-12, "{got}");
    }
}
