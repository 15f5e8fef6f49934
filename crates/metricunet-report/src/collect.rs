//! Gather what the finished cells of a run root hold.

use std::path::{Path, PathBuf};

use metricunet_core::config::Experiment;
use metricunet_store::{cell_dir, CellRecord, CellState, PlanRecord, CONFIG, METRICS};
use polars::prelude::{CsvReadOptions, DataType, SerReader};

use crate::error::{ReportError, Result};

/// One test case's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRow {
    pub case: String,
    /// In the run's metric order; NaN where undefined.
    pub values: Vec<f64>,
    /// Per metric: why it is undefined or special.
    pub flags: Vec<Option<String>>,
}

/// A finished cell.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub dir: PathBuf,
    pub record: CellRecord,
    pub config: Experiment,
    pub rows: Vec<CaseRow>,
}

/// A configuration: the cells of one grid point (one per seed).
#[derive(Debug, Clone)]
pub struct ConfigGroup {
    pub label: String,
    /// Indices into [`RunResults::cells`], by seed.
    pub cells: Vec<usize>,
}

/// Everything a report is made of.
#[derive(Debug, Clone)]
pub struct RunResults {
    pub root: PathBuf,
    pub plan: PlanRecord,
    /// Metric names in column order.
    pub metrics: Vec<String>,
    pub cells: Vec<CellResult>,
    /// In plan order.
    pub groups: Vec<ConfigGroup>,
    /// Plan cells that are not finished: (index, label, seed, state or "not started", error).
    pub missing: Vec<(usize, String, u64, String, Option<String>)>,
}

fn read_metrics(path: &Path) -> Result<(Vec<String>, Vec<CaseRow>)> {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| ReportError::file(path, e))?;
    let bad = |e: polars::prelude::PolarsError| ReportError::file(path, e);
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .filter(|n| n != "case" && !n.ends_with("_flag"))
        .collect();
    let case = df
        .column("case")
        .map_err(bad)?
        .cast(&DataType::String)
        .map_err(bad)?;
    let case = case.str().map_err(bad)?;
    let mut values = Vec::new();
    let mut flags = Vec::new();
    for n in &names {
        let c = df
            .column(n)
            .map_err(bad)?
            .cast(&DataType::Float64)
            .map_err(bad)?;
        values.push(
            c.f64()
                .map_err(bad)?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
        );
        let f: Vec<Option<String>> = match df.column(&format!("{n}_flag")) {
            Ok(c) => {
                let c = c.cast(&DataType::String).map_err(bad)?;
                c.str()
                    .map_err(bad)?
                    .iter()
                    .map(|v| v.map(String::from))
                    .collect()
            }
            Err(_) => vec![None; df.height()],
        };
        flags.push(f);
    }
    let rows = (0..df.height())
        .map(|i| CaseRow {
            case: case.get(i).unwrap_or_default().to_string(),
            values: values.iter().map(|v| v[i]).collect(),
            flags: flags.iter().map(|f| f[i].clone()).collect(),
        })
        .collect();
    Ok((names, rows))
}

/// A finished cell's `metrics.csv`, checked against what its configuration asked for (the
/// metric columns) and its record (one row per test case).
fn checked_metrics(
    dir: &Path,
    config: &Experiment,
    record: &CellRecord,
) -> Result<(Vec<String>, Vec<CaseRow>)> {
    let path = dir.join(METRICS);
    let (names, rows) = read_metrics(&path)?;
    let want: Vec<String> = config
        .evaluation
        .metrics
        .clone()
        .unwrap_or_else(metricunet_eval::evaluate::all_metrics)
        .into_iter()
        .map(|m| m.name)
        .collect();
    if names != want {
        return Err(ReportError::file(
            &path,
            format!("holds the metrics {names:?}, its configuration asks for {want:?} (damaged or truncated; `metricunet run` evaluates the cell again)"),
        ));
    }
    if rows.len() != record.test_cases.len() {
        return Err(ReportError::file(
            &path,
            format!(
                "holds {} rows, the cell has {} test cases (damaged or truncated)",
                rows.len(),
                record.test_cases.len()
            ),
        ));
    }
    Ok((names, rows))
}

impl RunResults {
    /// Read the plan and every finished cell of `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let plan = PlanRecord::read(root)?;
        let mut cells: Vec<CellResult> = Vec::new();
        let mut missing = Vec::new();
        let mut metrics: Option<Vec<String>> = None;
        for pc in &plan.cells {
            let dir = cell_dir(root, &pc.hash);
            let record = match CellRecord::read(&dir) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            };
            match record {
                Some(r) if r.state == CellState::Finished && dir.join(METRICS).exists() => {
                    let config_path = dir.join(CONFIG);
                    let text = std::fs::read_to_string(&config_path)
                        .map_err(|e| ReportError::io(&config_path, e))?;
                    let config: Experiment = serde_norway::from_str(&text)
                        .map_err(|e| ReportError::file(&config_path, e))?;
                    // each cell's file is checked against its own configuration and record,
                    // so a damaged file is charged to its own cell, never to a healthy one
                    let (names, rows) = match checked_metrics(&dir, &config, &r) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("cell {} left out of the report: {e}", pc.index);
                            missing.push((
                                pc.index,
                                pc.label.clone(),
                                pc.seed,
                                "damaged".into(),
                                Some(e.to_string()),
                            ));
                            continue;
                        }
                    };
                    match &metrics {
                        None => metrics = Some(names),
                        Some(m) if *m != names => {
                            return Err(ReportError::file(
                                dir.join(METRICS),
                                format!("metrics {names:?} differ from other cells' {m:?}"),
                            ))
                        }
                        Some(_) => {}
                    }
                    cells.push(CellResult {
                        dir,
                        record: r,
                        config,
                        rows,
                    });
                }
                other => missing.push((
                    pc.index,
                    pc.label.clone(),
                    pc.seed,
                    other
                        .as_ref()
                        .map(|r| format!("{:?}", r.state).to_lowercase())
                        .unwrap_or_else(|| "not started".into()),
                    other.and_then(|r| r.error),
                )),
            }
        }
        let mut groups: Vec<ConfigGroup> = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            match groups.iter_mut().find(|g| g.label == c.record.label) {
                Some(g) => g.cells.push(i),
                None => groups.push(ConfigGroup {
                    label: c.record.label.clone(),
                    cells: vec![i],
                }),
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            plan,
            metrics: metrics.unwrap_or_default(),
            cells,
            groups,
            missing,
        })
    }

    /// Column of metric `name`.
    pub fn metric_index(&self, name: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m == name)
    }

    /// Every value of metric `m` of a configuration (all seeds, all cases).
    pub fn values(&self, group: &ConfigGroup, m: usize) -> Vec<f64> {
        group
            .cells
            .iter()
            .flat_map(|&i| self.cells[i].rows.iter().map(move |r| r.values[m]))
            .collect()
    }

    /// Per case: the mean over the configuration's seeds of metric `m`.
    pub fn per_case(&self, group: &ConfigGroup, m: usize) -> Vec<(String, f64)> {
        let mut out: Vec<(String, Vec<f64>)> = Vec::new();
        for &i in &group.cells {
            for r in &self.cells[i].rows {
                match out.iter_mut().find(|(c, _)| *c == r.case) {
                    Some((_, v)) => v.push(r.values[m]),
                    None => out.push((r.case.clone(), vec![r.values[m]])),
                }
            }
        }
        out.into_iter()
            .map(|(c, v)| (c, crate::stats::mean(&v)))
            .collect()
    }

    /// The baseline configuration: the one `report.baseline` names, else the first. The
    /// name is a configuration label, a bare grid value (`unet`) or grid settings
    /// (`metric.lambda=0.01 metric.loss.sigma=1.0`; the configuration must have all of them).
    pub fn baseline(&self) -> Option<usize> {
        let wanted = self
            .cells
            .first()
            .and_then(|c| c.config.report.baseline.clone());
        if let Some(w) = wanted {
            let matches = |g: &ConfigGroup| {
                let o = &self.cells[g.cells[0]].record.overrides;
                g.label == w
                    || o.iter().any(|(_, v)| *v == w)
                    || w.split_whitespace().all(|kv| {
                        kv.split_once('=')
                            .is_some_and(|(k, v)| o.iter().any(|(ok, ov)| ok == k && ov == v))
                    })
            };
            if let Some(i) = self.groups.iter().position(matches) {
                return Some(i);
            }
            tracing::warn!(
                "report.baseline `{w}` names no finished configuration; using the first"
            );
        }
        (!self.groups.is_empty()).then_some(0)
    }

    /// The value of grid axis `axis` of a configuration.
    pub fn axis_value(&self, group: &ConfigGroup, axis: &str) -> Option<String> {
        self.cells[group.cells[0]]
            .record
            .overrides
            .iter()
            .find(|(k, _)| k == axis)
            .map(|(_, v)| v.clone())
    }
}

/// The unit and direction (higher is better) a registered metric declares; `("", true)`
/// for a name not registered.
fn declared(name: &str) -> (&'static str, bool) {
    use metricunet_core::registry;
    let spec = metricunet_core::PluginSpec::named(name);
    registry::build_metric(&spec, "evaluation.metrics")
        .map(|(m, _)| (m.unit(), m.higher_is_better()))
        .unwrap_or(("", true))
}

/// The unit a registered metric declares (`""`, `"mm"`, `"mL"`, ...).
pub fn metric_unit(name: &str) -> &'static str {
    declared(name).0
}

/// Whether a lower value is better, as the metric declares it (ASD, HD95, a volume error).
pub fn lower_is_better(name: &str) -> bool {
    !declared(name).1
}

/// `DSC`, `ASD (mm)`.
pub fn metric_title(name: &str) -> String {
    let u = metric_unit(name);
    if u.is_empty() {
        name.to_uppercase()
    } else {
        format!("{} ({u})", name.to_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use metricunet_core::{
        inventory, Comparison, Metric, MetricPlugin, MetricValue, Params, Result,
    };

    /// A metric in mL where lower is better: its direction comes from the metric, not its unit.
    #[derive(Debug)]
    struct VolumeError;
    impl Metric for VolumeError {
        fn unit(&self) -> &'static str {
            "mL"
        }
        fn higher_is_better(&self) -> bool {
            false
        }
        fn compute(&self, _: &Comparison<'_>) -> Result<MetricValue> {
            Ok(MetricValue::ok(0.0))
        }
    }
    inventory::submit! {
        MetricPlugin {
            name: "test-volume-error",
            description: "a test metric",
            params: &[],
            build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(VolumeError)) },
        }
    }

    #[test]
    fn direction_and_unit_come_from_the_metric() {
        assert!(super::lower_is_better("test-volume-error"));
        assert_eq!(
            super::metric_title("test-volume-error"),
            "TEST-VOLUME-ERROR (mL)"
        );
        assert!(!super::lower_is_better("not-registered"));
    }
}
