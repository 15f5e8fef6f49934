//! `custom-sampler`: the metricunet command line with the `interior` sampler added
//! (`custom-sampler plugins` lists it; any experiment can name it).

mod interior;

fn main() -> std::process::ExitCode {
    metricunet::cli::main()
}
