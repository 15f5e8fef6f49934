//! The per-case table (Parquet and CSV) and the Table III-style summary (CSV and Markdown).

use std::path::Path;

use polars::prelude::{Column, CsvWriter, DataFrame, ParquetWriter, SerWriter};

use crate::collect::{lower_is_better, metric_title, RunResults};
use metricunet_core::fsio::write_atomic_with;

use crate::error::{ReportError, Result};
use crate::stats::{bootstrap_mean_ci, mean, median, std, wilcoxon, BOOTSTRAP_RESAMPLES};

/// One row per (cell, test case): experiment, cell hash, configuration label, one column per
/// grid axis, seed, case, every metric and its flag.
pub fn per_case_frame(r: &RunResults) -> Result<DataFrame> {
    let rows: Vec<(usize, usize)> = r
        .cells
        .iter()
        .enumerate()
        .flat_map(|(i, c)| (0..c.rows.len()).map(move |k| (i, k)))
        .collect();
    let s = |f: &dyn Fn(usize, usize) -> String| -> Vec<String> {
        rows.iter().map(|&(i, k)| f(i, k)).collect()
    };
    let mut cols = vec![
        Column::new(
            "experiment".into(),
            s(&|i, _| r.cells[i].record.experiment.clone()),
        ),
        Column::new("cell".into(), s(&|i, _| r.cells[i].record.hash.clone())),
        Column::new("config".into(), s(&|i, _| r.cells[i].record.label.clone())),
    ];
    for axis in &r.plan.axes {
        let v: Vec<Option<String>> = rows
            .iter()
            .map(|&(i, _)| {
                r.cells[i]
                    .record
                    .overrides
                    .iter()
                    .find(|(k, _)| k == axis)
                    .map(|(_, v)| v.clone())
            })
            .collect();
        cols.push(Column::new(axis.as_str().into(), v));
    }
    cols.push(Column::new(
        "seed".into(),
        rows.iter()
            .map(|&(i, _)| r.cells[i].record.seed)
            .collect::<Vec<u64>>(),
    ));
    cols.push(Column::new(
        "case".into(),
        s(&|i, k| r.cells[i].rows[k].case.clone()),
    ));
    for (m, name) in r.metrics.iter().enumerate() {
        let v: Vec<f64> = rows
            .iter()
            .map(|&(i, k)| r.cells[i].rows[k].values[m])
            .collect();
        cols.push(Column::new(name.as_str().into(), v));
    }
    for (m, name) in r.metrics.iter().enumerate() {
        let v: Vec<Option<String>> = rows
            .iter()
            .map(|&(i, k)| r.cells[i].rows[k].flags[m].clone())
            .collect();
        cols.push(Column::new(format!("{name}_flag").into(), v));
    }
    DataFrame::new(rows.len(), cols)
        .map_err(|e| ReportError::Invalid(format!("per-case table: {e}")))
}

/// Write `df` as CSV, atomically.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<()> {
    Ok(write_atomic_with(path, |f| {
        CsvWriter::new(f).finish(df).map_err(|e| e.to_string())
    })?)
}

/// Write `df` as Parquet, atomically.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    Ok(write_atomic_with(path, |f| {
        ParquetWriter::new(f)
            .finish(df)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?)
}

/// One metric of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSummary {
    pub mean: f64,
    pub std: f64,
    pub median: f64,
    /// Finite values pooled (cases x seeds).
    pub n: usize,
    /// Against the baseline, paired by case (seed means). None for the baseline itself.
    pub vs_baseline: Option<Paired>,
}

/// A configuration against the baseline, cases paired (each case's value averaged over
/// seeds first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Mean difference, this - baseline.
    pub diff: f64,
    /// Two-sided Wilcoxon signed-rank p-value.
    pub p: Option<f64>,
    /// Percentile bootstrap 95 % interval of the mean difference (10,000 resamples of the
    /// pairs, seed 0).
    pub ci: Option<(f64, f64)>,
    pub pairs: usize,
}

/// One configuration's row of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub label: String,
    pub seeds: usize,
    pub cases: usize,
    pub metrics: Vec<MetricSummary>,
}

/// The Table III-style summary, one row per configuration in plan order.
pub fn summary(r: &RunResults) -> Vec<SummaryRow> {
    let base = r.baseline();
    r.groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let metrics = (0..r.metrics.len())
                .map(|m| {
                    let v = r.values(g, m);
                    let vs_baseline = base.filter(|&b| b != gi).map(|b| {
                        let mine = r.per_case(g, m);
                        let theirs = r.per_case(&r.groups[b], m);
                        let d: Vec<f64> = mine
                            .iter()
                            .filter_map(|(c, x)| {
                                theirs.iter().find(|(c2, _)| c2 == c).map(|(_, y)| x - y)
                            })
                            .filter(|d| d.is_finite())
                            .collect();
                        Paired {
                            diff: mean(&d),
                            p: wilcoxon(&d).map(|w| w.p_value),
                            ci: bootstrap_mean_ci(&d, 0.95, BOOTSTRAP_RESAMPLES, 0),
                            pairs: d.len(),
                        }
                    });
                    MetricSummary {
                        mean: mean(&v),
                        std: std(&v),
                        median: median(&v),
                        n: v.iter().filter(|x| x.is_finite()).count(),
                        vs_baseline,
                    }
                })
                .collect();
            SummaryRow {
                label: g.label.clone(),
                seeds: g.cells.len(),
                cases: g.cells.iter().map(|&i| r.cells[i].rows.len()).sum(),
                metrics,
            }
        })
        .collect()
}

/// The summary as a Polars table: config, seeds, cases, then per metric mean, std, median,
/// n, diff (vs the baseline), p (Wilcoxon), pairs.
pub fn summary_frame(r: &RunResults, rows: &[SummaryRow]) -> Result<DataFrame> {
    let mut cols = vec![
        Column::new(
            "config".into(),
            rows.iter().map(|s| s.label.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "seeds".into(),
            rows.iter().map(|s| s.seeds as u64).collect::<Vec<_>>(),
        ),
        Column::new(
            "cases".into(),
            rows.iter().map(|s| s.cases as u64).collect::<Vec<_>>(),
        ),
    ];
    for (m, name) in r.metrics.iter().enumerate() {
        let get = |f: &dyn Fn(&MetricSummary) -> f64| -> Vec<f64> {
            rows.iter().map(|s| f(&s.metrics[m])).collect()
        };
        cols.push(Column::new(format!("{name}_mean").into(), get(&|x| x.mean)));
        cols.push(Column::new(format!("{name}_std").into(), get(&|x| x.std)));
        cols.push(Column::new(
            format!("{name}_median").into(),
            get(&|x| x.median),
        ));
        cols.push(Column::new(
            format!("{name}_n").into(),
            rows.iter()
                .map(|s| s.metrics[m].n as u64)
                .collect::<Vec<_>>(),
        ));
        let vs: Vec<Option<Paired>> = rows.iter().map(|s| s.metrics[m].vs_baseline).collect();
        cols.push(Column::new(
            format!("{name}_diff").into(),
            vs.iter().map(|v| v.map(|x| x.diff)).collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{name}_diff_ci_low").into(),
            vs.iter()
                .map(|v| v.and_then(|x| x.ci).map(|c| c.0))
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{name}_diff_ci_high").into(),
            vs.iter()
                .map(|v| v.and_then(|x| x.ci).map(|c| c.1))
                .collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{name}_p").into(),
            vs.iter().map(|v| v.and_then(|x| x.p)).collect::<Vec<_>>(),
        ));
        cols.push(Column::new(
            format!("{name}_pairs").into(),
            vs.iter()
                .map(|v| v.map(|x| x.pairs as u64))
                .collect::<Vec<_>>(),
        ));
    }
    DataFrame::new(rows.len(), cols)
        .map_err(|e| ReportError::Invalid(format!("summary table: {e}")))
}

fn digits(name: &str) -> usize {
    if crate::collect::metric_unit(name).is_empty() {
        3
    } else {
        2
    }
}

/// A p-value as papers print it.
pub fn p_text(p: Option<f64>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p < 0.001 => "< 0.001".into(),
        Some(p) => format!("{p:.3}"),
    }
}

/// The summary as a Markdown table: `mean ± std (median)` per metric, then the difference to
/// the baseline and its p-value for the first two metrics (DSC and ASD in the paper).
pub fn summary_markdown(r: &RunResults, rows: &[SummaryRow]) -> (Vec<String>, Vec<Vec<String>>) {
    let base = r
        .baseline()
        .map(|b| r.groups[b].label.clone())
        .unwrap_or_default();
    let mut header = vec!["Configuration".to_string(), "n".to_string()];
    header.extend(r.metrics.iter().map(|m| {
        format!(
            "{} {}",
            metric_title(m),
            if lower_is_better(m) { "↓" } else { "↑" }
        )
    }));
    let compared: Vec<usize> = (0..r.metrics.len().min(2)).collect();
    for &m in &compared {
        header.push(format!(
            "Δ{} vs baseline [95 % CI] (p)",
            r.metrics[m].to_uppercase()
        ));
    }
    let body = rows
        .iter()
        .map(|s| {
            let mut line = vec![
                if s.label == base {
                    format!("{} (baseline)", s.label)
                } else {
                    s.label.clone()
                },
                format!("{}", s.cases),
            ];
            for (m, x) in s.metrics.iter().enumerate() {
                let d = digits(&r.metrics[m]);
                line.push(if x.n == 0 {
                    "-".into()
                } else {
                    format!(
                        "{:.d$}{} ({:.d$}){}",
                        x.mean,
                        if x.std.is_finite() {
                            format!(" ± {:.d$}", x.std)
                        } else {
                            String::new()
                        },
                        x.median,
                        if x.n < s.cases {
                            format!(" [{} undefined]", s.cases - x.n)
                        } else {
                            String::new()
                        }
                    )
                });
            }
            for &m in &compared {
                let d = digits(&r.metrics[m]);
                line.push(match s.metrics[m].vs_baseline {
                    None => "-".into(),
                    Some(x) => format!(
                        "{:+.d$}{} ({})",
                        x.diff,
                        x.ci.map(|(lo, hi)| format!(" [{lo:+.d$}, {hi:+.d$}]"))
                            .unwrap_or_default(),
                        p_text(x.p)
                    ),
                });
            }
            line
        })
        .collect();
    (header, body)
}

/// Which weights each cell's stages kept (`training.keep`): per stage the iteration of the
/// kept weights out of those trained, and its whole-case validation scores.
pub fn kept_markdown(r: &RunResults) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "cell",
        "configuration",
        "seed",
        "stage 1 kept",
        "stage 1 val DSC",
        "stage 1 centroid error (mm)",
        "stage 2 kept",
        "stage 2 val DSC",
        "stage 2 val ASD (mm)",
    ]
    .map(String::from)
    .to_vec();
    let score = |k: Option<&metricunet_store::KeptRecord>, name: &str, digits: usize| {
        k.and_then(|k| k.scores.get(name))
            .map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "–".into())
    };
    let which = |k: Option<&metricunet_store::KeptRecord>| {
        k.map(|k| format!("{} ({} of {})", k.rule, k.iteration, k.trained))
            .unwrap_or_else(|| "not recorded".into())
    };
    let rows = r
        .cells
        .iter()
        .map(|c| {
            let (s1, s2) = (c.record.kept.get("stage1"), c.record.kept.get("stage2"));
            vec![
                c.record.index.to_string(),
                c.record.label.clone(),
                c.record.seed.to_string(),
                which(s1),
                score(s1, "dsc", 3),
                score(s1, "loc_mm", 1),
                which(s2),
                score(s2, "dsc", 3),
                score(s2, "asd", 2),
            ]
        })
        .collect();
    (header, rows)
}
