//! `metricunet train`: data, split and the stages of one configuration in one folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use metricunet_core::config::{Cell, DeviceChoice};
use metricunet_data::split::write_split;
use metricunet_runner::data::{work_dir, PreparedData};
use metricunet_runner::lock::DirLock;
use metricunet_runner::stage::{train_cell_stage, StageRun};
use metricunet_store::{stage_dir, RunInfo, CONFIG, SPLIT};
use metricunet_train::select_device;

/// Options of `metricunet train` besides the experiment.
pub struct TrainArgs {
    pub out: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub resume: bool,
}

/// Train the stages of `cell` into `out` (default `runs/<name>/<hash>`).
pub fn train(cell: &Cell, experiment_dir: &Path, args: &TrainArgs) -> Result<String> {
    let cfg = &cell.config;
    let hash = cell.run_hash()?;
    let run_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name).join(&hash));
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    // one `train` per folder: a second one (say a `--resume` started twice) stops at once
    let _lock = match DirLock::try_acquire(&run_dir)? {
        Ok(lock) => lock,
        Err(holder) => bail!(
            "{}: {holder} is training in this folder; wait for it to finish or choose another --out",
            run_dir.display()
        ),
    };
    let device = select_device(args.device.unwrap_or(cfg.device))?;
    let device_name = metricunet_train::device::device_name(&device);
    metricunet_core::fsio::write_atomic(&run_dir.join(CONFIG), cell.to_yaml()?.as_bytes())?;
    RunInfo::current(&hash, &cell.stage1_hash()?, cell.seed, &device_name).write(&run_dir)?;
    let data = PreparedData::load(&cfg.data, experiment_dir, &work_dir(&cfg.data))?;
    for (c, why) in &data.skipped {
        tracing::warn!("skipped case {}: {why}", c.id);
    }
    write_split(&run_dir.join(SPLIT), &data.split)?;
    let mut report = format!(
        "run folder: {}\ndevice: {device_name}\ncases: {}\n",
        run_dir.display(),
        data.summary()
    );
    let bars = crate::progress::Bars::stderr();
    for stage in &cfg.stages {
        let config_hash = match stage {
            metricunet_core::config::StageName::Stage1 => cell.stage1_hash()?,
            metricunet_core::config::StageName::Stage2 => hash.clone(),
        };
        let outcome = train_cell_stage(
            cell,
            *stage,
            &StageRun {
                data: &data,
                device: &device,
                dir: &run_dir.join(stage_dir(*stage)),
                resume: args.resume,
                config_hash,
                progress: &bars,
                prefix: String::new(),
            },
        )?;
        report.push_str(&format!(
            "{}: {} iterations{} in {:.1} s, last loss {:.4}, last validation DSC {}\n",
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
        if let Some(reason) = &outcome.stopped_early {
            report.push_str(&format!("  stopped early: {reason}\n"));
        }
        if let Some(k) = &outcome.kept {
            let scores: Vec<String> = k
                .scores
                .iter()
                .filter_map(|(n, v)| v.map(|v| format!("{n} {v:.3}")))
                .collect();
            report.push_str(&format!(
                "  kept ({}): the weights of iteration {}{}\n",
                k.rule.as_str(),
                k.iteration,
                if scores.is_empty() {
                    String::new()
                } else {
                    format!(" (validation {})", scores.join(", "))
                }
            ));
        }
    }
    Ok(report)
}
