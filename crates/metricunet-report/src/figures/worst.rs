//! Where the errors are: for each configuration, its worst test case (lowest DSC over its
//! cells and cases) in three views (axial, coronal, sagittal) through the centroid of its
//! errors, false positives and false negatives in their own colours, so bladder or rectum
//! leakage is seen rather than guessed from HD95.

use std::path::Path;

use metricunet_data::io::read_nifti;
use metricunet_data::morphology::centroid;
use metricunet_data::Volume;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{load_test_case, plot_err, render, scale_bar_and_legend, Draw, Figure, FONT};
use crate::collect::RunResults;
use crate::error::{ReportError, Result};

/// What a voxel of the view is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Background,
    TruePositive,
    FalsePositive,
    FalseNegative,
}

const TP: RGBColor = RGBColor(0, 200, 0);
const FP: RGBColor = RGBColor(255, 40, 40);
const FN: RGBColor = RGBColor(40, 140, 255);

/// One plane of the case, cropped, in display order (row 0 at the top).
struct View {
    title: String,
    w: usize,
    h: usize,
    /// Pixel width and height in mm.
    px: (f64, f64),
    ct: Vec<f32>,
    class: Vec<Class>,
}

struct Views(Vec<View>);

impl Draw for Views {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("worst");
        let parts = area.split_evenly((1, self.0.len().max(1)));
        for (v, part) in self.0.iter().zip(parts.iter()) {
            let (wmm, hmm) = (v.w as f64 * v.px.0, v.h as f64 * v.px.1);
            let mut chart = ChartBuilder::on(part)
                .caption(&v.title, (FONT, 15))
                .margin(6)
                .build_cartesian_2d(0.0..wmm, 0.0..hmm)
                .map_err(&e)?;
            let mut pixels = Vec::with_capacity(v.w * v.h);
            for r in 0..v.h {
                for c in 0..v.w {
                    let i = r * v.w + c;
                    let g = (((v.ct[i] + 200.0) / 500.0).clamp(0.0, 1.0) * 255.0) as u8;
                    let base = RGBColor(g, g, g);
                    let colour = match v.class[i] {
                        Class::Background => base,
                        Class::TruePositive => blend(base, TP, 0.35),
                        Class::FalsePositive => blend(base, FP, 0.75),
                        Class::FalseNegative => blend(base, FN, 0.75),
                    };
                    let (x, y) = (c as f64 * v.px.0, (v.h - r - 1) as f64 * v.px.1);
                    pixels.push(Rectangle::new(
                        [(x, y), (x + v.px.0, y + v.px.1)],
                        colour.filled(),
                    ));
                }
            }
            chart.draw_series(pixels).map_err(&e)?;
            for (name, colour) in [
                ("true positive", TP),
                ("false positive", FP),
                ("false negative", FN),
            ] {
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                    .map_err(&e)?
                    .label(name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                    });
            }
            // 10 mm scale bar
            scale_bar_and_legend(&mut chart, (2.0, 2.0), (12.0, 2.0), "worst")?;
        }
        Ok(())
    }
}

fn blend(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let m = |x: u8, y: u8| (f64::from(x) * (1.0 - t) + f64::from(y) * t).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// The plane through `at` spanned by axes `u` (left to right) and `v` (bottom to top) of
/// volumes on one grid, cropped to `keep`'s extent in that plane with a margin; each axis is
/// flipped so that the patient's right is on the left (radiological) and anterior and
/// superior are up.
fn plane(
    title: String,
    ct: &Volume<f32>,
    class: &[Class],
    keep: &[bool],
    at: [usize; 3],
    (u, v): (usize, usize),
) -> View {
    let g = &ct.geometry;
    let dims = g.dims;
    let idx = |p: [usize; 3]| p[0] + dims[0] * (p[1] + dims[1] * p[2]);
    let point = |a: usize, b: usize| {
        let mut p = at;
        p[u] = a;
        p[v] = b;
        p
    };
    // the extent of what must be seen in this plane
    let (mut lo, mut hi) = ([usize::MAX; 2], [0usize; 2]);
    for a in 0..dims[u] {
        for b in 0..dims[v] {
            if keep[idx(point(a, b))] {
                lo = [lo[0].min(a), lo[1].min(b)];
                hi = [hi[0].max(a), hi[1].max(b)];
            }
        }
    }
    if lo[0] == usize::MAX {
        (lo, hi) = ([0, 0], [dims[u] - 1, dims[v] - 1]);
    }
    let range = |k: usize, axis: usize| -> Vec<usize> {
        let margin = ((hi[k] - lo[k]) / 4).max(8);
        let r: Vec<usize> =
            (lo[k].saturating_sub(margin)..(hi[k] + margin + 1).min(dims[axis])).collect();
        // display direction: x (patient's left in RAS) goes right only when the affine flips
        // it; y (anterior) and z (superior) go up
        let increasing_is_positive = g.affine[axis][axis] > 0.0;
        let flip = if axis == 0 {
            increasing_is_positive
        } else {
            !increasing_is_positive
        };
        if flip {
            r.into_iter().rev().collect()
        } else {
            r
        }
    };
    // columns left to right; rows top to bottom
    let cols = range(0, u);
    let rows = range(1, v);
    let (mut cts, mut classes) = (Vec::new(), Vec::new());
    for &b in &rows {
        for &a in &cols {
            let i = idx(point(a, b));
            cts.push(ct.data[i]);
            classes.push(class[i]);
        }
    }
    View {
        title,
        w: cols.len(),
        h: rows.len(),
        px: (g.spacing[u], g.spacing[v]),
        ct: cts,
        class: classes,
    }
}

/// For each configuration, its worst test case: three views through the centroid of its
/// errors (false positives and false negatives).
pub fn worst_cases(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let Some(dsc) = r.metrics.iter().position(|m| m == "dsc") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for g in &r.groups {
        // (cell, case, dsc) with the lowest DSC
        let worst = g
            .cells
            .iter()
            .flat_map(|&ci| r.cells[ci].rows.iter().map(move |row| (ci, row)))
            .filter(|(_, row)| row.values[dsc].is_finite())
            .min_by(|a, b| a.1.values[dsc].total_cmp(&b.1.values[dsc]));
        let Some((ci, row)) = worst else {
            continue;
        };
        let cell = &r.cells[ci];
        let Some(tc) = cell.record.test_cases.iter().find(|t| t.id == row.case) else {
            continue;
        };
        let loaded = load_test_case(tc, &cell.config)?;
        let Some(label) = loaded.label else {
            continue;
        };
        let pred_path = metricunet_store::prediction_path(&cell.dir, &tc.id);
        let pred = read_nifti(&pred_path)?.volume;
        let dims = label.geometry.dims;
        if pred.geometry.dims != dims {
            return Err(ReportError::file(
                &pred_path,
                "grid differs from the case's",
            ));
        }
        let class: Vec<Class> = label
            .data
            .iter()
            .zip(&pred.data)
            .map(|(&l, &p)| match (l != 0, p != 0.0) {
                (true, true) => Class::TruePositive,
                (false, true) => Class::FalsePositive,
                (true, false) => Class::FalseNegative,
                (false, false) => Class::Background,
            })
            .collect();
        let errors: Vec<bool> = class
            .iter()
            .map(|c| matches!(c, Class::FalsePositive | Class::FalseNegative))
            .collect();
        let seen: Vec<bool> = class.iter().map(|&c| c != Class::Background).collect();
        let Some(c) = centroid(&errors, dims).or_else(|| centroid(&seen, dims)) else {
            continue;
        };
        // the error voxel nearest the centroid, so every view goes through errors
        let at = {
            let near = errors
                .iter()
                .enumerate()
                .filter(|(_, &e)| e)
                .map(|(i, _)| {
                    [
                        i % dims[0],
                        (i / dims[0]) % dims[1],
                        i / (dims[0] * dims[1]),
                    ]
                })
                .min_by(|a, b| {
                    let d = |p: &[usize; 3]| -> f64 {
                        (0..3).map(|k| (p[k] as f64 - c[k]).powi(2)).sum()
                    };
                    d(a).total_cmp(&d(b))
                });
            near.unwrap_or(c.map(|v| v.round() as usize))
        };
        let count = |k: Class| class.iter().filter(|&&x| x == k).count();
        let (fp, fneg) = (count(Class::FalsePositive), count(Class::FalseNegative));
        let ct = &loaded.image.volume;
        let views = vec![
            plane(
                format!("axial z = {}", at[2]),
                ct,
                &class,
                &seen,
                at,
                (0, 1),
            ),
            plane(
                format!("coronal y = {}", at[1]),
                ct,
                &class,
                &seen,
                at,
                (0, 2),
            ),
            plane(
                format!("sagittal x = {}", at[0]),
                ct,
                &class,
                &seen,
                at,
                (1, 2),
            ),
        ];
        let stem = format!(
            "worst_{}",
            g.label.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        let (png, svg) = render(dir, &stem, (3 * 360, 380), &Views(views))?;
        let ml = |n: usize| n as f64 * label.geometry.spacing.iter().product::<f64>() / 1000.0;
        out.push(Figure {
            stem,
            title: format!("Worst test case of {}: {} (seed {})", g.label, tc.id, cell.record.seed),
            caption: format!(
                "{} of `{}` (seed {}), DSC {:.3}, the lowest of this configuration: three planes through the error voxel nearest the centroid of its errors (window -200..300 HU; radiological: patient's right on the left; anterior, superior up; bar 10 mm). Green: correct foreground; red: false positives ({:.1} mL); blue: false negatives ({:.1} mL).",
                tc.id, g.label, cell.record.seed, row.values[dsc], ml(fp), ml(fneg)
            ),
            png,
            svg,
        });
    }
    Ok(out)
}
