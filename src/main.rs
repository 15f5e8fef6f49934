//! `metricunet`: train, sweep and report MetricUNet segmentation experiments.

fn main() -> std::process::ExitCode {
    metricunet::cli::main()
}
