//! A stage's network as training and prediction both need it: which backbone with which
//! input channels ([`ModelSpec`], from the experiment in one place), built through the
//! backbone registry, initialised from a seed, or loaded from trained weights.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use metricunet_core::config::{Experiment, PluginSpec, StageName};
use metricunet_core::{registry, Backbone, BackboneContext};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// Why a network could not be built, initialised or loaded.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Core(#[from] metricunet_core::CoreError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: not usable weights for this network: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Which network a stage uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// `stage1` or `stage2` (YAML paths and messages say `<name>.backbone`).
    pub name: String,
    pub backbone: PluginSpec,
    /// Input channels: the slices of the stage's 2.5D input.
    pub in_channels: usize,
}

impl ModelSpec {
    /// The network of `stage` in `config`: stage 1 is `stage1.backbone` on
    /// `stage1.patches.slices` channels, stage 2 `model.backbone` on `model.patches.slices`.
    pub fn of(config: &Experiment, stage: StageName) -> Self {
        let s = config.stage(stage);
        Self {
            name: stage.as_str().into(),
            backbone: s.backbone.clone(),
            in_channels: s.patches.slices,
        }
    }

    /// Build the network in `vars` with f32 variables (weights as candle initialises them).
    pub fn build(&self, vars: &VarMap, device: &Device) -> Result<Box<dyn Backbone>> {
        self.build_as(vars, device, DType::F32)
    }

    /// [`ModelSpec::build`] with variables of another float type (f64 for references).
    pub fn build_as(
        &self,
        vars: &VarMap,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn Backbone>> {
        let ctx = BackboneContext {
            in_channels: self.in_channels,
        };
        let vb = VarBuilder::from_varmap(vars, dtype, device);
        let path = format!("{}.backbone", self.name);
        Ok(registry::build_backbone(&self.backbone, &path, &ctx, vb)?.0)
    }

    /// Build the network and load trained weights into it (every variable must be in the
    /// file with its shape).
    pub fn load(&self, weights: &Path, device: &Device) -> Result<(VarMap, Box<dyn Backbone>)> {
        let mut vars = VarMap::new();
        let net = self.build(&vars, device)?;
        vars.load(weights).map_err(|e| ModelError::Weights {
            path: weights.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok((vars, net))
    }
}

/// Variables of a VarMap sorted by name.
pub fn named_vars(vars: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| ModelError::Invalid("variable map lock poisoned".into()))?;
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

/// Re-initialise every variable from `seed`, so that the same seed gives the same network
/// (candle draws initial weights from an unseeded thread RNG). The distributions are
/// candle's defaults: convolution and transposed-convolution weights Kaiming normal
/// (fan-in = `dims[1] * kh * kw`, ReLU gain), their biases uniform in `+-1 / sqrt(fan_in)`;
/// BatchNorm scale 1, shift 0, running mean 0, running variance 1. Variables are told apart
/// by name: BatchNorm's live under a `.bn.` path segment (a backbone must name them so).
pub fn seeded_init(vars: &VarMap, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_1A17_0000_0001);
    let named = named_vars(vars)?;
    let fan_in = |weight: &str| -> Option<usize> {
        named
            .iter()
            .find(|(n, _)| n == weight)
            .map(|(_, v)| v.dims().iter().skip(1).product::<usize>())
    };
    for (name, var) in &named {
        let n = var.elem_count();
        let dims = var.dims().to_vec();
        let values: Vec<f32> = if name.ends_with("running_var")
            || (name.contains(".bn.") && name.ends_with(".weight"))
        {
            vec![1.0; n]
        } else if name.ends_with("running_mean")
            || (name.contains(".bn.") && name.ends_with(".bias"))
        {
            vec![0.0; n]
        } else if name.ends_with(".weight") && dims.len() == 4 {
            let std = (2.0 / fan_in(name).unwrap_or(1).max(1) as f64).sqrt();
            let normal = rand_distr::Normal::new(0.0, std)
                .map_err(|e| ModelError::Invalid(e.to_string()))?;
            (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng) as f32)
                .collect()
        } else if let Some(base) = name.strip_suffix(".bias") {
            let bound = 1.0 / (fan_in(&format!("{base}.weight")).unwrap_or(1).max(1) as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else {
            return Err(ModelError::Invalid(format!(
                "seeded_init: no rule for variable `{name}` {dims:?}"
            )));
        };
        var.set(&Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
