//! Plugin registries built with `inventory`.
//!
//! A plugin crate registers an implementation with one `inventory::submit!` block; the
//! runner finds it by name and never names a concrete type:
//!
//! ```
//! use metricunet_core::{registry, Draw, Params, Result, SampleItem, Sampler, SamplerPlugin};
//!
//! #[derive(Debug)]
//! struct Nothing;
//! impl Sampler for Nothing {
//!     fn draw(&self) -> Draw {
//!         Draw { k: 1, m: 1 }
//!     }
//!     fn candidates(&self, _: &SampleItem<'_>) -> Result<Vec<usize>> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! inventory::submit! {
//!     SamplerPlugin {
//!         name: "doc-nothing",
//!         description: "draws no tuple (an example)",
//!         params: &[],
//!         build: |_params: &Params| -> Result<Box<dyn Sampler>> { Ok(Box::new(Nothing)) },
//!     }
//! }
//!
//! let plugin = registry::sampler("doc-nothing", "metric.samplers[0]")?;
//! assert_eq!(plugin.description, "draws no tuple (an example)");
//! assert!(registry::sampler("doc-nothin", "metric.samplers[0]").unwrap_err().to_string().contains("did you mean `doc-nothing`"));
//! # Ok::<(), metricunet_core::CoreError>(())
//! ```

use candle_nn::VarBuilder;
use serde_norway::Mapping;

use crate::backbone::{Backbone, BackboneContext};
use crate::error::{did_you_mean, CoreError, Result};
use crate::loss::MetricLoss;
use crate::metric::Metric;
use crate::params::{ParamSpec, Params};
use crate::postprocess::PostProcess;
use crate::sampler::Sampler;
use crate::schema::PluginSpec;
use crate::seg_loss::SegmentationLoss;

/// One registered implementation: a name, a one-line description, declared parameters and
/// a constructor of type `C`.
pub struct Plugin<C: 'static> {
    /// The name used in experiment YAML files.
    pub name: &'static str,
    /// One line for `metricunet plugins`.
    pub description: &'static str,
    /// Declared parameters with defaults; anything else in the YAML is an error.
    pub params: &'static [ParamSpec],
    /// Builds the implementation from validated parameters.
    pub build: C,
}

impl<C> std::fmt::Debug for Plugin<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl<C> Plugin<C> {
    /// Validate a YAML parameter mapping against this plugin's declared parameters.
    pub fn params(&self, map: &Mapping, path: &str) -> Result<Params> {
        Params::from_yaml(self.params, map, path)
    }
}

/// Constructor of a [`Sampler`].
pub type SamplerCtor = fn(&Params) -> Result<Box<dyn Sampler>>;
/// Constructor of a [`MetricLoss`].
pub type LossCtor = fn(&Params) -> Result<Box<dyn MetricLoss>>;
/// Constructor of a [`Backbone`], whose weights come from the `VarBuilder`.
pub type BackboneCtor = fn(&Params, &BackboneContext, VarBuilder<'_>) -> Result<Box<dyn Backbone>>;
/// Constructor of an evaluation [`Metric`].
pub type MetricCtor = fn(&Params) -> Result<Box<dyn Metric>>;
/// Constructor of a [`PostProcess`] step.
pub type PostprocessCtor = fn(&Params) -> Result<Box<dyn PostProcess>>;

/// Constructor of a [`SegmentationLoss`].
pub type SegLossCtor = fn(&Params) -> Result<Box<dyn SegmentationLoss>>;

/// A registered sampler.
pub type SamplerPlugin = Plugin<SamplerCtor>;
/// A registered metric loss.
pub type LossPlugin = Plugin<LossCtor>;
/// A registered backbone.
pub type BackbonePlugin = Plugin<BackboneCtor>;
/// A registered evaluation metric.
pub type MetricPlugin = Plugin<MetricCtor>;
/// A registered post-processing step.
pub type PostprocessPlugin = Plugin<PostprocessCtor>;
/// A registered segmentation loss.
pub type SegLossPlugin = Plugin<SegLossCtor>;

inventory::collect!(SamplerPlugin);
inventory::collect!(LossPlugin);
inventory::collect!(BackbonePlugin);
inventory::collect!(MetricPlugin);
inventory::collect!(PostprocessPlugin);
inventory::collect!(SegLossPlugin);

/// The kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Sampler,
    Loss,
    SegLoss,
    Backbone,
    Metric,
    Postprocess,
}

impl PluginKind {
    /// Every kind, in the order `metricunet plugins` lists them.
    pub const ALL: [PluginKind; 6] = [
        PluginKind::Sampler,
        PluginKind::Loss,
        PluginKind::SegLoss,
        PluginKind::Backbone,
        PluginKind::Metric,
        PluginKind::Postprocess,
    ];

    /// Plural name for listings.
    pub fn plural(self) -> &'static str {
        match self {
            PluginKind::Sampler => "samplers",
            PluginKind::Loss => "losses",
            PluginKind::SegLoss => "segmentation-losses",
            PluginKind::Backbone => "backbones",
            PluginKind::Metric => "metrics",
            PluginKind::Postprocess => "postprocess",
        }
    }

    /// Singular name as used in messages.
    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Sampler => "sampler",
            PluginKind::Loss => "loss",
            PluginKind::SegLoss => "segmentation loss",
            PluginKind::Backbone => "backbone",
            PluginKind::Metric => "metric",
            PluginKind::Postprocess => "postprocess step",
        }
    }
}

/// Name, description and parameters of a registered plugin, whatever its kind.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    pub kind: PluginKind,
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamSpec],
}

fn infos<C: 'static>(
    kind: PluginKind,
    it: impl Iterator<Item = &'static Plugin<C>>,
) -> Vec<PluginInfo> {
    let mut v: Vec<PluginInfo> = it
        .map(|p| PluginInfo {
            kind,
            name: p.name,
            description: p.description,
            params: p.params,
        })
        .collect();
    v.sort_by_key(|p| p.name);
    v
}

/// Every registered plugin of `kind`, sorted by name.
pub fn list(kind: PluginKind) -> Vec<PluginInfo> {
    match kind {
        PluginKind::Sampler => infos(kind, inventory::iter::<SamplerPlugin>()),
        PluginKind::Loss => infos(kind, inventory::iter::<LossPlugin>()),
        PluginKind::SegLoss => infos(kind, inventory::iter::<SegLossPlugin>()),
        PluginKind::Backbone => infos(kind, inventory::iter::<BackbonePlugin>()),
        PluginKind::Metric => infos(kind, inventory::iter::<MetricPlugin>()),
        PluginKind::Postprocess => infos(kind, inventory::iter::<PostprocessPlugin>()),
    }
}

/// A parameter error of the plugin at YAML `path`, with its path under it.
fn at(path: &str, e: CoreError) -> CoreError {
    match e {
        CoreError::Param { path: p, message } => CoreError::Param {
            path: format!("{path}.{p}"),
            message,
        },
        other => CoreError::Param {
            path: path.to_string(),
            message: other.to_string(),
        },
    }
}

/// The one way from a YAML plugin spec to a plugin: `plugin`'s declared parameters validate
/// `spec`'s (defaults filled in), then `build` makes it. Returns the plugin and the validated
/// parameters it was built from; every error names `path`.
fn instantiate<C: 'static, T>(
    plugin: &'static Plugin<C>,
    spec: &PluginSpec,
    path: &str,
    build: impl FnOnce(&C, &Params) -> Result<T>,
) -> Result<(T, Params)> {
    let params = plugin.params(&spec.params, path)?;
    let built = build(&plugin.build, &params).map_err(|e| at(path, e))?;
    Ok((built, params))
}

/// The sampler `spec` names (at YAML `path`), built, with its validated parameters.
pub fn build_sampler(spec: &PluginSpec, path: &str) -> Result<(Box<dyn Sampler>, Params)> {
    instantiate(sampler(&spec.name, path)?, spec, path, |b, p| b(p))
}

/// The metric loss `spec` names, built, with its validated parameters.
pub fn build_loss(spec: &PluginSpec, path: &str) -> Result<(Box<dyn MetricLoss>, Params)> {
    instantiate(loss(&spec.name, path)?, spec, path, |b, p| b(p))
}

/// The segmentation loss `spec` names, built, with its validated parameters.
pub fn build_seg_loss(
    spec: &PluginSpec,
    path: &str,
) -> Result<(Box<dyn SegmentationLoss>, Params)> {
    instantiate(seg_loss(&spec.name, path)?, spec, path, |b, p| b(p))
}

/// The evaluation metric `spec` names, built, with its validated parameters.
pub fn build_metric(spec: &PluginSpec, path: &str) -> Result<(Box<dyn Metric>, Params)> {
    instantiate(metric(&spec.name, path)?, spec, path, |b, p| b(p))
}

/// The post-processing step `spec` names, built, with its validated parameters.
pub fn build_postprocess(spec: &PluginSpec, path: &str) -> Result<(Box<dyn PostProcess>, Params)> {
    instantiate(postprocess(&spec.name, path)?, spec, path, |b, p| b(p))
}

/// The backbone `spec` names, its weights in `vb`, with its validated parameters.
pub fn build_backbone(
    spec: &PluginSpec,
    path: &str,
    ctx: &BackboneContext,
    vb: VarBuilder<'_>,
) -> Result<(Box<dyn Backbone>, Params)> {
    instantiate(backbone(&spec.name, path)?, spec, path, |b, p| {
        b(p, ctx, vb)
    })
}

/// The metrics the paper reports, in its order (Table III: DSC, ASD, SEN, PPV), then the
/// extra surface metrics; the default `evaluation.metrics` lists these first.
pub const PAPER_METRIC_ORDER: [&str; 6] = ["dsc", "asd", "sen", "ppv", "assd", "hd95"];

/// Every registered metric name: the paper's first (in its order), then the others by name.
pub fn metric_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = list(PluginKind::Metric).iter().map(|m| m.name).collect();
    names.sort_by_key(|n| {
        (
            PAPER_METRIC_ORDER
                .iter()
                .position(|p| p == n)
                .unwrap_or(PAPER_METRIC_ORDER.len()),
            *n,
        )
    });
    names
}

/// Names registered twice within one kind (should be empty; a test checks it).
pub fn duplicates() -> Vec<(PluginKind, &'static str)> {
    let mut out = Vec::new();
    for kind in PluginKind::ALL {
        let l = list(kind);
        for w in l.windows(2) {
            if w[0].name == w[1].name {
                out.push((kind, w[0].name));
            }
        }
    }
    out
}

fn find<C: 'static>(
    kind: PluginKind,
    name: &str,
    path: &str,
    mut it: impl Iterator<Item = &'static Plugin<C>> + Clone,
) -> Result<&'static Plugin<C>> {
    if let Some(p) = it.clone().find(|p| p.name == name) {
        return Ok(p);
    }
    if name.is_empty() {
        let mut names: Vec<&str> = it.map(|p| p.name).collect();
        names.sort_unstable();
        return Err(CoreError::Param {
            path: path.to_string(),
            message: format!(
                "a {} needs a `name` key (or a bare name, or a preset that sets it); registered: {}",
                kind.name(),
                names.join(", ")
            ),
        });
    }
    let mut names: Vec<&str> = it.by_ref().map(|p| p.name).collect();
    names.sort_unstable();
    Err(CoreError::UnknownPlugin {
        path: path.to_string(),
        kind: kind.name(),
        name: name.to_string(),
        suggestion: did_you_mean(name, names.iter().copied()),
        registered: if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        },
    })
}

/// The sampler registered as `name`; `path` names the YAML key in errors.
pub fn sampler(name: &str, path: &str) -> Result<&'static SamplerPlugin> {
    find(
        PluginKind::Sampler,
        name,
        path,
        inventory::iter::<SamplerPlugin>(),
    )
}
/// The metric loss registered as `name`.
pub fn loss(name: &str, path: &str) -> Result<&'static LossPlugin> {
    find(
        PluginKind::Loss,
        name,
        path,
        inventory::iter::<LossPlugin>(),
    )
}
/// The segmentation loss registered as `name`.
pub fn seg_loss(name: &str, path: &str) -> Result<&'static SegLossPlugin> {
    find(
        PluginKind::SegLoss,
        name,
        path,
        inventory::iter::<SegLossPlugin>(),
    )
}
/// The backbone registered as `name`.
pub fn backbone(name: &str, path: &str) -> Result<&'static BackbonePlugin> {
    find(
        PluginKind::Backbone,
        name,
        path,
        inventory::iter::<BackbonePlugin>(),
    )
}
/// The evaluation metric registered as `name`.
pub fn metric(name: &str, path: &str) -> Result<&'static MetricPlugin> {
    find(
        PluginKind::Metric,
        name,
        path,
        inventory::iter::<MetricPlugin>(),
    )
}

/// The post-processing step registered as `name`.
pub fn postprocess(name: &str, path: &str) -> Result<&'static PostprocessPlugin> {
    find(
        PluginKind::Postprocess,
        name,
        path,
        inventory::iter::<PostprocessPlugin>(),
    )
}

/// Look up `name` in the registry of `kind` and validate `params` against it.
pub fn validate(kind: PluginKind, name: &str, params: &Mapping, path: &str) -> Result<Params> {
    match kind {
        PluginKind::Sampler => sampler(name, path)?.params(params, path),
        PluginKind::Loss => loss(name, path)?.params(params, path),
        PluginKind::SegLoss => seg_loss(name, path)?.params(params, path),
        PluginKind::Backbone => backbone(name, path)?.params(params, path),
        PluginKind::Metric => metric(name, path)?.params(params, path),
        PluginKind::Postprocess => postprocess(name, path)?.params(params, path),
    }
}
