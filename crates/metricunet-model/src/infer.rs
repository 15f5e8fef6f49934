//! A network run over a whole volume, slice by slice, as prediction and whole-case
//! validation both do it (one code path): every axial slice with its context slices, whole
//! in-plane (padded to the network's size multiple), no patches and no voting.

use candle_core::{DType, Device, Tensor};
use metricunet_core::Backbone;
use metricunet_data::morphology::{centroid, largest_component};
use metricunet_data::patches::slice_stack;
use metricunet_data::Volume;

use crate::{ModelSpec, Result};

impl ModelSpec {
    /// The in-plane size multiple the backbone needs: `2^(levels - 1)` for an encoder of
    /// `levels` widths (4 levels when the backbone does not say).
    pub fn size_multiple(&self) -> usize {
        let levels = self
            .backbone
            .params
            .get("encoder")
            .and_then(|v| v.as_sequence())
            .map(|s| s.len())
            .unwrap_or(4);
        1 << levels.saturating_sub(1)
    }
}

/// The foreground probability (softmax channel 1) of every axial slice of `image` (values
/// in [0, 255]) under `net`, built as `spec` (its `in_channels` slices of context, padded
/// in-plane to its size multiple), `batch` slices per forward pass, BatchNorm in inference
/// mode.
pub fn segment_slices(
    net: &dyn Backbone,
    spec: &ModelSpec,
    image: &Volume<f32>,
    batch: usize,
    device: &Device,
) -> Result<Volume<f32>> {
    let [nx, ny, nz] = image.geometry.dims;
    let mut out = Volume::filled(0f32, image.geometry.clone());
    let zs: Vec<usize> = (0..nz).collect();
    for chunk in zs.chunks(batch.max(1)) {
        let (x, (py, px)) = slice_inputs(spec, image, chunk);
        let x = Tensor::from_vec(x, (chunk.len(), spec.in_channels, py, px), device)?;
        let logits = net.forward_t(&x, false)?.logits;
        let p = candle_nn::ops::softmax(&logits, 1)?
            .narrow(1, 1, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (b, &z) in chunk.iter().enumerate() {
            let plane = &mut out.data[z * nx * ny..(z + 1) * nx * ny];
            for y in 0..ny {
                let row = &p[(b * py + y) * px..(b * py + y) * px + nx];
                plane[y * nx..y * nx + nx].copy_from_slice(row);
            }
        }
    }
    Ok(out)
}

/// The network input of the axial slices `zs` of `image` (values in [0, 255]): each with its
/// `spec.in_channels` slices of context, scaled to [0, 1], zero-padded in-plane to the
/// network's size multiple; flat `zs.len() x C x py x px`, and `(py, px)`.
pub fn slice_inputs(
    spec: &ModelSpec,
    image: &Volume<f32>,
    zs: &[usize],
) -> (Vec<f32>, (usize, usize)) {
    let slices = spec.in_channels;
    let multiple = spec.size_multiple();
    let [nx, ny, _] = image.geometry.dims;
    let (px, py) = (
        nx.div_ceil(multiple) * multiple,
        ny.div_ceil(multiple) * multiple,
    );
    let mut x = vec![0f32; zs.len() * slices * px * py];
    for (b, &z) in zs.iter().enumerate() {
        let stack = slice_stack(image, z, slices);
        for c in 0..slices {
            for y in 0..ny {
                let src = &stack[(c * ny + y) * nx..(c * ny + y) * nx + nx];
                let dst = ((b * slices + c) * py + y) * px;
                for (d, s) in x[dst..dst + nx].iter_mut().zip(src) {
                    *d = s / 255.0;
                }
            }
        }
    }
    (x, (py, px))
}

/// Stage 1's answer: the centroid (voxels of `prob`'s grid) of the largest connected
/// component above 0.5, or `None` when no voxel is.
pub fn localise(prob: &Volume<f32>) -> Option<[f64; 3]> {
    let fg: Vec<bool> = prob.data.iter().map(|&v| v > 0.5).collect();
    let largest = largest_component(&fg, prob.geometry.dims);
    centroid(&largest, prob.geometry.dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metricunet_data::Geometry;

    #[test]
    fn the_localiser_takes_the_largest_component() {
        let g = Geometry::axis_aligned([10, 10, 4], [1.0; 3]);
        let mut p = Volume::filled(0f32, g);
        // a 1-voxel blob and a 2 x 2 x 2 one centred at (6.5, 6.5, 1.5)
        p.data[0] = 0.9;
        for z in 1..3 {
            for y in 6..8 {
                for x in 6..8 {
                    p.data[(z * 10 + y) * 10 + x] = 0.8;
                }
            }
        }
        assert_eq!(localise(&p), Some([6.5, 6.5, 1.5]));
        assert_eq!(localise(&Volume::filled(0.5f32, p.geometry.clone())), None);
    }
}
