//! What an experiment is checked against before any work starts: every plugin resolved
//! through the registries (parameters validated, defaults written back) and the ranges serde's
//! types cannot express.

use crate::backbone::BackboneContext;
use crate::error::Result;
use crate::registry;
use crate::schema::*;

/// Validate every plugin reference against the registries, build it once (so that
/// constraints between parameters are checked before any work starts), and write the full
/// parameter set (defaults included) back into the spec.
pub(crate) fn resolve_plugins(exp: &mut Experiment) -> Result<()> {
    let backbone = |spec: &mut PluginSpec, path: &str, in_channels: usize| -> Result<()> {
        let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &candle_core::Device::Cpu);
        let (_, params) =
            registry::build_backbone(spec, path, &BackboneContext { in_channels }, vb)?;
        spec.params = params.to_yaml();
        Ok(())
    };
    backbone(
        &mut exp.stage1.backbone,
        "stage1.backbone",
        exp.stage1.patches.slices,
    )?;
    backbone(
        &mut exp.model.backbone,
        "model.backbone",
        exp.model.patches.slices,
    )?;
    for (list, path) in [
        (
            &mut exp.stage1.segmentation_loss,
            "stage1.segmentation_loss",
        ),
        (&mut exp.model.segmentation_loss, "model.segmentation_loss"),
    ] {
        // the list as a whole (not empty, weights), then each loss's parameters written back
        crate::seg_loss::SegLoss::from_specs(list, path)?;
        for (i, s) in list.iter_mut().enumerate() {
            let (_, params) = registry::build_seg_loss(&s.spec, &format!("{path}[{i}]"))?;
            s.spec.params = params.to_yaml();
        }
    }
    let (_, params) = registry::build_loss(&exp.metric.loss, "metric.loss")?;
    exp.metric.loss.params = params.to_yaml();
    for (i, s) in exp.metric.samplers.iter_mut().enumerate() {
        let (_, params) = registry::build_sampler(s, &format!("metric.samplers[{i}]"))?;
        s.params = params.to_yaml();
    }
    for (i, s) in exp.postprocess.iter_mut().enumerate() {
        let (_, params) = registry::build_postprocess(s, &format!("postprocess[{i}]"))?;
        s.params = params.to_yaml();
    }
    let metrics = match exp.evaluation.metrics.take() {
        Some(list) => list,
        None => registry::metric_names()
            .into_iter()
            .map(PluginSpec::named)
            .collect(),
    };
    let mut resolved = Vec::with_capacity(metrics.len());
    for (i, mut m) in metrics.into_iter().enumerate() {
        let (_, params) = registry::build_metric(&m, &format!("evaluation.metrics[{i}]"))?;
        m.params = params.to_yaml();
        resolved.push(m);
    }
    exp.evaluation.metrics = Some(resolved);
    Ok(())
}

/// Range checks that serde's types cannot express.
pub(crate) fn check_values(e: &Experiment) -> std::result::Result<(), String> {
    let positive = |path: &str, x: f64| {
        if x.is_finite() && x > 0.0 {
            Ok(())
        } else {
            Err(format!("{path}: expected a positive number, got {x}"))
        }
    };
    let non_negative = |path: &str, x: f64| {
        if x.is_finite() && x >= 0.0 {
            Ok(())
        } else {
            Err(format!("{path}: expected a non-negative number, got {x}"))
        }
    };
    let at_least_one = |path: &str, x: usize| {
        if x >= 1 {
            Ok(())
        } else {
            Err(format!("{path}: expected at least 1, got 0"))
        }
    };
    let share = |path: &str, x: f64| {
        if (0.0..=1.0).contains(&x) {
            Ok(())
        } else {
            Err(format!("{path}: expected a share in [0, 1], got {x}"))
        }
    };
    non_negative("metric.lambda", e.metric.lambda)?;
    for (i, s) in e.data.spacing_mm.iter().enumerate() {
        positive(&format!("data.spacing_mm[{i}]"), *s)?;
    }
    let [lo, hi] = e.data.hu_window;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(format!(
            "data.hu_window: expected [low, high] with low < high, got [{lo}, {hi}]"
        ));
    }
    let sp = &e.data.split;
    for (name, x) in [("train", sp.train), ("val", sp.val), ("test", sp.test)] {
        share(&format!("data.split.{name}"), x)?;
    }
    if (sp.train + sp.val + sp.test - 1.0).abs() > 1e-6 {
        return Err(format!(
            "data.split: train + val + test must be 1, got {} + {} + {} = {}",
            sp.train,
            sp.val,
            sp.test,
            sp.train + sp.val + sp.test
        ));
    }
    if e.data.source == DataSource::Msd && e.data.root.is_none() {
        return Err("data.root: `source: msd` needs the dataset folder in data.root".into());
    }
    if e.data.source == DataSource::List && e.data.cases.is_empty() {
        return Err("data.cases: `source: list` needs at least one case".into());
    }
    if e.data.label_map.values().all(|&v| v == 0) {
        return Err("data.label_map: no source label maps to the foreground (1)".into());
    }
    at_least_one("data.phantom.cases", e.data.phantom.cases)?;
    if e.data.phantom.in_plane < 16 || e.data.phantom.slices < 8 {
        return Err(format!(
            "data.phantom: expected in_plane >= 16 and slices >= 8, got {} and {}",
            e.data.phantom.in_plane, e.data.phantom.slices
        ));
    }
    at_least_one("stage1.downsample", e.stage1.downsample)?;
    for (stage, p) in [
        ("stage1.patches", &e.stage1.patches),
        ("model.patches", &e.model.patches),
    ] {
        at_least_one(&format!("{stage}.slices"), p.slices)?;
        if p.slices % 2 == 0 {
            return Err(format!(
                "{stage}.slices: expected an odd number (the label is the middle slice), got {}",
                p.slices
            ));
        }
        for (i, s) in p.size.iter().enumerate() {
            if *s == 0 || s % 8 != 0 {
                return Err(format!("{stage}.size[{i}]: expected a positive multiple of 8 (three 2x2 poolings), got {s}"));
            }
        }
        at_least_one(&format!("{stage}.per_case"), p.per_case)?;
        share(&format!("{stage}.foreground_share"), p.foreground_share)?;
    }
    for (i, c) in e.model.crop.iter().enumerate() {
        if *c == 0 || c % 8 != 0 {
            return Err(format!(
                "model.crop[{i}]: expected a positive multiple of 8, got {c}"
            ));
        }
    }
    for (stage, t) in [
        ("stage1.training", &e.stage1.training),
        ("training", &e.training),
    ] {
        at_least_one(&format!("{stage}.iterations"), t.iterations)?;
        if let Some(e) = t.epochs {
            at_least_one(&format!("{stage}.epochs"), e)?;
        }
        at_least_one(&format!("{stage}.batch_size"), t.batch_size)?;
        positive(&format!("{stage}.learning_rate"), t.learning_rate)?;
        share(&format!("{stage}.momentum"), t.momentum)?;
        non_negative(&format!("{stage}.weight_decay"), t.weight_decay)?;
        non_negative(&format!("{stage}.poly_power"), t.poly_power)?;
        if let Some(p) = &t.plateau {
            at_least_one(&format!("{stage}.plateau.patience"), p.patience)?;
            non_negative(&format!("{stage}.plateau.min_delta"), p.min_delta)?;
            if t.validate_every == 0 {
                return Err(format!(
                    "{stage}.plateau: needs validation; set {stage}.validate_every above 0"
                ));
            }
        }
    }
    if e.stages.is_empty() {
        return Err("stages: name at least one of stage1, stage2".into());
    }
    if e.name.is_empty() || e.name.contains(['/', '\\']) || e.name.starts_with('.') {
        return Err(format!(
            "name: `{}` must be a non-empty folder name (no slashes)",
            e.name
        ));
    }
    Ok(())
}
