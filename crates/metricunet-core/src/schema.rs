//! The experiment schema: one YAML file names the data, both stages, the metric module,
//! training, evaluation and report, plus a `grid:` of values to sweep and the `seeds:`.
//!
//! Parsing is strict: an unknown key is an error that names its path and the nearest valid
//! key, a value of the wrong type names line and column, and every plugin name and
//! parameter is checked against the registries before any work starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use crate::params::describe;

/// A plugin reference in YAML: `name` plus the plugin's own parameters, flat.
///
/// ```yaml
/// samplers:
///   - name: hard-negative
///     tau: 0.1
///   - contour-aware        # a bare name means all defaults
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    pub name: String,
    pub params: Mapping,
}

impl PluginSpec {
    /// A reference with default parameters.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            params: Mapping::new(),
        }
    }
}

impl Serialize for PluginSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.params.len() + 1))?;
        m.serialize_entry("name", &self.name)?;
        for (k, v) in &self.params {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for PluginSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(name) => Ok(Self {
                name,
                params: Mapping::new(),
            }),
            Value::Mapping(mut params) => match params.remove("name") {
                Some(Value::String(name)) => Ok(Self { name, params }),
                Some(other) => Err(de::Error::custom(format!(
                    "`name` must be a string, got {}",
                    describe(&other)
                ))),
                // a preset may supply the name (`model.backbone: {encoder: [...]}`);
                // without one, the registry lookup reports the missing name
                None => Ok(Self {
                    name: String::new(),
                    params,
                }),
            },
            other => Err(de::Error::custom(format!(
                "expected a plugin name or a mapping with `name`, got {}",
                describe(&other)
            ))),
        }
    }
}

/// A plugin reference with a weight, for lists whose terms are summed
/// (`segmentation_loss`): `{name: dice, weight: 0.5, ...params}`; a bare name or a missing
/// `weight` means weight 1.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSpec {
    pub weight: f64,
    pub spec: PluginSpec,
}

impl WeightedSpec {
    /// `name` with weight `weight` and default parameters.
    pub fn named(name: &str, weight: f64) -> Self {
        Self {
            weight,
            spec: PluginSpec::named(name),
        }
    }
}

impl Serialize for WeightedSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.spec.params.len() + 2))?;
        m.serialize_entry("name", &self.spec.name)?;
        m.serialize_entry("weight", &self.weight)?;
        for (k, v) in &self.spec.params {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for WeightedSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut spec = PluginSpec::deserialize(d)?;
        let weight = match spec.params.remove("weight") {
            None => 1.0,
            Some(v) => v.as_f64().ok_or_else(|| {
                de::Error::custom(format!("`weight` must be a number, got {}", describe(&v)))
            })?,
        };
        Ok(Self { weight, spec })
    }
}

/// The segmentation loss of both stages unless an experiment says otherwise: cross-entropy
/// alone (paper Eq. 3).
pub fn default_segmentation_loss() -> Vec<WeightedSpec> {
    vec![WeightedSpec::named("cross-entropy", 1.0)]
}

/// Left out of the serialised experiment when it is the default, so that the configuration
/// hashes of runs made before the key existed stay the same.
fn is_default_segmentation_loss(v: &[WeightedSpec]) -> bool {
    v == default_segmentation_loss().as_slice()
}

/// Where computations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when the binary has it and a GPU answers, else CPU (logged).
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The two stages of the pipeline (paper Fig. 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageName {
    /// Localisation on the 1/4-downsampled CT.
    Stage1,
    /// Segmentation of the crop around the prostate.
    Stage2,
}

impl StageName {
    /// `stage1` or `stage2`: the stage's folder and its name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            StageName::Stage1 => "stage1",
            StageName::Stage2 => "stage2",
        }
    }
}

/// What one stage trains: its network, patches and optimisation settings, its segmentation
/// loss and the voxel-metric module (stage 1 has no samplers: segmentation loss alone).
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig<'a> {
    pub backbone: &'a PluginSpec,
    pub segmentation_loss: &'a [WeightedSpec],
    pub patches: &'a PatchConfig,
    pub training: &'a TrainingConfig,
    pub metric: MetricConfig,
}

/// Where the cases come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The built-in synthetic pelvic-CT generator.
    #[default]
    Phantom,
    /// A folder in the Medical Segmentation Decathlon layout (`imagesTr/`, `labelsTr/`).
    Msd,
    /// The explicit `cases:` list.
    List,
}

/// Settings of the built-in phantom.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhantomConfig {
    /// Number of cases to generate.
    pub cases: usize,
    /// Seed of the generator.
    pub seed: u64,
    /// In-plane voxels; a smaller grid keeps the field of view with coarser voxels.
    pub in_plane: usize,
    /// Slices per case (about).
    pub slices: usize,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            cases: 20,
            seed: 0,
            in_plane: 512,
            slices: 100,
        }
    }
}

/// One case of an explicit list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseEntry {
    /// Case identifier in tables (default: the image file name without extension).
    #[serde(default)]
    pub id: Option<String>,
    pub image: PathBuf,
    pub label: PathBuf,
}

/// Train / validation / test fractions and the seed of the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    pub train: f64,
    pub val: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        // Paper Section IV.A: 70 / 10 / 20.
        Self {
            train: 0.7,
            val: 0.1,
            test: 0.2,
            seed: 0,
        }
    }
}

/// The data and its preprocessing (paper Section IV.A-B).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub source: DataSource,
    pub phantom: PhantomConfig,
    /// Dataset folder when `source: msd`.
    pub root: Option<PathBuf>,
    /// Cases when `source: list`.
    pub cases: Vec<CaseEntry>,
    /// Which source labels are the foreground: `{22: 1}` maps TotalSegmentator's prostate
    /// to 1; every unmapped label is background.
    pub label_map: BTreeMap<i64, u8>,
    /// Target voxel spacing in mm (x, y, z).
    pub spacing_mm: [f64; 3],
    /// HU window clipped and mapped to [0, 255].
    pub hu_window: [f64; 2],
    /// Voxels above this HU are body before the largest connected component is taken.
    pub body_threshold_hu: f64,
    pub split: SplitConfig,
    /// Cache folder for preprocessed volumes (default: beside the run's output).
    pub cache_dir: Option<PathBuf>,
    /// Skip unreadable or inconsistent cases (listed in the log) instead of failing.
    pub skip_bad_cases: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: DataSource::Phantom,
            phantom: PhantomConfig::default(),
            root: None,
            cases: Vec::new(),
            label_map: BTreeMap::from([(1, 1)]),
            spacing_mm: [1.0, 1.0, 1.0],
            hu_window: [-1000.0, 1000.0],
            body_threshold_hu: -500.0,
            split: SplitConfig::default(),
            cache_dir: None,
            skip_bad_cases: false,
        }
    }
}

/// Optimisation settings of one stage (paper Section IV.B).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Optimisation steps (one batch each).
    pub iterations: usize,
    /// Passes over the training patches; when given it replaces `iterations`
    /// (`ceil(epochs * patches / batch_size)`).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    /// Initial learning rate of the poly schedule.
    pub learning_rate: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Power of the poly decay: `lr * (1 - it / iterations) ^ power`.
    pub poly_power: f64,
    /// Validation DSC every this many iterations (0 = never).
    pub validate_every: usize,
    /// Checkpoint every this many iterations (0 = only at the end).
    pub checkpoint_every: usize,
    /// Stop before `iterations` once validation DSC has stopped improving (absent: train
    /// all iterations). Needs validation cases and `validate_every`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plateau: Option<PlateauConfig>,
    /// Which weights become the stage's model: the best validation point (stage 2: highest
    /// DSC, ties by lower ASD; stage 1: fewest cases with nothing found, then the smallest
    /// centroid error; full ties: the later point) or the last iteration. Without validation
    /// the last are kept.
    pub keep: Keep,
    /// Arithmetic of the convolutions on CUDA: `f32` (strict, the default), `tf32` (cuDNN
    /// convolutions on TF32 tensor cores: PyTorch's default) or `bf16` (convolutions in bf16
    /// with f32 weights, gradients, BatchNorm and loss, as `torch.autocast`). The CPU always
    /// computes in f32 (a warning says so). Inference runs in f32.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// `training.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Tf32,
    Bf16,
}

impl Precision {
    /// Whether this is the default, strict f32 (left out of written configurations, so the
    /// hashes of runs made before the setting existed do not change).
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// `f32`, `tf32` or `bf16`, as in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Which weights a stage keeps (`training.keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The weights of the best validation point.
    #[default]
    Best,
    /// The weights after the last iteration.
    Last,
}

impl Keep {
    /// `best` or `last`, as in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Best => "best",
            Keep::Last => "last",
        }
    }
}

/// When validation has stopped improving: `patience` validations in a row, none better than
/// the best so far by more than `min_delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlateauConfig {
    pub patience: usize,
    #[serde(default)]
    pub min_delta: f64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            iterations: 10_000,
            epochs: None,
            batch_size: 30,
            learning_rate: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            poly_power: 0.9,
            validate_every: 500,
            checkpoint_every: 1000,
            plateau: None,
            keep: Keep::Best,
            precision: Precision::F32,
        }
    }
}

/// Patch extraction of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatchConfig {
    /// In-plane patch size (H, W).
    pub size: [usize; 2],
    /// Adjacent axial slices stacked as channels (label of the middle one).
    pub slices: usize,
    /// Patches drawn per training case (paper: 500).
    pub per_case: usize,
    /// Share of patches that contain foreground.
    pub foreground_share: f64,
}

impl PatchConfig {
    fn with_slices(slices: usize) -> Self {
        Self {
            size: [64, 64],
            slices,
            per_case: 500,
            foreground_share: 0.5,
        }
    }
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self::with_slices(3)
    }
}

/// Stage 1: the light 2.5D UNet that localises the prostate on the CT downsampled to 1/4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage1Config {
    pub backbone: PluginSpec,
    /// Downsampling factor of the body crop.
    pub downsample: usize,
    pub patches: PatchConfig,
    /// Weighted segmentation losses summed into `L_seg` of Eq. 4 (default: cross-entropy).
    #[serde(skip_serializing_if = "is_default_segmentation_loss")]
    pub segmentation_loss: Vec<WeightedSpec>,
    pub training: TrainingConfig,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            backbone: PluginSpec::named("unet-light"),
            downsample: 4,
            patches: PatchConfig::with_slices(5),
            segmentation_loss: default_segmentation_loss(),
            training: TrainingConfig {
                iterations: 2000,
                ..TrainingConfig::default()
            },
        }
    }
}

/// Stage 2: the segmentation network on the crop around the prostate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub backbone: PluginSpec,
    /// Crop around the stage-1 centroid, in voxels at the target spacing (x, y, z).
    pub crop: [usize; 3],
    pub patches: PatchConfig,
    /// Weighted segmentation losses summed into `L_seg` of Eq. 4 (default: cross-entropy).
    #[serde(skip_serializing_if = "is_default_segmentation_loss")]
    pub segmentation_loss: Vec<WeightedSpec>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: PluginSpec::named("metricunet"),
            crop: [128, 128, 128],
            patches: PatchConfig::default(),
            segmentation_loss: default_segmentation_loss(),
        }
    }
}

/// The online voxel-metric module (Eq. 2, 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricConfig {
    /// Weight of the metric losses in Eq. 4.
    pub lambda: f64,
    /// The metric loss applied to every sampler's tuples.
    pub loss: PluginSpec,
    /// Sampling strategies; empty = plain cross-entropy training.
    pub samplers: Vec<PluginSpec>,
}

impl Default for MetricConfig {
    fn default() -> Self {
        Self {
            lambda: 0.01,
            loss: PluginSpec::named("triplet-pair"),
            samplers: Vec::new(),
        }
    }
}

/// What is measured on the test cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Metrics to compute; absent = every registered metric with its defaults.
    pub metrics: Option<Vec<PluginSpec>>,
}

/// What the report contains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Output folder (default `reports/<name>`).
    pub out_dir: Option<PathBuf>,
    /// Grid cell (by its label) that paired comparisons are made against; default: the first.
    pub baseline: Option<String>,
    /// Test cases shown in the overlay figure.
    pub figure_cases: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            out_dir: None,
            baseline: None,
            figure_cases: 3,
        }
    }
}

/// One experiment as written in YAML. See `experiments/` for complete examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    /// A Table II configuration by name (`unet`, `metricunet-hcp`, ...); fills and checks
    /// `model.backbone`, `metric.samplers` and `metric.loss.beta`.
    pub preset: Option<String>,
    pub device: DeviceChoice,
    /// Which stages `train` and `run` train.
    pub stages: Vec<StageName>,
    /// Every grid cell is trained once per seed.
    pub seeds: Vec<u64>,
    pub data: DataConfig,
    pub stage1: Stage1Config,
    pub model: ModelConfig,
    pub metric: MetricConfig,
    pub training: TrainingConfig,
    /// Post-processing steps applied in order to stage 2's mask (`largest-component`,
    /// `fill-holes`, ...); changing them re-predicts, never retrains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub postprocess: Vec<PluginSpec>,
    pub evaluation: EvaluationConfig,
    pub report: ReportConfig,
    /// Dotted paths mapped to lists of values; cells are their cartesian product, or (with
    /// `grid_mode: one-at-a-time`) the baseline and one cell per value of one axis.
    #[serde(skip_serializing_if = "Mapping::is_empty")]
    pub grid: Mapping,
    /// How the grid expands: `product` (every combination) or `one-at-a-time` (each axis
    /// varied alone around the file's own values, as the paper's Fig. 6 does).
    #[serde(skip_serializing_if = "GridMode::is_product")]
    pub grid_mode: GridMode,
}

/// How `grid:` expands into cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GridMode {
    /// The cartesian product of every axis.
    #[default]
    Product,
    /// The baseline (the file's own values at every grid path) plus, for each axis, one cell
    /// per value that differs from the baseline, the other axes held at their baseline.
    OneAtATime,
}

impl GridMode {
    /// Whether this is the default, [`GridMode::Product`].
    pub fn is_product(&self) -> bool {
        *self == GridMode::Product
    }
}

impl Default for Experiment {
    fn default() -> Self {
        Self {
            name: "experiment".into(),
            description: String::new(),
            preset: None,
            device: DeviceChoice::Auto,
            stages: vec![StageName::Stage1, StageName::Stage2],
            seeds: vec![0],
            data: DataConfig::default(),
            stage1: Stage1Config::default(),
            model: ModelConfig::default(),
            metric: MetricConfig::default(),
            training: TrainingConfig::default(),
            postprocess: Vec::new(),
            evaluation: EvaluationConfig::default(),
            report: ReportConfig::default(),
            grid: Mapping::new(),
            grid_mode: GridMode::Product,
        }
    }
}

impl Experiment {
    /// The settings of `stage`: stage 1 is `stage1.*` without samplers, stage 2 is `model.*`,
    /// `training` and `metric` (the one place that maps a stage to its settings).
    pub fn stage(&self, stage: StageName) -> StageConfig<'_> {
        match stage {
            StageName::Stage1 => StageConfig {
                backbone: &self.stage1.backbone,
                segmentation_loss: &self.stage1.segmentation_loss,
                patches: &self.stage1.patches,
                training: &self.stage1.training,
                metric: MetricConfig {
                    samplers: Vec::new(),
                    ..self.metric.clone()
                },
            },
            StageName::Stage2 => StageConfig {
                backbone: &self.model.backbone,
                segmentation_loss: &self.model.segmentation_loss,
                patches: &self.model.patches,
                training: &self.training,
                metric: self.metric.clone(),
            },
        }
    }
}

impl fmt::Display for Experiment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_norway::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(e) => write!(f, "<experiment cannot be shown: {e}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_spec_accepts_bare_names_and_mappings() {
        let v: Vec<PluginSpec> =
            serde_norway::from_str("[random, {name: hard-negative, tau: 0.2}]").expect("yaml");
        assert_eq!(v[0], PluginSpec::named("random"));
        assert_eq!(v[1].name, "hard-negative");
        assert_eq!(v[1].params.get("tau"), Some(&Value::from(0.2)));
        let back = serde_norway::to_string(&v[1]).expect("ser");
        assert_eq!(back.trim(), "name: hard-negative\ntau: 0.2");
        // no name: left empty for the default plugin or a preset to fill in
        let unnamed: PluginSpec = serde_norway::from_str("{tau: 1}").expect("unnamed");
        assert_eq!(unnamed.name, "");
        assert_eq!(unnamed.params.get("tau"), Some(&Value::from(1)));
        assert!(serde_norway::from_str::<PluginSpec>("{name: 3}").is_err());
    }
}
