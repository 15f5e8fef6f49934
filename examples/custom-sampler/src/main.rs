//! `custom-sampler`: the metricunet command line with the `interior` sampler and the
//! `volume-error` metric added (`custom-sampler plugins` lists them; any experiment can name
//! them).

mod interior;
mod volume_error;

fn main() -> std::process::ExitCode {
    metricunet::cli::main()
}
