//! The training loop of one stage, assembled from parts (as burn-train splits it): the
//! [`Checkpointer`] saves and restores, the [`TrainLog`] writes the CSV log, a
//! [`Validator`] scores the network with the metric plugins, [`StopRule`]s may end the run
//! early, and progress leaves as [`TrainEvent`]s for the caller to show (the loop draws
//! nothing).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use metricunet_core::config::{Keep, MetricConfig, TrainingConfig, WeightedSpec};
use metricunet_core::VoxelMetricModule;
pub use metricunet_model::{named_vars, ModelSpec, SeededVars};
use rand::Rng;

use crate::checkpoint::Checkpointer;
use crate::error::{Result, TrainError};
use crate::keep::BestWeights;
use crate::log::TrainLog;
use crate::optim::{poly_lr, Sgd};
use crate::pool::PatchPool;
use crate::stop::{Plateau, StopRule};
use crate::validate::Validator;

/// What to train.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The network (its name, `stage1` or `stage2`, is used in messages).
    pub model: ModelSpec,
    pub training: TrainingConfig,
    /// The weighted segmentation losses (`L_seg` of Eq. 4).
    pub segmentation_loss: Vec<WeightedSpec>,
    /// The voxel-metric module (no samplers: the segmentation loss alone).
    pub metric: MetricConfig,
    pub seed: u64,
    /// Hash of the resolved configuration; a checkpoint of another configuration is refused.
    pub config_hash: String,
}

/// One row of the training log.
#[derive(Debug, Clone, PartialEq)]
pub struct IterationLog {
    /// Iterations completed (1-based).
    pub iteration: usize,
    pub lr: f64,
    /// `seg`, `seg/<loss>`, `<sampler>/<part>`, `<sampler>/anchors`, `total` (see
    /// `StepLoss::scalars`).
    pub terms: Vec<(String, f64)>,
    pub samples_per_s: f64,
    /// The validator's scores by metric name, every row (`None` where not measured).
    pub validation: Vec<(String, Option<f64>)>,
}

impl IterationLog {
    /// The value of a term by name.
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
    /// The validation score `metric` of this row, if measured.
    pub fn validation(&self, metric: &str) -> Option<f64> {
        self.validation
            .iter()
            .find(|(k, _)| k == metric)
            .and_then(|(_, v)| *v)
    }
}

/// What the loop reports while it runs.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// Training starts (or resumes) after `start` of `iterations`.
    Started { start: usize, iterations: usize },
    /// An iteration's row, as logged.
    Iteration(&'a IterationLog),
    /// A stop rule ended training after `iteration`.
    Stopped { iteration: usize, reason: &'a str },
}

/// How a stage's training ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Iterations completed.
    pub iterations: usize,
    /// Whether all configured iterations ran (false when stopped by the caller).
    pub finished: bool,
    /// The iteration a resumed run started from.
    pub resumed_from: Option<usize>,
    pub last: Option<IterationLog>,
    /// The last validation DSC measured.
    pub last_val_dsc: Option<f64>,
    /// Why a stop rule ended training before its configured iterations.
    pub stopped_early: Option<String>,
    /// Wall-clock seconds of this process's part of the run.
    pub seconds: f64,
    /// `model.safetensors` (written once the run finished).
    pub weights: PathBuf,
    /// Which weights `model.safetensors` holds.
    pub kept: Option<KeptWeights>,
}

/// The weights a finished stage kept (`training.keep`), for the cell's record.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptWeights {
    /// What was asked.
    pub rule: Keep,
    /// The iteration whose weights were kept.
    pub iteration: usize,
    /// Its validation scores (empty when it was not validated: `keep: last`, or no
    /// validation at all).
    pub scores: Vec<(String, Option<f64>)>,
}

/// A stage folder's file names (the run store's).
pub use metricunet_store::{CHECKPOINT, LOG, WEIGHTS};

/// The validation score stop rules and outcomes watch.
const WATCHED: &str = "dsc";

/// Train one stage in `dir` (created). With `resume`, a checkpoint there is continued
/// (refused if it was made by another configuration); without, an existing checkpoint is an
/// error rather than something to overwrite. `validator` scores the network every
/// `validate_every` iterations and at the end. `on_event` sees the start and every log row
/// and may interrupt the run (`ControlFlow::Break`) without a checkpoint, as a kill would.
pub fn train_stage(
    spec: &StageSpec,
    train: &PatchPool,
    mut validator: Option<&mut dyn Validator>,
    device: &Device,
    dir: &Path,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent<'_>) -> ControlFlow<()>,
) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let cfg = &spec.training;
    let _precision = crate::device::training_precision(cfg.precision, device);
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no training patch",
            spec.model.name
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // temporary files of a killed run: the files they were meant to replace are intact
    metricunet_core::fsio::remove_temporaries(dir, false);
    let vars = VarMap::new();
    let net = spec.model.build(&vars, spec.seed, device)?;
    let module =
        VoxelMetricModule::from_config(&spec.segmentation_loss, "segmentation_loss", &spec.metric)?;
    let mut opt = Sgd::new(cfg.momentum, cfg.weight_decay);
    let checkpointer = Checkpointer::new(dir.join(CHECKPOINT), &spec.config_hash, cfg);
    let (start, mut rng, best) =
        checkpointer.restore(&vars, &mut opt, device, resume, spec.seed)?;
    let resumed_from = (start > 0).then_some(start);
    if let Some(start) = resumed_from {
        tracing::info!(
            "{}: resuming at iteration {start} from {}",
            spec.model.name,
            dir.display()
        );
    }
    let (mut log, kept) = TrainLog::open(&dir.join(LOG), resumed_from)?;
    let mut stop_rules: Vec<Box<dyn StopRule>> = Vec::new();
    if let Some(p) = &cfg.plateau {
        stop_rules.push(Box::new(Plateau::new(WATCHED, p)));
    }
    let names = validator.as_ref().map(|v| v.names()).unwrap_or_default();
    let ranking = validator
        .as_ref()
        .map(|v| v.ranking())
        .unwrap_or(crate::keep::SEGMENTATION);
    let mut state = LoopState {
        best,
        ..LoopState::default()
    };
    for row in kept {
        state.stopped_early = state.stopped_early.or(observe(&mut stop_rules, &row));
        state.keep(row);
    }
    if on_event(TrainEvent::Started {
        start,
        iterations: cfg.iterations,
    })
    .is_break()
    {
        return Ok(state.outcome(start, false, resumed_from, t0, dir));
    }
    let vars_named = named_vars(&vars)?;
    let mut it = start;
    while it < cfg.iterations && state.stopped_early.is_none() {
        let t = Instant::now();
        let lr = poly_lr(cfg.learning_rate, it, cfg.iterations, cfg.poly_power);
        let idx: Vec<usize> = (0..cfg.batch_size)
            .map(|_| rng.random_range(0..train.n))
            .collect();
        let (x, labels) = train.batch(&idx, device)?;
        let out = net.forward_t(&x, true)?;
        let step = module.step_loss(&out.logits, &out.embedding, &labels, &mut rng)?;
        // one read of every term serves the NaN check and the log row
        let terms = step.scalars()?;
        if let Some((term, value)) = terms.iter().find(|(_, v)| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                iteration: it + 1,
                term: term.clone(),
                value: *value,
            });
        }
        let grads = step.total.backward()?;
        opt.step(&vars_named, &grads, lr)?;
        let step_seconds = t.elapsed().as_secs_f64();
        it += 1;
        let scores = match validator.as_deref_mut() {
            Some(v)
                if cfg.validate_every > 0
                    && (it.is_multiple_of(cfg.validate_every) || it == cfg.iterations) =>
            {
                v.validate(net.as_ref(), device)?
            }
            _ => vec![None; names.len()],
        };
        let row = IterationLog {
            iteration: it,
            lr,
            terms,
            samples_per_s: cfg.batch_size as f64 / step_seconds.max(1e-9),
            validation: names.iter().cloned().zip(scores).collect(),
        };
        log.write(&row)?;
        let interrupted = on_event(TrainEvent::Iteration(&row)).is_break();
        state.stopped_early = observe(&mut stop_rules, &row);
        if BestWeights::beats(&row, state.best.as_ref(), ranking) {
            state.best = Some(BestWeights::capture(&row, &vars)?);
        }
        state.keep(row);
        if interrupted {
            log.flush()?;
            return Ok(state.outcome(it, false, resumed_from, t0, dir));
        }
        if checkpointer.due(it) || state.stopped_early.is_some() {
            log.flush()?;
            checkpointer.save(it, &vars, &opt, &rng, state.best.as_ref())?;
        }
    }
    log.flush()?;
    if let Some(reason) = &state.stopped_early {
        tracing::info!("{}: stopped at iteration {it}: {reason}", spec.model.name);
        let _ = on_event(TrainEvent::Stopped {
            iteration: it,
            reason,
        });
    } else if start >= cfg.iterations {
        tracing::info!("{}: already trained ({start} iterations)", spec.model.name);
    }
    // which weights become the model; `kept.yaml` says so before they are written (a
    // model without its record is not finished)
    let best = state.best.as_ref().filter(|_| cfg.keep == Keep::Best);
    let kept = match best {
        Some(b) => KeptWeights {
            rule: cfg.keep,
            iteration: b.iteration,
            scores: b.scores.clone(),
        },
        None => KeptWeights {
            rule: cfg.keep,
            iteration: it,
            scores: state
                .last
                .as_ref()
                .filter(|r| r.iteration == it)
                .map(|r| r.validation.clone())
                .unwrap_or_default(),
        },
    };
    metricunet_store::KeptRecord {
        rule: kept.rule.as_str().to_string(),
        iteration: kept.iteration,
        trained: it,
        scores: kept
            .scores
            .iter()
            .filter_map(|(k, v)| v.map(|v| (k.clone(), v)))
            .collect(),
    }
    .write(dir)
    .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let weights = dir.join(WEIGHTS);
    match best {
        Some(b) => {
            tracing::info!(
                "{}: keeping the weights of iteration {} of {it} (validation DSC {:.4})",
                spec.model.name,
                b.iteration,
                b.score(WATCHED).unwrap_or(f64::NAN)
            );
            b.save_weights(&weights)?;
        }
        None => crate::checkpoint::save_weights(&weights, &vars)?,
    }
    let mut outcome = state.outcome(it, true, resumed_from, t0, dir);
    outcome.kept = Some(kept);
    Ok(outcome)
}

/// The first stop rule that ends training after `row`, if any (every rule sees every row).
fn observe(rules: &mut [Box<dyn StopRule>], row: &IterationLog) -> Option<String> {
    let mut first = None;
    for rule in rules {
        let reason = rule.observe(row);
        first = first.or(reason);
    }
    first
}

/// What the loop remembers for its outcome.
#[derive(Default)]
struct LoopState {
    last: Option<IterationLog>,
    best: Option<BestWeights>,
    last_val_dsc: Option<f64>,
    stopped_early: Option<String>,
}

impl LoopState {
    fn keep(&mut self, row: IterationLog) {
        if let Some(v) = row.validation(WATCHED) {
            self.last_val_dsc = Some(v);
        }
        self.last = Some(row);
    }

    fn outcome(
        self,
        iterations: usize,
        finished: bool,
        resumed_from: Option<usize>,
        t0: Instant,
        dir: &Path,
    ) -> TrainOutcome {
        TrainOutcome {
            iterations,
            finished,
            resumed_from,
            last: self.last,
            last_val_dsc: self.last_val_dsc,
            stopped_early: self.stopped_early,
            seconds: t0.elapsed().as_secs_f64(),
            weights: dir.join(WEIGHTS),
            kept: None,
        }
    }
}
