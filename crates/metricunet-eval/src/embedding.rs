//! The embedding view (the paper's Fig. 1 in spirit): what the voxel-metric module shapes,
//! made visible. For one axial slice of a case, the backbone's embedding map (the features
//! the samplers draw from) is projected on its first principal components: three as an RGB
//! image, two as a scatter of foreground, background and boundary voxels; and one number
//! summarises how well the classes separate at the boundary, where the metric loss acts:
//! the mean distance between a foreground and a background voxel of the boundary band over
//! the mean distance between two voxels of the same class there (1 = not separated).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use metricunet_core::config::{Experiment, StageName};
use metricunet_core::{Backbone, BatchDraw, VoxelMetricModule};
use metricunet_data::preprocess::{stage2_crop, Preprocessed};
use metricunet_data::Volume;
use metricunet_model::infer::slice_inputs;
use metricunet_model::ModelSpec;
use rand::SeedableRng;

use crate::predict::PredictError;

/// Voxel classes of the view.
pub const BACKGROUND: u8 = 0;
pub const FOREGROUND: u8 = 1;
/// Either class, within the boundary band.
pub const BOUNDARY_FG: u8 = 2;
pub const BOUNDARY_BG: u8 = 3;

/// One slice's embedding, projected.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingView {
    pub case: String,
    /// The slice (in the stage-2 crop).
    pub z: usize,
    pub h: usize,
    pub w: usize,
    /// Embedding channels.
    pub dims: usize,
    /// The first three principal components per voxel, each scaled to [0, 255] between its
    /// 1st and 99th percentile (`y * W + x`).
    pub rgb: Vec<[u8; 3]>,
    /// The reference (0/1), `y * W + x`.
    pub labels: Vec<u8>,
    /// A sample of voxels: (PC1, PC2, class), at most [`SCATTER_PER_CLASS`] per class.
    pub scatter: Vec<(f64, f64, u8)>,
    /// Share of the variance the first three components explain.
    pub explained: f64,
    /// Inter- over intra-class mean distance on the boundary band; `None` without both
    /// classes there.
    pub separation: Option<f64>,
    /// The network's input slice (the middle context slice), scaled to [0, 1].
    pub image: Vec<f32>,
    /// What the configured samplers draw on this slice from the same network pass (seeded
    /// 0, as a training step of a batch of one would); `None` without samplers.
    pub draw: Option<BatchDraw>,
}

/// Voxels per class in the scatter.
pub const SCATTER_PER_CLASS: usize = 300;
/// Half-width (voxels) of the boundary band.
pub const BAND: usize = 2;

/// Each voxel's class: [`BOUNDARY_FG`] / [`BOUNDARY_BG`] within `radius` voxels
/// (Chebyshev) of a voxel of the other label, else [`FOREGROUND`] / [`BACKGROUND`].
pub fn classes(labels: &[u8], h: usize, w: usize, radius: usize) -> Vec<u8> {
    (0..h * w)
        .map(|v| {
            let (y, x) = (v / w, v % w);
            let fg = labels[v] != 0;
            let near_other = (y.saturating_sub(radius)..(y + radius + 1).min(h)).any(|yy| {
                (x.saturating_sub(radius)..(x + radius + 1).min(w))
                    .any(|xx| (labels[yy * w + xx] != 0) != fg)
            });
            match (fg, near_other) {
                (true, true) => BOUNDARY_FG,
                (false, true) => BOUNDARY_BG,
                (true, false) => FOREGROUND,
                (false, false) => BACKGROUND,
            }
        })
        .collect()
}

/// Mean distance between a foreground and a background voxel of the boundary band over the
/// mean distance between two distinct voxels of the same class there. `features` is
/// `D x N` (channel-major, as a `1 x D x H x W` map flattens), `class` from [`classes`].
pub fn separation(features: &[f32], d: usize, class: &[u8]) -> Option<f64> {
    let n = class.len();
    let pick = |c: u8| -> Vec<usize> { (0..n).filter(|&v| class[v] == c).collect() };
    let (f, b) = (pick(BOUNDARY_FG), pick(BOUNDARY_BG));
    if f.len() < 2 || b.len() < 2 {
        return None;
    }
    let dist = |a: usize, b: usize| -> f64 {
        (0..d)
            .map(|k| {
                let diff = f64::from(features[k * n + a]) - f64::from(features[k * n + b]);
                diff * diff
            })
            .sum::<f64>()
            .sqrt()
    };
    let mean_within = |s: &[usize]| -> (f64, usize) {
        let mut sum = 0.0;
        let mut count = 0;
        for (i, &a) in s.iter().enumerate() {
            for &b in &s[i + 1..] {
                sum += dist(a, b);
                count += 1;
            }
        }
        (sum, count)
    };
    let (sf, cf) = mean_within(&f);
    let (sb, cb) = mean_within(&b);
    let intra = (sf + sb) / (cf + cb) as f64;
    let inter = f
        .iter()
        .flat_map(|&a| b.iter().map(move |&c| (a, c)))
        .map(|(a, c)| dist(a, c))
        .sum::<f64>()
        / (f.len() * b.len()) as f64;
    if intra > 0.0 {
        Some(inter / intra)
    } else if inter > 0.0 {
        Some(f64::INFINITY)
    } else {
        Some(1.0)
    }
}

/// The first `k` principal components of `features` (`D x N`, channel-major): per voxel
/// its `k` coordinates (`N x k`, row-major) and the share of the variance they explain.
/// Power iteration with deflation in f64 from a fixed start: the same answer every time.
pub fn pca(features: &[f32], d: usize, k: usize) -> (Vec<f64>, f64) {
    let n = features.len().checked_div(d).unwrap_or(0);
    if n == 0 {
        return (Vec::new(), 0.0);
    }
    let mean: Vec<f64> = (0..d)
        .map(|c| {
            features[c * n..(c + 1) * n]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / n as f64
        })
        .collect();
    let mut cov = vec![0.0f64; d * d];
    for a in 0..d {
        for b in a..d {
            let s = (0..n)
                .map(|v| {
                    (f64::from(features[a * n + v]) - mean[a])
                        * (f64::from(features[b * n + v]) - mean[b])
                })
                .sum::<f64>()
                / n as f64;
            cov[a * d + b] = s;
            cov[b * d + a] = s;
        }
    }
    let total: f64 = (0..d).map(|a| cov[a * d + a]).sum();
    let mut explained = 0.0;
    let mut coords = vec![0.0f64; n * k];
    for comp in 0..k.min(d) {
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + 0.01 * i as f64).collect();
        let mut lambda = 0.0;
        for _ in 0..300 {
            let mut next: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| cov[i * d + j] * v[j]).sum())
                .collect();
            let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-300 {
                break;
            }
            next.iter_mut().for_each(|x| *x /= norm);
            lambda = norm;
            v = next;
        }
        explained += lambda.max(0.0);
        // sign: the component points towards the larger coordinate sum (a fixed convention)
        let first = v.iter().copied().find(|x| x.abs() > 1e-12).unwrap_or(1.0);
        if first < 0.0 {
            v.iter_mut().for_each(|x| *x = -*x);
        }
        for p in 0..n {
            coords[p * k + comp] = (0..d)
                .map(|c| (f64::from(features[c * n + p]) - mean[c]) * v[c])
                .sum();
        }
        // deflate
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] -= lambda * v[i] * v[j];
            }
        }
    }
    let share = if total > 0.0 { explained / total } else { 0.0 };
    (coords, share.min(1.0))
}

/// `q`-quantile (0..1) of `v` (NaNs ignored).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The view of one `1 x D x H x W` embedding map and its `H x W` reference (no input
/// image, no sampler draw: [`case_view`] adds them).
pub fn view_of(
    case: &str,
    z: usize,
    embedding: &[f32],
    d: usize,
    labels: &[u8],
    h: usize,
    w: usize,
) -> EmbeddingView {
    let n = h * w;
    let (coords, explained) = pca(embedding, d, 3);
    let mut rgb = vec![[0u8; 3]; n];
    for c in 0..3.min(d) {
        let mut col: Vec<f64> = (0..n).map(|p| coords[p * 3 + c]).collect();
        let (lo, hi) = (quantile(&mut col.clone(), 0.01), quantile(&mut col, 0.99));
        for p in 0..n {
            let t = if hi > lo {
                ((coords[p * 3 + c] - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                0.5
            };
            rgb[p][c] = (t * 255.0).round() as u8;
        }
    }
    let class = classes(labels, h, w, BAND);
    let mut scatter = Vec::new();
    for c in [BACKGROUND, FOREGROUND, BOUNDARY_BG, BOUNDARY_FG] {
        let members: Vec<usize> = (0..n).filter(|&p| class[p] == c).collect();
        let step = members.len().div_ceil(SCATTER_PER_CLASS).max(1);
        scatter.extend(
            members
                .iter()
                .step_by(step)
                .map(|&p| (coords[p * 3], coords[p * 3 + 1], c)),
        );
    }
    EmbeddingView {
        case: case.to_string(),
        z,
        h,
        w,
        dims: d,
        rgb,
        labels: labels.to_vec(),
        scatter,
        explained,
        separation: separation(embedding, d, &class),
        image: Vec::new(),
        draw: None,
    }
}

/// The embedding view of `net` (stage 2 of `config`) on a preprocessed case: the stage-2
/// crop around the reference's centroid, its axial slice with the most foreground, BatchNorm
/// in inference mode. `None` when the case has no label or no foreground.
pub fn case_view(
    net: &dyn Backbone,
    config: &Experiment,
    case: &str,
    p: &Preprocessed,
    device: &Device,
) -> Result<Option<EmbeddingView>, PredictError> {
    let Some(centre) = p.label_centroid() else {
        return Ok(None);
    };
    let (image, label, _) = stage2_crop(p, centre, config.model.crop);
    let Some(label) = label else {
        return Ok(None);
    };
    let [nx, ny, nz] = image.geometry.dims;
    let per_slice = |z: usize| {
        label.data[z * nx * ny..(z + 1) * nx * ny]
            .iter()
            .filter(|&&v| v != 0)
            .count()
    };
    let Some(z) = (0..nz)
        .max_by_key(|&z| (per_slice(z), usize::MAX - z))
        .filter(|&z| per_slice(z) > 0)
    else {
        return Ok(None);
    };
    let spec = ModelSpec::of(config, StageName::Stage2);
    let out = slice_outputs(net, &spec, &image, z, device)?;
    let labels: Vec<u8> = label.data[z * nx * ny..(z + 1) * nx * ny]
        .iter()
        .map(|&v| u8::from(v != 0))
        .collect();
    let mut view = view_of(case, z, &out.embedding, out.dims, &labels, ny, nx);
    view.image = out.image;
    if !config.metric.samplers.is_empty() {
        let module = VoxelMetricModule::from_config(
            &config.model.segmentation_loss,
            "model.segmentation_loss",
            &config.metric,
        )?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        view.draw = Some(module.draw(&out.logits, &labels, &mut rng)?);
    }
    Ok(Some(view))
}

/// One slice through the network: the embedding map (`D x (ny * nx)`, channel-major), the
/// logits (`1 x 2 x ny x nx`) and the middle input slice.
struct SliceOutputs {
    embedding: Vec<f32>,
    dims: usize,
    logits: Tensor,
    image: Vec<f32>,
}

/// Slice `z` of `image` (values in [0, 255]) with its context slices through `net`, padded
/// in-plane to the network's size multiple as prediction pads it, the outputs cut back to
/// the slice.
fn slice_outputs(
    net: &dyn Backbone,
    spec: &ModelSpec,
    image: &Volume<f32>,
    z: usize,
    device: &Device,
) -> Result<SliceOutputs, PredictError> {
    let slices = spec.in_channels;
    let [nx, ny, _] = image.geometry.dims;
    let (x, (py, px)) = slice_inputs(spec, image, &[z]);
    let middle = x[(slices / 2) * py * px..(slices / 2 + 1) * py * px].to_vec();
    let image: Vec<f32> = (0..ny)
        .flat_map(|y| middle[y * px..y * px + nx].to_vec())
        .collect();
    let x = Tensor::from_vec(x, (1, slices, py, px), device)?;
    let out = net.forward_t(&x, false)?;
    let logits = out.logits.narrow(2, 0, ny)?.narrow(3, 0, nx)?;
    let e = out.embedding;
    let (_, d, eh, ew) = e.dims4()?;
    if (eh, ew) != (py, px) {
        return Err(PredictError::Model(format!(
            "the embedding map is {eh} x {ew}, the input {py} x {px}: the view needs it on the input's grid"
        )));
    }
    let e = e
        .narrow(2, 0, ny)?
        .narrow(3, 0, nx)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(SliceOutputs {
        embedding: e,
        dims: d,
        logits,
        image,
    })
}

/// The views of a trained cell (its `stage2/model.safetensors` and `config`) on `cases` (id,
/// preprocessed case), in order, the network loaded once; cases without a view are left out.
/// Empty when the cell has no trained stage 2.
pub fn cell_views(
    cell_dir: &Path,
    config: &Experiment,
    cases: &[(String, Preprocessed)],
    device: &Device,
) -> Result<Vec<EmbeddingView>, PredictError> {
    let weights = cell_dir
        .join(metricunet_store::stage_dir(StageName::Stage2))
        .join(metricunet_store::WEIGHTS);
    if !weights.exists() {
        return Ok(Vec::new());
    }
    let (_vars, net) = ModelSpec::of(config, StageName::Stage2).load(&weights, device)?;
    let mut out = Vec::new();
    for (id, p) in cases {
        if let Some(v) = case_view(net.as_ref(), config, id, p, device)? {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 6 x 6 reference with a 2 x 3 foreground block.
    fn labels() -> Vec<u8> {
        let mut l = vec![0u8; 36];
        for y in 2..4 {
            for x in 1..4 {
                l[y * 6 + x] = 1;
            }
        }
        l
    }

    #[test]
    fn classes_mark_the_band_on_both_sides() {
        let c = classes(&labels(), 6, 6, 1);
        // every foreground voxel of a 2-voxel-high block touches background
        assert!((0..36)
            .filter(|&v| labels()[v] == 1)
            .all(|v| c[v] == BOUNDARY_FG));
        // (1,1) touches (2,1); (0,0) is two rows from any foreground; (5,5) two columns
        assert_eq!((c[7], c[0], c[35]), (BOUNDARY_BG, BACKGROUND, BACKGROUND));
        // the band around a 2 x 3 block within radius 1: the 4 x 5 box minus the block
        assert_eq!(c.iter().filter(|&&k| k == BOUNDARY_BG).count(), 4 * 5 - 6);
    }

    #[test]
    fn separation_of_hand_built_embeddings() {
        let l = labels();
        let class = classes(&l, 6, 6, 1);
        // 2 channels: foreground at (1, 0), background at (0, 0): every inter distance 1,
        // every intra distance 0 -> infinitely separated
        let mut f: Vec<f32> = l.iter().map(|&v| f32::from(v)).collect();
        f.extend([0f32; 36]);
        assert_eq!(separation(&f, 2, &class), Some(f64::INFINITY));
        // the same embedding everywhere: not separated
        assert_eq!(separation(&vec![0.5f32; 72], 2, &class), Some(1.0));
        // channel 0 = x coordinate only (no class information): inter ~ intra
        let mut g: Vec<f32> = (0..36).map(|v| (v % 6) as f32).collect();
        g.extend([0f32; 36]);
        let s = separation(&g, 2, &class).expect("both classes");
        assert!(s > 0.5 && s < 1.5, "{s}");
        // a hand-computed case: two fg voxels at 0 and 2, two bg voxels at 10 and 12 (1-D)
        let cls = [BOUNDARY_FG, BOUNDARY_FG, BOUNDARY_BG, BOUNDARY_BG];
        let e = [0f32, 2.0, 10.0, 12.0];
        // intra: |0-2| = 2, |10-12| = 2 -> 2; inter: 10, 12, 8, 10 -> 10
        assert_eq!(separation(&e, 1, &cls), Some(5.0));
        // one class missing: no number
        assert_eq!(separation(&e, 1, &[BOUNDARY_FG; 4]), None);
    }

    #[test]
    fn pca_finds_the_axis_of_largest_variance() {
        // 3 channels, 5 voxels: the data vary along (1, 1, 0) / sqrt 2 with a little on z
        let t = [-2.0f32, -1.0, 0.0, 1.0, 2.0];
        let z = [0.1f32, -0.2, 0.2, -0.2, 0.1]; // centred and orthogonal to t
        let mut f = Vec::new();
        f.extend_from_slice(&t);
        f.extend_from_slice(&t);
        f.extend_from_slice(&z);
        let (coords, explained) = pca(&f, 3, 2);
        // first coordinate = t * sqrt 2 (up to sign, fixed by the convention)
        for (p, &tp) in t.iter().enumerate() {
            assert!((coords[p * 2].abs() - f64::from(tp).abs() * 2f64.sqrt()).abs() < 1e-6);
        }
        // the second component is the small z variation
        for (p, &zp) in z.iter().enumerate() {
            assert!(
                (coords[p * 2 + 1].abs() - f64::from(zp).abs()).abs() < 1e-5,
                "{coords:?}"
            );
        }
        assert!((explained - 1.0).abs() < 1e-9, "{explained}");
    }
}
