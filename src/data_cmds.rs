//! Data subcommands: `phantom`, `realism`, `bench preprocess`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metricunet_data::io::read_nifti;
use metricunet_data::phantom::{self, labels, PhantomSize};
use metricunet_data::preprocess::{preprocess, stage1_volume, stage2_crop, PreprocessParams};
use metricunet_data::preview::{hu_stats, write_slice_png};
use metricunet_data::{Case, Volume};

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// `metricunet phantom`: write a phantom dataset in the Decathlon layout.
pub fn phantom(cases: usize, seed: u64, out: &Path, size: PhantomSize) -> Result<String> {
    anyhow::ensure!(cases > 0, "--cases must be at least 1");
    let pb = bar(cases as u64, "phantom");
    let t = Instant::now();
    let written = phantom::write_dataset(out, cases, seed, &size, &|_| pb.inc(1))?;
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    Ok(format!(
        "wrote {} phantom cases ({} x {} x ~{} voxels, seed {seed}) to {} in {secs:.1} s\n",
        written.len(),
        size.in_plane,
        size.in_plane,
        size.slices,
        out.display()
    ))
}

struct Row {
    name: &'static str,
    real: (f64, f64, usize),
    phantom: (f64, f64, usize),
    real_def: &'static str,
}

/// `metricunet realism`: HU statistics of the phantom next to a real CT, and a slice of each.
pub fn realism(real_dir: &Path, out: &Path, seed: u64, cases: usize) -> Result<String> {
    let case = Case {
        id: "real".into(),
        image: real_dir.join("ct.nii.gz"),
        label: Some(real_dir.join("labels.nii.gz")),
    };
    let ct = read_nifti(&case.image)?;
    let lab = read_nifti(case.label.as_ref().context("label path")?)?;
    let l = &lab.volume.data;
    let img = &ct.volume;
    let body = |i: usize| img.data[i] > -500.0;
    // TotalSegmentator: 22 prostate, 21 urinary bladder, 75-78 femurs and hips.
    let real = [
        hu_stats(img, |i| l[i] == 22.0),
        hu_stats(img, |i| l[i] == 21.0),
        hu_stats(img, |i| (75.0..=78.0).contains(&l[i])),
        hu_stats(img, |i| {
            l[i] == 0.0 && body(i) && (-190.0..=-30.0).contains(&img.data[i])
        }),
    ];
    // The phantom: pool `cases` cases.
    let mut sums = [(0.0f64, 0.0f64, 0usize); 4];
    let size = PhantomSize::default();
    let mut first: Option<phantom::PhantomCase> = None;
    for i in 0..cases {
        let c = phantom::generate(seed, i, &size);
        for (k, lv) in [labels::PROSTATE, labels::BLADDER, labels::BONE, labels::FAT]
            .into_iter()
            .enumerate()
        {
            let (m, s, n) = hu_stats(&c.image, |v| c.labels.data[v] == lv);
            if n > 0 {
                sums[k].0 += m * n as f64;
                sums[k].1 += (s * s + m * m) * n as f64;
                sums[k].2 += n;
            }
        }
        if first.is_none() {
            first = Some(c);
        }
    }
    let pooled = sums.map(|(s, sq, n)| {
        let m = s / n.max(1) as f64;
        (m, (sq / n.max(1) as f64 - m * m).max(0.0).sqrt(), n)
    });
    let names = ["prostate", "bladder", "bone", "fat"];
    let defs = [
        "label 22",
        "label 21",
        "labels 75-78 (femurs, hips)",
        "unlabelled body voxels in [-190, -30] HU",
    ];
    let rows: Vec<Row> = (0..4)
        .map(|k| Row {
            name: names[k],
            real: real[k],
            phantom: pooled[k],
            real_def: defs[k],
        })
        .collect();

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // Slices through the prostate of each, soft-tissue window.
    let window = [-160.0, 240.0];
    let real_label = lab.volume.map(|v| u8::from(v == 22.0));
    let rz = slice_with_most(&real_label);
    write_slice_png(
        &out.join("real_ct.png"),
        img,
        rz,
        window,
        Some((&real_label, 1, [255, 60, 60])),
        3,
    )?;
    let first = first.context("no phantom case")?;
    let pz = slice_with_most(&first.labels.map(|v| u8::from(v == labels::PROSTATE)));
    write_slice_png(
        &out.join("phantom_ct.png"),
        &first.image,
        pz,
        window,
        Some((&first.labels, labels::PROSTATE, [255, 60, 60])),
        1,
    )?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Phantom realism: HU inside structures, phantom vs. a real pelvic CT\n"
    );
    let _ = writeln!(
        md,
        "Real: `{}` ({} x {} x {} at {} mm, labels by TotalSegmentator). Phantom: {cases} cases of `metricunet phantom --seed {seed}` (512 x 512 x ~100), pooled.\n",
        case.image.display(),
        img.geometry.dims[0],
        img.geometry.dims[1],
        img.geometry.dims[2],
        img.geometry.spacing[0]
    );
    let _ = writeln!(md, "| structure | real mean +- sd (HU) | real voxels | phantom mean +- sd (HU) | phantom voxels | real region |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {:.1} +- {:.1} | {} | {:.1} +- {:.1} | {} | {} |",
            r.name, r.real.0, r.real.1, r.real.2, r.phantom.0, r.phantom.1, r.phantom.2, r.real_def
        );
    }
    let _ = writeln!(
        md,
        "\nSlices (window -160..240 HU, prostate outline in red): real slice z = {rz} (3 mm voxels, shown 3x), phantom case 0 slice z = {pz}.\n\n![real](real_ct.png) ![phantom](phantom_ct.png)"
    );
    let path = out.join("realism.md");
    metricunet_core::fsio::write_atomic(&path, md.as_bytes())?;
    Ok(md)
}

/// The axial slice with the most foreground voxels.
fn slice_with_most(mask: &Volume<u8>) -> usize {
    let nz = mask.geometry.dims[2];
    (0..nz)
        .max_by_key(|&z| mask.slice(z).iter().filter(|&&v| v != 0).count())
        .unwrap_or(0)
}

/// `metricunet bench preprocess`: preprocessing time of one phantom CT of the given size.
pub fn bench_preprocess(in_plane: usize, slices: usize, repeats: usize) -> Result<String> {
    let size = PhantomSize { in_plane, slices };
    let t = Instant::now();
    // The phantom varies its slice count by +-10 %: pick the case closest to the request.
    let case = (0..8)
        .map(|i| phantom::generate(0, i, &size))
        .min_by_key(|c| c.image.geometry.dims[2].abs_diff(slices))
        .context("phantom")?;
    let gen = t.elapsed().as_secs_f64() / 8.0;
    let label = case.labels.map(|v| u8::from(v == labels::PROSTATE));
    let params = PreprocessParams::default();
    let mut times = Vec::new();
    let mut stages = Vec::new();
    let mut shape = String::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let p = preprocess(&case.image, Some(&label), &params)?;
        let t_pre = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (s1, _) = stage1_volume(&p, 4)?;
        let c = p.label_centroid().context("phantom without prostate")?;
        let (s2, _, _) = stage2_crop(&p, c, [128, 128, 128]);
        stages.push(t.elapsed().as_secs_f64());
        times.push(t_pre);
        shape = format!(
            "input {:?} at {:.2} x {:.2} x {:.1} mm -> 1 mm grid {:?}, body crop {:?}, stage 1 {:?}, stage 2 {:?}",
            case.image.geometry.dims,
            case.image.geometry.spacing[0],
            case.image.geometry.spacing[1],
            case.image.geometry.spacing[2],
            p.resampled.dims,
            p.image.geometry.dims,
            s1.geometry.dims,
            s2.geometry.dims
        );
    }
    times.sort_by(f64::total_cmp);
    stages.sort_by(f64::total_cmp);
    let med = |v: &[f64]| v[v.len() / 2];
    let threads = rayon::current_num_threads();
    Ok(format!(
        "bench preprocess ({threads} threads, median of {}): {shape}\n  generate phantom case: {gen:.2} s\n  resample to 1 mm + window + body crop: {:.2} s\n  stage inputs (1/4 downsample + 128^3 crop): {:.3} s\n",
        times.len(),
        med(&times),
        med(&stages)
    ))
}
