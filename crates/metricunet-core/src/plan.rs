//! An experiment file read into its cells: `--set` overrides, the grid expanded with the
//! seeds (bounded by [`MAX_CELLS`]), presets applied, every plugin resolved; and the stable
//! hashes that name cell and stage-1 folders.

use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::checks::{check_values, resolve_plugins};
use crate::error::{did_you_mean, CoreError, Result};
use crate::params::describe;
use crate::presets;
use crate::schema::*;
use crate::yaml_path::{describe_de_error, get_path, inline_yaml, locate_duplicate_key, set_path};

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
        self.hash_without(|_| {})
    }

    /// The hash of what stage 2's weights depend on: [`Cell::run_hash`] without
    /// `postprocess` as well. Cells that differ only in post-processing share one trained
    /// stage 2 (as cells that differ only in stage 2 share stage 1), so a grid over
    /// post-processing re-predicts and never retrains.
    pub fn stage2_hash(&self) -> Result<String> {
        self.hash_without(|c| c.postprocess.clear())
    }

    /// The hash of the configuration without what never changes weights or predictions,
    /// and without what `clear` removes.
    fn hash_without(&self, clear: impl FnOnce(&mut Experiment)) -> Result<String> {
        let mut c = self.config.clone();
        c.data.cache_dir = None;
        c.description = String::new();
        c.device = DeviceChoice::Auto;
        c.evaluation = EvaluationConfig::default();
        c.report = ReportConfig::default();
        clear(&mut c);
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

/// A parsed experiment file with its grid expanded.
#[derive(Debug, Clone)]
pub struct ExperimentPlan {
    /// Where it came from (file path or a label).
    pub source_name: String,
    /// The file's own settings, as written (grid included, presets not yet applied).
    pub base: Experiment,
    /// Every cell x seed, resolved.
    pub cells: Vec<Cell>,
    /// How the grid was expanded.
    pub grid_mode: GridMode,
    /// Per grid axis (in grid order), the file's own value at that path (the baseline the
    /// other axes are held at in a one-at-a-time grid), written as in the grid where one of
    /// its values resolves to it; `None` where the file without its grid does not resolve
    /// or does not set the path (product grids only: a one-at-a-time grid needs them all).
    pub baseline: Vec<(String, Option<Value>)>,
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
            let before = raw.clone();
            set_path(&mut raw, path.trim(), value.clone()).map_err(|m| set_err(s, m))?;
            // a value the schema refuses is named here, by its --set, not later as the file's
            // (checked on the file with the earlier --set values, which it may rely on)
            if let Some(message) = set_refused(&before, path.trim(), value) {
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
        let grid_mode: GridMode = match raw_map.remove("grid_mode") {
            None | Some(Value::Null) => GridMode::Product,
            Some(v) => serde_norway::from_value(v.clone()).map_err(|_| {
                cfg_err(format!(
                    "grid_mode: expected product or one-at-a-time, got {}",
                    inline_yaml(&v)
                ))
            })?,
        };
        let combinations = match grid_mode {
            GridMode::Product => axes
                .iter()
                .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len())),
            GridMode::OneAtATime => Some(1 + axes.iter().map(|(_, v)| v.len()).sum::<usize>()),
        };
        let cell_count = combinations
            .and_then(|n| n.checked_mul(seeds.len()))
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

        // 3. The baseline: the file's own value at each grid path.
        let baseline = baseline_values(&raw_map, &axes, grid_mode).map_err(&cfg_err)?;

        // 4. The cells: every combination (product), or the baseline and each axis varied
        //    alone (one-at-a-time); then every seed.
        let combos: Vec<Vec<(String, Value)>> = match grid_mode {
            GridMode::Product => {
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
                combos
            }
            GridMode::OneAtATime => {
                let at_baseline: Vec<(String, Value)> = baseline
                    .iter()
                    .map(|(p, v)| (p.clone(), v.clone().unwrap_or(Value::Null)))
                    .collect();
                let mut combos = vec![at_baseline.clone()];
                for (k, (_, values)) in axes.iter().enumerate() {
                    for v in values {
                        if Some(v) == baseline[k].1.as_ref() {
                            continue;
                        }
                        let mut c = at_baseline.clone();
                        c[k].1 = v.clone();
                        combos.push(c);
                    }
                }
                combos
            }
        };
        let mut cells = Vec::with_capacity(combos.len() * seeds.len());
        let mut baseline_config: Option<Experiment> = None;
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
            if grid_mode == GridMode::OneAtATime {
                // a value written differently from the baseline (`1` beside `1.0`) that
                // resolves to it is the baseline cell again, not a cell of its own
                match &baseline_config {
                    Some(b) if *b == config => continue,
                    Some(_) => {}
                    None => baseline_config = Some(config.clone()),
                }
            }
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
            grid_mode,
            baseline,
        })
    }
}

/// Why `raw` (the file with the earlier `--set` values) with `path` set to `value` does not
/// resolve, when `raw` alone does (grid and seeds aside): the refusal is that value's.
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

/// The file's own value at each grid path: the grid's value that alone resolves to the same
/// configuration as the file without its grid (so `1` and `1.0` are one value), else the
/// resolved file's value at that path. A one-at-a-time grid needs every one; a product
/// grid leaves `None` where there is none.
fn baseline_values(
    raw: &Mapping,
    axes: &[(String, Vec<Value>)],
    mode: GridMode,
) -> std::result::Result<Vec<(String, Option<Value>)>, String> {
    if axes.is_empty() {
        return Ok(Vec::new());
    }
    let one_at_a_time = mode == GridMode::OneAtATime;
    let base = match resolve_cell(raw, &[]) {
        Ok(b) => b,
        Err(m) if one_at_a_time => {
            return Err(format!(
                "grid_mode: one-at-a-time varies each axis around the file's own values, but the file without its grid is not a valid experiment: {m}"
            ))
        }
        Err(_) => return Ok(axes.iter().map(|(p, _)| (p.clone(), None)).collect()),
    };
    let resolved = serde_norway::to_value(&base).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(axes.len());
    for (path, values) in axes {
        let written = values
            .iter()
            .find(|v| resolve_cell(raw, &[(path.clone(), (*v).clone())]).is_ok_and(|c| c == base));
        let value = match written {
            Some(v) => Some(v.clone()),
            None => get_path(&resolved, path).filter(|v| !v.is_null()).cloned(),
        };
        if value.is_none() && one_at_a_time {
            return Err(format!(
                "grid.{path}: a one-at-a-time grid holds the other axes at the file's own values, and the file does not set `{path}`; write its baseline value in the file"
            ));
        }
        out.push((path.clone(), value));
    }
    Ok(out)
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
    exp.grid_mode = GridMode::Product;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
