//! A stage's network as training and prediction both need it: which backbone with which
//! input channels ([`ModelSpec`], from the experiment in one place), built through the
//! backbone registry with every variable drawn from a seed and the init its layer declares
//! ([`SeededVars`]), or loaded from trained weights; and run over a volume's slices
//! ([`infer`]), as prediction and whole-case validation both do.

pub mod infer;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
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

    /// Build the network in `vars` with f32 variables, each drawn from `seed` and the init
    /// its layer declares ([`SeededVars`]).
    pub fn build(&self, vars: &VarMap, seed: u64, device: &Device) -> Result<Box<dyn Backbone>> {
        self.build_as(vars, seed, device, DType::F32)
    }

    /// [`ModelSpec::build`] with variables of another float type (f64 for references; the
    /// values are those of the f32 network).
    pub fn build_as(
        &self,
        vars: &VarMap,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn Backbone>> {
        let ctx = BackboneContext {
            in_channels: self.in_channels,
        };
        let vb =
            VarBuilder::from_backend(Box::new(SeededVars::new(vars, seed)), dtype, device.clone());
        let path = format!("{}.backbone", self.name);
        Ok(registry::build_backbone(&self.backbone, &path, &ctx, vb)?.0)
    }

    /// Build the network and load trained weights into it (every variable must be in the
    /// file with its shape).
    pub fn load(&self, weights: &Path, device: &Device) -> Result<(VarMap, Box<dyn Backbone>)> {
        let mut vars = VarMap::new();
        let net = self.build(&vars, 0, device)?;
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

/// Where a network's variables come from when it is built from a seed: a [`VarMap`] whose new
/// variables are drawn from the [`Init`] each layer declares where it creates them (candle's
/// `get_with_hints`), with a random generator seeded by the run's seed and the variable's
/// name. The same seed gives the same network on every machine and whatever order the
/// backbone creates its layers in; a new backbone needs no naming rule, only the inits it
/// wants (candle's layer functions declare theirs).
#[derive(Clone)]
pub struct SeededVars {
    vars: VarMap,
    seed: u64,
}

impl SeededVars {
    /// New variables of `vars` are drawn from `seed`; existing ones are returned as they are.
    pub fn new(vars: &VarMap, seed: u64) -> Self {
        Self {
            vars: vars.clone(),
            seed,
        }
    }

    /// The generator of the variable at `path`: FNV-1a of the name, mixed with the seed.
    fn rng(&self, path: &str) -> ChaCha8Rng {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in path.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        ChaCha8Rng::seed_from_u64(self.seed ^ 0x5EED_1A17_0000_0001 ^ h.rotate_left(17))
    }

    /// Values of a new variable of `shape` drawn from `init`. They are drawn in f32 whatever
    /// the variable's type, so an f64 reference network starts from exactly the weights of
    /// its f32 twin.
    pub fn draw(&self, path: &str, shape: &Shape, init: Init) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        let mut rng = self.rng(path);
        let normal = |mean: f64, std: f64, rng: &mut ChaCha8Rng| -> Result<Vec<f32>> {
            let d = rand_distr::Normal::new(mean, std)
                .map_err(|e| ModelError::Invalid(format!("{path}: normal({mean}, {std}): {e}")))?;
            Ok((0..n)
                .map(|_| rand_distr::Distribution::sample(&d, rng) as f32)
                .collect())
        };
        let uniform = |lo: f64, up: f64, rng: &mut ChaCha8Rng| -> Result<Vec<f32>> {
            if lo.partial_cmp(&up) != Some(std::cmp::Ordering::Less) {
                return Err(ModelError::Invalid(format!(
                    "{path}: uniform bounds [{lo}, {up}) are empty"
                )));
            }
            Ok((0..n).map(|_| rng.random_range(lo..up) as f32).collect())
        };
        match init {
            Init::Const(c) => Ok(vec![c as f32; n]),
            Init::Randn { mean, stdev } => normal(mean, stdev, &mut rng),
            Init::Uniform { lo, up } => uniform(lo, up, &mut rng),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => normal(0.0, std, &mut rng),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(-bound, bound, &mut rng)
                    }
                }
            }
        }
    }
}

impl SimpleBackend for SeededVars {
    fn get(
        &self,
        shape: Shape,
        path: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .vars
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(var) = data.get(path) {
            if var.shape() != &shape {
                candle_core::bail!("shape mismatch on {path}: {shape:?} <> {:?}", var.shape())
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self
            .draw(path, &shape, init)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let tensor = var.as_tensor().clone();
        data.insert(path.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, path: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!(
            "`{path}`: a seeded network creates its variables with a shape and an init"
        )
    }

    fn contains_tensor(&self, path: &str) -> bool {
        self.vars
            .data()
            .lock()
            .map(|d| d.contains_key(path))
            .unwrap_or(false)
    }
}
