//! The training loop of one stage.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use metricunet_core::config::{MetricConfig, TrainingConfig};
use metricunet_core::{Backbone, VoxelMetricModule};
pub use metricunet_model::{named_vars, seeded_init, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, CheckpointMeta};
use crate::error::{Result, TrainError};
use crate::optim::{poly_lr, Sgd};
use crate::pool::PatchPool;

/// What to train.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The network (its name, `stage1` or `stage2`, is used in messages).
    pub model: ModelSpec,
    pub training: TrainingConfig,
    /// The voxel-metric module (no samplers: cross-entropy alone).
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
    /// `ce`, `<sampler>/<part>`, `<sampler>/anchors`, `total` (see `StepLoss::scalars`).
    pub terms: Vec<(String, f64)>,
    pub samples_per_s: f64,
    /// Validation DSC, on the iterations where it was measured.
    pub val_dsc: Option<f64>,
}

impl IterationLog {
    /// The value of a term by name.
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
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
    pub last_val_dsc: Option<f64>,
    /// Wall-clock seconds of this process's part of the run.
    pub seconds: f64,
    /// `model.safetensors` (written once the run finished).
    pub weights: PathBuf,
}

/// A stage folder's file names (the run store's).
pub use metricunet_store::{CHECKPOINT, LOG, WEIGHTS};

/// Pooled DSC of the network's argmax on every patch of `pool` (BatchNorm in inference
/// mode): `2 |P and G| / (|P| + |G|)` over all voxels; `None` when both are empty.
pub fn pooled_dsc(
    net: &dyn Backbone,
    pool: &PatchPool,
    batch: usize,
    device: &Device,
) -> Result<Option<f64>> {
    let (mut tp, mut p, mut g) = (0usize, 0usize, 0usize);
    let idx: Vec<usize> = (0..pool.n).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, labels) = pool.batch(chunk, device)?;
        let logits = net.forward_t(&x, false)?.logits;
        let pred = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
        for (pv, &lv) in pred.iter().zip(&labels) {
            let (pp, gg) = (*pv == 1, lv != 0);
            tp += usize::from(pp && gg);
            p += usize::from(pp);
            g += usize::from(gg);
        }
    }
    Ok((p + g > 0).then(|| 2.0 * tp as f64 / (p + g) as f64))
}

fn csv_line(log: &IterationLog) -> String {
    let mut cols = vec![log.iteration.to_string(), format!("{:.6e}", log.lr)];
    cols.extend(log.terms.iter().map(|(_, v)| format!("{v:.6}")));
    cols.push(format!("{:.2}", log.samples_per_s));
    cols.push(log.val_dsc.map(|d| format!("{d:.4}")).unwrap_or_default());
    cols.join(",")
}

fn csv_header(log: &IterationLog) -> String {
    let mut cols = vec!["iteration".to_string(), "lr".to_string()];
    cols.extend(log.terms.iter().map(|(k, _)| k.clone()));
    cols.push("samples_per_s".into());
    cols.push("val_dsc".into());
    cols.join(",")
}

/// Keep the log's header and the rows up to `iteration` (a killed run may have left later
/// or half-written rows), rewritten atomically.
fn truncate_log(path: &Path, iteration: usize) -> Result<Option<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(None);
    };
    let n_cols = header.split(',').count();
    let mut out = String::from(header);
    out.push('\n');
    for line in lines {
        let cols: Vec<&str> = line.split(',').collect();
        let it = cols.first().and_then(|c| c.parse::<usize>().ok());
        if cols.len() == n_cols && it.is_some_and(|i| i <= iteration) {
            out.push_str(line);
            out.push('\n');
        }
    }
    metricunet_core::fsio::write_atomic(path, out.as_bytes())?;
    Ok(Some(header.to_string()))
}

/// Train one stage in `dir` (created). With `resume`, a checkpoint there is continued
/// (refused if it was made by another configuration); without, an existing checkpoint is an
/// error rather than something to overwrite. `on_iteration` sees every log row and may
/// stop the run (`ControlFlow::Break`) without a checkpoint, as a kill would.
pub fn train_stage(
    spec: &StageSpec,
    train: &PatchPool,
    val: Option<&PatchPool>,
    device: &Device,
    dir: &Path,
    resume: bool,
    on_iteration: &mut dyn FnMut(&IterationLog) -> ControlFlow<()>,
) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let cfg = &spec.training;
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no training patch",
            spec.model.name
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // temporary files of a killed run: the files they were meant to replace are intact
    metricunet_core::fsio::remove_temporaries(dir, false);
    let ckpt_path = dir.join(CHECKPOINT);
    let log_path = dir.join(LOG);
    let vars = VarMap::new();
    let net = spec.model.build(&vars, device)?;
    seeded_init(&vars, spec.seed)?;
    let module = VoxelMetricModule::from_config(&spec.metric)?;
    let mut opt = Sgd::new(cfg.momentum, cfg.weight_decay);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut start = 0usize;
    let mut resumed_from = None;
    let mut header: Option<String> = None;
    if ckpt_path.exists() {
        if !resume {
            return Err(TrainError::Invalid(format!(
                "{} already holds a checkpoint; pass --resume to continue it, or choose another output folder",
                dir.display()
            )));
        }
        let meta = checkpoint::load(&ckpt_path, &vars, &mut opt, device)?;
        if meta.config_hash != spec.config_hash {
            return Err(TrainError::Checkpoint {
                path: ckpt_path,
                message: format!(
                    "made by configuration {}, this run is {}; use another output folder",
                    meta.config_hash, spec.config_hash
                ),
            });
        }
        rng = ChaCha8Rng::from_seed(meta.rng_seed);
        rng.set_stream(meta.rng_stream);
        rng.set_word_pos(meta.rng_word_pos);
        start = meta.iteration;
        resumed_from = Some(start);
        header = truncate_log(&log_path, start)?;
        tracing::info!(
            "{}: resuming at iteration {start} from {}",
            spec.model.name,
            dir.display()
        );
    } else if log_path.exists() {
        // a log without a checkpoint belongs to a run killed before its first checkpoint
        std::fs::remove_file(&log_path).map_err(|e| TrainError::io(&log_path, e))?;
    }
    let vars_named = named_vars(&vars)?;
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map(std::io::BufWriter::new)
        .map_err(|e| TrainError::io(&log_path, e))?;
    let save = |it: usize,
                opt: &Sgd,
                rng: &ChaCha8Rng,
                log_file: &mut std::io::BufWriter<std::fs::File>|
     -> Result<()> {
        log_file.flush().map_err(|e| TrainError::io(&log_path, e))?;
        let meta = CheckpointMeta {
            iteration: it,
            rng_seed: rng.get_seed(),
            rng_stream: rng.get_stream(),
            rng_word_pos: rng.get_word_pos(),
            config_hash: spec.config_hash.clone(),
        };
        checkpoint::save(&ckpt_path, &vars, opt, &meta)
    };
    let mut last = None;
    let mut last_val = None;
    for it in start..cfg.iterations {
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
        let done = it + 1;
        let val_dsc = match val {
            Some(v)
                if cfg.validate_every > 0
                    && (done % cfg.validate_every == 0 || done == cfg.iterations) =>
            {
                pooled_dsc(net.as_ref(), v, cfg.batch_size, device)?
            }
            _ => None,
        };
        if val_dsc.is_some() {
            last_val = val_dsc;
        }
        let row = IterationLog {
            iteration: done,
            lr,
            terms,
            samples_per_s: cfg.batch_size as f64 / step_seconds.max(1e-9),
            val_dsc,
        };
        match &header {
            Some(h) if *h != csv_header(&row) => {
                return Err(TrainError::Invalid(format!(
                    "{}: the log's columns ({h}) differ from this run's ({})",
                    log_path.display(),
                    csv_header(&row)
                )));
            }
            Some(_) => {}
            None => {
                let h = csv_header(&row);
                writeln!(log_file, "{h}").map_err(|e| TrainError::io(&log_path, e))?;
                header = Some(h);
            }
        }
        writeln!(log_file, "{}", csv_line(&row)).map_err(|e| TrainError::io(&log_path, e))?;
        let stop = on_iteration(&row).is_break();
        last = Some(row);
        if stop {
            log_file.flush().map_err(|e| TrainError::io(&log_path, e))?;
            return Ok(TrainOutcome {
                iterations: done,
                finished: false,
                resumed_from,
                last,
                last_val_dsc: last_val,
                seconds: t0.elapsed().as_secs_f64(),
                weights: dir.join(WEIGHTS),
            });
        }
        if (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || done == cfg.iterations
        {
            save(done, &opt, &rng, &mut log_file)?;
        }
    }
    if start >= cfg.iterations {
        tracing::info!(
            "{}: already trained ({} iterations)",
            spec.model.name,
            start
        );
    }
    let weights = dir.join(WEIGHTS);
    checkpoint::save_weights(&weights, &vars)?;
    Ok(TrainOutcome {
        iterations: cfg.iterations,
        finished: true,
        resumed_from,
        last,
        last_val_dsc: last_val,
        seconds: t0.elapsed().as_secs_f64(),
        weights,
    })
}
