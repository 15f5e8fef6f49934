//! The ten network configurations of the paper's Table II, by name.
//!
//! A preset is a set of defaults and constraints: it fills `model.backbone.name`,
//! `metric.samplers` and `metric.loss.beta` where the experiment leaves them out, and it is
//! an error when the experiment sets them to something that contradicts the preset
//! (another backbone, other samplers, a pair weight on a triplet-only preset). Sampler
//! parameters (`k`, `m`, `tau`) and the other loss parameters stay free.

use serde_norway::{Mapping, Value};

use crate::registry;
use crate::schema::MetricConfig;
use crate::yaml_path::{get_path, set_path};

/// One Table II row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    /// The row as printed in Table II.
    pub paper_name: &'static str,
    pub backbone: &'static str,
    /// Samplers in the order they are configured (and logged).
    pub samplers: &'static [&'static str],
    /// Whether the positive-pair term of Eq. 2 is on (the `P` in the name).
    pub pair: bool,
}

/// Table II, top to bottom.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "unet",
        paper_name: "UNet (Baseline)",
        backbone: "unet",
        samplers: &[],
        pair: false,
    },
    Preset {
        name: "metricunet-r-sep",
        paper_name: "MetricUNet-R-Sep",
        backbone: "metricunet-sep",
        samplers: &["random"],
        pair: false,
    },
    Preset {
        name: "metricunet-r",
        paper_name: "MetricUNet-R",
        backbone: "metricunet",
        samplers: &["random"],
        pair: false,
    },
    Preset {
        name: "metricunet-h",
        paper_name: "MetricUNet-H",
        backbone: "metricunet",
        samplers: &["hard-negative"],
        pair: false,
    },
    Preset {
        name: "metricunet-c",
        paper_name: "MetricUNet-C",
        backbone: "metricunet",
        samplers: &["contour-aware"],
        pair: false,
    },
    Preset {
        name: "metricunet-hr",
        paper_name: "MetricUNet-HR",
        backbone: "metricunet",
        samplers: &["hard-negative", "random"],
        pair: false,
    },
    Preset {
        name: "metricunet-hc",
        paper_name: "MetricUNet-HC",
        backbone: "metricunet",
        samplers: &["hard-negative", "contour-aware"],
        pair: false,
    },
    Preset {
        name: "metricunet-hp",
        paper_name: "MetricUNet-HP",
        backbone: "metricunet",
        samplers: &["hard-negative"],
        pair: true,
    },
    Preset {
        name: "metricunet-hrp",
        paper_name: "MetricUNet-HRP",
        backbone: "metricunet",
        samplers: &["hard-negative", "random"],
        pair: true,
    },
    Preset {
        name: "metricunet-hcp",
        paper_name: "MetricUNet-HCP",
        backbone: "metricunet",
        samplers: &["hard-negative", "contour-aware"],
        pair: true,
    },
];

/// The pair weight a `P` preset fills in when the experiment gives none (paper: 0.1).
pub const DEFAULT_PAIR_BETA: f64 = 0.1;

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

impl Preset {
    /// Fill and check the preset's keys in a raw experiment tree.
    pub fn apply(&self, root: &mut Value) -> Result<(), String> {
        let conflict = |path: &str, what: String| {
            format!(
                "{path}: {what} contradicts preset `{}` ({}); remove the key or the preset",
                self.name, self.paper_name
            )
        };
        // Backbone.
        match get_path(root, "model.backbone") {
            None | Some(Value::Null) => {
                set_path(root, "model.backbone", Value::from(self.backbone))?
            }
            Some(v) => {
                let name = match v {
                    Value::String(s) => Some(s.as_str()),
                    Value::Mapping(m) => m.get("name").and_then(Value::as_str),
                    _ => None,
                };
                match name {
                    Some(n) if n == self.backbone => {}
                    Some(n) => return Err(conflict("model.backbone", format!("`{n}`"))),
                    None if matches!(v, Value::Mapping(_)) => {
                        set_path(root, "model.backbone.name", Value::from(self.backbone))?
                    }
                    None => {}
                }
            }
        }
        // Samplers.
        match get_path(root, "metric.samplers") {
            None | Some(Value::Null) => {
                let list: Vec<Value> = self.samplers.iter().map(|s| Value::from(*s)).collect();
                set_path(root, "metric.samplers", Value::Sequence(list))?;
            }
            Some(Value::Sequence(list)) => {
                let mut names: Vec<&str> = list
                    .iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.as_str()),
                        Value::Mapping(m) => m.get("name").and_then(Value::as_str),
                        _ => None,
                    })
                    .collect();
                let mut want: Vec<&str> = self.samplers.to_vec();
                names.sort_unstable();
                want.sort_unstable();
                if names != want {
                    return Err(conflict(
                        "metric.samplers",
                        format!(
                            "[{}] (the preset uses [{}])",
                            names.join(", "),
                            self.samplers.join(", ")
                        ),
                    ));
                }
            }
            Some(_) => {} // a type error, reported by the schema
        }
        // Positive-pair weight: on for P presets, off otherwise (Table II's loss columns).
        if self.samplers.is_empty() {
            return Ok(());
        }
        // The loss as written: a bare name, a mapping, or absent (the schema's default).
        let loss_name = match get_path(root, "metric.loss") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Mapping(m)) => match m.get("name").and_then(Value::as_str) {
                Some(n) => n.to_string(),
                None => return Ok(()), // reported by the schema
            },
            None | Some(Value::Null) => MetricConfig::default().loss.name,
            Some(_) => return Ok(()), // a type error, reported by the schema
        };
        let has_beta = registry::loss(&loss_name, "metric.loss")
            .map(|p| p.params.iter().any(|s| s.name == "beta"))
            .map_err(|e| e.to_string())?;
        if !has_beta {
            return if self.pair {
                Err(conflict(
                    "metric.loss",
                    format!("`{loss_name}` has no positive-pair weight `beta`"),
                ))
            } else {
                Ok(())
            };
        }
        let beta = get_path(root, "metric.loss.beta").and_then(Value::as_f64);
        match (self.pair, beta) {
            (true, Some(b)) if b <= 0.0 => Err(conflict("metric.loss.beta", format!("{b}"))),
            (false, Some(b)) if b != 0.0 => Err(conflict("metric.loss.beta", format!("{b}"))),
            (_, Some(_)) => Ok(()),
            (pair, None) => {
                if !matches!(get_path(root, "metric.loss"), Some(Value::Mapping(_))) {
                    let mut m = Mapping::new();
                    m.insert(Value::from("name"), Value::from(loss_name));
                    set_path(root, "metric.loss", Value::Mapping(m))?;
                }
                set_path(
                    root,
                    "metric.loss.beta",
                    Value::from(if pair { DEFAULT_PAIR_BETA } else { 0.0 }),
                )
            }
        }
    }
}
