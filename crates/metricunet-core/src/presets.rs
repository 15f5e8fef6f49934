//! The ten network configurations of the paper's Table II by name, MetricUNet-HCR (the
//! instantiation of Fig. 4 and Table I), and UNet baselines trained with other segmentation
//! losses (Table IV's VNet [4] used Dice; `unet-ce-dice`, `unet-boundary` are the usual
//! boundary-precise baselines).
//!
//! A preset is a set of defaults and constraints: it fills `model.backbone.name`,
//! `metric.samplers`, `metric.loss.beta` and (for the loss baselines)
//! `model.segmentation_loss` where the experiment leaves them out, and it is an error when
//! the experiment sets them to something that contradicts the preset (another backbone,
//! other samplers, a pair weight on a triplet-only preset, other segmentation losses).
//! Sampler parameters (`k`, `m`, `tau`), the other loss parameters and, for presets that do
//! not name one, the segmentation loss stay free.

use serde_norway::{Mapping, Value};

use crate::registry;
use crate::schema::MetricConfig;
use crate::yaml_path::{get_path, set_path};

/// One Table II row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// The row as printed in Table II.
    pub paper_name: &'static str,
    pub backbone: &'static str,
    /// Samplers in the order they are configured (and logged).
    pub samplers: &'static [&'static str],
    /// Whether the positive-pair term of Eq. 2 is on (the `P` in the name).
    pub pair: bool,
    /// Segmentation losses with their weights; empty: the experiment's (cross-entropy
    /// unless it says otherwise).
    pub segmentation_loss: &'static [(&'static str, f64)],
}

/// Table II top to bottom, then MetricUNet-HCR and the segmentation-loss baselines.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "unet",
        paper_name: "UNet (Baseline)",
        backbone: "unet",
        samplers: &[],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-r-sep",
        paper_name: "MetricUNet-R-Sep",
        backbone: "metricunet-sep",
        samplers: &["random"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-r",
        paper_name: "MetricUNet-R",
        backbone: "metricunet",
        samplers: &["random"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-h",
        paper_name: "MetricUNet-H",
        backbone: "metricunet",
        samplers: &["hard-negative"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-c",
        paper_name: "MetricUNet-C",
        backbone: "metricunet",
        samplers: &["contour-aware"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hr",
        paper_name: "MetricUNet-HR",
        backbone: "metricunet",
        samplers: &["hard-negative", "random"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hc",
        paper_name: "MetricUNet-HC",
        backbone: "metricunet",
        samplers: &["hard-negative", "contour-aware"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hp",
        paper_name: "MetricUNet-HP",
        backbone: "metricunet",
        samplers: &["hard-negative"],
        pair: true,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hrp",
        paper_name: "MetricUNet-HRP",
        backbone: "metricunet",
        samplers: &["hard-negative", "random"],
        pair: true,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hcp",
        paper_name: "MetricUNet-HCP",
        backbone: "metricunet",
        samplers: &["hard-negative", "contour-aware"],
        pair: true,
        segmentation_loss: &[],
    },
    Preset {
        name: "metricunet-hcr",
        paper_name: "MetricUNet-HCR (Fig. 4, Table I)",
        backbone: "metricunet",
        samplers: &["hard-negative", "contour-aware", "random"],
        pair: false,
        segmentation_loss: &[],
    },
    Preset {
        name: "unet-dice",
        paper_name: "UNet with the Dice loss (as VNet [4])",
        backbone: "unet",
        samplers: &[],
        pair: false,
        segmentation_loss: &[("dice", 1.0)],
    },
    Preset {
        name: "unet-ce-dice",
        paper_name: "UNet with cross-entropy + Dice",
        backbone: "unet",
        samplers: &[],
        pair: false,
        segmentation_loss: &[("cross-entropy", 1.0), ("dice", 1.0)],
    },
    Preset {
        name: "unet-boundary",
        paper_name: "UNet with Dice + 0.01 boundary loss (Kervadec et al.)",
        backbone: "unet",
        samplers: &[],
        pair: false,
        segmentation_loss: &[("dice", 1.0), ("boundary", 0.01)],
    },
];

/// The pair weight a `P` preset fills in when the experiment gives none (paper: 0.1).
pub const DEFAULT_PAIR_BETA: f64 = 0.1;

/// The plugin names of a YAML list of plugin references (bare names or `{name: ...}`).
fn plugin_names(list: &[Value]) -> Vec<&str> {
    list.iter()
        .filter_map(|v| match v {
            Value::String(s) => Some(s.as_str()),
            Value::Mapping(m) => m.get("name").and_then(Value::as_str),
            _ => None,
        })
        .collect()
}

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
                let mut names = plugin_names(list);
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
        self.apply_segmentation_loss(root, &conflict)?;
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

    /// Fill `model.segmentation_loss` from a loss-baseline preset, or check that the
    /// experiment's list names the same losses (weights and parameters stay free).
    fn apply_segmentation_loss(
        &self,
        root: &mut Value,
        conflict: &dyn Fn(&str, String) -> String,
    ) -> Result<(), String> {
        if self.segmentation_loss.is_empty() {
            return Ok(());
        }
        const PATH: &str = "model.segmentation_loss";
        match get_path(root, PATH) {
            None | Some(Value::Null) => {
                let list = self
                    .segmentation_loss
                    .iter()
                    .map(|(name, weight)| {
                        let mut m = Mapping::new();
                        m.insert(Value::from("name"), Value::from(*name));
                        m.insert(Value::from("weight"), Value::from(*weight));
                        Value::Mapping(m)
                    })
                    .collect();
                set_path(root, PATH, Value::Sequence(list))
            }
            Some(Value::Sequence(list)) => {
                let names = plugin_names(list);
                let want: Vec<&str> = self.segmentation_loss.iter().map(|(n, _)| *n).collect();
                if names == want {
                    Ok(())
                } else {
                    Err(conflict(
                        PATH,
                        format!(
                            "[{}] (the preset uses [{}])",
                            names.join(", "),
                            want.join(", ")
                        ),
                    ))
                }
            }
            Some(_) => Ok(()), // a type error, reported by the schema
        }
    }
}
