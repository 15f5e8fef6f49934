//! `metricunet`: train, sweep and report MetricUNet segmentation experiments.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metricunet_core::ExperimentPlan;

#[derive(Parser)]
#[command(
    name = "metricunet",
    version,
    about = "Two-stage CT prostate segmentation with online voxel-metric learning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every registered plugin (samplers, losses, backbones, metrics) with its parameters.
    Plugins,
    /// Check an experiment file: print its resolved configuration and its grid cells, or
    /// the first error (path, nearest valid key, line and column).
    Validate {
        /// The experiment YAML.
        experiment: PathBuf,
        /// Override a value before validating: `--set metric.lambda=0.1` (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Which cell's full configuration to print.
        #[arg(long, default_value_t = 0)]
        cell: usize,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    metricunet::link_plugins();
    match cli.command {
        Command::Plugins => print!("{}", metricunet::plugins_text()),
        Command::Validate {
            experiment,
            sets,
            cell,
        } => {
            let text = std::fs::read_to_string(&experiment)
                .with_context(|| format!("cannot read experiment file {}", experiment.display()))?;
            let plan =
                ExperimentPlan::with_overrides(&text, &experiment.display().to_string(), &sets)?;
            print!("{}", metricunet::validate_text(&plan, cell)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
