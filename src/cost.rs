//! Cost before you start: the training iterations an experiment asks for, per cell and in
//! total (each shared stage counted once, as the runner trains it), and the time they take at
//! a measured step time (`bench train --json`) or one given with `--step-seconds`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use metricunet_core::config::{StageName, TrainingConfig};
use metricunet_core::ExperimentPlan;

/// Where step times come from.
pub enum StepSource<'a> {
    /// `--step-seconds`: seconds per stage-2 step.
    Given(f64),
    /// `--bench FILE`: a `metricunet bench train --json` result.
    Bench(&'a Path),
}

/// One measured step of `bench train`.
struct BenchStep {
    label: String,
    batch: usize,
    size: usize,
    step_s: f64,
}

fn read_bench(path: &Path) -> Result<(String, Vec<BenchStep>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if v["benchmark"] != "train" {
        bail!(
            "{}: not a `metricunet bench train --json` result (its `benchmark` is {})",
            path.display(),
            v["benchmark"]
        );
    }
    let device = v["device"].as_str().unwrap_or("unknown device").to_string();
    let mut steps = Vec::new();
    for r in v["results"].as_array().into_iter().flatten() {
        let (Some(label), Some(batch), Some(size), Some(step_s)) = (
            r["label"].as_str(),
            r["batch"].as_u64(),
            r["size"].as_u64(),
            r["step_s"].as_f64(),
        ) else {
            bail!(
                "{}: a result lacks label, batch, size or step_s: {r}",
                path.display()
            );
        };
        steps.push(BenchStep {
            label: label.into(),
            batch: batch as usize,
            size: size as usize,
            step_s,
        });
    }
    Ok((device, steps))
}

/// Input values of one step: batch x slices x H x W.
fn step_inputs(training: &TrainingConfig, slices: usize, size: [usize; 2]) -> f64 {
    (training.batch_size * slices * size[0] * size[1]) as f64
}

fn hours(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 5400.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// The cost table of `plan`.
pub fn cost_text(plan: &ExperimentPlan, source: &StepSource) -> Result<String> {
    let mut out = String::new();
    // seconds per step of each stage of a cell
    // the source, read and checked once: a given step time, or a bench result's steps
    enum Steps {
        Given(f64),
        Bench(String, Vec<BenchStep>),
    }
    let bench = match source {
        StepSource::Bench(p) => {
            let (device, steps) = read_bench(p)?;
            Steps::Bench(device, steps)
        }
        StepSource::Given(s) if !(s.is_finite() && *s > 0.0) => {
            bail!("--step-seconds {s}: expected a positive number of seconds")
        }
        StepSource::Given(s) => Steps::Given(*s),
    };
    let step_seconds = |cell: &metricunet_core::Cell, stage: StageName| -> Result<(f64, String)> {
        let cfg = &cell.config;
        let s2 = cfg.stage(StageName::Stage2);
        let st = cfg.stage(stage);
        let (s2_in, st_in) = (
            step_inputs(s2.training, s2.patches.slices, s2.patches.size),
            step_inputs(st.training, st.patches.slices, st.patches.size),
        );
        let stage2 = match &bench {
            Steps::Given(s) => (*s, "--step-seconds".to_string()),
            Steps::Bench(device, steps) => {
                let [h, w] = s2.patches.size;
                // the slowest result measured at this batch and patch size
                let m = steps
                    .iter()
                    .filter(|b| b.batch == s2.training.batch_size && b.size == h && h == w)
                    .max_by(|a, b| a.step_s.total_cmp(&b.step_s));
                match m {
                    Some(b) => (b.step_s, format!("bench `{}` on {device}", b.label)),
                    None => bail!(
                        "the bench result has no step at batch {} and {h} x {w} patches (stage 2 of cell {}); it has {}",
                        s2.training.batch_size,
                        cell.index,
                        steps
                            .iter()
                            .map(|b| format!("batch {} size {}", b.batch, b.size))
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        };
        Ok(match stage {
            StageName::Stage2 => stage2,
            StageName::Stage1 => (
                stage2.0 * st_in / s2_in,
                format!("{} scaled by input size ({:.2}x)", stage2.1, st_in / s2_in),
            ),
        })
    };
    let _ = writeln!(
        out,
        "# cost: training steps only (validation, prediction and data preparation come on top)"
    );
    let _ = writeln!(
        out,
        "# {:>4}  {:>12}  {:>12}  {:>10}  step times",
        "cell", "stage 1 its", "stage 2 its", "projected"
    );
    let (mut seen1, mut seen2) = (BTreeSet::new(), BTreeSet::new());
    let (mut total_its, mut total_s) = (0usize, 0.0f64);
    for c in &plan.cells {
        let mut cell_s = 0.0;
        let mut its = [String::new(), String::new()];
        let mut notes = Vec::new();
        for (k, stage) in [StageName::Stage1, StageName::Stage2]
            .into_iter()
            .enumerate()
        {
            let training = c.config.stage(stage).training;
            if training.epochs.is_some() {
                its[k] = "epochs".into();
                notes.push(format!(
                    "{}: iterations depend on the data (epochs)",
                    stage.as_str()
                ));
                continue;
            }
            let hash = match stage {
                StageName::Stage1 => c.stage1_hash()?,
                StageName::Stage2 => c.stage2_hash()?,
            };
            let fresh = match stage {
                StageName::Stage1 => seen1.insert(hash),
                StageName::Stage2 => seen2.insert(hash),
            };
            if !fresh {
                its[k] = "shared".into();
                continue;
            }
            let (s, how) = step_seconds(c, stage)?;
            its[k] = training.iterations.to_string();
            cell_s += s * training.iterations as f64;
            total_its += training.iterations;
            notes.push(format!("{} {s:.3} s ({how})", stage.as_str()));
        }
        total_s += cell_s;
        let _ = writeln!(
            out,
            "# {:>4}  {:>12}  {:>12}  {:>10}  {}",
            c.index,
            its[0],
            its[1],
            hours(cell_s),
            notes.join("; ")
        );
    }
    let _ = writeln!(
        out,
        "# total: {} stage-1 and {} stage-2 trainings, {total_its} iterations, {} projected",
        seen1.len(),
        seen2.len(),
        hours(total_s)
    );
    Ok(out)
}
