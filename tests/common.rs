//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use metricunet_core::{CoreError, ExperimentPlan};

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
