//! Fig. 7: training curves (segmentation loss, validation DSC) per configuration.

use std::path::Path;

use metricunet_core::config::StageName;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_range, plot_err, render, Draw, Figure, FONT, SERIES};
use crate::collect::RunResults;
use crate::error::{ReportError, Result};

/// Points (iteration, value) of a curve.
pub type Curve = Vec<(f64, f64)>;

/// (iteration, segmentation loss) and (iteration, validation DSC) of a training log: the
/// `seg` column (`ce` in logs written before segmentation losses were plugins).
pub fn read_log(path: &Path) -> Result<(Curve, Curve)> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n);
    let (it, ce, val) = (col("iteration"), col("seg").or(col("ce")), col("val_dsc"));
    let (Some(it), Some(ce)) = (it, ce) else {
        return Err(ReportError::file(path, "no `iteration` and `seg` columns"));
    };
    let (mut loss, mut dsc) = (Vec::new(), Vec::new());
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
        let Some(x) = num(it) else { continue };
        if let Some(y) = num(ce) {
            loss.push((x, y));
        }
        if let Some(y) = val.and_then(num) {
            dsc.push((x, y));
        }
    }
    Ok((loss, dsc))
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

struct Curves {
    /// Per configuration: name, loss curve, validation DSC points.
    series: Vec<(String, Curve, Curve)>,
    window: usize,
}

impl Draw for Curves {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("fig7");
        let parts = area.split_evenly((1, 2));
        let max_it = self
            .series
            .iter()
            .flat_map(|s| s.1.iter().chain(&s.2).map(|p| p.0))
            .fold(1.0f64, f64::max);
        let losses: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .collect();
        let (_, hi) = axis_range(&losses, Some(0.0), None);
        for (k, part) in parts.iter().enumerate() {
            let (title, ylab, y) = if k == 0 {
                (
                    format!(
                        "Training segmentation loss (moving average of {})",
                        self.window
                    ),
                    "segmentation loss",
                    0.0..hi,
                )
            } else {
                (
                    "Whole-case validation DSC".to_string(),
                    "DSC (whole validation cases)",
                    0.0..1.0,
                )
            };
            let mut chart = ChartBuilder::on(part)
                .caption(title, (FONT, 20))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..max_it, y)
                .map_err(&e)?;
            chart
                .configure_mesh()
                .x_desc("iteration")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(RGBColor(235, 235, 235))
                .y_desc(ylab)
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 17))
                .draw()
                .map_err(&e)?;
            for (i, (name, loss, dsc)) in self.series.iter().enumerate() {
                let c = SERIES[i % SERIES.len()];
                let pts = if k == 0 {
                    smooth(loss, self.window)
                } else {
                    dsc.clone()
                };
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(&e)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                    });
                if k == 1 {
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                        .map_err(&e)?;
                }
            }
            chart
                .configure_series_labels()
                .position(if k == 0 {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
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

/// Fig. 7: stage-2 segmentation loss and validation DSC against iteration, one curve per
/// configuration (its first seed).
pub fn fig7(r: &RunResults, dir: &Path) -> Result<Option<Figure>> {
    let mut series = Vec::new();
    let mut longest = 0;
    for g in &r.groups {
        let cell = &r.cells[g.cells[0]];
        let log = cell
            .dir
            .join(metricunet_store::stage_dir(StageName::Stage2))
            .join(metricunet_store::LOG);
        if !log.exists() {
            continue;
        }
        let (loss, dsc) = read_log(&log)?;
        longest = longest.max(loss.len());
        series.push((g.label.clone(), loss, dsc));
    }
    if series.is_empty() {
        return Ok(None);
    }
    let window = (longest / 40).max(1);
    let (png, svg) = render(dir, "fig7_curves", (1300, 460), &Curves { series, window })?;
    Ok(Some(Figure {
        stem: "fig7_curves".into(),
        title: "Fig. 7: training curves".into(),
        caption: format!(
            "Stage 2, first seed of each configuration: segmentation term of the loss (cross-entropy unless configured otherwise) per iteration (trailing moving average over {window} iterations) and the mean DSC of the whole validation cases, segmented as test cases are."
        ),
        png,
        svg,
    }))
}
