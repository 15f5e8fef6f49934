//! Training and validation patches of one stage, held in memory, and batches drawn from them.

use candle_core::{Device, Tensor};
use metricunet_data::patches::Patches;

use crate::error::{Result, TrainError};

/// Patches as network inputs: intensities scaled from [0, 255] to [0, 1].
#[derive(Debug, Clone)]
pub struct PatchPool {
    pub n: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    inputs: Vec<f32>,
    labels: Vec<u8>,
}

impl PatchPool {
    /// From extracted patches.
    pub fn from_patches(p: Patches) -> Self {
        let inputs = p.inputs.iter().map(|v| v / 255.0).collect();
        Self {
            n: p.n,
            channels: p.slices,
            h: p.h,
            w: p.w,
            inputs,
            labels: p.labels,
        }
    }

    /// True when the pool holds no patch.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Inputs (`b x C x H x W` on `device`) and flat labels of the patches `idx`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Vec<u8>)> {
        let (chw, hw) = (self.channels * self.h * self.w, self.h * self.w);
        let mut x = Vec::with_capacity(idx.len() * chw);
        let mut y = Vec::with_capacity(idx.len() * hw);
        for &i in idx {
            if i >= self.n {
                return Err(TrainError::Invalid(format!("patch {i} of {}", self.n)));
            }
            x.extend_from_slice(&self.inputs[i * chw..(i + 1) * chw]);
            y.extend_from_slice(&self.labels[i * hw..(i + 1) * hw]);
        }
        let x = Tensor::from_vec(x, (idx.len(), self.channels, self.h, self.w), device)?;
        Ok((x, y))
    }
}

/// Patches of one stage from preprocessed cases (each must have a label): stage 1 from the
/// body crop downsampled by `downsample`, stage 2 from the `crop` box around the label's
/// centroid. Each case draws from its own RNG seeded from `seed` and its position, so a
/// pool does not depend on how many cases come before it.
pub fn stage_pool(
    cases: &[&metricunet_data::preprocess::Preprocessed],
    stage: metricunet_core::config::StageName,
    patches: &metricunet_core::config::PatchConfig,
    downsample: usize,
    crop: [usize; 3],
    seed: u64,
) -> Result<PatchPool> {
    use metricunet_data::patches::{extract_patches, PatchSpec};
    use rand::SeedableRng;
    let spec = PatchSpec {
        size: patches.size,
        slices: patches.slices,
        per_case: patches.per_case,
        foreground_share: patches.foreground_share,
    };
    let mut all: Option<Patches> = None;
    for (i, p) in cases.iter().enumerate() {
        let (image, label) = stage_volume(p, stage, downsample, crop)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        );
        let got = extract_patches(&image, &label, &spec, &mut rng)?;
        match &mut all {
            Some(a) => a.extend(got)?,
            None => all = Some(got),
        }
    }
    let all = all.ok_or_else(|| TrainError::Invalid("no case to draw patches from".into()))?;
    Ok(PatchPool::from_patches(all))
}

/// What a stage's network sees of a labelled case, whole: stage 1 the body crop downsampled
/// by `downsample`, stage 2 the `crop` box around the label's centroid; and the label on
/// the same grid.
pub fn stage_volume(
    p: &metricunet_data::preprocess::Preprocessed,
    stage: metricunet_core::config::StageName,
    downsample: usize,
    crop: [usize; 3],
) -> Result<(metricunet_data::Volume<f32>, metricunet_data::Volume<u8>)> {
    use metricunet_core::config::StageName;
    use metricunet_data::preprocess::{stage1_volume, stage2_crop};
    let (image, label) = match stage {
        StageName::Stage1 => stage1_volume(p, downsample)?,
        StageName::Stage2 => {
            let c = p
                .label_centroid()
                .ok_or_else(|| TrainError::Invalid("a case has an empty label".into()))?;
            let (img, lab, _) = stage2_crop(p, c, crop);
            (img, lab)
        }
    };
    let label = label.ok_or_else(|| TrainError::Invalid("a case has no label".into()))?;
    Ok((image, label))
}
