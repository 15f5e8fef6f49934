//! The `metricunet` command line, as a library function: the `metricunet` binary is
//! `metricunet::cli::main()`, and so is a researcher's own binary that registers more
//! plugins (see `examples/custom-sampler`): every plugin linked into the binary is usable
//! from YAML by name. Each command is its own clap `Args` struct with a `run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use metricunet_core::config::{DeviceChoice, Precision};
use metricunet_core::ExperimentPlan;
use metricunet_data::phantom::PhantomSize;
use metricunet_runner::Shard;

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
    Validate(ValidateArgs),
    /// Train one configuration of an experiment (the stages it names), resumable.
    Train(TrainArgs),
    /// Run an experiment: data, a shared stage 1, stage 2 for every grid cell x seed,
    /// prediction and evaluation of the test cases, then the report. Resumable: finished cells
    /// are never recomputed, unfinished ones continue from their last checkpoint.
    Run(RunArgs),
    /// Write the report (tables, figures, report.md, report.html) of whatever cells of a run
    /// root are finished.
    Report(ReportArgs),
    /// Segment the prostate of a CT (or a folder of CTs) with a trained run, in the CT's geometry.
    Predict(PredictArgs),
    /// Metrics (DSC, ASD, SEN, PPV, ASSD, HD95) of a prediction against a reference, or of
    /// every reference of a folder against the same-named prediction.
    Eval(EvalArgs),
    /// Write synthetic pelvic CT cases with prostate labels (Decathlon layout).
    Phantom(PhantomArgs),
    /// Compare the phantom's HU statistics with a real CT and write slices of both.
    Realism(RealismArgs),
    /// The sampler lab: what each configured sampler draws from a training batch.
    Samplers {
        #[command(subcommand)]
        what: SamplersCommand,
    },
    /// Benchmarks (they print timings; nothing is asserted).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// `--device cpu|cuda|auto`.
fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    match s {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda),
        "auto" => Ok(DeviceChoice::Auto),
        other => Err(format!("{other}: expected cpu, cuda or auto")),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "tf32" => Ok(Precision::Tf32),
        "bf16" => Ok(Precision::Bf16),
        other => Err(format!("{other}: expected f32, tf32 or bf16")),
    }
}

/// The folder relative data paths of an experiment file are taken from: the file's own.
pub(crate) fn experiment_dir(experiment: &Path) -> PathBuf {
    experiment.parent().map(PathBuf::from).unwrap_or_default()
}

/// An experiment file with `--set` overrides, expanded into its cells.
fn read_plan(experiment: &Path, sets: &[String]) -> Result<ExperimentPlan> {
    let text = std::fs::read_to_string(experiment)
        .with_context(|| format!("cannot read experiment file {}", experiment.display()))?;
    Ok(ExperimentPlan::with_overrides(
        &text,
        &experiment.display().to_string(),
        sets,
    )?)
}

#[derive(Args)]
struct ValidateArgs {
    /// The experiment YAML.
    experiment: PathBuf,
    /// Override a value before validating: `--set metric.lambda=0.1` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// Which cell's full configuration to print.
    #[arg(long, default_value_t = 0)]
    cell: usize,
    #[command(flatten)]
    cost: CostArgs,
}

/// What the projected training time is computed from.
#[derive(Args)]
struct CostArgs {
    /// Project the training time at this many seconds per stage-2 step (stage 1 scaled by its input size).
    #[arg(long, value_name = "SECONDS", conflicts_with = "bench")]
    step_seconds: Option<f64>,
    /// Project the training time from a `metricunet bench train --json FILE` result of the device that will run it.
    #[arg(long, value_name = "FILE")]
    bench: Option<PathBuf>,
}

impl CostArgs {
    /// The cost table, when a step time was given.
    fn text(&self, plan: &metricunet_core::ExperimentPlan) -> Result<String> {
        let source = match (&self.step_seconds, &self.bench) {
            (Some(s), _) => crate::cost::StepSource::Given(*s),
            (None, Some(p)) => crate::cost::StepSource::Bench(p),
            (None, None) => return Ok(String::new()),
        };
        crate::cost::cost_text(plan, &source)
    }
}

impl ValidateArgs {
    fn run(self) -> Result<String> {
        let plan = read_plan(&self.experiment, &self.sets)?;
        let mut out = crate::validate_text(&plan, self.cell)?;
        out.push_str(&self.cost.text(&plan)?);
        Ok(out)
    }
}

#[derive(Args)]
struct TrainArgs {
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
    #[arg(long, value_parser = parse_device)]
    device: Option<DeviceChoice>,
    /// Continue from the checkpoints in the run folder.
    #[arg(long)]
    resume: bool,
}

impl TrainArgs {
    fn run(self) -> Result<String> {
        let plan = read_plan(&self.experiment, &self.sets)?;
        let index = match (self.cell, plan.cells.len()) {
            (Some(i), n) if i < n => i,
            (Some(i), n) => anyhow::bail!("--cell {i}: the experiment has {n} cells (0..{n})"),
            (None, 1) => 0,
            (None, n) => anyhow::bail!(
                "the experiment has {n} grid cells; pick one with --cell (see `metricunet validate`)"
            ),
        };
        let dir = experiment_dir(&self.experiment);
        let args = train_cmd::TrainArgs {
            out: self.out,
            device: self.device,
            resume: self.resume,
        };
        train_cmd::train(&plan.cells[index], &dir, &args)
    }
}

#[derive(Args)]
struct RunArgs {
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
    #[arg(long, value_parser = parse_device)]
    device: Option<DeviceChoice>,
    /// Run only cells whose index is I modulo N (I in 0..N), or with I/cells cell I alone (a Slurm array task per cell).
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Run cells recorded as failed again.
    #[arg(long)]
    retry_failed: bool,
    /// Do not write the report at the end.
    #[arg(long)]
    no_report: bool,
    /// Print the cells and, with --step-seconds or --bench, the projected training time; run nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    cost: CostArgs,
}

impl RunArgs {
    fn run(self) -> Result<String> {
        if self.dry_run {
            let plan = read_plan(&self.experiment, &self.sets)?;
            let table = crate::validate_text(&plan, 0)?;
            // the cell table (the lines after the resolved configuration)
            let cells = table
                .split_once("\n# ")
                .map(|(_, t)| format!("# {t}"))
                .unwrap_or(table);
            return Ok(format!(
                "{cells}{}(dry run: nothing was trained)\n",
                self.cost.text(&plan)?
            ));
        }
        let args = run_cmd::RunArgs {
            sets: self.sets,
            root: self.root,
            report_dir: self.report_dir,
            device: self.device,
            shard: self.shard,
            retry_failed: self.retry_failed,
            no_report: self.no_report,
        };
        run_cmd::run(&self.experiment, &args)
    }
}

#[derive(Args)]
struct ReportArgs {
    /// Run root of `metricunet run` (holds plan.yaml and cells/).
    root: PathBuf,
    /// Report folder (default: the experiment's report.out_dir, else reports/<name> for the default root runs/<name>, else ROOT/report).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ReportArgs {
    fn run(self) -> Result<String> {
        run_cmd::report(&self.root, self.out.as_deref())
    }
}

#[derive(Args)]
struct PredictArgs {
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
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceChoice,
}

impl PredictArgs {
    fn run(self) -> Result<String> {
        eval_cmds::predict(
            &self.model,
            &self.input,
            &self.output,
            self.probabilities.as_deref(),
            self.device,
        )
    }
}

#[derive(Args)]
struct EvalArgs {
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
}

impl EvalArgs {
    fn run(self) -> Result<String> {
        eval_cmds::eval(
            &self.pred,
            &self.reference,
            eval_cmds::EvalOptions {
                label: self.label,
                ref_label: self.ref_label,
                csv: self.csv.as_deref(),
                allow_missing: self.allow_missing,
            },
        )
    }
}

#[derive(Args)]
struct PhantomArgs {
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
}

impl PhantomArgs {
    fn run(self) -> Result<String> {
        let size = PhantomSize {
            in_plane: self.in_plane,
            slices: self.slices,
        };
        data_cmds::phantom(self.cases, self.seed, &self.out, size)
    }
}

#[derive(Args)]
struct RealismArgs {
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
}

impl RealismArgs {
    fn run(self) -> Result<String> {
        data_cmds::realism(&self.real, &self.out, self.seed, self.cases)
    }
}

#[derive(Subcommand)]
enum SamplersCommand {
    /// Draw where every sampler of a cell puts its anchors, positives and negatives on one
    /// stage-2 training batch of a case (PNG + SVG), as a training step draws them, and print
    /// the candidate and anchor counts per image.
    Show(SamplersShowArgs),
}

#[derive(Args)]
struct SamplersShowArgs {
    /// The experiment YAML.
    experiment: PathBuf,
    /// Override a value: `--set metric.samplers.0.tau=0.3` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    sets: Vec<String>,
    /// Which grid cell (default: the first one that configures samplers).
    #[arg(long)]
    cell: Option<usize>,
    /// A training case id (default: the first training case of the split).
    #[arg(long)]
    case: Option<String>,
    /// Trained stage-2 weights, e.g. `runs/<name>/cells/<hash>/stage2/model.safetensors`
    /// (default: the network as initialised from the cell's seed).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Folder for the figure (default runs/<name>/samplers).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl SamplersShowArgs {
    fn run(self) -> Result<String> {
        let plan = read_plan(&self.experiment, &self.sets)?;
        let cell = match self.cell {
            Some(i) => plan.cells.get(i).with_context(|| {
                format!("--cell {i}: the experiment has {} cells", plan.cells.len())
            })?,
            None => plan
                .cells
                .iter()
                .find(|c| !c.config.metric.samplers.is_empty())
                .with_context(|| {
                    format!(
                        "{}: no cell configures a sampler (metric.samplers is empty in every cell)",
                        self.experiment.display()
                    )
                })?,
        };
        let dir = experiment_dir(&self.experiment);
        let out = self.out.unwrap_or_else(|| {
            PathBuf::from("runs")
                .join(&cell.config.name)
                .join("samplers")
        });
        let text = crate::samplers_cmd::show(
            cell,
            &dir,
            &crate::samplers_cmd::ShowArgs {
                case: self.case,
                weights: self.weights,
                out,
            },
        )?;
        Ok(format!("cell {} ({})\n{text}", cell.index, cell.label()))
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training steps (forward, backward, optimizer; peak memory) of the paper network and
    /// the quickstart network, with the metric module off and with each sampler.
    Train(BenchTrainArgs),
    /// One phantom CT through both stages of an experiment's networks, and its stage-2 crop alone.
    Infer(BenchInferArgs),
    /// One training step on a device (cuda) against the same step on the CPU: relative
    /// differences of loss, logits, gradients and stepped weights; fails above --tolerance.
    Parity(BenchParityArgs),
    /// Each 3x3 convolution of a network, forward and both gradients, through the direct
    /// path and through Winograd F(2x2, 3x3), side by side (f32, CPU).
    Conv(BenchConvArgs),
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

#[derive(Args)]
struct BenchTrainArgs {
    /// Networks: paper (Table I), quickstart (the main job's stage 2, encoder 8/16/32/64)
    /// and/or quickstart-stage1 (its unet-light localiser, 32 x 32 x 5 patches, batch 8).
    #[arg(long, value_delimiter = ',', default_value = "paper,quickstart")]
    models: Vec<String>,
    /// Batch sizes of the paper network (the quickstart networks use 8).
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
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceChoice,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// After the timing, profile as many steps again: each op's share of a step, timed
    /// between device waits (on a GPU without Nsight, the device profile).
    #[arg(long)]
    profile: bool,
    /// Arithmetic of the convolutions on CUDA (as `training.precision`).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
}

impl BenchTrainArgs {
    fn run(self) -> Result<String> {
        bench_cmds::train(&bench_cmds::TrainBenchArgs {
            models: self.models,
            batches: self.batches,
            variants: self.variants,
            size: self.size,
            steps: self.steps,
            warmup: self.warmup,
            device: self.device,
            json: self.json,
            profile: self.profile,
            precision: self.precision,
        })
    }
}

#[derive(Args)]
struct BenchInferArgs {
    /// Experiment whose network sizes are used (cell 0).
    #[arg(long, default_value = "experiments/table3.yaml")]
    experiment: PathBuf,
    #[arg(long, default_value_t = 512)]
    in_plane: usize,
    #[arg(long, default_value_t = 150)]
    slices: usize,
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: DeviceChoice,
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchInferArgs {
    fn run(self) -> Result<String> {
        bench_cmds::infer(
            &self.experiment,
            self.in_plane,
            self.slices,
            self.repeats,
            self.device,
            self.json.as_deref(),
        )
    }
}

#[derive(Args)]
struct BenchConvArgs {
    /// paper (Table I) or quickstart.
    #[arg(long, default_value = "paper")]
    model: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Patch side (the paper: 64).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Runs of each pass and path (the median is printed).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchConvArgs {
    fn run(self) -> Result<String> {
        bench_cmds::conv(
            &self.model,
            self.batch,
            self.size,
            self.repeats,
            self.json.as_deref(),
        )
    }
}

#[derive(Args)]
struct BenchParityArgs {
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
    #[arg(long, default_value = "cuda", value_parser = parse_device)]
    device: DeviceChoice,
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// Arithmetic of the device's convolutions (as `training.precision`; the CPU references
    /// are f32 and f64 regardless). tf32 and bf16 need a larger --tolerance.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
}

impl BenchParityArgs {
    fn run(self) -> Result<String> {
        bench_cmds::parity(
            &self.model,
            self.batch,
            self.size,
            &self.variants,
            self.device,
            self.tolerance,
            self.precision,
        )
    }
}

fn run(cli: Cli) -> Result<String> {
    crate::link_plugins();
    match cli.command {
        Command::Plugins => Ok(crate::plugins_text()),
        Command::Validate(a) => a.run(),
        Command::Train(a) => a.run(),
        Command::Run(a) => a.run(),
        Command::Report(a) => a.run(),
        Command::Predict(a) => a.run(),
        Command::Eval(a) => a.run(),
        Command::Phantom(a) => a.run(),
        Command::Realism(a) => a.run(),
        Command::Samplers { what } => match what {
            SamplersCommand::Show(a) => a.run(),
        },
        Command::Bench { what } => match what {
            BenchCommand::Train(a) => a.run(),
            BenchCommand::Infer(a) => a.run(),
            BenchCommand::Parity(a) => a.run(),
            BenchCommand::Conv(a) => a.run(),
            BenchCommand::Metrics { repeats } => eval_cmds::bench_metrics(repeats),
            BenchCommand::Preprocess {
                in_plane,
                slices,
                repeats,
            } => data_cmds::bench_preprocess(in_plane, slices, repeats),
        },
    }
}

/// candle's variable for its barrier pool's spins before a thread sleeps.
const CANDLE_SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Stack of the rayon threads, one of which runs the command (the main thread's is 8 MiB;
/// candle's backward walks the graph recursively). Only what is touched is memory.
const WORKER_STACK_BYTES: usize = 64 << 20;

/// Run `f` (the command) on a thread of rayon's global pool (built here with
/// [`WORKER_STACK_BYTES`]) where `wanted`, else on the calling thread. The ops spread each
/// batch over rayon's threads: called from outside the pool, every op hands its work to the
/// pool and puts the calling thread to sleep until it is done (a futex wake-up each way, and
/// the main thread as a third thread on the cores); called from a pool thread, that thread
/// works on the op itself. Measured (session 15, alternating runs): the quickstart's training
/// step 1.03-1.05x alone and 1.11x with candle's spin limit (see `main`); the paper network's
/// MetricUNet-HCP step at batch 1 1.17-1.35x alone.
fn on_pool_worker<R: Send>(wanted: bool, f: impl FnOnce() -> R + Send) -> R {
    if !wanted {
        return f();
    }
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK_BYTES)
        .build_global()
    {
        tracing::debug!("rayon's global pool was built before ({e}); its threads' stacks stay");
    }
    // `join` from outside the pool runs both closures on a pool thread and waits for them
    rayon::join(f, || ()).0
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
    // candle's elementwise ops run on its own pool (the calling thread plus n - 1 threads),
    // whose threads spin 25,000 times after each op before they sleep: on a machine with as
    // many cores as threads that spinning takes a core from the rayon threads of the next
    // op. 200 spins together with the command on a pool thread (`on_pool_worker`): the
    // quickstart's training step 1.11x against neither; the spin limit alone was slower (four
    // alternating rounds, bench/NOTES.md session 15). Set here, before any thread exists; the
    // environment's value wins.
    if std::env::var_os(CANDLE_SPIN_LIMIT).is_none() {
        std::env::set_var(CANDLE_SPIN_LIMIT, "200");
    }
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
    let cli = Cli::parse();
    // unless METRICUNET_MAIN_ON_WORKER=0 (any other value but 1 is warned about)
    let on_worker = metricunet_ops::env_switch("METRICUNET_MAIN_ON_WORKER", true);
    match on_pool_worker(on_worker, move || run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The command runs on a pool thread where wanted, on the calling thread where not; work
    /// it spreads over the pool is done, and a panic inside comes back to the caller.
    #[test]
    fn the_command_runs_on_a_pool_thread_where_wanted() {
        assert!(
            rayon::current_thread_index().is_none(),
            "the test starts outside the pool"
        );
        assert!(on_pool_worker(true, rayon::current_thread_index).is_some());
        assert!(on_pool_worker(false, rayon::current_thread_index).is_none());
        let sum: u64 = on_pool_worker(true, || (0..1000u64).into_par_iter().sum());
        assert_eq!(sum, 499_500);
        let caught = std::panic::catch_unwind(|| on_pool_worker(true, || panic!("inside")));
        assert!(caught.is_err());
    }
}
