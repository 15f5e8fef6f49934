//! `metricunet run` and `metricunet report`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use metricunet_core::config::DeviceChoice;
use metricunet_core::ExperimentPlan;
use metricunet_runner::{run_plan, RunOptions, Shard};
use metricunet_store::PlanRecord;

/// Options of `metricunet run` besides the experiment.
pub struct RunArgs {
    pub sets: Vec<String>,
    pub root: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
    pub device: Option<DeviceChoice>,
    pub shard: Option<Shard>,
    pub retry_failed: bool,
    pub no_report: bool,
}

/// Run every cell of `experiment` (or this shard's share), then write the report.
pub fn run(experiment: &Path, args: &RunArgs) -> Result<String> {
    let text = std::fs::read_to_string(experiment)
        .with_context(|| format!("cannot read experiment file {}", experiment.display()))?;
    let source = experiment.display().to_string();
    let plan = ExperimentPlan::with_overrides(&text, &source, &args.sets)?;
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&plan.base.name));
    let record = PlanRecord::of(&plan, &source, &args.sets)?;
    let opts = RunOptions {
        root: root.clone(),
        experiment_dir: crate::cli::experiment_dir(experiment),
        device: args.device,
        shard: args.shard,
        retry_failed: args.retry_failed,
        progress: std::sync::Arc::new(crate::progress::Bars::stderr()),
    };
    let summary = run_plan(&plan, &record, &opts)?;
    let mut out = summary.to_string();
    if args.no_report {
        out.push_str("report skipped (--no-report)\n");
    } else if args.shard.is_some() {
        out.push_str(&format!(
            "shard done; when every shard has finished: metricunet report {}\n",
            root.display()
        ));
    } else {
        out.push_str(&report(&root, args.report_dir.as_deref())?);
    }
    let failed = summary.failed();
    if failed > 0 {
        bail!(
            "{out}{failed} of {} cells failed (errors above and in their cell.yaml); fix the cause and rerun with --retry-failed",
            summary.cells.len()
        );
    }
    Ok(out)
}

/// Write the report of the finished cells of `root`.
pub fn report(root: &Path, out: Option<&Path>) -> Result<String> {
    let r = metricunet_report::write_report(root, out)?;
    Ok(r.to_string())
}
