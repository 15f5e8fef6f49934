//! `metricunet train`: data, split and the stages of one configuration.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metricunet_core::config::{Cell, DeviceChoice, MetricConfig, StageName};
use metricunet_data::cache::{load_all, Cache};
use metricunet_data::dataset::cases_for;
use metricunet_data::preprocess::{PreprocessParams, Preprocessed};
use metricunet_data::split::{split, write_split};
use metricunet_train::pool::stage_pool;
use metricunet_train::{select_device, train_stage, StageSpec, TrainOutcome};

/// Options of `metricunet train` besides the experiment.
pub struct TrainArgs {
    pub out: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub resume: bool,
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The git revision of the working directory, if it is a git checkout.
pub fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Train the stages of `cell` into `out` (default `runs/<name>/<hash>`).
pub fn train(cell: &Cell, experiment_dir: &Path, args: &TrainArgs) -> Result<String> {
    let cfg = &cell.config;
    let hash = cell.hash()?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name).join(&hash));
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    let device = select_device(args.device.unwrap_or(cfg.device))?;
    let device_name = metricunet_train::device::device_name(&device);
    write_atomic(&run_dir.join("config.yaml"), &cell.to_yaml()?)?;
    write_atomic(
        &run_dir.join("run.yaml"),
        &format!(
            "metricunet_version: {}\ngit_revision: {}\nconfig_hash: {hash}\nseed: {}\ndevice: {device_name}\n",
            env!("CARGO_PKG_VERSION"),
            git_revision(),
            cell.seed
        ),
    )?;

    // Data: cases, preprocessing (cached), split.
    let work = cfg
        .data
        .cache_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join("cache"));
    let cases = cases_for(&cfg.data, experiment_dir, &work)?;
    let params = PreprocessParams::from(&cfg.data);
    let cache = Cache::new(work.join("preprocessed"));
    let pb = ProgressBar::new_spinner();
    pb.set_message(format!("preprocessing {} cases", cases.len()));
    let (loaded, skipped) = load_all(
        &cases,
        &cfg.data.label_map,
        &params,
        Some(&cache),
        cfg.data.skip_bad_cases,
    )?;
    pb.finish_and_clear();
    for (c, why) in &skipped {
        tracing::warn!("skipped case {}: {why}", c.id);
    }
    let ids: Vec<String> = loaded.iter().map(|(c, _)| c.id.clone()).collect();
    let sp = &cfg.data.split;
    let the_split = split(&ids, [sp.train, sp.val, sp.test], sp.seed)?;
    write_split(&run_dir.join("split.yaml"), &the_split)?;
    let pick = |names: &[String]| -> Vec<&Preprocessed> {
        loaded
            .iter()
            .filter(|(c, _)| names.contains(&c.id))
            .map(|(_, p)| p)
            .collect()
    };
    let (train_cases, val_cases) = (pick(&the_split.train), pick(&the_split.val));

    let mut report = format!(
        "run folder: {}\ndevice: {device_name}\ncases: {} ({} train, {} val, {} test; {} skipped)\n",
        run_dir.display(),
        ids.len(),
        the_split.train.len(),
        the_split.val.len(),
        the_split.test.len(),
        skipped.len()
    );
    for stage in &cfg.stages {
        let outcome = train_one(
            cell,
            *stage,
            &train_cases,
            &val_cases,
            &device,
            &run_dir,
            args.resume,
        )?;
        report.push_str(&format!(
            "{}: {} iterations{} in {:.1} s, last loss {:.4}, validation DSC {}\n",
            stage_dir(*stage),
            outcome.iterations,
            outcome
                .resumed_from
                .map(|r| format!(" (resumed at {r})"))
                .unwrap_or_default(),
            outcome.seconds,
            outcome
                .last
                .as_ref()
                .and_then(|l| l.term("total"))
                .unwrap_or(f64::NAN),
            outcome
                .last_val_dsc
                .map(|d| format!("{d:.3}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    Ok(report)
}

fn stage_dir(stage: StageName) -> &'static str {
    match stage {
        StageName::Stage1 => "stage1",
        StageName::Stage2 => "stage2",
    }
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    cell: &Cell,
    stage: StageName,
    train_cases: &[&Preprocessed],
    val_cases: &[&Preprocessed],
    device: &candle_core::Device,
    run_dir: &Path,
    resume: bool,
) -> Result<TrainOutcome> {
    let cfg = &cell.config;
    let (backbone, patches, training, metric, hash) = match stage {
        StageName::Stage1 => (
            &cfg.stage1.backbone,
            &cfg.stage1.patches,
            &cfg.stage1.training,
            MetricConfig {
                samplers: Vec::new(),
                ..cfg.metric.clone()
            },
            cell.stage1_hash()?,
        ),
        StageName::Stage2 => (
            &cfg.model.backbone,
            &cfg.model.patches,
            &cfg.training,
            cfg.metric.clone(),
            cell.hash()?,
        ),
    };
    if train_cases.is_empty() {
        bail!("no training case after the split; add cases or raise data.split.train");
    }
    let t = Instant::now();
    let seed = cell.seed;
    let train = stage_pool(
        train_cases,
        stage,
        patches,
        cfg.stage1.downsample,
        cfg.model.crop,
        seed,
    )?;
    let val = if val_cases.is_empty() {
        None
    } else {
        Some(stage_pool(
            val_cases,
            stage,
            patches,
            cfg.stage1.downsample,
            cfg.model.crop,
            seed ^ 0xA11,
        )?)
    };
    tracing::info!(
        "{}: {} training patches ({:.1} s)",
        stage_dir(stage),
        train.n,
        t.elapsed().as_secs_f64()
    );
    let mut training = training.clone();
    if let Some(epochs) = training.epochs {
        training.iterations = (epochs * train.n).div_ceil(training.batch_size).max(1);
        tracing::info!(
            "{}: {epochs} epochs = {} iterations",
            stage_dir(stage),
            training.iterations
        );
    }
    let spec = StageSpec {
        name: stage_dir(stage).into(),
        backbone: backbone.clone(),
        in_channels: patches.slices,
        training: training.clone(),
        metric,
        seed: seed
            ^ if stage == StageName::Stage1 {
                0x51
            } else {
                0x52
            },
        config_hash: hash,
    };
    let pb = ProgressBar::new(training.iterations as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(stage_dir(stage));
    let outcome = train_stage(
        &spec,
        &train,
        val.as_ref(),
        device,
        &run_dir.join(stage_dir(stage)),
        resume,
        &mut |row| {
            pb.set_position(row.iteration as u64);
            let total = row.term("total").unwrap_or(f64::NAN);
            let ce = row.term("ce").unwrap_or(f64::NAN);
            pb.set_message(format!(
                "loss {total:.4} (ce {ce:.4}) {:.1} samples/s",
                row.samples_per_s
            ));
            ControlFlow::Continue(())
        },
    )?;
    pb.finish_and_clear();
    Ok(outcome)
}
