//! `metricunet bench train` and `metricunet bench infer`: timings printed as a table and
//! written as JSON. Nothing is asserted.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use metricunet_core::config::{DeviceChoice, MetricConfig, PluginSpec, Precision};
use metricunet_train::bench::{
    peak_rss_mb, profile_steps, reset_peak_rss, time_steps, ProfileRow, StepCase, StepTiming,
};
use metricunet_train::select_device;
use serde_norway::{Mapping, Value};

/// The networks `bench train` knows: (name, encoder, decoder).
const MODELS: [(&str, &[i64], &[i64]); 2] = [
    ("paper", &[32, 64, 128, 256], &[128, 64, 256]),
    ("quickstart", &[8, 16, 32, 64], &[32, 16, 32]),
];
/// The quickstart's stage-1 localiser (`experiments/quickstart.yaml`, `stage1`): `unet-light`
/// with this encoder and decoder on 32 x 32 patches of 5 slices, batch 8, cross-entropy only
/// (stage 1 has no metric module). `bench train --models quickstart-stage1`.
const STAGE1: (&str, &[i64], &[i64], usize, usize, usize) =
    ("quickstart-stage1", &[8, 16, 32], &[16, 8], 5, 32, 8);
/// Metric-module variants: CE only (UNet), one sampler each, and MetricUNet-HCP.
pub const VARIANTS: [&str; 5] = ["unet", "random", "hard-negative", "contour-aware", "hcp"];

fn backbone(name: &str, encoder: &[i64], decoder: &[i64]) -> PluginSpec {
    let mut params = Mapping::new();
    let list = |v: &[i64]| Value::Sequence(v.iter().map(|&x| Value::from(x)).collect());
    params.insert("encoder".into(), list(encoder));
    params.insert("decoder".into(), list(decoder));
    PluginSpec {
        name: name.into(),
        params,
    }
}

fn metric(variant: &str) -> Result<(&'static str, MetricConfig)> {
    let mut m = MetricConfig::default();
    let mut loss = Mapping::new();
    loss.insert("sigma".into(), Value::from(1.0));
    match variant {
        "unet" => return Ok(("unet", m)),
        "hcp" => {
            m.samplers = vec![
                PluginSpec::named("hard-negative"),
                PluginSpec::named("contour-aware"),
            ];
            loss.insert("beta".into(), Value::from(0.1));
        }
        s @ ("random" | "hard-negative" | "contour-aware") => {
            m.samplers = vec![PluginSpec::named(s)]
        }
        other => bail!(
            "--variants {other}: expected some of {}",
            VARIANTS.join(", ")
        ),
    }
    m.loss = PluginSpec {
        name: "triplet-pair".into(),
        params: loss,
    };
    Ok(("metricunet", m))
}

/// Options of `bench train`.
pub struct TrainBenchArgs {
    pub models: Vec<String>,
    pub batches: Vec<usize>,
    pub variants: Vec<String>,
    pub size: usize,
    pub steps: usize,
    pub warmup: usize,
    pub device: DeviceChoice,
    pub json: Option<std::path::PathBuf>,
    /// Profile each case after timing it ([`metricunet_train::bench::profile_steps`]).
    pub profile: bool,
    /// Arithmetic of the CUDA convolutions.
    pub precision: Precision,
}

fn timing_json(t: &StepTiming, profile: Option<&[ProfileRow]>) -> serde_json::Value {
    serde_json::json!({
        "label": t.label, "batch": t.batch, "size": t.size, "steps": t.steps,
        "forward_s": t.forward_s, "backward_s": t.backward_s, "optimizer_s": t.optimizer_s,
        "step_s": t.step_s, "peak_rss_mb": t.peak_rss_mb,
        "peak_gpu_used_mb": t.peak_gpu.map(|p| p.used_mb),
        "peak_gpu_reserved_mb": t.peak_gpu.map(|p| p.reserved_mb),
        "profile": profile.map(|rows| rows.iter().map(|r| serde_json::json!({
            "op": r.op, "pass": r.pass, "calls_per_step": r.calls_per_step,
            "seconds_per_step": r.seconds_per_step, "share": r.share,
        })).collect::<Vec<_>>()),
    })
}

/// A step profile as a Markdown table.
fn profile_table(label: &str, batch: usize, rows: &[ProfileRow]) -> String {
    let total: f64 = rows.iter().map(|r| r.seconds_per_step).sum();
    let mut out = format!(
        "\nprofile: {label}, batch {batch} ({:.4} s per synchronised step; ops timed between device waits)\n\n| op | pass | calls / step | ms / step | share |\n|---|---|---|---|---|\n",
        total
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.1} % |",
            r.op,
            r.pass,
            if r.calls_per_step > 0.0 {
                format!("{:.0}", r.calls_per_step)
            } else {
                "-".into()
            },
            r.seconds_per_step * 1e3,
            r.share * 100.0
        );
    }
    out
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    Ok(metricunet_core::fsio::write_atomic(path, text.as_bytes())?)
}

/// `metricunet bench train`.
pub fn train(args: &TrainBenchArgs) -> Result<String> {
    let device = select_device(args.device)?;
    let _precision = metricunet_train::device::training_precision(args.precision, &device);
    let device_name = metricunet_train::device::device_name(&device);
    let mut cases = Vec::new();
    for model in &args.models {
        if model == STAGE1.0 {
            let (name, enc, dec, slices, size, batch) = STAGE1;
            cases.push(StepCase {
                label: format!("{name} unet"),
                backbone: backbone("unet-light", enc, dec),
                in_channels: slices,
                size,
                batch,
                metric: MetricConfig::default(),
            });
            continue;
        }
        let Some((name, enc, dec)) = MODELS.iter().find(|(n, _, _)| n == model) else {
            bail!("--models {model}: expected paper, quickstart or quickstart-stage1");
        };
        let batches = if *name == "quickstart" {
            vec![8]
        } else {
            args.batches.clone()
        };
        for &batch in &batches {
            for v in &args.variants {
                let (net, m) = metric(v)?;
                cases.push(StepCase {
                    label: format!("{name} {v}"),
                    backbone: backbone(net, enc, dec),
                    in_channels: 3,
                    size: args.size,
                    batch,
                    metric: m,
                });
            }
        }
    }
    let mut out = format!(
        "bench train: {} x {} x 3 patches ({} x {} x {} for {}), f32, {device_name}; median of {} steps after {} warm-up\n\n",
        args.size, args.size, STAGE1.4, STAGE1.4, STAGE1.3, STAGE1.0, args.steps, args.warmup
    );
    let gpu = device.is_cuda();
    let _ = writeln!(
        out,
        "| model | variant | batch | forward (s) | backward (s) | optimizer (s) | step (s) | samples/s | peak RSS (MB) |{}\n|---|---|---|---|---|---|---|---|---|{}",
        if gpu { " GPU used / held (MB) |" } else { "" },
        if gpu { "---|" } else { "" }
    );
    let mut results = Vec::new();
    let mut profiles = Vec::new();
    for case in &cases {
        eprintln!("timing {} at batch {} ...", case.label, case.batch);
        let t = time_steps(case, &device, args.warmup, args.steps)?;
        let (model, variant) = t.label.split_once(' ').unwrap_or((&t.label, ""));
        let _ = write!(
            out,
            "| {model} | {variant} | {} | {:.3} | {:.3} | {:.4} | {:.3} | {:.2} | {} |",
            t.batch,
            t.forward_s,
            t.backward_s,
            t.optimizer_s,
            t.step_s,
            t.batch as f64 / t.step_s,
            t.peak_rss_mb
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into())
        );
        if gpu {
            let _ = write!(
                out,
                " {} |",
                t.peak_gpu
                    .map(|p| format!("{:.0} / {:.0}", p.used_mb, p.reserved_mb))
                    .unwrap_or_else(|| "-".into())
            );
        }
        out.push('\n');
        if args.profile {
            eprintln!("profiling {} at batch {} ...", case.label, case.batch);
            profiles.push(profile_steps(case, &device, args.warmup, args.steps)?);
        }
        results.push(t);
    }
    for (t, rows) in results.iter().zip(&profiles) {
        out.push_str(&profile_table(&t.label, t.batch, rows));
    }
    // metric-module overhead: each variant's step over the UNet step of the same model/batch
    let mut overhead = String::new();
    for t in &results {
        let (model, variant) = t.label.split_once(' ').unwrap_or((&t.label, ""));
        if variant == "unet" {
            continue;
        }
        if let Some(base) = results
            .iter()
            .find(|b| b.label == format!("{model} unet") && b.batch == t.batch)
        {
            let _ = writeln!(
                overhead,
                "  {model} batch {}: {variant} / unet = {:.3}",
                t.batch,
                t.step_s / base.step_s
            );
        }
    }
    if !overhead.is_empty() {
        let _ = write!(
            out,
            "\nmetric-module overhead (step time ratio):\n{overhead}"
        );
    }
    if let Some(path) = &args.json {
        write_json(
            path,
            &serde_json::json!({
                "benchmark": "train", "device": device_name,
                "threads": rayon::current_num_threads(),
                "results": results
                    .iter()
                    .enumerate()
                    .map(|(i, t)| timing_json(t, profiles.get(i).map(|p| p.as_slice())))
                    .collect::<Vec<_>>(),
            }),
        )?;
        let _ = writeln!(out, "\nwritten: {}", path.display());
    }
    Ok(out)
}

/// `metricunet bench infer`: a phantom CT through both stages of a (seeded, untrained)
/// network of the given experiment's sizes, and the stage-2 crop alone.
pub fn infer(
    experiment: &Path,
    in_plane: usize,
    slices: usize,
    repeats: usize,
    device: DeviceChoice,
    json: Option<&Path>,
) -> Result<String> {
    use metricunet_data::phantom::{generate, PhantomSize};
    use metricunet_data::preprocess::{crop_around, preprocess, PreprocessParams};
    let plan = metricunet_core::ExperimentPlan::from_file(experiment)?;
    let config = plan.cells[0].config.clone();
    let device = select_device(device)?;
    let device_name = metricunet_train::device::device_name(&device);
    let pipeline = metricunet_eval::Pipeline::untrained(config.clone(), device, 0)?;
    let case = generate(0, 0, &PhantomSize { in_plane, slices });
    let t = Instant::now();
    let pre = preprocess(&case.image, None, &PreprocessParams::from(&config.data))?;
    let t_pre = t.elapsed().as_secs_f64();
    let mut whole = Vec::new();
    let mut crop_t = Vec::new();
    reset_peak_rss();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        // untrained weights may find no prostate: the time to the end of stage 1 still counts
        match pipeline.predict_preprocessed(&pre, Path::new("phantom")) {
            Ok(_) | Err(metricunet_eval::PredictError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        whole.push(t.elapsed().as_secs_f64());
        let centre = [0, 1, 2].map(|a| pre.image.geometry.dims[a] as f64 / 2.0);
        let (crop, _) = crop_around(&pre.image, centre, config.model.crop, 0.0);
        let t = Instant::now();
        pipeline.segment_stage2(&crop)?;
        crop_t.push(t.elapsed().as_secs_f64());
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (w, c) = (med(whole), med(crop_t));
    let [nx, ny, nz] = case.image.geometry.dims;
    let c3 = config.model.crop;
    let out = format!(
        "bench infer ({}, {device_name}, median of {}):\n  preprocessing of a {nx} x {ny} x {nz} phantom CT: {t_pre:.2} s\n  whole case, both stages (stage 1 on every slice of the downsampled body crop, stage 2 on the {} x {} x {} crop, back to the CT grid): {w:.2} s\n  stage-2 crop alone ({} slices of {} x {}): {c:.2} s\n  peak RSS: {}\n",
        experiment.display(),
        repeats.max(1),
        c3[0], c3[1], c3[2], c3[2], c3[0], c3[1],
        peak_rss_mb().map(|m| format!("{m:.0} MB")).unwrap_or_else(|| "-".into())
    );
    if let Some(path) = json {
        write_json(
            path,
            &serde_json::json!({
                "benchmark": "infer", "device": device_name, "experiment": experiment.display().to_string(),
                "ct_dims": [nx, ny, nz], "preprocess_s": t_pre, "whole_case_s": w, "stage2_crop_s": c,
                "crop": c3, "peak_rss_mb": peak_rss_mb(),
            }),
        )?;
    }
    Ok(out)
}

/// `metricunet bench parity`: one training step on `device` against the same step on the CPU
/// (same seeded weights, batch and sampler seed), both in f32, and both against the step on the
/// CPU in f64. Passes when, over the whole step (loss, logits, all gradients, all stepped
/// variables), the device is within `tolerance` of the f64 step or no more than 3x as far
/// from it as the CPU's f32 step (f32 rounding in another summation order, not a wrong kernel).
pub fn parity(
    model: &str,
    batch: usize,
    size: usize,
    variants: &[String],
    device: DeviceChoice,
    tolerance: f64,
    precision: Precision,
) -> Result<String> {
    use candle_core::{DType, Device};
    use metricunet_train::bench::{compare_steps, one_step, within_rounding, StepDifference};
    let device = select_device(device)?;
    let _precision = metricunet_train::device::training_precision(precision, &device);
    let device_name = metricunet_train::device::device_name(&device);
    let Some((name, enc, dec)) = MODELS.iter().find(|(n, _, _)| *n == model) else {
        bail!("--model {model}: expected paper or quickstart");
    };
    let mut out = format!(
        "bench parity: one training step of the {name} network, batch {batch} x 3 x {size} x {size}; relative differences ||x - ref|| / ||ref||\n\n| variant | x | ref | loss | logits | all gradients | all variables after the step | worst gradient tensor | worst variable tensor |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    let row = |out: &mut String, v: &str, x: &str, r: &str, d: &StepDifference| {
        let _ = writeln!(
            out,
            "| {v} | {x} | {r} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {:.1e} ({}) | {:.1e} ({}) |",
            d.loss,
            d.logits,
            d.grads,
            d.after,
            d.worst_grad.1,
            d.worst_grad.0,
            d.worst_after.1,
            d.worst_after.0
        );
    };
    let mut worst = 0.0f64;
    let mut failed = Vec::new();
    for v in variants {
        let (net, m) = metric(v)?;
        let case = StepCase {
            label: format!("{name} {v}"),
            backbone: backbone(net, enc, dec),
            in_channels: 3,
            size,
            batch,
            metric: m,
        };
        eprintln!(
            "one step of {} on cpu (f32, f64) and {device_name} ...",
            case.label
        );
        let cpu = one_step(&case, &Device::Cpu, DType::F32)?;
        let exact = one_step(&case, &Device::Cpu, DType::F64)?;
        let got = one_step(&case, &device, DType::F32)?;
        let d = compare_steps(&got, &cpu)?;
        let dev32 = format!("{device_name} f32");
        let dev_exact = compare_steps(&got, &exact)?;
        let cpu_exact = compare_steps(&cpu, &exact)?;
        row(&mut out, v, &dev32, "cpu f32", &d);
        row(&mut out, v, &dev32, "cpu f64", &dev_exact);
        row(&mut out, v, "cpu f32", "cpu f64", &cpu_exact);
        if !within_rounding(&dev_exact, &cpu_exact, tolerance, 3.0) {
            failed.push(v.clone());
        }
        // (f64::max drops a NaN: keep it once seen)
        worst = if worst.is_nan() || d.max().is_nan() {
            f64::NAN
        } else {
            worst.max(d.max())
        };
    }
    let _ = writeln!(
        out,
        "\nlargest difference {device_name} f32 vs cpu f32 over the whole step: {worst:.2e} ({}). Pass: {device_name} within {tolerance:.0e} of the f64 step, or no more than 3x as far from it as the cpu f32 step. Per tensor, a gradient that is zero up to rounding (a convolution bias before BatchNorm) is divided by 1e-4 x the whole gradient's norm.",
        if worst <= tolerance { format!("within {tolerance:.0e}") } else { format!("above {tolerance:.0e}") }
    );
    if !failed.is_empty() {
        print!("{out}");
        bail!(
            "bench parity: {device_name} is further from the f64 step than f32 rounding explains for {}",
            failed.join(", ")
        );
    }
    let _ = writeln!(out, "parity: passed");
    Ok(out)
}

/// One 3x3 convolution of a network: its name and geometry.
struct ConvLayer {
    name: String,
    g: metricunet_ops::conv_cpu::Geometry,
}

/// The 3x3 convolutions of a UNet with these widths on `size` x `size` x 3 patches (Table I's
/// layer names; the decoder's first convolution reads the skip concatenation).
fn conv_layers(encoder: &[i64], decoder: &[i64], size: usize, batch: usize) -> Vec<ConvLayer> {
    let geometry = |cin: usize, cout: usize, side: usize| {
        metricunet_ops::conv_cpu::Geometry::square(batch, cin, cout, side, 3)
    };
    let (enc, dec): (Vec<usize>, Vec<usize>) = (
        encoder.iter().map(|&w| w as usize).collect(),
        decoder.iter().map(|&w| w as usize).collect(),
    );
    let levels = enc.len();
    let mut layers = Vec::new();
    let mut cin = 3;
    for (i, &w) in enc.iter().enumerate() {
        let side = size >> i;
        layers.push(ConvLayer {
            name: format!("conv{}a", i + 1),
            g: geometry(cin, w, side),
        });
        layers.push(ConvLayer {
            name: format!("conv{}b", i + 1),
            g: geometry(w, w, side),
        });
        cin = w;
    }
    for (j, &w) in dec.iter().enumerate() {
        let level = levels + j;
        let side = size >> (levels - 2 - j);
        let skip = enc[levels - 2 - j];
        layers.push(ConvLayer {
            name: format!("conv{level}c"),
            g: geometry(w + skip, w, side),
        });
        layers.push(ConvLayer {
            name: format!("conv{level}d"),
            g: geometry(w, w, side),
        });
    }
    layers
}

/// Seconds one call of `f` takes.
fn seconds<R>(f: impl FnOnce() -> R) -> f64 {
    let start = Instant::now();
    drop(f());
    start.elapsed().as_secs_f64()
}

/// Largest |a - b| over the largest |b|.
fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let worst = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64;
    if scale > 0.0 {
        worst / scale
    } else {
        worst
    }
}

/// `metricunet bench conv`: per 3x3 layer of a network, forward, input gradient and weight
/// gradient through the direct (gemm per tap) path and through Winograd F(2x2, 3x3), f32,
/// alternating the two; with the path the automatic choice takes.
pub fn conv(
    model: &str,
    batch: usize,
    size: usize,
    repeats: usize,
    json: Option<&Path>,
) -> Result<String> {
    use metricunet_ops::{conv_cpu, winograd};
    let Some((name, enc, dec)) = MODELS.iter().find(|(n, _, _)| *n == model) else {
        bail!("--model {model}: expected paper or quickstart");
    };
    let m = 1usize << (enc.len() - 1);
    if size == 0 || !size.is_multiple_of(m) {
        bail!("--size {size}: expected a positive multiple of {m}");
    }
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let mut random = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
            .collect()
    };
    let mut out = format!(
        "bench conv: {name} network, batch {batch}, {size} x {size}, f32, {} threads; median of {repeats} runs per pass, direct and Winograd alternating\n\n| layer | cin -> cout | side | pass | direct (ms) | Winograd (ms) | Winograd / direct | rel. difference | auto |\n|---|---|---|---|---|---|---|---|---|\n",
        rayon::current_num_threads()
    );
    let mut rows = Vec::new();
    let (mut total_direct, mut total_wino, mut total_auto) = (0.0, 0.0, 0.0);
    for layer in conv_layers(enc, dec, size, batch) {
        let g = layer.g;
        let x = random(g.batch * g.cin * g.h * g.w);
        let w = random(g.cout * g.cin * 9);
        let gy = random(g.batch * g.cout * g.h * g.w);
        type Pass<'a> = (&'a str, Box<dyn Fn(bool) -> Vec<f32> + 'a>);
        let passes: [Pass; 3] = [
            (
                "forward",
                Box::new(|wino| {
                    if wino {
                        winograd::forward(&x, &w, &g)
                    } else {
                        conv_cpu::forward(&x, &w, &g)
                    }
                }),
            ),
            (
                "input grad",
                Box::new(|wino| {
                    if wino {
                        winograd::input_grad(&gy, &w, &g)
                    } else {
                        conv_cpu::input_grad(&gy, &w, &g)
                    }
                }),
            ),
            (
                "weight grad",
                Box::new(|wino| {
                    if wino {
                        winograd::weight_grad(&x, &gy, &g)
                    } else {
                        conv_cpu::weight_grad(&x, &gy, &g)
                    }
                }),
            ),
        ];
        for (pass, f) in &passes {
            let diff = relative_difference(&f(true), &f(false));
            let (mut td, mut tw) = (Vec::new(), Vec::new());
            for _ in 0..repeats.max(1) {
                td.push(seconds(|| f(false)));
                tw.push(seconds(|| f(true)));
            }
            td.sort_by(f64::total_cmp);
            tw.sort_by(f64::total_cmp);
            let (d, wn) = (td[td.len() / 2], tw[tw.len() / 2]);
            let auto = winograd::chosen_automatically(&g);
            total_direct += d;
            total_wino += wn;
            total_auto += if auto { wn } else { d };
            let _ = writeln!(
                out,
                "| {} | {} -> {} | {} | {pass} | {:.2} | {:.2} | {:.2} | {diff:.1e} | {} |",
                layer.name,
                g.cin,
                g.cout,
                g.h,
                d * 1e3,
                wn * 1e3,
                wn / d,
                if auto { "Winograd" } else { "direct" }
            );
            rows.push(serde_json::json!({
                "layer": layer.name, "cin": g.cin, "cout": g.cout, "side": g.h, "batch": batch,
                "pass": pass, "direct_s": d, "winograd_s": wn, "relative_difference": diff,
                "auto_winograd": auto,
            }));
        }
    }
    let _ = writeln!(
        out,
        "\nAll 3x3 layers, three passes: direct {:.1} ms, Winograd {:.1} ms, automatic choice {:.1} ms ({:.2}x of direct).",
        total_direct * 1e3,
        total_wino * 1e3,
        total_auto * 1e3,
        total_auto / total_direct
    );
    if let Some(path) = json {
        write_json(
            path,
            &serde_json::json!({
                "model": name, "batch": batch, "size": size, "repeats": repeats,
                "threads": rayon::current_num_threads(), "layers": rows,
                "total_direct_s": total_direct, "total_winograd_s": total_wino,
                "total_auto_s": total_auto,
            }),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench train --models quickstart-stage1` times the network the main job trains in stage 1.
    #[test]
    fn stage1_network_is_the_quickstarts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/quickstart.yaml");
        let plan = metricunet_core::ExperimentPlan::from_file(&path).expect("quickstart.yaml");
        let s1 = &plan.base.stage1;
        let (_, enc, dec, slices, size, batch) = STAGE1;
        assert_eq!(s1.backbone, backbone("unet-light", enc, dec));
        assert_eq!(s1.patches.slices, slices);
        assert_eq!(s1.patches.size, [size, size]);
        assert_eq!(s1.training.batch_size, batch);
    }
}
