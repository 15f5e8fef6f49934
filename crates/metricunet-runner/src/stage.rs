//! Training one stage of one cell, its progress reported as a task.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use metricunet_core::config::{Cell, StageConfig, StageName};
use metricunet_core::Progress;
use metricunet_train::pool::{stage_pool, stage_volume};
use metricunet_train::{
    train_stage, CaseValidator, ModelSpec, StageSpec, TrainEvent, TrainOutcome, ValidationCase,
    Validator,
};

use metricunet_store::stage_dir;

use crate::data::PreparedData;
use crate::error::{Result, RunError};

/// What a stage run needs besides the cell.
pub struct StageRun<'a> {
    pub data: &'a PreparedData,
    pub device: &'a candle_core::Device,
    /// The stage's folder (checkpoint, log, model).
    pub dir: &'a Path,
    /// Continue a checkpoint found in `dir` (else one there is an error).
    pub resume: bool,
    /// The checkpoint's configuration key (refuses a checkpoint of another configuration).
    pub config_hash: String,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Words before the task's label, e.g. the cell's index.
    pub prefix: String,
}

/// Train `stage` of `cell` on the training split, validating on the validation split.
pub fn train_cell_stage(cell: &Cell, stage: StageName, run: &StageRun) -> Result<TrainOutcome> {
    let cfg = &cell.config;
    let StageConfig {
        patches,
        training,
        metric,
        segmentation_loss,
        ..
    } = cfg.stage(stage);
    let train_cases = run.data.pick(&run.data.split.train);
    if train_cases.is_empty() {
        return Err(RunError::Invalid(
            "no training case after the split; add cases or raise data.split.train".into(),
        ));
    }
    let t = Instant::now();
    let seed = cell.seed;
    let pool = |cases: &[&metricunet_data::preprocess::Preprocessed], seed| {
        stage_pool(
            cases,
            stage,
            patches,
            cfg.stage1.downsample,
            cfg.model.crop,
            seed,
        )
    };
    let train = pool(&train_cases, seed)?;
    // whole validation volumes, segmented as test cases are (not patches)
    let mut val = Vec::new();
    for id in &run.data.split.val {
        let Some((_, p)) = run.data.case(id) else {
            continue;
        };
        let (image, label) = stage_volume(p, stage, cfg.stage1.downsample, cfg.model.crop)
            .map_err(|e| RunError::Invalid(format!("validation case {id}: {e}")))?;
        val.push(ValidationCase {
            id: id.clone(),
            image,
            label,
        });
    }
    tracing::debug!(
        "{}: {} training patches ({:.1} s)",
        stage_dir(stage),
        train.n,
        t.elapsed().as_secs_f64()
    );
    let mut training = training.clone();
    if let Some(epochs) = training.epochs {
        training.iterations = (epochs * train.n).div_ceil(training.batch_size).max(1);
    }
    let spec = StageSpec {
        model: ModelSpec::of(cfg, stage),
        training: training.clone(),
        segmentation_loss: segmentation_loss.to_vec(),
        metric,
        seed: seed
            ^ if stage == StageName::Stage1 {
                0x51
            } else {
                0x52
            },
        config_hash: run.config_hash.clone(),
    };
    let mut validator = if val.is_empty() {
        None
    } else {
        let v = CaseValidator::new(
            spec.model.clone(),
            val,
            training.batch_size,
            &["dsc", "asd"],
        )?;
        Some(match stage {
            StageName::Stage1 => v.localising(),
            StageName::Stage2 => v,
        })
    };
    let task = run.progress.task(
        &format!("{}{}", run.prefix, stage_dir(stage)),
        Some(training.iterations as u64),
    );
    let outcome = train_stage(
        &spec,
        &train,
        validator.as_mut().map(|v| v as &mut dyn Validator),
        run.device,
        run.dir,
        run.resume,
        &mut |event| {
            match event {
                TrainEvent::Started { start, .. } => task.set_position(start as u64),
                TrainEvent::Iteration(row) => {
                    task.set_position(row.iteration as u64);
                    let total = row.term("total").unwrap_or(f64::NAN);
                    let val = validation_message(row);
                    task.set_message(format!(
                        "loss {total:.4}, {:.1} samples/s{val}",
                        row.samples_per_s
                    ));
                }
                TrainEvent::Stopped { .. } => {}
            }
            ControlFlow::Continue(())
        },
    );
    drop(task);
    Ok(outcome?)
}

/// The validation scores of a log row for the progress bar: whole-case DSC and ASD, and
/// where measured the localisation error and the cases where nothing was found.
fn validation_message(row: &metricunet_train::IterationLog) -> String {
    let mut parts = Vec::new();
    if let Some(d) = row.validation("dsc") {
        parts.push(format!("val DSC {d:.3}"));
    }
    if let Some(a) = row.validation("asd") {
        parts.push(format!("ASD {a:.1} mm"));
    }
    if let Some(l) = row.validation("loc_mm") {
        parts.push(format!("centroid off {l:.1} mm"));
    }
    if let Some(n) = row.validation("not_found").filter(|&n| n > 0.0) {
        parts.push(format!("{n} found nothing"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(", {}", parts.join(", "))
    }
}
