//! `metricunet run`: every cell of an experiment, resumable and shardable.
//!
//! A cell is finished when its `cell.yaml` says so; that record is written last and
//! atomically, after the predictions and `metrics.csv`, so a kill at any moment leaves either
//! a finished cell or one that the next run resumes (training from its last checkpoint).
//! Stage 1 depends only on the data, the stage-1 settings and the seed; it is trained once
//! under `stage1/<hash>/` (locked, so concurrent shards wait for each other) and copied into
//! each cell.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use metricunet_core::config::{Cell, DeviceChoice, StageName};
use metricunet_core::SharedProgress;
use metricunet_core::{config::stable_hash, ExperimentPlan};
use metricunet_data::dataset::load_case;
use metricunet_data::io::write_nifti;
use metricunet_data::Volume;
use metricunet_eval::evaluate::{all_metrics, metrics_frame, write_csv};
use metricunet_eval::{evaluate_masks, CaseMetrics, Pipeline, PredictError};

use crate::data::{work_dir, PreparedData};
use crate::error::{Result, RunError};
use crate::lock::{host_name, DirLock};
use crate::shard::Shard;
use crate::stage::{train_cell_stage, StageRun};
use crate::summary::{CellOutcome, CellSummary, RunSummary};
use metricunet_core::fsio::{copy_atomic, remove_temporaries, write_atomic};
use metricunet_store::{
    cell_dir, prediction_path, probability_path, shared_stage_dir, stage_dir, Attempt,
    AttemptOutcome, CellRecord, CellState, KeptRecord, PlanRecord, RunInfo, TestCase, CONFIG,
    METRICS, SPLIT, STAGE_COPIES, WEIGHTS,
};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run root (cells, shared stage 1, plan).
    pub root: PathBuf,
    /// The experiment file's folder (relative data paths start there).
    pub experiment_dir: PathBuf,
    /// Overrides the experiment's `device`.
    pub device: Option<DeviceChoice>,
    pub shard: Option<Shard>,
    /// Run cells recorded as failed again (otherwise they are left as they are).
    pub retry_failed: bool,
    /// Where progress goes (the binary draws bars; `metricunet_core::progress::silent()`).
    pub progress: SharedProgress,
}

/// Run (or resume) every cell of `plan` that belongs to this shard. Errors of single cells
/// are recorded in their folders and do not stop the others.
pub fn run_plan(
    plan: &ExperimentPlan,
    plan_record: &PlanRecord,
    opts: &RunOptions,
) -> Result<RunSummary> {
    let base = &plan.base;
    for s in [StageName::Stage1, StageName::Stage2] {
        if !base.stages.contains(&s) {
            return Err(RunError::Invalid(format!(
                "stages: `run` trains and evaluates both stages, this experiment lists {:?}; use `metricunet train` for a single stage",
                base.stages
            )));
        }
    }
    std::fs::create_dir_all(&opts.root).map_err(|e| RunError::io(&opts.root, e))?;
    // what killed processes left: at the root here, in cells when they run, and in the data
    // folders (phantom, cache) now, whether or not this run needs their data
    remove_temporaries(&opts.root, false);
    let mut data_dirs: Vec<PathBuf> = plan
        .cells
        .iter()
        .map(|c| work_dir(&c.config.data))
        .collect();
    data_dirs.sort();
    data_dirs.dedup();
    for d in &data_dirs {
        remove_temporaries(d, true);
    }
    plan_record.write(&opts.root)?;
    let device = metricunet_train::select_device(opts.device.unwrap_or(base.device))?;
    let device_name = metricunet_train::device::device_name(&device);

    let mine: Vec<&Cell> = plan
        .cells
        .iter()
        .filter(|c| opts.shard.is_none_or(|s| s.owns(c.index)))
        .collect();
    if let (Some(s), true) = (opts.shard, mine.is_empty()) {
        tracing::warn!(
            "shard {s}: no cell of the experiment's {} is this shard's; nothing to do",
            plan.cells.len()
        );
    }
    let overall = opts.progress.task("cells", Some(mine.len() as u64));
    let mut data_sets: HashMap<String, PreparedData> = HashMap::new();
    let mut summaries = Vec::new();
    for cell in &plan.cells {
        let hash = cell.run_hash()?;
        let mut summary = CellSummary {
            index: cell.index,
            label: cell.label(),
            seed: cell.seed,
            hash: hash.clone(),
            outcome: CellOutcome::OtherShard,
            seconds: 0.0,
            mean_dsc: None,
        };
        if !opts.shard.is_none_or(|s| s.owns(cell.index)) {
            summaries.push(summary);
            continue;
        }
        overall.set_message(format!(
            "cell {} ({}, seed {})",
            cell.index, summary.label, cell.seed
        ));
        let dir = cell_dir(&opts.root, &hash);
        let previous = match CellRecord::read(&dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}; the cell is run again");
                None
            }
        };
        let t = Instant::now();
        summary.outcome = match previous {
            Some(r) if r.state == CellState::Finished && dir.join(METRICS).exists() => {
                summary.seconds = r.timings.total_s;
                // `evaluation` is not part of the cell hash: other metrics are computed
                // again from the saved predictions, never by training again
                let outcome = match reevaluate_if_needed(cell, &dir, &r) {
                    Ok(false) => CellOutcome::AlreadyFinished,
                    Ok(true) => CellOutcome::Reevaluated,
                    Err(e) => CellOutcome::Failed(format!("re-evaluation: {e}")),
                };
                summary.mean_dsc = mean_dsc(&dir);
                outcome
            }
            Some(r) if r.state == CellState::Failed && !opts.retry_failed => {
                CellOutcome::FailedBefore(r.error.unwrap_or_default())
            }
            previous => match DirLock::try_acquire(&dir)? {
                Err(holder) => CellOutcome::Busy(holder.to_string()),
                Ok(_lock) => {
                    let mut record = new_record(cell, &hash, &device_name, previous)?;
                    let ctx = CellContext {
                        cell,
                        dir: &dir,
                        device: &device,
                        opts,
                        progress: opts.progress.as_ref(),
                    };
                    match run_cell(&ctx, &mut record, &mut data_sets) {
                        Ok(()) => {
                            summary.mean_dsc = mean_dsc(&dir);
                            CellOutcome::Finished
                        }
                        Err(e) => {
                            let message = e.to_string();
                            tracing::error!("cell {} ({}): {message}", cell.index, summary.label);
                            record.state = CellState::Failed;
                            record.error = Some(message.clone());
                            if let Some(a) = record.attempts.last_mut() {
                                a.outcome = AttemptOutcome::Failed;
                            }
                            record.write(&dir)?;
                            CellOutcome::Failed(message)
                        }
                    }
                }
            },
        };
        if summary.seconds == 0.0 {
            summary.seconds = t.elapsed().as_secs_f64();
        }
        overall.advance(1);
        summaries.push(summary);
    }
    drop(overall);
    Ok(RunSummary {
        root: opts.root.clone(),
        device: device_name,
        cells: summaries,
    })
}

/// A test case read from disk and its foreground (any mapped label) as the reference mask.
fn load_with_reference(
    case: &metricunet_data::Case,
    label_map: &std::collections::BTreeMap<i64, u8>,
) -> Result<(metricunet_data::LoadedCase, Volume<bool>)> {
    let loaded = load_case(case, label_map)?;
    let reference = loaded
        .label
        .as_ref()
        .ok_or_else(|| RunError::file(&case.image, "a test case needs a label to be evaluated"))?
        .map(|v| v != 0);
    Ok((loaded, reference))
}

/// Evaluate a finished cell again from its saved predictions when its `metrics.csv` holds
/// other metrics than the configuration asks for. True when it did.
fn reevaluate_if_needed(cell: &Cell, dir: &Path, record: &CellRecord) -> Result<bool> {
    let cfg = &cell.config;
    let metrics = cfg.evaluation.metrics.clone().unwrap_or_else(all_metrics);
    let path = dir.join(METRICS);
    let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
    let have: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|c| *c != "case" && !c.ends_with("_flag"))
        .collect();
    let want: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    let rows = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    if have == want && rows == record.test_cases.len() {
        return Ok(false);
    }
    tracing::info!(
        "cell {}: metrics {have:?} in {rows} rows -> {want:?} for {} test cases, evaluated again from its predictions",
        cell.index,
        record.test_cases.len()
    );
    let mut rows = Vec::with_capacity(record.test_cases.len());
    for tc in &record.test_cases {
        let case = metricunet_data::Case {
            id: tc.id.clone(),
            image: tc.image.clone(),
            label: tc.label.clone(),
        };
        let (_, reference) = load_with_reference(&case, &cfg.data.label_map)?;
        let pred_path = prediction_path(dir, &tc.id);
        let pred = metricunet_eval::evaluate::read_mask(&pred_path, None)?;
        rows.push(evaluate_masks(&tc.id, &pred, &reference, &metrics)?);
    }
    let mut table = metrics_frame(&rows).map_err(|e| RunError::file(&path, e.to_string()))?;
    write_csv(&mut table, &path)?;
    Ok(true)
}

fn mean_dsc(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(METRICS)).ok()?;
    let mut lines = text.lines();
    let col = lines.next()?.split(',').position(|h| h == "dsc")?;
    let v: Vec<f64> = lines
        .filter_map(|l| l.split(',').nth(col)?.parse().ok())
        .filter(|x: &f64| x.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn new_record(
    cell: &Cell,
    hash: &str,
    device: &str,
    previous: Option<CellRecord>,
) -> Result<CellRecord> {
    Ok(CellRecord {
        experiment: cell.config.name.clone(),
        index: cell.index,
        label: cell.label(),
        overrides: cell
            .overrides
            .iter()
            .map(|(k, v)| (k.clone(), metricunet_core::config::inline_yaml(v)))
            .collect(),
        seed: cell.seed,
        hash: hash.to_string(),
        stage1_hash: cell.stage1_hash()?,
        stage2_hash: cell.stage2_hash()?,
        state: CellState::Running,
        error: None,
        device: device.to_string(),
        host: host_name(),
        metricunet_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: metricunet_store::git_revision(),
        updated: 0,
        test_cases: Vec::new(),
        kept: Default::default(),
        // resumed attempts add to the time already spent; an earlier attempt still marked
        // running was killed (this process holds the cell's lock)
        attempts: previous
            .as_ref()
            .map(|p| p.attempts.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|mut a| {
                if a.outcome == AttemptOutcome::Running {
                    a.outcome = AttemptOutcome::Interrupted;
                }
                a
            })
            .chain([Attempt {
                host: host_name(),
                pid: std::process::id(),
                started: metricunet_store::now(),
                seconds: 0.0,
                outcome: AttemptOutcome::Running,
                stage2_resumed_from: None,
            }])
            .collect(),
        timings: previous.map(|p| p.timings).unwrap_or_default(),
    })
}

/// The working time of this attempt (waits excluded), kept in the record as it goes.
struct AttemptClock {
    start: Instant,
    /// `total_s` of the earlier attempts.
    before: f64,
    waited: Duration,
}

impl AttemptClock {
    fn new(record: &CellRecord) -> Self {
        Self {
            start: Instant::now(),
            before: record.timings.total_s,
            waited: Duration::ZERO,
        }
    }
    /// Record the time so far (and `outcome`) and write the record.
    fn save(&self, record: &mut CellRecord, dir: &Path, outcome: AttemptOutcome) -> Result<()> {
        let seconds = self
            .start
            .elapsed()
            .saturating_sub(self.waited)
            .as_secs_f64();
        record.timings.total_s = self.before + seconds;
        if let Some(a) = record.attempts.last_mut() {
            a.seconds = seconds;
            a.outcome = outcome;
        }
        Ok(record.write(dir)?)
    }
}

struct CellContext<'a> {
    cell: &'a Cell,
    dir: &'a Path,
    device: &'a candle_core::Device,
    opts: &'a RunOptions,
    progress: &'a dyn metricunet_core::Progress,
}

fn run_cell(
    ctx: &CellContext,
    record: &mut CellRecord,
    data_sets: &mut HashMap<String, PreparedData>,
) -> Result<()> {
    let (cell, dir) = (ctx.cell, ctx.dir);
    let cfg = &cell.config;
    let mut clock = AttemptClock::new(record);
    remove_temporaries(dir, true);
    record.write(dir)?;
    write_atomic(&dir.join(CONFIG), cell.to_yaml()?.as_bytes())?;
    RunInfo::from(&*record).write(dir)?;
    let data_key = stable_hash(
        &serde_norway::to_string(&cfg.data).map_err(|e| RunError::Invalid(e.to_string()))?,
    );
    if !data_sets.contains_key(&data_key) {
        let task = ctx
            .progress
            .task("finding and preprocessing the cases", None);
        let loaded = PreparedData::load(&cfg.data, &ctx.opts.experiment_dir, &work_dir(&cfg.data));
        drop(task);
        let loaded = loaded?;
        tracing::info!("data: {}", loaded.summary());
        data_sets.insert(data_key.clone(), loaded);
    }
    let data = &data_sets[&data_key];
    if data.split.test.is_empty() {
        return Err(RunError::Invalid(format!(
            "data.split: no test case among {} cases; raise data.split.test",
            data.cases.len()
        )));
    }
    metricunet_data::split::write_split(&dir.join(SPLIT), &data.split)?;

    // Both stages trained in shared folders: stage 1 once per data split and seed, stage 2
    // once per configuration without its post-processing.
    for (stage, hash) in [
        (StageName::Stage1, record.stage1_hash.clone()),
        (StageName::Stage2, record.stage2_hash.clone()),
    ] {
        shared_stage(ctx, data, record, &mut clock, stage, &hash)?;
    }
    for stage in [StageName::Stage1, StageName::Stage2] {
        let name = stage_dir(stage);
        if let Some(k) = KeptRecord::read(&dir.join(name))? {
            record.kept.insert(name.to_string(), k);
        }
    }

    // Prediction and evaluation of the test cases.
    let t = Instant::now();
    let rows = predict_and_evaluate(ctx, data)?;
    let mut table =
        metrics_frame(&rows).map_err(|e| RunError::file(dir.join(METRICS), e.to_string()))?;
    write_csv(&mut table, &dir.join(METRICS))?;
    record.timings.predict_s += t.elapsed().as_secs_f64();
    record.test_cases = data
        .split
        .test
        .iter()
        .filter_map(|id| data.case(id))
        .map(|(c, _)| TestCase {
            id: c.id.clone(),
            image: std::path::absolute(&c.image).unwrap_or_else(|_| c.image.clone()),
            label: c
                .label
                .as_ref()
                .map(|l| std::path::absolute(l).unwrap_or_else(|_| l.clone())),
        })
        .collect();
    record.state = CellState::Finished;
    clock.save(record, dir, AttemptOutcome::Finished)
}

/// Train `stage` in its shared folder `root/<stage>/<hash>` unless its model is there
/// (waiting while another process trains it), then copy its model, log and `kept.yaml` into
/// the cell's own stage folder.
fn shared_stage(
    ctx: &CellContext,
    data: &PreparedData,
    record: &mut CellRecord,
    clock: &mut AttemptClock,
    stage: StageName,
    hash: &str,
) -> Result<()> {
    let shared = shared_stage_dir(&ctx.opts.root, stage, hash);
    let model = shared.join(WEIGHTS);
    if !model.exists() {
        let wait = Instant::now();
        let _lock = DirLock::acquire_waiting(&shared, Duration::from_secs(5))?;
        let waited = wait.elapsed();
        clock.waited += waited;
        record.timings.waited_s += waited.as_secs_f64();
        if !model.exists() {
            let out = train_cell_stage(
                ctx.cell,
                stage,
                &StageRun {
                    data,
                    device: ctx.device,
                    dir: &shared,
                    resume: true,
                    config_hash: hash.to_string(),
                    progress: ctx.progress,
                    prefix: format!("cell {} ", ctx.cell.index),
                },
            )
            .map_err(|e| {
                RunError::Invalid(format!("{} ({}): {e}", stage.as_str(), shared.display()))
            })?;
            match stage {
                StageName::Stage1 => record.timings.stage1_s += out.seconds,
                StageName::Stage2 => {
                    record.timings.stage2_s += out.seconds;
                    if let Some(a) = record.attempts.last_mut() {
                        a.stage2_resumed_from = out.resumed_from;
                    }
                }
            }
        }
        clock.save(record, ctx.dir, AttemptOutcome::Running)?;
    }
    let own = ctx.dir.join(stage_dir(stage));
    for name in STAGE_COPIES {
        let from = shared.join(name);
        if from.exists() {
            copy_atomic(&from, &own.join(name))?;
        }
    }
    Ok(())
}

/// Predict every test case with the cell's two stages, write the masks (and the
/// probabilities of the report's figure cases) and evaluate them against the references.
fn predict_and_evaluate(ctx: &CellContext, data: &PreparedData) -> Result<Vec<CaseMetrics>> {
    let (cell, dir) = (ctx.cell, ctx.dir);
    let cfg = &cell.config;
    let pipeline = Pipeline::load(dir, ctx.device.clone())?;
    let metrics = cfg.evaluation.metrics.clone().unwrap_or_else(all_metrics);
    let task = ctx.progress.task(
        &format!("cell {} predict", cell.index),
        Some(data.split.test.len() as u64),
    );
    let mut rows = Vec::new();
    for (k, id) in data.split.test.iter().enumerate() {
        let (case, pre) = data.case(id).ok_or_else(|| {
            RunError::Invalid(format!("test case {id} is not among the loaded cases"))
        })?;
        let (loaded, reference) = load_with_reference(case, &cfg.data.label_map)?;
        let (mask, probabilities, note) = match pipeline.predict_preprocessed(pre, &case.image) {
            Ok(p) => (p.mask, Some(p.probabilities), None),
            Err(PredictError::NotFound(_)) => (
                Volume::filled(0u8, reference.geometry.clone()),
                None,
                Some("stage 1 found no prostate: empty prediction".to_string()),
            ),
            Err(e) => return Err(e.into()),
        };
        write_nifti(&prediction_path(dir, id), &mask, Some(&loaded.image.header))?;
        if k < cfg.report.figure_cases.max(FIGURE_CASES_KEPT) {
            if let Some(p) = &probabilities {
                write_nifti(&probability_path(dir, id), p, Some(&loaded.image.header))?;
            }
        }
        let pred = mask.map(|v| v != 0);
        let mut row = evaluate_masks(id, &pred, &reference, &metrics)?;
        if let Some(n) = note {
            for e in &mut row.values {
                e.flag = Some(match &e.flag {
                    Some(f) => format!("{n}; {f}"),
                    None => n.clone(),
                });
            }
        }
        rows.push(row);
        task.advance(1);
    }
    drop(task);
    Ok(rows)
}

/// Probability maps are kept for at least this many test cases per cell, so a report asking
/// for a few more figure cases later needs no rerun.
pub const FIGURE_CASES_KEPT: usize = 3;
