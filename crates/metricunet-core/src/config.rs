//! The experiment configuration, as the rest of the project names it: the schema
//! ([`crate::schema`]: one YAML file names the data, both stages, the metric module, training,
//! evaluation and report, plus a `grid:` of values to sweep and the `seeds:`), its expansion
//! into cells ([`crate::plan`]) and the YAML path helpers ([`crate::yaml_path`]).
//!
//! Parsing is strict: an unknown key is an error that names its path and the nearest valid
//! key, a value of the wrong type names line and column, and every plugin name and
//! parameter is checked against the registries before any work starts.

pub use crate::plan::{stable_hash, Cell, ExperimentPlan, MAX_CELLS};
pub use crate::schema::*;
pub use crate::yaml_path::{get_path, inline_yaml, set_path};
