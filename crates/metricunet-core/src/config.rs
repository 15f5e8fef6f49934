//! The experiment schema: one YAML file names the data, both stages, the metric module,
//! training, evaluation and report, plus a `grid:` of values to sweep and the `seeds:`.
//!
//! Parsing is strict: an unknown key is an error that names its path and the nearest valid
//! key, a value of the wrong type names line and column, and every plugin name and
//! parameter is checked against the registries before any work starts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

use crate::backbone::BackboneContext;
use crate::error::{did_you_mean, CoreError, Result};
use crate::params::describe;
use crate::presets;
use crate::registry;

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
    pub training: TrainingConfig,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            backbone: PluginSpec::named("unet-light"),
            downsample: 4,
            patches: PatchConfig::with_slices(5),
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
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: PluginSpec::named("metricunet"),
            crop: [128, 128, 128],
            patches: PatchConfig::default(),
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
    pub evaluation: EvaluationConfig,
    pub report: ReportConfig,
    /// Dotted paths mapped to lists of values; cells are their cartesian product.
    #[serde(skip_serializing_if = "Mapping::is_empty")]
    pub grid: Mapping,
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
            evaluation: EvaluationConfig::default(),
            report: ReportConfig::default(),
            grid: Mapping::new(),
        }
    }
}

/// One grid cell and seed: a fully resolved experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// Position in the expansion order (grid product, then seeds).
    pub index: usize,
    /// The grid values of this cell, in grid order.
    pub overrides: Vec<(String, Value)>,
    pub seed: u64,
    /// The resolved configuration (grid empty, `seeds` = `[seed]`, every plugin parameter
    /// filled in).
    pub config: Experiment,
}

impl Cell {
    /// A readable label: `metric.lambda=0.1 metric.loss.sigma=0.7`, or `base`.
    pub fn label(&self) -> String {
        if self.overrides.is_empty() {
            return "base".into();
        }
        self.overrides
            .iter()
            .map(|(k, v)| format!("{k}={}", inline_yaml(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The resolved configuration as YAML text.
    pub fn to_yaml(&self) -> Result<String> {
        serde_norway::to_string(&self.config).map_err(|e| CoreError::Config {
            source_name: format!("cell {}", self.index),
            message: e.to_string(),
        })
    }

    /// A stable 16-hex-digit hash of the resolved configuration (seed included), for
    /// folder names: equal configurations hash equal across runs and machines.
    pub fn hash(&self) -> Result<String> {
        Ok(stable_hash(&self.to_yaml()?))
    }

    /// The hash of what training and prediction depend on: the resolved configuration
    /// without `description`, `device`, `evaluation`, `report` and `data.cache_dir` (which
    /// change neither the weights nor the predictions: the cache folder is a location, and
    /// its entries are keyed by content). The runner keys cell folders by it, so adding a
    /// metric, retitling a report or moving the cache never retrains a cell.
    pub fn run_hash(&self) -> Result<String> {
        let mut c = self.config.clone();
        c.data.cache_dir = None;
        c.description = String::new();
        c.device = DeviceChoice::Auto;
        c.evaluation = EvaluationConfig::default();
        c.report = ReportConfig::default();
        let text = serde_norway::to_string(&c).map_err(|e| CoreError::Config {
            source_name: format!("cell {}", self.index),
            message: e.to_string(),
        })?;
        Ok(stable_hash(&text))
    }

    /// The hash of what stage 1 depends on (data, stage 1, seed): cells that differ only in
    /// stage 2 share it, so stage 1 is trained once for them (`data.cache_dir` left out, as
    /// in [`Cell::run_hash`]).
    pub fn stage1_hash(&self) -> Result<String> {
        let c = &self.config;
        let data = DataConfig {
            cache_dir: None,
            ..c.data.clone()
        };
        let text = serde_norway::to_string(&(&data, &c.stage1, self.seed)).map_err(|e| {
            CoreError::Config {
                source_name: format!("cell {}", self.index),
                message: e.to_string(),
            }
        })?;
        Ok(stable_hash(&text))
    }
}

/// The most cells (grid combinations x seeds) one experiment may expand to; checked before
/// anything is expanded, so a typo such as a million-value list fails at once.
pub const MAX_CELLS: usize = 10_000;

/// 16 hex digits of the FNV-1a hash of `text` (stable across runs, machines and versions).
pub fn stable_hash(text: &str) -> String {
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A YAML value on one line, for labels and messages.
pub fn inline_yaml(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// A parsed experiment file with its grid expanded.
#[derive(Debug, Clone)]
pub struct ExperimentPlan {
    /// Where it came from (file path or a label).
    pub source_name: String,
    /// The file's own settings, as written (grid included, presets not yet applied).
    pub base: Experiment,
    /// Every cell x seed, resolved.
    pub cells: Vec<Cell>,
}

impl ExperimentPlan {
    /// Read and expand an experiment file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parse `text`; `source_name` prefixes every error. Applies `--set`-style overrides
    /// afterwards with [`ExperimentPlan::with_overrides`].
    pub fn from_yaml_str(text: &str, source_name: &str) -> Result<Self> {
        Self::build(text, source_name, &[])
    }

    /// Parse `text` and apply `path=value` overrides (values are YAML) before expanding.
    pub fn with_overrides(text: &str, source_name: &str, sets: &[String]) -> Result<Self> {
        Self::build(text, source_name, sets)
    }

    fn build(text: &str, source_name: &str, sets: &[String]) -> Result<Self> {
        let cfg_err = |message: String| CoreError::Config {
            source_name: source_name.to_string(),
            message,
        };
        // 1. Typed parse of the text: positions for syntax and type errors, paths and
        //    suggestions for unknown keys.
        let de = serde_norway::Deserializer::from_str(text);
        let base: Experiment = serde_path_to_error::deserialize(de).map_err(|e| {
            let message = describe_de_error(&e);
            cfg_err(locate_duplicate_key(text, &message).unwrap_or(message))
        })?;
        let mut raw: Value = serde_norway::from_str(text).map_err(|e| cfg_err(e.to_string()))?;
        if raw.is_null() {
            raw = Value::Mapping(Mapping::new());
        }
        let file_raw = raw.clone();
        // a --set error is the command line's, not the file's
        let set_err = |s: &str, message: String| CoreError::Config {
            source_name: format!("--set `{s}`"),
            message,
        };
        for s in sets {
            let (path, value) = s
                .split_once('=')
                .ok_or_else(|| set_err(s, "expected path=value, e.g. metric.lambda=0.1".into()))?;
            let value: Value = serde_norway::from_str(value)
                .map_err(|e| set_err(s, format!("the value is not YAML: {e}")))?;
            set_path(&mut raw, path.trim(), value.clone()).map_err(|m| set_err(s, m))?;
            // a value the schema refuses is named here, by its --set, not later as the file's
            if let Some(message) = set_refused(&file_raw, path.trim(), value) {
                return Err(set_err(s, message));
            }
        }
        let mut raw_map = match raw {
            Value::Mapping(m) => m,
            other => {
                return Err(cfg_err(format!(
                    "expected a mapping at the top level, got {}",
                    describe(&other)
                )))
            }
        };
        let grid = match raw_map.remove("grid") {
            None | Some(Value::Null) => Mapping::new(),
            Some(Value::Mapping(m)) => m,
            Some(other) => {
                return Err(cfg_err(format!(
                    "grid: expected a mapping of path: [values], got {}",
                    describe(&other)
                )))
            }
        };
        let seeds: Vec<u64> = match raw_map.remove("seeds") {
            None => vec![0],
            Some(v) => serde_norway::from_value(v).map_err(|e| cfg_err(format!("seeds: {e}")))?,
        };
        if seeds.len() > MAX_CELLS {
            return Err(cfg_err(format!(
                "seeds: {} seeds is over the limit of {MAX_CELLS} cells",
                seeds.len()
            )));
        }
        if seeds.is_empty() {
            return Err(cfg_err(
                "seeds: the list is empty; give at least one seed".into(),
            ));
        }
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != seeds.len() {
            return Err(cfg_err(format!("seeds: {seeds:?} repeats a seed")));
        }

        // 2. Grid axes.
        let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
        for (k, v) in &grid {
            let path = k.as_str().ok_or_else(|| {
                cfg_err(format!(
                    "grid: keys must be dotted paths, got {}",
                    describe(k)
                ))
            })?;
            if path == "grid" || path == "seeds" {
                return Err(cfg_err(format!(
                    "grid: `{path}` cannot be swept; list seeds under `seeds:`"
                )));
            }
            let values = match v {
                Value::Sequence(s) if !s.is_empty() => s.clone(),
                _ => {
                    return Err(cfg_err(format!(
                        "grid.{path}: expected a non-empty list of values, got {}",
                        describe(v)
                    )))
                }
            };
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = values
                .iter()
                .map(inline_yaml)
                .find(|v| !seen.insert(v.clone()))
            {
                return Err(cfg_err(format!(
                    "grid.{path}: the value {dup} is listed twice (each cell would be trained and counted twice); list each value once"
                )));
            }
            axes.push((path.to_string(), values));
        }
        let cell_count = axes
            .iter()
            .try_fold(seeds.len(), |n, (_, v)| n.checked_mul(v.len()))
            .filter(|&n| n <= MAX_CELLS);
        if cell_count.is_none() {
            let sizes: Vec<String> = axes
                .iter()
                .map(|(p, v)| format!("{p}: {}", v.len()))
                .chain([format!("seeds: {}", seeds.len())])
                .collect();
            return Err(cfg_err(format!(
                "grid: {} cells is over the limit of {MAX_CELLS} ({}); split the sweep into several experiments",
                axes.iter()
                    .fold(seeds.len() as f64, |n, (_, v)| n * v.len() as f64),
                sizes.join(", ")
            )));
        }

        // 3. Every combination, then every seed.
        let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
        for (path, values) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((path.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let mut cells = Vec::with_capacity(combos.len() * seeds.len());
        for overrides in combos {
            let config = resolve_cell(&raw_map, &overrides).map_err(|message| {
                let label = if overrides.is_empty() {
                    String::new()
                } else {
                    let o: Vec<String> = overrides
                        .iter()
                        .map(|(k, v)| format!("{k}={}", inline_yaml(v)))
                        .collect();
                    format!("grid cell {}: ", o.join(" "))
                };
                cfg_err(format!("{label}{message}"))
            })?;
            for &seed in &seeds {
                let mut config = config.clone();
                config.seeds = vec![seed];
                cells.push(Cell {
                    index: cells.len(),
                    overrides: overrides.clone(),
                    seed,
                    config,
                });
            }
        }
        Ok(Self {
            source_name: source_name.to_string(),
            base,
            cells,
        })
    }
}

/// Why the file `raw` with only `path` set to `value` does not resolve, when the file alone
/// does (grid and seeds aside): the refusal is that value's.
fn set_refused(raw: &Value, path: &str, value: Value) -> Option<String> {
    let top = path.split('.').next().unwrap_or_default();
    let Value::Mapping(base) = raw else {
        return None;
    };
    if top == "grid" || top == "seeds" {
        return None;
    }
    let mut base = base.clone();
    base.remove("grid");
    base.remove("seeds");
    resolve_cell(&base, &[]).ok()?;
    let mut with = Value::Mapping(base);
    set_path(&mut with, path, value).ok()?;
    match with {
        Value::Mapping(m) => resolve_cell(&m, &[]).err(),
        _ => None,
    }
}

/// Apply grid overrides and the preset to the raw file, then parse and check it.
fn resolve_cell(
    raw: &Mapping,
    overrides: &[(String, Value)],
) -> std::result::Result<Experiment, String> {
    let mut v = Value::Mapping(raw.clone());
    // The preset first (it may itself be swept), then everything else on top of it.
    for (path, value) in overrides.iter().filter(|(p, _)| p == "preset") {
        set_path(&mut v, path, value.clone())?;
    }
    let preset_name = match v.get("preset") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "preset: expected a preset name, got {}",
                describe(other)
            ))
        }
    };
    let preset = match &preset_name {
        Some(name) => Some(presets::find(name).ok_or_else(|| {
            format!(
                "preset: unknown preset `{name}`{}; presets: {}",
                did_you_mean(name, presets::PRESETS.iter().map(|p| p.name)),
                presets::PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?),
        None => None,
    };
    // The preset fills what the file leaves out; then the schema's defaults fill the rest,
    // so that every override path (metric.loss.sigma, ...) has a place to go.
    if let Some(p) = preset {
        p.apply(&mut v)?;
    }
    let defaults = serde_norway::to_value(Experiment::default()).map_err(|e| e.to_string())?;
    let mut v = merge(defaults, v);
    for (path, value) in overrides.iter().filter(|(p, _)| p != "preset") {
        set_path(&mut v, path, value.clone())?;
    }
    // Overrides must not contradict the preset (this second pass only checks).
    if let Some(p) = preset {
        p.apply(&mut v)?;
    }
    let mut exp: Experiment =
        serde_path_to_error::deserialize(v).map_err(|e| describe_de_error(&e))?;
    exp.grid = Mapping::new();
    resolve_plugins(&mut exp).map_err(|e| e.to_string())?;
    check_values(&exp)?;
    Ok(exp)
}

/// `over` laid over `base`: mappings merge key by key, anything else in `over` wins.
fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(bv) => merge(bv, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, over) => over,
    }
}

/// Validate every plugin reference against the registries, build it once (so that
/// constraints between parameters are checked before any work starts), and write the full
/// parameter set (defaults included) back into the spec.
fn resolve_plugins(exp: &mut Experiment) -> Result<()> {
    fn at(path: &str, e: CoreError) -> CoreError {
        match e {
            CoreError::Param { path: p, message } => CoreError::Param {
                path: format!("{path}.{p}"),
                message,
            },
            other => CoreError::Param {
                path: path.to_string(),
                message: other.to_string(),
            },
        }
    }
    let backbone = |spec: &mut PluginSpec, path: &str, in_channels: usize| -> Result<()> {
        let plugin = registry::backbone(&spec.name, path)?;
        let params = plugin.params(&spec.params, path)?;
        let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        (plugin.build)(&params, &BackboneContext { in_channels }, vb).map_err(|e| at(path, e))?;
        spec.params = params.to_yaml();
        Ok(())
    };
    backbone(
        &mut exp.stage1.backbone,
        "stage1.backbone",
        exp.stage1.patches.slices,
    )?;
    backbone(
        &mut exp.model.backbone,
        "model.backbone",
        exp.model.patches.slices,
    )?;

    let plugin = registry::loss(&exp.metric.loss.name, "metric.loss")?;
    let params = plugin.params(&exp.metric.loss.params, "metric.loss")?;
    (plugin.build)(&params).map_err(|e| at("metric.loss", e))?;
    exp.metric.loss.params = params.to_yaml();

    for (i, s) in exp.metric.samplers.iter_mut().enumerate() {
        let path = format!("metric.samplers[{i}]");
        let plugin = registry::sampler(&s.name, &path)?;
        let params = plugin.params(&s.params, &path)?;
        (plugin.build)(&params).map_err(|e| at(&path, e))?;
        s.params = params.to_yaml();
    }
    let metrics = match exp.evaluation.metrics.take() {
        Some(list) => list,
        None => registry::metric_names()
            .into_iter()
            .map(PluginSpec::named)
            .collect(),
    };
    let mut resolved = Vec::with_capacity(metrics.len());
    for (i, mut m) in metrics.into_iter().enumerate() {
        let path = format!("evaluation.metrics[{i}]");
        let plugin = registry::metric(&m.name, &path)?;
        let params = plugin.params(&m.params, &path)?;
        (plugin.build)(&params).map_err(|e| at(&path, e))?;
        m.params = params.to_yaml();
        resolved.push(m);
    }
    exp.evaluation.metrics = Some(resolved);
    Ok(())
}

/// Range checks that serde's types cannot express.
fn check_values(e: &Experiment) -> std::result::Result<(), String> {
    let positive = |path: &str, x: f64| {
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(format!("{path}: expected a positive number, got {x}"))
        }
    };
    let non_negative = |path: &str, x: f64| {
        if x.is_finite() && x >= 0.0 {
            Ok(())
        } else {
            Err(format!("{path}: expected a non-negative number, got {x}"))
        }
    };
    let at_least_one = |path: &str, x: usize| {
        if x >= 1 {
            Ok(())
        } else {
            Err(format!("{path}: expected at least 1, got 0"))
        }
    };
    let share = |path: &str, x: f64| {
        if (0.0..=1.0).contains(&x) {
            Ok(())
        } else {
            Err(format!("{path}: expected a share in [0, 1], got {x}"))
        }
    };
    non_negative("metric.lambda", e.metric.lambda)?;
    for (i, s) in e.data.spacing_mm.iter().enumerate() {
        positive(&format!("data.spacing_mm[{i}]"), *s)?;
    }
    let [lo, hi] = e.data.hu_window;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(format!(
            "data.hu_window: expected [low, high] with low < high, got [{lo}, {hi}]"
        ));
    }
    let sp = &e.data.split;
    for (name, x) in [("train", sp.train), ("val", sp.val), ("test", sp.test)] {
        share(&format!("data.split.{name}"), x)?;
    }
    if (sp.train + sp.val + sp.test - 1.0).abs() > 1e-6 {
        return Err(format!(
            "data.split: train + val + test must be 1, got {} + {} + {} = {}",
            sp.train,
            sp.val,
            sp.test,
            sp.train + sp.val + sp.test
        ));
    }
    if e.data.source == DataSource::Msd && e.data.root.is_none() {
        return Err("data.root: `source: msd` needs the dataset folder in data.root".into());
    }
    if e.data.source == DataSource::List && e.data.cases.is_empty() {
        return Err("data.cases: `source: list` needs at least one case".into());
    }
    if e.data.label_map.values().all(|&v| v == 0) {
        return Err("data.label_map: no source label maps to the foreground (1)".into());
    }
    at_least_one("data.phantom.cases", e.data.phantom.cases)?;
    if e.data.phantom.in_plane < 16 || e.data.phantom.slices < 8 {
        return Err(format!(
            "data.phantom: expected in_plane >= 16 and slices >= 8, got {} and {}",
            e.data.phantom.in_plane, e.data.phantom.slices
        ));
    }
    at_least_one("stage1.downsample", e.stage1.downsample)?;
    for (stage, p) in [
        ("stage1.patches", &e.stage1.patches),
        ("model.patches", &e.model.patches),
    ] {
        at_least_one(&format!("{stage}.slices"), p.slices)?;
        if p.slices % 2 == 0 {
            return Err(format!(
                "{stage}.slices: expected an odd number (the label is the middle slice), got {}",
                p.slices
            ));
        }
        for (i, s) in p.size.iter().enumerate() {
            if *s == 0 || s % 8 != 0 {
                return Err(format!("{stage}.size[{i}]: expected a positive multiple of 8 (three 2x2 poolings), got {s}"));
            }
        }
        at_least_one(&format!("{stage}.per_case"), p.per_case)?;
        share(&format!("{stage}.foreground_share"), p.foreground_share)?;
    }
    for (i, c) in e.model.crop.iter().enumerate() {
        if *c == 0 || c % 8 != 0 {
            return Err(format!(
                "model.crop[{i}]: expected a positive multiple of 8, got {c}"
            ));
        }
    }
    for (stage, t) in [
        ("stage1.training", &e.stage1.training),
        ("training", &e.training),
    ] {
        at_least_one(&format!("{stage}.iterations"), t.iterations)?;
        if let Some(e) = t.epochs {
            at_least_one(&format!("{stage}.epochs"), e)?;
        }
        at_least_one(&format!("{stage}.batch_size"), t.batch_size)?;
        positive(&format!("{stage}.learning_rate"), t.learning_rate)?;
        share(&format!("{stage}.momentum"), t.momentum)?;
        non_negative(&format!("{stage}.weight_decay"), t.weight_decay)?;
        non_negative(&format!("{stage}.poly_power"), t.poly_power)?;
    }
    if e.stages.is_empty() {
        return Err("stages: name at least one of stage1, stage2".into());
    }
    if e.name.is_empty() || e.name.contains(['/', '\\']) || e.name.starts_with('.') {
        return Err(format!(
            "name: `{}` must be a non-empty folder name (no slashes)",
            e.name
        ));
    }
    Ok(())
}

/// Set a dotted path (`metric.lambda`, `metric.samplers.0.k`) in a YAML tree, creating
/// missing mappings on the way.
pub fn set_path(root: &mut Value, path: &str, value: Value) -> std::result::Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!(
            "`{path}` is not a dotted path such as metric.lambda"
        ));
    }
    let segs: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        let here = segs[..i].join(".");
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
        }
        // A plugin given by its bare name takes parameters once it is a mapping.
        if let Value::String(name) = cur {
            let mut m = Mapping::new();
            m.insert(Value::from("name"), Value::from(name.clone()));
            *cur = Value::Mapping(m);
        }
        cur = match cur {
            Value::Mapping(m) => {
                if last {
                    m.insert(Value::from(*seg), value);
                    return Ok(());
                }
                m.entry(Value::from(*seg)).or_insert(Value::Null)
            }
            Value::Sequence(s) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("`{here}` is a list: `{seg}` must be an index"))?;
                let len = s.len();
                let slot = s
                    .get_mut(idx)
                    .ok_or_else(|| format!("`{here}` has {len} entries, index {idx} is outside"))?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            other => return Err(format!("`{here}` is {}, not a mapping", describe(other))),
        };
    }
    Ok(())
}

/// Read a dotted path from a YAML tree.
pub fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |cur, seg| match cur {
        Value::Mapping(m) => m.get(seg),
        Value::Sequence(s) => seg.parse::<usize>().ok().and_then(|i| s.get(i)),
        _ => None,
    })
}

/// Turn a deserialisation error into one line: path, message (with the nearest valid key
/// for unknown fields) and, where the parser knows it, line and column.
/// The parser reports a duplicate key at the start of the document; find the second
/// occurrence of the key (the same indentation, in the same block) and say where it is.
fn locate_duplicate_key(text: &str, message: &str) -> Option<String> {
    let key = ["duplicate field `", "duplicate entry with key \""]
        .iter()
        .find_map(|p| {
            let rest = &message[message.find(p)? + p.len()..];
            rest.split(['`', '"']).next()
        })?
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| -> Option<String> {
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        Some(k.trim().trim_matches(['"', '\'']).to_string())
    };
    for (i, first) in lines.iter().enumerate() {
        if key_of(first).as_deref() != Some(key.as_str()) {
            continue;
        }
        let depth = indent(first);
        for (j, later) in lines.iter().enumerate().skip(i + 1) {
            let t = later.trim_start();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            // a shallower line ends the block; a new list item starts another mapping
            if indent(later) < depth || (indent(later) == depth && t.starts_with("- ")) {
                break;
            }
            if indent(later) == depth && key_of(later).as_deref() == Some(key.as_str()) {
                let path = message.split(':').next().unwrap_or_default();
                return Some(format!(
                    "{path}: the key `{key}` appears twice, at line {} and line {} (a YAML mapping holds each key once)",
                    i + 1,
                    j + 1
                ));
            }
        }
    }
    None
}

fn describe_de_error(e: &serde_path_to_error::Error<serde_norway::Error>) -> String {
    let inner = e.inner();
    let path = e.path().to_string();
    let mut msg = inner.to_string();
    // serde_norway appends " at line L column C" itself; keep one copy at the end.
    let location = inner
        .location()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()));
    if let Some(loc) = &location {
        if let Some(stripped) = msg.strip_suffix(loc.as_str()) {
            msg = stripped.to_string();
        }
    }
    // serde_norway prefixes nested errors with the path it knows ("metric: msg"); ours
    // is the complete one.
    if let Some((prefix, rest)) = msg.split_once(": ") {
        if !prefix.contains(' ') && path.starts_with(prefix) {
            msg = rest.to_string();
        }
    }
    let (shown_path, extra) = unknown_field_hint(&msg, &path);
    format!("{shown_path}: {msg}{extra}{}", location.unwrap_or_default())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the full path of the unknown
/// key and a nearest-key hint.
fn unknown_field_hint(msg: &str, path: &str) -> (String, String) {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return (
            if path == "." {
                "(top level)".into()
            } else {
                path.to_string()
            },
            String::new(),
        );
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return (path.to_string(), String::new());
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    // serde_path_to_error already appended the unknown key to the path.
    let full = if path == "." {
        field.to_string()
    } else {
        path.to_string()
    };
    (full, did_you_mean(field, expected.iter().copied()))
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
    fn set_and_get_dotted_paths() {
        let mut v: Value =
            serde_norway::from_str("metric: {samplers: [{name: random}]}").expect("yaml");
        set_path(&mut v, "metric.lambda", Value::from(0.1)).expect("set");
        set_path(&mut v, "metric.samplers.0.k", Value::from(5)).expect("set");
        set_path(&mut v, "training.batch_size", Value::from(8)).expect("set creates mappings");
        assert_eq!(get_path(&v, "metric.lambda"), Some(&Value::from(0.1)));
        assert_eq!(get_path(&v, "metric.samplers.0.k"), Some(&Value::from(5)));
        assert_eq!(get_path(&v, "training.batch_size"), Some(&Value::from(8)));
        assert!(set_path(&mut v, "metric.samplers.3.k", Value::from(1))
            .unwrap_err()
            .contains("index 3"));
        assert!(set_path(&mut v, "metric.lambda.x", Value::from(1))
            .unwrap_err()
            .contains("not a mapping"));
        assert!(set_path(&mut v, "metric..x", Value::from(1)).is_err());
    }

    #[test]
    fn set_path_turns_bare_plugin_names_into_mappings() {
        let mut v: Value = serde_norway::from_str("metric: {loss: triplet-pair}").expect("yaml");
        set_path(&mut v, "metric.loss.sigma", Value::from(1.0)).expect("set");
        let want: Value =
            serde_norway::from_str("metric: {loss: {name: triplet-pair, sigma: 1.0}}")
                .expect("yaml");
        assert_eq!(v, want);
    }

    #[test]
    fn merge_keeps_base_keys_and_prefers_over() {
        let b: Value = serde_norway::from_str("{a: {x: 1, y: 2}, b: [1]}").expect("yaml");
        let o: Value = serde_norway::from_str("{a: {y: 3}, b: [2, 3], c: 4}").expect("yaml");
        let want: Value =
            serde_norway::from_str("{a: {x: 1, y: 3}, b: [2, 3], c: 4}").expect("yaml");
        assert_eq!(merge(b, o), want);
    }

    #[test]
    fn hash_is_stable_fnv() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

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
