//! `metricunet predict` and `metricunet eval`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metricunet_core::config::DeviceChoice;
use metricunet_eval::evaluate::{all_metrics, evaluate_files, read_mask};
use metricunet_eval::evaluate_masks;
use metricunet_eval::{CaseMetrics, Pipeline};
use metricunet_train::select_device;

fn nifti_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            !n.starts_with('.') && (n.ends_with(".nii") || n.ends_with(".nii.gz"))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// `metricunet predict`: one file or every NIfTI of a folder.
pub fn predict(
    model: &Path,
    input: &Path,
    output: &Path,
    probabilities: Option<&Path>,
    device: DeviceChoice,
) -> Result<String> {
    let pipeline = Pipeline::load(model, select_device(device)?)?;
    let jobs: Vec<(PathBuf, PathBuf, Option<PathBuf>)> = if input.is_dir() {
        std::fs::create_dir_all(output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        if let Some(p) = probabilities {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        nifti_files(input)?
            .into_iter()
            .map(|f| {
                let name = f.file_name().map(PathBuf::from).unwrap_or_default();
                (
                    f.clone(),
                    output.join(&name),
                    probabilities.map(|p| p.join(&name)),
                )
            })
            .collect()
    } else {
        vec![(
            input.to_path_buf(),
            output.to_path_buf(),
            probabilities.map(Path::to_path_buf),
        )]
    };
    if jobs.is_empty() {
        bail!("{}: no .nii or .nii.gz file", input.display());
    }
    let pb = bar(jobs.len(), "predict");
    let mut report = String::new();
    let mut failed = 0;
    for (ct, out, prob) in &jobs {
        match pipeline.predict_to_files(ct, out, prob.as_deref()) {
            Ok(p) => {
                let n = p.mask.data.iter().filter(|&&v| v != 0).count();
                let ml = n as f64 * p.mask.geometry.spacing.iter().product::<f64>() / 1000.0;
                let _ = writeln!(
                    report,
                    "{} -> {} ({n} voxels, {ml:.1} mL)",
                    ct.display(),
                    out.display()
                );
            }
            Err(e) => {
                failed += 1;
                let _ = writeln!(report, "{}: FAILED: {e}", ct.display());
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if failed > 0 {
        bail!(
            "{report}{failed} of {} cases failed (the others were written)",
            jobs.len()
        );
    }
    Ok(report)
}

/// Options of `metricunet eval`.
pub struct EvalOptions<'a> {
    /// Prediction label (default: any non-zero voxel).
    pub label: Option<i64>,
    /// Reference label (default: any non-zero voxel).
    pub ref_label: Option<i64>,
    pub csv: Option<&'a Path>,
    /// Count a reference without a prediction as an empty prediction instead of failing.
    pub allow_missing: bool,
}

/// What a missing prediction is flagged with under `--allow-missing`.
pub const NO_PREDICTION: &str = "no prediction: evaluated as an empty mask";

/// `metricunet eval`: metrics of one prediction, or of every reference of a folder against
/// the same-named prediction (a reference without one is an error, or with `allow_missing`
/// an empty prediction, flagged; a prediction without a reference is an error).
pub fn eval(pred: &Path, reference: &Path, opts: EvalOptions) -> Result<String> {
    let metrics = all_metrics();
    // (case, prediction or None when missing, reference)
    let pairs: Vec<(String, Option<PathBuf>, PathBuf)> = if pred.is_dir() {
        if !reference.is_dir() {
            bail!("{} is a folder, so --ref must be one too", pred.display());
        }
        let references = nifti_files(reference)?;
        if references.is_empty() {
            bail!("{}: no .nii or .nii.gz reference", reference.display());
        }
        let name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
        let stray: Vec<String> = nifti_files(pred)?
            .iter()
            .filter(|p| !reference.join(name(p)).exists())
            .map(|p| p.display().to_string())
            .collect();
        if !stray.is_empty() {
            bail!(
                "{} prediction(s) without a reference in {}: {}",
                stray.len(),
                reference.display(),
                stray.join(", ")
            );
        }
        let pairs: Vec<_> = references
            .into_iter()
            .map(|r| {
                let p = pred.join(name(&r));
                let id = metricunet_data::dataset::case_id(&r);
                (id, p.exists().then_some(p), r)
            })
            .collect();
        let missing: Vec<String> = pairs
            .iter()
            .filter(|(_, p, _)| p.is_none())
            .map(|(id, _, _)| id.clone())
            .collect();
        if !missing.is_empty() && !opts.allow_missing {
            bail!(
                "{} of {} references have no prediction in {}: {} (add --allow-missing to count them as empty predictions)",
                missing.len(),
                pairs.len(),
                pred.display(),
                missing.join(", ")
            );
        }
        pairs
    } else {
        vec![(
            metricunet_data::dataset::case_id(pred),
            Some(pred.to_path_buf()),
            reference.to_path_buf(),
        )]
    };
    let pb = bar(pairs.len(), "eval");
    let mut rows: Vec<CaseMetrics> = Vec::new();
    for (case, p, r) in &pairs {
        rows.push(match p {
            Some(p) => evaluate_files(case, p, r, opts.label, opts.ref_label, &metrics)?,
            None => {
                let reference = read_mask(r, opts.ref_label)?;
                let empty = reference.map(|_| false);
                let mut row = evaluate_masks(case, &empty, &reference, &metrics)?;
                for e in &mut row.values {
                    e.flag = Some(match e.flag.take() {
                        Some(f) => format!("{NO_PREDICTION}; {f}"),
                        None => NO_PREDICTION.to_string(),
                    });
                }
                row
            }
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut table = metricunet_eval::evaluate::metrics_frame(&rows)?;
    if let Some(path) = opts.csv {
        metricunet_eval::evaluate::write_csv(&mut table, path)?;
    }
    let mut out = String::new();
    if rows.len() > 1 {
        let _ = writeln!(out, "{table}");
    }
    for row in &rows {
        let _ = writeln!(out, "{}", row.case);
        for e in &row.values {
            let (name, v, flag) = (&e.name, e.value, &e.flag);
            let unit = if e.unit.is_empty() {
                String::new()
            } else {
                format!(" {}", e.unit)
            };
            let _ = writeln!(
                out,
                "  {name:<5} {v:.4}{unit}{}",
                flag.as_ref()
                    .map(|f| format!("  ({f})"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(out)
}

/// `metricunet bench metrics`: every registered metric on a 512 x 512 x 200 mask pair, for a
/// prostate-sized pair and for a pair of large spheres (the worst case: surface-distance work
/// grows with the masks' bounding box).
pub fn bench_metrics(repeats: usize) -> Result<String> {
    use metricunet_data::{Geometry, Volume};
    use metricunet_eval::evaluate_masks;
    use std::time::Instant;
    let g = Geometry::axis_aligned([512, 512, 200], [0.9, 0.9, 2.0]);
    let ellipsoid = |c: [f64; 3], r: [f64; 3]| -> Volume<bool> {
        let [nx, ny, _] = g.dims;
        let data = (0..g.len())
            .map(|i| {
                let p = [
                    (i % nx) as f64 * 0.9,
                    ((i / nx) % ny) as f64 * 0.9,
                    (i / (nx * ny)) as f64 * 2.0,
                ];
                (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>() <= 1.0
            })
            .collect();
        Volume {
            data,
            geometry: g.clone(),
        }
    };
    let metrics = all_metrics();
    let mut out = format!(
        "bench metrics: {} metrics ({}) on a 512 x 512 x 200 pair at 0.9 x 0.9 x 2 mm, {} threads, median of {}\n",
        metrics.len(),
        metrics.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        rayon::current_num_threads(),
        repeats.max(1)
    );
    for (what, a, b) in [
        (
            "prostate-sized (radii 22 x 17 x 20 mm, shifted 3 mm)",
            ellipsoid([230.0, 230.0, 200.0], [22.0, 17.0, 20.0]),
            ellipsoid([233.0, 230.0, 200.0], [21.0, 18.0, 20.0]),
        ),
        (
            "large spheres (radii 150 and 140 mm)",
            ellipsoid([230.0, 230.0, 200.0], [150.0; 3]),
            ellipsoid([236.0, 230.0, 200.0], [140.0; 3]),
        ),
    ] {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..repeats.max(1) {
            let t = Instant::now();
            last = Some(evaluate_masks("bench", &a, &b, &metrics)?);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let m = last.context("no run")?;
        let _ = writeln!(
            out,
            "  {what}: {:.3} s  (DSC {:.4}, ASD {:.3} mm, HD95 {:.3} mm)",
            times[times.len() / 2],
            m.get("dsc").unwrap_or(f64::NAN),
            m.get("asd").unwrap_or(f64::NAN),
            m.get("hd95").unwrap_or(f64::NAN)
        );
    }
    Ok(out)
}
