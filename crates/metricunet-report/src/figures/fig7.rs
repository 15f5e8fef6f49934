//! Fig. 7: training curves (segmentation loss, validation DSC) per configuration.

use std::path::Path;

use metricunet_core::config::StageName;
use plotters::coord::Shift;
use plotters::prelude::*;

use plotters::coord::types::RangedCoordf64;

use super::{axis_range, plot_err, render, Draw, Figure, FONT, SERIES};
use crate::collect::RunResults;
use crate::error::{ReportError, Result};

/// Points (iteration, value) of a curve.
pub type Curve = Vec<(f64, f64)>;

/// The numeric columns of a training log by name, each as (iteration, value) points where
/// the value is present (validation columns are empty between validations).
#[derive(Debug, Clone, Default)]
pub struct LogCurves {
    pub columns: Vec<(String, Curve)>,
}

impl LogCurves {
    /// The points of column `name`, empty when the log has no such column.
    pub fn column(&self, name: &str) -> Curve {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }
    /// The segmentation loss: `seg`, or `ce` in logs written before segmentation losses were
    /// plugins.
    pub fn seg(&self) -> Curve {
        let c = self.column("seg");
        if c.is_empty() {
            self.column("ce")
        } else {
            c
        }
    }
    /// Each sampler's anchors per iteration: (sampler, points) from `<sampler>/anchors`.
    pub fn anchors(&self) -> Vec<(String, Curve)> {
        self.columns
            .iter()
            .filter_map(|(n, c)| {
                n.strip_suffix("/anchors")
                    .map(|s| (s.to_string(), c.clone()))
            })
            .collect()
    }
}

/// Every column of a training log (`train_log.csv`) against its `iteration` column.
pub fn read_log(path: &Path) -> Result<LogCurves> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let Some(it) = header.iter().position(|h| *h == "iteration") else {
        return Err(ReportError::file(path, "no `iteration` column"));
    };
    if !header.iter().any(|h| *h == "seg" || *h == "ce") {
        return Err(ReportError::file(path, "no `seg` column"));
    }
    let mut columns: Vec<(String, Curve)> =
        header.iter().map(|h| (h.to_string(), Vec::new())).collect();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        let Some(x) = num(it) else { continue };
        for (k, (_, c)) in columns.iter_mut().enumerate() {
            if let Some(y) = num(k) {
                c.push((x, y));
            }
        }
    }
    Ok(LogCurves { columns })
}

/// Trailing moving average over `w` points.
fn smooth(v: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    (0..v.len())
        .map(|i| {
            let s = &v[i.saturating_sub(w - 1)..=i];
            (v[i].0, s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64)
        })
        .collect()
}

/// A curve over seeds: at each iteration that every seed logged, (iteration, mean, min, max).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Band {
    pub points: Vec<(f64, f64, f64, f64)>,
    /// How many seeds it summarises.
    pub seeds: usize,
}

/// The mean and range of `curves` (one per seed) at the iterations they all have.
pub fn band(curves: &[Curve]) -> Band {
    let Some(first) = curves.first() else {
        return Band::default();
    };
    let points = first
        .iter()
        .filter_map(|&(x, _)| {
            let ys: Vec<f64> = curves
                .iter()
                .map(|c| c.iter().find(|p| p.0 == x).map(|p| p.1))
                .collect::<Option<_>>()?;
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((x, mean, lo, hi))
        })
        .collect();
    Band {
        points,
        seeds: curves.len(),
    }
}

/// Draw `bands` (name, band) on `chart`: a translucent range over seeds and the mean line.
fn draw_bands<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    bands: &[(String, Band)],
    dots: bool,
    name: &str,
) -> Result<()> {
    let e = plot_err(name);
    for (i, (label, b)) in bands.iter().enumerate() {
        let c = SERIES[i % SERIES.len()];
        if b.seeds > 1 && b.points.len() > 1 {
            let mut poly: Vec<(f64, f64)> = b.points.iter().map(|p| (p.0, p.3)).collect();
            poly.extend(b.points.iter().rev().map(|p| (p.0, p.2)));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled())))
                .map_err(&e)?;
        }
        chart
            .draw_series(LineSeries::new(
                b.points.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))
            .map_err(&e)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3)));
        if dots {
            chart
                .draw_series(
                    b.points
                        .iter()
                        .map(|p| Circle::new((p.0, p.1), 3, c.filled())),
                )
                .map_err(&e)?;
        }
    }
    Ok(())
}

/// One panel: title, y-axis label, y range, whether to dot the points, the named bands.
type Panel = (
    String,
    String,
    std::ops::Range<f64>,
    bool,
    Vec<(String, Band)>,
);

/// Panels of curves over iterations, each with its bands.
struct Panels {
    panels: Vec<Panel>,
}

impl Draw for Panels {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("fig7");
        let parts = area.split_evenly((1, self.panels.len().max(1)));
        let max_it = self
            .panels
            .iter()
            .flat_map(|p| p.4.iter().flat_map(|b| b.1.points.iter().map(|q| q.0)))
            .fold(1.0f64, f64::max);
        for ((title, ylab, y, dots, bands), part) in self.panels.iter().zip(parts.iter()) {
            let mut chart = ChartBuilder::on(part)
                .caption(title.as_str(), (FONT, 20))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..max_it, y.clone())
                .map_err(&e)?;
            chart
                .configure_mesh()
                .x_desc("iteration")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(RGBColor(235, 235, 235))
                .y_desc(ylab.as_str())
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 17))
                .draw()
                .map_err(&e)?;
            draw_bands(&mut chart, bands, *dots, "fig7")?;
            chart
                .configure_series_labels()
                .position(if *dots {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::UpperRight
                })
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(&e)?;
        }
        Ok(())
    }
}

/// The stage-2 training logs of every seed of each configuration: (label, logs).
fn group_logs(r: &RunResults) -> Result<Vec<(String, Vec<LogCurves>)>> {
    let mut out = Vec::new();
    for g in &r.groups {
        let mut logs = Vec::new();
        for &c in &g.cells {
            let log = r.cells[c]
                .dir
                .join(metricunet_store::stage_dir(StageName::Stage2))
                .join(metricunet_store::LOG);
            if log.exists() {
                logs.push(read_log(&log)?);
            }
        }
        if !logs.is_empty() {
            out.push((g.label.clone(), logs));
        }
    }
    Ok(out)
}

fn seeds_phrase(n: usize) -> String {
    if n > 1 {
        format!("mean over {n} seeds, band: their range")
    } else {
        "one seed".to_string()
    }
}

/// Fig. 7 as the paper draws it: stage-2 segmentation loss and whole-case validation DSC
/// against iteration, per configuration, the mean over seeds with their range as a band;
/// and, beside it, how many anchors each sampler found per iteration (`fig7_anchors`: a
/// hard-negative sampler's count falls as the network grows sure).
pub fn fig7(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let logs = group_logs(r)?;
    if logs.is_empty() {
        return Ok(Vec::new());
    }
    let longest = logs
        .iter()
        .flat_map(|(_, l)| l.iter().map(|l| l.seg().len()))
        .max()
        .unwrap_or(1);
    let window = (longest / 40).max(1);
    let seeds = logs.iter().map(|(_, l)| l.len()).max().unwrap_or(1);
    let loss: Vec<(String, Band)> = logs
        .iter()
        .map(|(n, l)| {
            let c: Vec<Curve> = l.iter().map(|l| smooth(&l.seg(), window)).collect();
            (n.clone(), band(&c))
        })
        .collect();
    let dsc: Vec<(String, Band)> = logs
        .iter()
        .map(|(n, l)| {
            let c: Vec<Curve> = l.iter().map(|l| l.column("val_dsc")).collect();
            (n.clone(), band(&c))
        })
        .filter(|(_, b)| !b.points.is_empty())
        .collect();
    let hi = loss
        .iter()
        .flat_map(|(_, b)| b.points.iter().map(|p| p.3))
        .fold(0.0f64, f64::max);
    let (_, hi) = axis_range(&[0.0, hi], Some(0.0), None);
    let mut panels = vec![(
        format!("Training segmentation loss (moving average of {window})"),
        "segmentation loss".to_string(),
        0.0..hi,
        false,
        loss,
    )];
    if !dsc.is_empty() {
        panels.push((
            "Whole-case validation DSC".to_string(),
            "DSC (whole validation cases)".to_string(),
            0.0..1.0,
            true,
            dsc,
        ));
    }
    let (png, svg) = render(dir, "fig7_curves", (1300, 460), &Panels { panels })?;
    let mut out = vec![Figure {
        stem: "fig7_curves".into(),
        title: "Fig. 7: training curves".into(),
        caption: format!(
            "Stage 2 of each configuration ({}): segmentation term of the loss (cross-entropy unless configured otherwise) per iteration (trailing moving average over {window} iterations) and the mean DSC of the whole validation cases, segmented as test cases are.",
            seeds_phrase(seeds)
        ),
        png,
        svg,
    }];
    // anchors per iteration, per configuration and sampler
    let anchors: Vec<(String, Band)> = logs
        .iter()
        .flat_map(|(n, l)| {
            let samplers: Vec<String> = l[0].anchors().into_iter().map(|(s, _)| s).collect();
            samplers.into_iter().map(move |s| {
                let c: Vec<Curve> = l
                    .iter()
                    .map(|l| smooth(&l.column(&format!("{s}/anchors")), window))
                    .collect();
                (format!("{n}: {s}"), band(&c))
            })
        })
        .collect();
    if !anchors.is_empty() {
        let hi = anchors
            .iter()
            .flat_map(|(_, b)| b.points.iter().map(|p| p.3))
            .fold(1.0f64, f64::max);
        let (png, svg) = render(
            dir,
            "fig7_anchors",
            (760, 460),
            &Panels {
                panels: vec![(
                    format!("Anchors found per iteration (moving average of {window})"),
                    "anchors per batch".to_string(),
                    0.0..hi * 1.1,
                    false,
                    anchors,
                )],
            },
        )?;
        out.push(Figure {
            stem: "fig7_anchors".into(),
            title: "Anchors per sampler".into(),
            caption: format!(
                "Stage 2: how many anchors each configured sampler found per training batch ({}; at most k per image times the batch size). A sampler finds fewer when it has fewer candidates: hard-negative anchors fall as the network grows sure of its voxels; contour-aware anchors follow how much boundary the patches hold.",
                seeds_phrase(seeds)
            ),
            png,
            svg,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_is_mean_and_range_at_the_iterations_every_seed_has() {
        let a: Curve = vec![(1.0, 1.0), (2.0, 2.0), (3.0, 9.0)];
        let b: Curve = vec![(1.0, 3.0), (2.0, 4.0)];
        let c: Curve = vec![(1.0, 5.0), (2.0, 0.0), (4.0, 1.0)];
        let got = band(&[a.clone(), b, c]);
        assert_eq!(got.seeds, 3);
        assert_eq!(got.points, vec![(1.0, 3.0, 1.0, 5.0), (2.0, 2.0, 0.0, 4.0)]);
        // one seed: its own curve, a band of zero width
        let one = band(&[a]);
        assert_eq!(one.points[2], (3.0, 9.0, 9.0, 9.0));
        assert!(band(&[]).points.is_empty());
    }

    #[test]
    fn log_columns_by_name_with_gaps() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("train_log.csv");
        std::fs::write(
            &p,
            "iteration,lr,seg,hard-negative/triplet,hard-negative/anchors,total,val_dsc\n1,0.1,0.9,0.5,40,1.0,\n2,0.1,0.8,0.4,12,0.9,0.5\n",
        )
        .expect("write");
        let l = read_log(&p).expect("log");
        assert_eq!(l.seg(), vec![(1.0, 0.9), (2.0, 0.8)]);
        assert_eq!(l.column("val_dsc"), vec![(2.0, 0.5)]);
        assert_eq!(
            l.anchors(),
            vec![("hard-negative".to_string(), vec![(1.0, 40.0), (2.0, 12.0)])]
        );
        // an old log's `ce` column is its segmentation loss
        std::fs::write(&p, "iteration,ce,total\n1,0.7,0.7\n").expect("write");
        assert_eq!(read_log(&p).expect("log").seg(), vec![(1.0, 0.7)]);
        std::fs::write(&p, "iteration,total\n1,0.7\n").expect("write");
        assert!(read_log(&p).is_err());
    }
}
