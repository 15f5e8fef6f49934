//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::process::Command;

use metricunet_core::{CoreError, ExperimentPlan};

/// Run the `metricunet` binary in the repository root: (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metricunet"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run metricunet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Parse an experiment from text with every plugin linked.
pub fn plan(text: &str) -> Result<ExperimentPlan, CoreError> {
    metricunet::link_plugins();
    ExperimentPlan::from_yaml_str(text, "test.yaml")
}

/// The error message of a plan that must fail.
pub fn plan_err(text: &str) -> String {
    match plan(text) {
        Ok(p) => panic!("expected an error, got {} cells", p.cells.len()),
        Err(e) => e.to_string(),
    }
}
