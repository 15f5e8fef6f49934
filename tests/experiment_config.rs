//! The experiment schema: strict parsing, grid expansion, presets, overrides.

mod common;

use common::{plan, plan_err};
use metricunet_core::presets::PRESETS;
use metricunet_core::{Experiment, ExperimentPlan};
use serde_norway::Value;

fn only(text: &str) -> Experiment {
    let p = plan(text).expect("valid experiment");
    assert_eq!(p.cells.len(), 1);
    p.cells[0].config.clone()
}

fn sampler_names(e: &Experiment) -> Vec<String> {
    e.metric.samplers.iter().map(|s| s.name.clone()).collect()
}

fn param(spec: &metricunet_core::PluginSpec, key: &str) -> Value {
    spec.params.get(key).cloned().unwrap_or(Value::Null)
}

#[test]
fn empty_file_resolves_to_paper_defaults() {
    let e = only("");
    assert_eq!(e.metric.lambda, 0.01);
    assert_eq!(e.model.backbone.name, "metricunet");
    assert_eq!(e.stage1.backbone.name, "unet-light");
    assert_eq!(e.model.patches.size, [64, 64]);
    assert_eq!(e.model.patches.slices, 3);
    assert_eq!(e.stage1.patches.slices, 5);
    assert_eq!(e.training.batch_size, 30);
    assert_eq!(e.data.split.train, 0.7);
    // every loss parameter is filled in with its default
    assert_eq!(param(&e.metric.loss, "sigma"), Value::from(0.7));
    assert_eq!(param(&e.metric.loss, "epsilon"), Value::from(0.01));
    assert_eq!(param(&e.metric.loss, "beta"), Value::from(0.1));
    assert_eq!(
        param(&e.model.backbone, "encoder"),
        serde_norway::from_str::<Value>("[32, 64, 128, 256]").expect("yaml")
    );
}

#[test]
fn unknown_key_names_path_nearest_key_and_position() {
    let e = plan_err("name: x\nmetric:\n  lamda: 0.1\n");
    assert!(e.contains("metric.lamda"), "{e}");
    assert!(e.contains("did you mean `lambda`"), "{e}");
    assert!(e.contains("line 3 column 3"), "{e}");
    let e = plan_err("trainning:\n  iterations: 5\n");
    assert!(
        e.contains("trainning") && e.contains("did you mean `training`"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_line_and_column() {
    let e = plan_err("name: x\ntraining:\n  batch_size: many\n");
    assert!(e.contains("training.batch_size"), "{e}");
    assert!(e.contains("line 3 column 15"), "{e}");
    let e = plan_err("data:\n  spacing_mm: [1, 1]\n");
    assert!(e.contains("data.spacing_mm") && e.contains("line 2"), "{e}");
    let e = plan_err("metric: {lambda: [1]}\n");
    assert!(e.contains("metric.lambda") && e.contains("line 1"), "{e}");
}

#[test]
fn syntax_error_names_position() {
    let e = plan_err("metric:\n  lambda: [0.1\n");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn plugin_names_and_parameters_are_checked() {
    let e = plan_err("metric:\n  samplers: [{name: hard-negativ}]\n");
    assert!(
        e.contains("metric.samplers[0]") && e.contains("did you mean `hard-negative`"),
        "{e}"
    );
    let e = plan_err("metric:\n  samplers: [random, {name: hard-negative, tua: 0.2}]\n");
    assert!(
        e.contains("metric.samplers[1].tua") && e.contains("did you mean `tau`"),
        "{e}"
    );
    let e = plan_err("metric:\n  samplers: [{name: hard-negative, tau: 2}]\n");
    assert!(
        e.contains("metric.samplers[0].tau") && e.contains("out of range"),
        "{e}"
    );
    let e = plan_err("model:\n  backbone: {name: unet, encoder: [8, 16]}\n");
    assert!(e.contains("decoder") || e.contains("model.backbone"), "{e}");
    let e = plan_err("model:\n  backbone: {name: resnet}\n");
    assert!(
        e.contains("model.backbone")
            && e.contains("unknown backbone `resnet`")
            && e.contains("unet"),
        "{e}"
    );
    // a plugin without `name` keeps the default plugin (or the preset's) and sets its
    // parameters; they are still checked against that plugin
    let p = plan("metric:\n  loss: {sigma: 0.7}\n").expect("default loss, sigma set");
    let loss = &p.cells[0].config.metric.loss;
    assert_eq!(loss.name, "triplet-pair");
    assert_eq!(
        loss.params.get("sigma"),
        Some(&serde_norway::Value::from(0.7))
    );
    let e = plan_err("metric:\n  loss: {sigmaa: 1}\n");
    assert!(
        e.contains("metric.loss.sigmaa") && e.contains("did you mean `sigma`"),
        "{e}"
    );
}

#[test]
fn value_checks_name_the_field() {
    let e = plan_err("data:\n  split: {train: 0.8, val: 0.1, test: 0.2}\n");
    assert!(e.contains("data.split") && e.contains("must be 1"), "{e}");
    let e = plan_err("model:\n  patches: {size: [60, 64]}\n");
    assert!(
        e.contains("model.patches.size[0]") && e.contains("multiple of 8"),
        "{e}"
    );
    let e = plan_err("stage1:\n  patches: {slices: 4}\n");
    assert!(
        e.contains("stage1.patches.slices") && e.contains("odd"),
        "{e}"
    );
    let e = plan_err("metric: {lambda: -1}\n");
    assert!(e.contains("metric.lambda"), "{e}");
    let e = plan_err("data: {source: msd}\n");
    assert!(e.contains("data.root"), "{e}");
    let e = plan_err("seeds: []\n");
    assert!(e.contains("seeds"), "{e}");
    let e = plan_err("seeds: [1, 1]\n");
    assert!(e.contains("repeats"), "{e}");
    let e = plan_err("name: a/b\n");
    assert!(e.contains("name"), "{e}");
}

#[test]
fn grid_is_the_cartesian_product_times_seeds() {
    let p = plan(
        "preset: metricunet-r\nseeds: [3, 4]\ngrid:\n  metric.lambda: [0.1, 0.01, 0.001]\n  metric.loss.sigma: [0.1, 0.3, 0.5, 0.7, 1.0]\n",
    )
    .expect("valid");
    assert_eq!(p.cells.len(), 3 * 5 * 2);
    let c = &p.cells[7]; // lambda 0.1, sigma 0.7 (index 3), seed 4
    assert_eq!(c.config.metric.lambda, 0.1);
    assert_eq!(param(&c.config.metric.loss, "sigma"), Value::from(0.7));
    assert_eq!((c.seed, c.config.seeds.clone()), (4, vec![4]));
    assert_eq!(c.label(), "metric.lambda=0.1 metric.loss.sigma=0.7");
    assert!(c.config.grid.is_empty());
    // hashes: distinct per cell, stable across parses
    let mut hashes: Vec<String> = p.cells.iter().map(|c| c.hash().expect("hash")).collect();
    let again = plan(
        "preset: metricunet-r\nseeds: [3, 4]\ngrid:\n  metric.lambda: [0.1, 0.01, 0.001]\n  metric.loss.sigma: [0.1, 0.3, 0.5, 0.7, 1.0]\n",
    )
    .expect("valid");
    assert_eq!(hashes[7], again.cells[7].hash().expect("hash"));
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 30);
}

/// `grid_mode: one-at-a-time` (the paper's Fig. 6 varies one parameter at a time): the
/// baseline (the file's own values) plus each axis's other values alone; each cell is the
/// same configuration, with the same hash, as the product grid's cell with those values.
#[test]
fn one_at_a_time_grid_varies_each_axis_around_the_files_values() {
    let grid = "grid:\n  metric.lambda: [0.1, 0.01, 0.001]\n  metric.loss.sigma: [0.1, 0.3, 0.5, 0.7, 1.0]\n";
    let text = format!("preset: metricunet-r\nseeds: [3, 4]\ngrid_mode: one-at-a-time\n{grid}");
    let p = plan(&text).expect("valid");
    // baseline + 2 other lambdas + 4 other sigmas, times 2 seeds
    assert_eq!(p.cells.len(), (1 + 2 + 4) * 2);
    let labels: Vec<String> = p.cells.iter().step_by(2).map(|c| c.label()).collect();
    assert_eq!(
        labels,
        [
            "metric.lambda=0.01 metric.loss.sigma=0.7",
            "metric.lambda=0.1 metric.loss.sigma=0.7",
            "metric.lambda=0.001 metric.loss.sigma=0.7",
            "metric.lambda=0.01 metric.loss.sigma=0.1",
            "metric.lambda=0.01 metric.loss.sigma=0.3",
            "metric.lambda=0.01 metric.loss.sigma=0.5",
            "metric.lambda=0.01 metric.loss.sigma=1.0",
        ]
    );
    assert_eq!(
        p.baseline,
        vec![
            ("metric.lambda".to_string(), Some(Value::from(0.01))),
            ("metric.loss.sigma".to_string(), Some(Value::from(0.7))),
        ]
    );
    // the cells are the product grid's cells with the same values (shared results)
    let product = plan(&format!("preset: metricunet-r\nseeds: [3, 4]\n{grid}")).expect("valid");
    let hashes: Vec<String> = product
        .cells
        .iter()
        .map(|c| c.run_hash().expect("hash"))
        .collect();
    for c in &p.cells {
        assert!(c.config.grid.is_empty() && c.config.grid_mode.is_product());
        assert!(
            hashes.contains(&c.run_hash().expect("hash")),
            "{}",
            c.label()
        );
    }
    // a baseline written differently from the grid (1 vs 1.0) is still the baseline
    let p = plan(
        "preset: metricunet-r\ngrid_mode: one-at-a-time\nmetric: {loss: {sigma: 1}}\ngrid:\n  metric.loss.sigma: [0.5, 1.0]\n",
    )
    .expect("valid");
    let labels: Vec<String> = p.cells.iter().map(|c| c.label()).collect();
    assert_eq!(labels, ["metric.loss.sigma=1.0", "metric.loss.sigma=0.5"]);
    // a baseline outside the grid's values is a cell of its own
    let p = plan(
        "preset: metricunet-r\ngrid_mode: one-at-a-time\ngrid:\n  metric.lambda: [0.1, 0.5]\n",
    )
    .expect("valid");
    let labels: Vec<String> = p.cells.iter().map(|c| c.label()).collect();
    assert_eq!(
        labels,
        [
            "metric.lambda=0.01",
            "metric.lambda=0.1",
            "metric.lambda=0.5"
        ]
    );
    // without a baseline value there is nothing to hold an axis at: a clear error
    let e = plan_err(
        "grid_mode: one-at-a-time\ngrid:\n  preset: [unet, metricunet-r]\n  metric.lambda: [0.1]\n",
    );
    assert!(
        e.contains("grid.preset") && e.contains("baseline value"),
        "{e}"
    );
    let e = plan_err("grid_mode: pairwise\n");
    assert!(
        e.contains("grid_mode") && e.contains("one-at-a-time"),
        "{e}"
    );
    // a product grid records the file's values too, where it has them
    let p = plan(&format!("preset: metricunet-r\n{grid}")).expect("valid");
    assert!(p.grid_mode.is_product());
    assert_eq!(
        p.baseline[1],
        ("metric.loss.sigma".to_string(), Some(Value::from(0.7)))
    );
}

#[test]
fn grid_path_outside_the_schema_fails_before_any_work() {
    let e = plan_err("grid:\n  metric.lamda: [0.1, 0.01]\n");
    assert!(
        e.contains("metric.lamda") && e.contains("did you mean `lambda`"),
        "{e}"
    );
    let e = plan_err("grid:\n  metric.loss.sigmaa: [0.1]\n");
    assert!(
        e.contains("metric.loss.sigmaa") && e.contains("did you mean `sigma`"),
        "{e}"
    );
    let e = plan_err("grid:\n  metric.lambda: 0.1\n");
    assert!(
        e.contains("grid.metric.lambda") && e.contains("list"),
        "{e}"
    );
    let e = plan_err("grid:\n  training.batch_size: [8, big]\n");
    assert!(
        e.contains("training.batch_size=big") && e.contains("batch_size"),
        "{e}"
    );
}

#[test]
fn grid_over_sampler_parameters_by_index() {
    let p =
        plan("preset: metricunet-h\ngrid:\n  metric.samplers.0.tau: [0.1, 0.3]\n").expect("valid");
    let taus: Vec<Value> = p
        .cells
        .iter()
        .map(|c| param(&c.config.metric.samplers[0], "tau"))
        .collect();
    assert_eq!(taus, vec![Value::from(0.1), Value::from(0.3)]);
}

#[test]
fn every_table_two_preset_resolves() {
    let want: &[(&str, &str, &[&str], f64)] = &[
        ("unet", "unet", &[], 0.1),
        ("metricunet-r-sep", "metricunet-sep", &["random"], 0.0),
        ("metricunet-r", "metricunet", &["random"], 0.0),
        ("metricunet-h", "metricunet", &["hard-negative"], 0.0),
        ("metricunet-c", "metricunet", &["contour-aware"], 0.0),
        (
            "metricunet-hr",
            "metricunet",
            &["hard-negative", "random"],
            0.0,
        ),
        (
            "metricunet-hc",
            "metricunet",
            &["hard-negative", "contour-aware"],
            0.0,
        ),
        ("metricunet-hp", "metricunet", &["hard-negative"], 0.1),
        (
            "metricunet-hrp",
            "metricunet",
            &["hard-negative", "random"],
            0.1,
        ),
        (
            "metricunet-hcp",
            "metricunet",
            &["hard-negative", "contour-aware"],
            0.1,
        ),
        (
            "metricunet-hcr",
            "metricunet",
            &["hard-negative", "contour-aware", "random"],
            0.0,
        ),
        ("unet-dice", "unet", &[], 0.1),
        ("unet-ce-dice", "unet", &[], 0.1),
        ("unet-boundary", "unet", &[], 0.1),
    ];
    assert_eq!(PRESETS.len(), want.len());
    for (name, backbone, samplers, beta) in want {
        let e = only(&format!("preset: {name}\n"));
        assert_eq!(e.model.backbone.name, *backbone, "{name}");
        assert_eq!(
            sampler_names(&e),
            samplers.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(param(&e.metric.loss, "beta"), Value::from(*beta), "{name}");
    }
}

/// Each preset equals the same configuration written as plain YAML.
#[test]
fn presets_equal_their_plain_yaml() {
    for p in PRESETS {
        let with_preset = only(&format!("name: x\npreset: {}\n", p.name));
        let samplers: Vec<String> = p
            .samplers
            .iter()
            .map(|s| format!("{{name: {s}}}"))
            .collect();
        let beta = if p.samplers.is_empty() {
            String::new()
        } else {
            format!(
                "\n  loss: {{name: triplet-pair, beta: {}}}",
                if p.pair { 0.1 } else { 0.0 }
            )
        };
        let seg: Vec<String> = p
            .segmentation_loss
            .iter()
            .map(|(n, w)| format!("{{name: {n}, weight: {w}}}"))
            .collect();
        let seg = if seg.is_empty() {
            String::new()
        } else {
            format!("\n  segmentation_loss: [{}]", seg.join(", "))
        };
        let plain = format!(
            "name: x\nmodel:\n  backbone: {}{seg}\nmetric:\n  samplers: [{}]{beta}\n",
            p.backbone,
            samplers.join(", ")
        );
        let mut plain = only(&plain);
        plain.preset = Some(p.name.to_string());
        assert_eq!(with_preset, plain, "preset {}", p.name);
    }
}

#[test]
fn shipped_examples_validate_and_agree() {
    metricunet::link_plugins();
    let root = env!("CARGO_MANIFEST_DIR");
    let table3 =
        ExperimentPlan::from_file(&std::path::Path::new(root).join("experiments/table3.yaml"))
            .expect("table3");
    assert_eq!(table3.cells.len(), 30);
    let hcp = table3
        .cells
        .iter()
        .find(|c| c.label() == "preset=metricunet-hcp")
        .expect("hcp cell");
    let plain = ExperimentPlan::from_file(
        &std::path::Path::new(root).join("experiments/examples/metricunet-hcp.yaml"),
    )
    .expect("plain");
    let mut a = hcp.config.clone();
    let mut b = plain.cells[0].config.clone();
    // names and descriptions differ; everything that changes training must not
    a.preset = None;
    a.name = b.name.clone();
    a.device = b.device;
    a.report = b.report.clone();
    a.description.clear();
    b.description.clear();
    assert_eq!(a, b);
    // table III hyper-parameters reach every MetricUNet cell
    for c in &table3.cells {
        assert_eq!(param(&c.config.metric.loss, "sigma"), Value::from(1.0));
        assert_eq!(c.config.metric.lambda, 0.01);
        for s in &c.config.metric.samplers {
            assert_eq!(
                (param(s, "k"), param(s, "m")),
                (Value::from(20), Value::from(1))
            );
        }
    }
}

#[test]
fn presets_check_contradictions() {
    let e = plan_err("preset: metricunet-h\nmetric:\n  samplers: [random]\n");
    assert!(
        e.contains("metric.samplers") && e.contains("contradicts preset `metricunet-h`"),
        "{e}"
    );
    let e = plan_err("preset: metricunet-r\nmodel:\n  backbone: unet\n");
    assert!(
        e.contains("model.backbone") && e.contains("contradicts"),
        "{e}"
    );
    let e = plan_err("preset: metricunet-hp\nmetric:\n  loss: {name: triplet-pair, beta: 0}\n");
    assert!(e.contains("metric.loss.beta"), "{e}");
    let e = plan_err("preset: metricunet-h\ngrid:\n  metric.loss.beta: [0.0, 0.2]\n");
    assert!(
        e.contains("metric.loss.beta=0.2") && e.contains("contradicts"),
        "{e}"
    );
    let e = plan_err("preset: metricunet-hcpp\n");
    assert!(e.contains("did you mean `metricunet-hcp`"), "{e}");
    // consistent settings are fine: sampler parameters stay free, a P preset keeps its beta
    let e = only("preset: metricunet-hp\nmetric:\n  loss: {name: triplet-pair, beta: 0.2}\n  samplers: [{name: hard-negative, tau: 0.3}]\n");
    assert_eq!(param(&e.metric.loss, "beta"), Value::from(0.2));
    assert_eq!(param(&e.metric.samplers[0], "tau"), Value::from(0.3));
}

#[test]
fn set_overrides_apply_before_validation() {
    metricunet::link_plugins();
    let p = ExperimentPlan::with_overrides(
        "preset: metricunet-r\n",
        "t.yaml",
        &[
            "metric.lambda=0.5".into(),
            "training.iterations=7".into(),
            "metric.loss.sigma=1".into(),
        ],
    )
    .expect("valid");
    let e = &p.cells[0].config;
    assert_eq!((e.metric.lambda, e.training.iterations), (0.5, 7));
    assert_eq!(param(&e.metric.loss, "sigma"), Value::from(1.0));
    let err = ExperimentPlan::with_overrides("", "t.yaml", &["metric.lambda".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("path=value"), "{err}");
    let err = ExperimentPlan::with_overrides("", "t.yaml", &["metric.lamda=1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `lambda`"), "{err}");
}

#[test]
fn segmentation_losses_are_plugins_with_weights() {
    use metricunet_core::config::default_segmentation_loss;
    // default: cross-entropy in both stages, left out of the serialised experiment (so the
    // configuration hashes of runs made before the key existed do not change)
    let e = only("name: x\n");
    assert_eq!(e.model.segmentation_loss, default_segmentation_loss());
    assert_eq!(e.stage1.segmentation_loss, default_segmentation_loss());
    let text = serde_norway::to_string(&e).expect("yaml");
    assert!(!text.contains("segmentation_loss"), "{text}");
    // weights (default 1) and each loss's own parameters, defaults filled in
    let e = only(
        "name: x\nmodel:\n  segmentation_loss: [cross-entropy, {name: focal, weight: 0.5, gamma: 1}]\nstage1:\n  segmentation_loss: [dice]\n",
    );
    let seg = &e.model.segmentation_loss;
    assert_eq!(
        (seg[0].spec.name.as_str(), seg[0].weight),
        ("cross-entropy", 1.0)
    );
    assert_eq!((seg[1].spec.name.as_str(), seg[1].weight), ("focal", 0.5));
    assert_eq!(param(&seg[1].spec, "gamma"), Value::from(1.0));
    assert_eq!(param(&seg[1].spec, "alpha"), Value::from(0.25));
    assert_eq!(e.stage1.segmentation_loss[0].spec.name, "dice");
    assert!(serde_norway::to_string(&e)
        .expect("yaml")
        .contains("segmentation_loss"));
    // errors name the entry and what was expected
    for (yaml, want) in [
        (
            "model:\n  segmentation_loss: [dise]\n",
            "did you mean `dice`",
        ),
        (
            "model:\n  segmentation_loss: []\n",
            "at least one segmentation loss",
        ),
        (
            "model:\n  segmentation_loss: [{name: dice, weight: -1}]\n",
            "model.segmentation_loss[0].weight",
        ),
        (
            "model:\n  segmentation_loss: [{name: dice, weight: 0}]\n",
            "every weight is 0",
        ),
        (
            "model:\n  segmentation_loss: [{name: focal, gama: 2}]\n",
            "model.segmentation_loss[0]",
        ),
        (
            "model:\n  segmentation_loss: [{name: dice, weight: heavy}]\n",
            "`weight` must be a number",
        ),
        (
            "preset: unet-dice\nmodel:\n  segmentation_loss: [cross-entropy]\n",
            "contradicts preset `unet-dice`",
        ),
    ] {
        let e = plan_err(yaml);
        assert!(e.contains(want), "{yaml}: {e}");
    }
    // a loss-baseline preset sets the losses; a grid can put them beside Table II rows
    let p =
        plan("grid:\n  preset: [unet, unet-dice, unet-boundary, metricunet-hcr]\n").expect("valid");
    let names: Vec<Vec<(String, f64)>> = p
        .cells
        .iter()
        .map(|c| {
            c.config
                .model
                .segmentation_loss
                .iter()
                .map(|w| (w.spec.name.clone(), w.weight))
                .collect()
        })
        .collect();
    assert_eq!(names[0], vec![("cross-entropy".to_string(), 1.0)]);
    assert_eq!(names[1], vec![("dice".to_string(), 1.0)]);
    assert_eq!(
        names[2],
        vec![("dice".to_string(), 1.0), ("boundary".to_string(), 0.01)]
    );
    assert_eq!(
        sampler_names(&p.cells[3].config),
        ["hard-negative", "contour-aware", "random"]
    );
}

#[test]
fn precision_is_read_checked_and_left_out_of_the_hash_when_f32() {
    use metricunet_core::config::Precision;
    assert_eq!(only("").training.precision, Precision::F32);
    let e = only("training:\n  precision: bf16\nstage1:\n  training:\n    precision: tf32\n");
    assert_eq!(e.training.precision, Precision::Bf16);
    assert_eq!(e.stage1.training.precision, Precision::Tf32);
    let err = plan_err("training:\n  precision: fp16\n");
    assert!(
        err.contains("training.precision") && err.contains("f32") && err.contains("bf16"),
        "{err}"
    );
    // the default is not written, so runs made before the setting keep their hashes
    let text = serde_norway::to_string(&only("")).expect("yaml");
    assert!(!text.contains("precision"), "{text}");
    let p = plan("training:\n  precision: f32\n").expect("plan");
    assert_eq!(
        p.cells[0].hash().expect("hash"),
        plan("").expect("plan").cells[0].hash().expect("hash")
    );
    let p16 = plan("training:\n  precision: bf16\n").expect("plan");
    assert_ne!(
        p16.cells[0].hash().expect("hash"),
        p.cells[0].hash().expect("hash")
    );
}
