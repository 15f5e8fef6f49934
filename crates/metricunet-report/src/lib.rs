//! Reports of `metricunet run` roots: whatever cells are finished are merged into
//! - `per_case.parquet` / `per_case.csv`: one row per cell and test case (Polars);
//! - `summary.csv` / `summary.md`: Table III-style mean ± std (median) per configuration, with
//!   paired differences to the baseline and Wilcoxon signed-rank p-values;
//! - `figures/`: Fig. 6 box plots, Fig. 7 curves, Fig. 8 overlays and heat maps (PNG + SVG);
//! - `report.md` (figures beside it) and `report.html` (self-contained).

pub mod collect;
pub mod document;
pub mod error;
pub mod figures;
pub mod stats;
pub mod tables;

use std::fmt;
use std::path::{Path, PathBuf};

use collect::RunResults;
use document::Block;
pub use error::{ReportError, Result};

/// What `write_report` wrote.
#[derive(Debug, Clone)]
pub struct ReportOutcome {
    pub dir: PathBuf,
    pub finished_cells: usize,
    pub planned_cells: usize,
    pub figures: usize,
    /// The summary table as Markdown.
    pub summary_markdown: String,
}

impl fmt::Display for ReportOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n{}", self.summary_markdown)?;
        writeln!(
            f,
            "report: {} and report.html ({} of {} cells finished, {} figures)",
            self.dir.join("report.md").display(),
            self.finished_cells,
            self.planned_cells,
            self.figures
        )
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    Ok(metricunet_core::fsio::write_atomic(path, text.as_bytes())?)
}

/// Where a report goes when neither `--out` nor `report.out_dir` says: `reports/<name>` for
/// the default run root `runs/<name>`, else `<root>/report`, so two run roots of one
/// experiment never write into one report folder.
pub fn default_report_dir(root: &Path, experiment: &str) -> PathBuf {
    let default_root = Path::new("runs").join(experiment);
    let lexical = |p: &Path| -> Vec<std::ffi::OsString> {
        p.components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_os_string())
            .collect()
    };
    let same = match (
        std::fs::canonicalize(root),
        std::fs::canonicalize(&default_root),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => lexical(root) == lexical(&default_root),
    };
    if same {
        PathBuf::from("reports").join(experiment)
    } else {
        root.join("report")
    }
}

/// `YYYY-MM-DD HH:MM UTC` of Unix seconds.
pub fn utc_text(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil from days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn data_text(r: &RunResults) -> Vec<String> {
    use metricunet_core::config::DataSource;
    let Some(c) = r.cells.first() else {
        return Vec::new();
    };
    let d = &c.config.data;
    let mut v = vec![match d.source {
        DataSource::Phantom => format!(
            "Source: built-in synthetic pelvic CT phantom, {} cases (seed {}, {} x {} voxels in-plane, about {} slices).",
            d.phantom.cases, d.phantom.seed, d.phantom.in_plane, d.phantom.in_plane, d.phantom.slices
        ),
        DataSource::Msd => format!(
            "Source: Decathlon-layout folder `{}`.",
            d.root.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        ),
        DataSource::List => format!("Source: {} listed cases.", d.cases.len()),
    }];
    if let Ok(s) = metricunet_data::split::read_split(&c.dir.join(metricunet_store::SPLIT)) {
        v.push(format!(
            "Split (seed {}): {} training, {} validation, {} test cases. Test cases: {}.",
            s.seed,
            s.train.len(),
            s.val.len(),
            s.test.len(),
            s.test.join(", ")
        ));
    }
    v.push(format!(
        "Preprocessing: resampled to {} x {} x {} mm, HU window [{}, {}], body crop above {} HU; stage 1 on the CT downsampled by {}, stage 2 on a {} x {} x {} crop around the stage-1 centroid.",
        d.spacing_mm[0], d.spacing_mm[1], d.spacing_mm[2], d.hu_window[0], d.hu_window[1],
        d.body_threshold_hu, c.config.stage1.downsample,
        c.config.model.crop[0], c.config.model.crop[1], c.config.model.crop[2]
    ));
    v
}

/// Write the report of the finished cells of `root` into `out` (default: the experiment's
/// `report.out_dir`, else `reports/<experiment>`).
pub fn write_report(root: &Path, out: Option<&Path>) -> Result<ReportOutcome> {
    let r = RunResults::load(root)?;
    if r.cells.is_empty() {
        let states: Vec<String> = r
            .missing
            .iter()
            .map(|m| format!("cell {} {}", m.0, m.3))
            .collect();
        return Err(ReportError::Invalid(format!(
            "{}: no finished cell yet ({})",
            root.display(),
            states.join(", ")
        )));
    }
    let first = &r.cells[0];
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| {
        first
            .config
            .report
            .out_dir
            .clone()
            .unwrap_or_else(|| default_report_dir(root, &r.plan.experiment))
    });
    metricunet_core::fsio::remove_temporaries(&dir, true);
    let fig_dir = dir.join("figures");
    std::fs::create_dir_all(&fig_dir).map_err(|e| ReportError::io(&fig_dir, e))?;

    // tables
    let mut per_case = tables::per_case_frame(&r)?;
    tables::write_parquet(&mut per_case, &dir.join("per_case.parquet"))?;
    tables::write_csv(&mut per_case, &dir.join("per_case.csv"))?;
    let rows = tables::summary(&r);
    let mut summary = tables::summary_frame(&r, &rows)?;
    tables::write_csv(&mut summary, &dir.join("summary.csv"))?;
    let (header, body) = tables::summary_markdown(&r, &rows);
    let table_block = Block::Table { header, rows: body };
    let summary_md = document::markdown(std::slice::from_ref(&table_block));
    write_atomic(&dir.join("summary.md"), &summary_md)?;

    // figures
    let mut figs = figures::fig6(&r, &fig_dir)?;
    figs.extend(figures::paired(&r, &fig_dir)?);
    figs.extend(figures::fig7(&r, &fig_dir)?);
    figs.extend(figures::fig8(&r, &fig_dir)?);
    // the embedding view runs each cell's network once; a cell it cannot load is named in
    // the report, and the rest of the report is still written
    let embeddings = figures::embeddings(&r).map_err(|e| {
        tracing::warn!("embedding view: {e}");
        e.to_string()
    });
    if let Ok(Some(e)) = &embeddings {
        figs.push(figures::embedding_figure(e, &fig_dir)?);
        figs.extend(figures::sampler_figures(e, &fig_dir)?);
    }
    figs.extend(figures::worst_cases(&r, &fig_dir)?);

    // document
    let base = r
        .baseline()
        .map(|b| r.groups[b].label.clone())
        .unwrap_or_default();
    let mut blocks = vec![Block::Title(format!("{}: report", r.plan.experiment))];
    if !r.plan.description.is_empty() {
        blocks.push(Block::Para(r.plan.description.clone()));
    }
    blocks.push(Block::Para(format!(
        "Written {} by metricunet {} from `{}` (experiment `{}`{}); {} of {} cells finished.",
        utc_text(metricunet_store::now()),
        env!("CARGO_PKG_VERSION"),
        root.display(),
        r.plan.source,
        if r.plan.sets.is_empty() {
            String::new()
        } else {
            format!(" with --set {}", r.plan.sets.join(", "))
        },
        r.cells.len(),
        r.plan.cells.len()
    )));
    blocks.push(Block::Heading("Data".into()));
    blocks.push(Block::List(data_text(&r)));
    blocks.push(Block::Heading("Results (Table III style)".into()));
    blocks.push(table_block);
    blocks.push(Block::Para(format!(
        "Each entry is mean ± standard deviation (median) over the test cases{}; arrows give the better direction. Δ is the mean paired difference to the baseline `{base}` (cases paired, seeds averaged first), in brackets its 95 % percentile bootstrap interval (10,000 resamples of the cases, seed 0), and p the two-sided Wilcoxon signed-rank p-value (scipy's method: exact for small samples). ASD is Eq. 6 of the paper (mean of the two directed mean surface distances); ASSD pools both surfaces; HD95 is the 95th percentile symmetric Hausdorff distance. Per-case values: `per_case.csv` / `per_case.parquet`; this table: `summary.csv`.",
        if r.groups.iter().any(|g| g.cells.len() > 1) { " and seeds" } else { "" }
    )));
    blocks.push(Block::Heading("Figures".into()));
    for f in &figs {
        blocks.push(Block::Image {
            path: format!("figures/{}.png", f.stem),
            alt: f.title.clone(),
            caption: format!("{}. {} (SVG: `figures/{}.svg`)", f.title, f.caption, f.stem),
        });
    }
    match &embeddings {
        Ok(Some(e)) => {
            blocks.push(Block::Heading("Embedding separation".into()));
            blocks.push(Block::Table {
                header: [
                    "configuration",
                    "separation (mean over seeds)",
                    "per seed (mean over test cases)",
                ]
                .map(String::from)
                .to_vec(),
                rows: (0..e.groups.len())
                    .map(|g| {
                        let (mean, each) = e.separation(g);
                        let f = |v: Option<f64>| {
                            v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into())
                        };
                        vec![
                            e.groups[g].0.clone(),
                            f(mean),
                            e.groups[g]
                                .1
                                .iter()
                                .zip(each)
                                .map(|(s, v)| {
                                    format!("seed {}: {} ({} cases)", s.seed, f(v), s.cases)
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                        ]
                    })
                    .collect(),
            });
            blocks.push(Block::Para(format!(
                "The mean embedding distance between a foreground and a background voxel within 2 voxels of the reference boundary, over the mean distance between two voxels of the same class there, on each test case's slice with the most reference foreground (stage-2 crop around the reference, as the embedding view of {} above), averaged over the test cases for each seed. Above 1 the classes lie apart where the metric loss acts; it is scale-free, so networks with different feature scales compare.",
                e.case
            )));
        }
        Ok(None) => {}
        Err(why) => {
            blocks.push(Block::Heading("Embedding separation".into()));
            blocks.push(Block::Para(format!("Not computed: {why}")));
        }
    }
    blocks.push(Block::Heading("Cells".into()));
    blocks.push(Block::Table {
        header: [
            "cell",
            "configuration",
            "seed",
            "hash",
            "device",
            "host",
            "stage 1 (s)",
            "stage 2 (s)",
            "predict + eval (s)",
            "total (s)",
            "git",
        ]
        .map(String::from)
        .to_vec(),
        rows: r
            .cells
            .iter()
            .map(|c| {
                let t = &c.record.timings;
                vec![
                    c.record.index.to_string(),
                    c.record.label.clone(),
                    c.record.seed.to_string(),
                    format!("`{}`", c.record.hash),
                    c.record.device.clone(),
                    c.record.host.clone(),
                    if t.stage1_s > 0.0 {
                        format!("{:.0}", t.stage1_s)
                    } else {
                        "shared".into()
                    },
                    format!("{:.0}", t.stage2_s),
                    format!("{:.0}", t.predict_s),
                    format!("{:.0}", t.total_s),
                    c.record.git_revision.clone(),
                ]
            })
            .collect(),
    });
    blocks.push(Block::Para(
        "Stage 1 is trained once per data split and seed and shared by the cells; its time is counted in the cell that trained it (\"shared\": another cell did).".into(),
    ));
    blocks.push(Block::Heading("Kept weights".into()));
    let (header, rows) = tables::kept_markdown(&r);
    blocks.push(Block::Table { header, rows });
    blocks.push(Block::Para(
        "Each stage's model holds the weights of one iteration: with `training.keep: best` the best validation point (stage 2: the highest whole-case validation DSC, ties by lower ASD; stage 1, whose centroid is what the pipeline uses: the fewest validation cases where it found nothing, then the smallest centroid error, then DSC; full ties: the later point), with `last` the last iteration. Validation segments the validation cases whole, slice by slice, as test cases are predicted (stage 2 on the box around the reference prostate); stage 1 also gives the distance between its centroid and the reference one. \"a of b\": iteration a of the b trained.".into(),
    ));
    if !r.missing.is_empty() {
        blocks.push(Block::Heading("Cells not in this report".into()));
        blocks.push(Block::List(
            r.missing
                .iter()
                .map(|(i, label, seed, state, err)| {
                    format!(
                        "cell {i} ({label}, seed {seed}): {state}{}",
                        err.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    )
                })
                .collect(),
        ));
    }
    blocks.push(Block::Heading("Configuration".into()));
    if let Some(c) = r
        .cells
        .iter()
        .find(|c| !c.config.metric.samplers.is_empty())
    {
        blocks.push(Block::Para(lambda_note(&c.config)));
    }
    blocks.push(Block::Para(if r.plan.axes.is_empty() {
        "The resolved configuration (every default filled in):".to_string()
    } else {
        let baseline = if r.plan.baseline.is_empty() {
            String::new()
        } else {
            format!(
                " (the file's own values: {})",
                r.plan
                    .baseline
                    .iter()
                    .map(|(k, v)| format!("`{k}` = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "{} over {}{baseline}; the resolved configuration of the first cell (the others differ only in the grid values and the seed):",
            if r.plan.grid_mode == metricunet_core::config::GridMode::OneAtATime {
                "One-at-a-time grid (each axis varied alone, the others at the file's own values)"
            } else {
                "Grid (every combination)"
            },
            r.plan.axes.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        )
    }));
    let config_path = first.dir.join(metricunet_store::CONFIG);
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|e| ReportError::io(&config_path, e))?;
    blocks.push(Block::Code(config_text));

    write_atomic(&dir.join("report.md"), &document::markdown(&blocks))?;
    write_atomic(&dir.join("report.html"), &document::html(&blocks, &dir)?)?;
    Ok(ReportOutcome {
        dir,
        finished_cells: r.cells.len(),
        planned_cells: r.plan.cells.len(),
        figures: figs.len(),
        summary_markdown: summary_md,
    })
}

/// What `metric.lambda` multiplies: the metric loss as configured, with its reduction when it
/// declares one (a lambda under `mean` and one under `sum` differ by the number of tuples).
fn lambda_note(c: &metricunet_core::config::Experiment) -> String {
    let loss = &c.metric.loss;
    let reduction = loss
        .params
        .get("reduction")
        .and_then(|v| v.as_str())
        .map(|r| {
            format!(
                " with `reduction: {r}` ({})",
                match r {
                    "mean" => "each term averaged over its tuples, so lambda does not scale with the batch size or the anchors drawn; Eq. 2 written as sums is `reduction: sum`, larger by the number of tuples",
                    "sum" => "each term summed over its tuples, as Eq. 2 is written; the same lambda weighs more with a larger batch or more anchors",
                    _ => "as the loss defines it",
                }
            )
        })
        .unwrap_or_default();
    format!(
        "`metric.lambda` = {} weighs the metric loss `{}`{reduction}, added to the segmentation loss once per sampler (Eq. 4; README: \"Which reduction a lambda refers to\").",
        c.metric.lambda, loss.name
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc_text(1_798_000_000), "2026-12-23 04:26 UTC");
        assert_eq!(super::utc_text(951_782_400), "2000-02-29 00:00 UTC");
    }
}
