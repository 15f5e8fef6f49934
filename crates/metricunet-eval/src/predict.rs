//! Two-stage prediction.
//!
//! 1. Preprocess the CT as in training (resample, window, body crop).
//! 2. Stage 1 segments every axial slice of the 1/4-downsampled body crop (whole slices with
//!    their 5-slice context, padded to the network's size multiple; no patch voting); the
//!    centroid of the largest connected foreground component locates the prostate. No
//!    foreground is an error for that case, not a centre crop.
//! 3. Stage 2 segments every axial slice of the 128^3 box around that centroid (3-slice
//!    context, whole 128 x 128 slices). The metric module is not used at test time.
//! 4. The box's mask is pasted into the resampled CT and brought to the CT's grid with
//!    nearest-neighbour resampling (a binary mask stays binary and never moves by more than
//!    half a voxel; the optional probability map goes back trilinearly).
//! 5. The experiment's `postprocess` steps (plugins) change the mask on the CT's grid, in
//!    order; the probabilities stay as the network gave them.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarMap;
use metricunet_core::config::{Experiment, StageName};
use metricunet_core::{registry, Backbone, PostProcess};
use metricunet_data::io::{read_nifti, write_nifti, NiftiVolume};
use metricunet_data::preprocess::{
    crop_around, preprocess, stage1_volume, PreprocessParams, Preprocessed,
};
use metricunet_data::resample::resample_linear;
use metricunet_data::Volume;
use metricunet_model::infer::{localise, segment_slices};
use metricunet_model::ModelSpec;
use thiserror::Error;

/// Why a case could not be predicted.
#[derive(Debug, Error)]
pub enum PredictError {
    #[error(transparent)]
    Data(#[from] metricunet_data::DataError),
    #[error(transparent)]
    Network(#[from] metricunet_model::ModelError),
    #[error(transparent)]
    Core(#[from] metricunet_core::CoreError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Model(String),
    #[error("{}: stage 1 found no prostate (no voxel above 0.5 in the localisation map)", .0.display())]
    NotFound(PathBuf),
}

/// A trained model: both stages and the configuration they were trained with.
pub struct Pipeline {
    pub config: Experiment,
    stage1: (VarMap, Box<dyn Backbone>),
    stage2: (VarMap, Box<dyn Backbone>),
    postprocess: Vec<Box<dyn PostProcess>>,
    device: Device,
    /// Slices per forward pass.
    pub batch: usize,
}

/// The outcome for one CT.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Binary mask on the CT's grid.
    pub mask: Volume<u8>,
    /// Foreground probability on the CT's grid.
    pub probabilities: Volume<f32>,
    /// Stage-1 centroid in the resampled CT's voxels.
    pub centroid: [f64; 3],
}

impl Pipeline {
    /// Load a run folder written by `metricunet train` (its `config.yaml` and both stages'
    /// `model.safetensors`).
    pub fn load(run_dir: &Path, device: Device) -> Result<Self, PredictError> {
        let cfg_path = run_dir.join(metricunet_store::CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            PredictError::Model(format!(
                "{}: {e} (is this a run folder of `metricunet train`?)",
                cfg_path.display()
            ))
        })?;
        let config: Experiment = serde_norway::from_str(&text)
            .map_err(|e| PredictError::Model(format!("{}: {e}", cfg_path.display())))?;
        let load = |stage: StageName| -> Result<(VarMap, Box<dyn Backbone>), PredictError> {
            let weights = run_dir
                .join(metricunet_store::stage_dir(stage))
                .join(metricunet_store::WEIGHTS);
            if !weights.exists() {
                return Err(PredictError::Model(format!(
                    "{}: missing; train this stage to the end first",
                    weights.display()
                )));
            }
            Ok(ModelSpec::of(&config, stage).load(&weights, &device)?)
        };
        Self::with_stages(config.clone(), device.clone(), load)
    }

    /// Build both stages with `make` (stage 1 first).
    fn with_stages(
        config: Experiment,
        device: Device,
        make: impl Fn(StageName) -> Result<(VarMap, Box<dyn Backbone>), PredictError>,
    ) -> Result<Self, PredictError> {
        let stage1 = make(StageName::Stage1)?;
        let stage2 = make(StageName::Stage2)?;
        let postprocess = config
            .postprocess
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                registry::build_postprocess(spec, &format!("postprocess[{i}]")).map(|(p, _)| p)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            config,
            stage1,
            stage2,
            postprocess,
            device,
            batch: 8,
        })
    }

    /// Both stages of `config` with seeded, untrained weights (for benchmarks: the time of
    /// a forward pass does not depend on the weights).
    pub fn untrained(config: Experiment, device: Device, seed: u64) -> Result<Self, PredictError> {
        let build = |stage: StageName| -> Result<(VarMap, Box<dyn Backbone>), PredictError> {
            let vars = VarMap::new();
            let net = ModelSpec::of(&config, stage).build(&vars, seed, &device)?;
            Ok((vars, net))
        };
        Self::with_stages(config.clone(), device.clone(), build)
    }

    /// Stage 2 alone on a crop (values in [0, 255]): the foreground probability.
    pub fn segment_stage2(&self, crop: &Volume<f32>) -> Result<Volume<f32>, PredictError> {
        self.segment(StageName::Stage2, crop)
    }

    /// Foreground probability of every axial slice of `image` (values in [0, 255]) under
    /// `stage`'s network, whole slices (the code path whole-case validation uses too).
    fn segment(&self, stage: StageName, image: &Volume<f32>) -> Result<Volume<f32>, PredictError> {
        let net = match stage {
            StageName::Stage1 => self.stage1.1.as_ref(),
            StageName::Stage2 => self.stage2.1.as_ref(),
        };
        let spec = ModelSpec::of(&self.config, stage);
        Ok(segment_slices(net, &spec, image, self.batch, &self.device)?)
    }

    /// Predict one preprocessed CT; `source` names the file in errors.
    pub fn predict_preprocessed(
        &self,
        p: &Preprocessed,
        source: &Path,
    ) -> Result<Prediction, PredictError> {
        let cfg = &self.config;
        // Stage 1: localisation.
        let (small, _) = stage1_volume(p, cfg.stage1.downsample)?;
        let prob1 = self.segment(StageName::Stage1, &small)?;
        let c_small =
            localise(&prob1).ok_or_else(|| PredictError::NotFound(source.to_path_buf()))?;
        // From the downsampled grid to the body crop's voxels (both start at the same voxel).
        let c =
            [0, 1, 2].map(|a| c_small[a] * small.geometry.spacing[a] / p.image.geometry.spacing[a]);
        // Stage 2: segmentation of the box around it.
        let (crop, offset) = crop_around(&p.image, c, cfg.model.crop, 0.0);
        let prob2 = self.segment(StageName::Stage2, &crop)?;
        let in_resampled = [0, 1, 2].map(|a| offset[a] + p.crop_offset[a]);
        let mask_crop = prob2.map(|v| u8::from(v > 0.5));
        let mut mask = p.to_original(&mask_crop, in_resampled)?;
        if !self.postprocess.is_empty() {
            let g = &mask.geometry;
            let mut m: Vec<bool> = mask.data.iter().map(|&v| v != 0).collect();
            for step in &self.postprocess {
                m = step.apply(&m, g.dims, g.spacing)?;
                if m.len() != mask.data.len() {
                    return Err(PredictError::Model(format!(
                        "a postprocess step returned {} voxels for a mask of {}",
                        m.len(),
                        mask.data.len()
                    )));
                }
            }
            for (d, v) in mask.data.iter_mut().zip(m) {
                *d = u8::from(v);
            }
        }
        let mut full = Volume::filled(0f32, p.resampled.clone());
        full.paste(&prob2, in_resampled);
        let probabilities = resample_linear(&full, &p.original, 0.0)?;
        let centroid = [0, 1, 2].map(|a| c[a] + p.crop_offset[a] as f64);
        Ok(Prediction {
            mask,
            probabilities,
            centroid,
        })
    }

    /// Read, preprocess and predict a CT file.
    pub fn predict_file(&self, ct: &Path) -> Result<(NiftiVolume, Prediction), PredictError> {
        let nifti = read_nifti(ct)?;
        if let Some(v) = nifti.volume.data.iter().find(|v| !v.is_finite()) {
            return Err(PredictError::Data(metricunet_data::DataError::bad(
                ct,
                format!("image holds a non-finite value ({v})"),
            )));
        }
        let p = preprocess(
            &nifti.volume,
            None,
            &PreprocessParams::from(&self.config.data),
        )
        .map_err(|e| metricunet_data::DataError::bad(ct, e.to_string()))?;
        let pred = self.predict_preprocessed(&p, ct)?;
        Ok((nifti, pred))
    }

    /// Predict `ct` and write the mask (uint8) and, if asked, the probabilities (float32)
    /// with the CT's header, atomically.
    pub fn predict_to_files(
        &self,
        ct: &Path,
        mask_out: &Path,
        prob_out: Option<&Path>,
    ) -> Result<Prediction, PredictError> {
        let (nifti, pred) = self.predict_file(ct)?;
        write_nifti(mask_out, &pred.mask, Some(&nifti.header))?;
        if let Some(p) = prob_out {
            write_nifti(p, &pred.probabilities, Some(&nifti.header))?;
        }
        Ok(pred)
    }
}
