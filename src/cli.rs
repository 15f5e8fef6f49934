//! The `metricunet` command line, as a library function: the `metricunet` binary is
//! `metricunet::cli::main()`, and so is a researcher's own binary that registers more
//! plugins (see `examples/custom-sampler`): every plugin linked into the binary is usable
//! from YAML by name.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metricunet_core::config::DeviceChoice;
use metricunet_core::ExperimentPlan;
use metricunet_data::phantom::PhantomSize;

use crate::{bench_cmds, data_cmds, eval_cmds, run_cmd, train_cmd};

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
    /// Train one configuration of an experiment (the stages it names), resumable.
    Train {
        /// The experiment YAML.
        experiment: PathBuf,
        /// Override a value: `--set training.iterations=100` (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Which grid cell (needed when the experiment has several).
        #[arg(long)]
        cell: Option<usize>,
        /// Run folder (default runs/<name>/<config hash>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// cpu, cuda or auto (default: the experiment's `device`).
        #[arg(long)]
        device: Option<String>,
        /// Continue from the checkpoints in the run folder.
        #[arg(long)]
        resume: bool,
    },
    /// Run an experiment: data, a shared stage 1, stage 2 for every grid cell x seed,
    /// prediction and evaluation of the test cases, then the report. Resumable: finished cells
    /// are never recomputed, unfinished ones continue from their last checkpoint.
    Run {
        /// The experiment YAML.
        experiment: PathBuf,
        /// Override a value: `--set training.iterations=100` (repeatable).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Run root (default runs/<experiment name>); cells go to ROOT/cells/<config hash>.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Report folder (default: the experiment's report.out_dir, else reports/<name> for the default root runs/<name>, else ROOT/report).
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// cpu, cuda or auto (default: the experiment's `device`).
        #[arg(long)]
        device: Option<String>,
        /// Run only cells whose index is I modulo N (I in 0..N), or with I/cells cell I alone (a Slurm array task per cell).
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Run cells recorded as failed again.
        #[arg(long)]
        retry_failed: bool,
        /// Do not write the report at the end.
        #[arg(long)]
        no_report: bool,
    },
    /// Write the report (tables, figures, report.md, report.html) of whatever cells of a run
    /// root are finished.
    Report {
        /// Run root of `metricunet run` (holds plan.yaml and cells/).
        root: PathBuf,
        /// Report folder (default: the experiment's report.out_dir, else reports/<name> for the default root runs/<name>, else ROOT/report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Segment the prostate of a CT (or a folder of CTs) with a trained run, in the CT's geometry.
    Predict {
        /// Run folder of `metricunet train` (both stages trained).
        #[arg(long)]
        model: PathBuf,
        /// CT file (.nii / .nii.gz) or folder.
        #[arg(long)]
        input: PathBuf,
        /// Mask file, or folder when --input is a folder.
        #[arg(long)]
        output: PathBuf,
        /// Also write the foreground probability (float32) here (file or folder).
        #[arg(long)]
        probabilities: Option<PathBuf>,
        /// cpu, cuda or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Metrics (DSC, ASD, SEN, PPV, ASSD, HD95) of a prediction against a reference, or of
    /// every same-named pair of two folders.
    Eval {
        #[arg(long)]
        pred: PathBuf,
        #[arg(long = "ref")]
        reference: PathBuf,
        /// Prediction label to evaluate (default: any non-zero voxel).
        #[arg(long)]
        label: Option<i64>,
        /// Reference label (default: any non-zero voxel), e.g. 22 for TotalSegmentator's prostate.
        #[arg(long)]
        ref_label: Option<i64>,
        /// Write the table as CSV.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// With folders: evaluate a reference that has no prediction as an empty prediction
        /// (DSC 0, flagged "no prediction") instead of failing.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Write synthetic pelvic CT cases with prostate labels (Decathlon layout).
    Phantom {
        /// Number of cases.
        #[arg(long, default_value_t = 20)]
        cases: usize,
        /// Seed of the generator (same seed, same cases).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output folder (gets imagesTr/, labelsTr/, dataset.json).
        #[arg(long)]
        out: PathBuf,
        /// In-plane voxels (a smaller grid keeps the field of view with coarser voxels).
        #[arg(long, default_value_t = 512)]
        in_plane: usize,
        /// Slices per case (about).
        #[arg(long, default_value_t = 100)]
        slices: usize,
    },
    /// Compare the phantom's HU statistics with a real CT and write slices of both.
    Realism {
        /// Folder with ct.nii.gz and labels.nii.gz (TotalSegmentator labels).
        #[arg(long)]
        real: PathBuf,
        /// Output folder for realism.md and the PNGs.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Phantom cases pooled.
        #[arg(long, default_value_t = 5)]
        cases: usize,
    },
    /// Benchmarks (they print timings; nothing is asserted).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training steps (forward, backward, optimizer; peak memory) of the paper network and
    /// the quickstart network, with the metric module off and with each sampler.
    Train {
        /// Networks: paper (Table I) and/or quickstart (encoder 8/16/32/64).
        #[arg(long, value_delimiter = ',', default_value = "paper,quickstart")]
        models: Vec<String>,
        /// Batch sizes of the paper network (the quickstart network uses 8).
        #[arg(long, value_delimiter = ',', default_value = "1,8,30")]
        batches: Vec<usize>,
        /// unet (cross-entropy only), random, hard-negative, contour-aware, hcp.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "unet,random,hard-negative,contour-aware,hcp"
        )]
        variants: Vec<String>,
        /// Patch side (the paper: 64).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Also write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One phantom CT through both stages of an experiment's networks, and its stage-2 crop alone.
    Infer {
        /// Experiment whose network sizes are used (cell 0).
        #[arg(long, default_value = "experiments/table3.yaml")]
        experiment: PathBuf,
        #[arg(long, default_value_t = 512)]
        in_plane: usize,
        #[arg(long, default_value_t = 150)]
        slices: usize,
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One training step on a device (cuda) against the same step on the CPU: relative
    /// differences of loss, logits, gradients and stepped weights; fails above --tolerance.
    Parity {
        /// paper (Table I) or quickstart.
        #[arg(long, default_value = "paper")]
        model: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// unet (cross-entropy only), random, hard-negative, contour-aware, hcp.
        #[arg(long, value_delimiter = ',', default_value = "unet,random,hcp")]
        variants: Vec<String>,
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value_t = 1e-3)]
        tolerance: f64,
    },
    /// Every evaluation metric on a 512 x 512 x 200 mask pair.
    Metrics {
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Preprocessing of one CT (phantom) of the given size.
    Preprocess {
        #[arg(long, default_value_t = 512)]
        in_plane: usize,
        #[arg(long, default_value_t = 200)]
        slices: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
}

fn parse_device(s: &str) -> anyhow::Result<DeviceChoice> {
    match s {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda),
        "auto" => Ok(DeviceChoice::Auto),
        other => anyhow::bail!("--device {other}: expected cpu, cuda or auto"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    crate::link_plugins();
    match cli.command {
        Command::Plugins => print!("{}", crate::plugins_text()),
        Command::Validate {
            experiment,
            sets,
            cell,
        } => {
            let text = std::fs::read_to_string(&experiment)
                .with_context(|| format!("cannot read experiment file {}", experiment.display()))?;
            let plan =
                ExperimentPlan::with_overrides(&text, &experiment.display().to_string(), &sets)?;
            print!("{}", crate::validate_text(&plan, cell)?);
        }
        Command::Train {
            experiment,
            sets,
            cell,
            out,
            device,
            resume,
        } => {
            let text = std::fs::read_to_string(&experiment)
                .with_context(|| format!("cannot read experiment file {}", experiment.display()))?;
            let plan =
                ExperimentPlan::with_overrides(&text, &experiment.display().to_string(), &sets)?;
            let index = match (cell, plan.cells.len()) {
                (Some(i), n) if i < n => i,
                (Some(i), n) => anyhow::bail!("--cell {i}: the experiment has {n} cells (0..{n})"),
                (None, 1) => 0,
                (None, n) => anyhow::bail!(
                    "the experiment has {n} grid cells; pick one with --cell (see `metricunet validate`)"
                ),
            };
            let device = device.as_deref().map(parse_device).transpose()?;
            let dir = experiment.parent().map(PathBuf::from).unwrap_or_default();
            let args = train_cmd::TrainArgs {
                out,
                device,
                resume,
            };
            print!("{}", train_cmd::train(&plan.cells[index], &dir, &args)?);
        }
        Command::Run {
            experiment,
            sets,
            root,
            report_dir,
            device,
            shard,
            retry_failed,
            no_report,
        } => {
            let args = run_cmd::RunArgs {
                sets,
                root,
                report_dir,
                device: device.as_deref().map(parse_device).transpose()?,
                shard: shard
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e: String| anyhow::anyhow!(e))?,
                retry_failed,
                no_report,
            };
            print!("{}", run_cmd::run(&experiment, &args)?);
        }
        Command::Report { root, out } => print!("{}", run_cmd::report(&root, out.as_deref())?),
        Command::Predict {
            model,
            input,
            output,
            probabilities,
            device,
        } => {
            let device = parse_device(&device)?;
            print!(
                "{}",
                eval_cmds::predict(&model, &input, &output, probabilities.as_deref(), device)?
            );
        }
        Command::Eval {
            pred,
            reference,
            label,
            ref_label,
            csv,
            allow_missing,
        } => {
            print!(
                "{}",
                eval_cmds::eval(
                    &pred,
                    &reference,
                    eval_cmds::EvalOptions {
                        label,
                        ref_label,
                        csv: csv.as_deref(),
                        allow_missing,
                    }
                )?
            );
        }
        Command::Phantom {
            cases,
            seed,
            out,
            in_plane,
            slices,
        } => {
            print!(
                "{}",
                data_cmds::phantom(cases, seed, &out, PhantomSize { in_plane, slices })?
            );
        }
        Command::Realism {
            real,
            out,
            seed,
            cases,
        } => print!("{}", data_cmds::realism(&real, &out, seed, cases)?),
        Command::Bench {
            what:
                BenchCommand::Train {
                    models,
                    batches,
                    variants,
                    size,
                    steps,
                    warmup,
                    device,
                    json,
                },
        } => {
            let args = bench_cmds::TrainBenchArgs {
                models,
                batches,
                variants,
                size,
                steps,
                warmup,
                device: parse_device(&device)?,
                json,
            };
            print!("{}", bench_cmds::train(&args)?);
        }
        Command::Bench {
            what:
                BenchCommand::Infer {
                    experiment,
                    in_plane,
                    slices,
                    repeats,
                    device,
                    json,
                },
        } => print!(
            "{}",
            bench_cmds::infer(
                &experiment,
                in_plane,
                slices,
                repeats,
                parse_device(&device)?,
                json.as_deref()
            )?
        ),
        Command::Bench {
            what:
                BenchCommand::Parity {
                    model,
                    batch,
                    size,
                    variants,
                    device,
                    tolerance,
                },
        } => print!(
            "{}",
            bench_cmds::parity(
                &model,
                batch,
                size,
                &variants,
                parse_device(&device)?,
                tolerance
            )?
        ),
        Command::Bench {
            what: BenchCommand::Metrics { repeats },
        } => print!("{}", eval_cmds::bench_metrics(repeats)?),
        Command::Bench {
            what:
                BenchCommand::Preprocess {
                    in_plane,
                    slices,
                    repeats,
                },
        } => {
            print!(
                "{}",
                data_cmds::bench_preprocess(in_plane, slices, repeats)?
            );
        }
    }
    Ok(())
}

/// mimalloc's `purge_delay` option (number 15 in mimalloc 2.x and 3.x).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// An error and its causes on one line, each cause once: our errors already name their
/// cause (`path: No such file or directory`), so a cause their text holds is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

/// Parse the command line, run the command, print its result or error; the exit code is 2
/// on error. Call it from a binary's `main` after defining plugins in that binary's crate.
pub fn main() -> ExitCode {
    // Keep freed memory for reuse instead of returning it to the kernel 10 ms later: a
    // training step frees and allocates the same tensor sizes every iteration, and each
    // returned page comes back as a fresh page the kernel must zero (a third of a CPU step in
    // a perf profile, see bench/NOTES.md). `MIMALLOC_PURGE_DELAY` in the environment wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}
