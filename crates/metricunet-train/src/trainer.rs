//! The training loop of one stage.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use metricunet_core::config::{MetricConfig, PluginSpec, TrainingConfig};
use metricunet_core::{registry, Backbone, BackboneContext, VoxelMetricModule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, named_vars, CheckpointMeta};
use crate::error::{Result, TrainError};
use crate::optim::{poly_lr, Sgd};
use crate::pool::PatchPool;

/// What to train.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// `stage1` or `stage2` (used in messages).
    pub name: String,
    pub backbone: PluginSpec,
    pub in_channels: usize,
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

/// Build the stage's network in `vars` (weights as candle initialises them).
pub fn build_backbone(
    spec: &StageSpec,
    vars: &VarMap,
    device: &Device,
) -> Result<Box<dyn Backbone>> {
    build_backbone_as(spec, vars, device, DType::F32)
}

/// [`build_backbone`] with variables of another float type (f64 for reference computations).
pub fn build_backbone_as(
    spec: &StageSpec,
    vars: &VarMap,
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn Backbone>> {
    let path = format!("{}.backbone", spec.name);
    let plugin = registry::backbone(&spec.backbone.name, &path)?;
    let params = plugin.params(&spec.backbone.params, &path)?;
    let vb = VarBuilder::from_varmap(vars, dtype, device);
    Ok((plugin.build)(
        &params,
        &BackboneContext {
            in_channels: spec.in_channels,
        },
        vb,
    )?)
}

/// Re-initialise every variable from `seed`, so that the same seed gives the same network
/// (candle draws initial weights from an unseeded thread RNG). The distributions are
/// candle's and PyTorch's defaults: convolution and transposed-convolution weights Kaiming
/// normal (fan-in = `dims[1] * kh * kw`, ReLU gain), their biases uniform in
/// `+-1 / sqrt(fan_in)`; BatchNorm scale 1, shift 0, running mean 0, running variance 1.
pub fn seeded_init(vars: &VarMap, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_1A17_0000_0001);
    let named = named_vars(vars)?;
    let fan_in = |weight: &str| -> Option<usize> {
        named
            .iter()
            .find(|(n, _)| n == weight)
            .map(|(_, v)| v.dims().iter().skip(1).product::<usize>())
    };
    for (name, var) in &named {
        let n = var.elem_count();
        let dims = var.dims().to_vec();
        let values: Vec<f32> = if name.ends_with("running_var")
            || (name.contains(".bn.") && name.ends_with(".weight"))
        {
            vec![1.0; n]
        } else if name.ends_with("running_mean")
            || (name.contains(".bn.") && name.ends_with(".bias"))
        {
            vec![0.0; n]
        } else if name.ends_with(".weight") && dims.len() == 4 {
            let std = (2.0 / fan_in(name).unwrap_or(1).max(1) as f64).sqrt();
            let normal = rand_distr::Normal::new(0.0, std)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            (0..n)
                .map(|_| rand_distr::Distribution::sample(&normal, &mut rng) as f32)
                .collect()
        } else if let Some(base) = name.strip_suffix(".bias") {
            let bound = 1.0 / (fan_in(&format!("{base}.weight")).unwrap_or(1).max(1) as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else {
            return Err(TrainError::Invalid(format!(
                "seeded_init: no rule for variable `{name}` {dims:?}"
            )));
        };
        var.set(&Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

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
            spec.name
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // temporary files of a killed run: the files they were meant to replace are intact
    metricunet_core::fsio::remove_temporaries(dir, false);
    let ckpt_path = dir.join(CHECKPOINT);
    let log_path = dir.join(LOG);
    let vars = VarMap::new();
    let net = build_backbone(spec, &vars, device)?;
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
            spec.name,
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
        tracing::info!("{}: already trained ({} iterations)", spec.name, start);
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

/// Load trained weights into a freshly built network of `spec` (for prediction).
pub fn load_model(
    spec: &StageSpec,
    weights: &Path,
    device: &Device,
) -> Result<(VarMap, Box<dyn Backbone>)> {
    let mut vars = VarMap::new();
    let net = build_backbone(spec, &vars, device)?;
    vars.load(weights).map_err(|e| TrainError::Checkpoint {
        path: weights.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((vars, net))
}
