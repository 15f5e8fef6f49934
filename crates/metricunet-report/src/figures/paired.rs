//! The paired plot: for each configuration against the baseline, one line per test case
//! from its value under the baseline to its value under the configuration (seeds averaged),
//! for the first two metrics (DSC and ASD); a line that goes the better way is green.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_range, plot_err, render, Draw, Figure, FONT};
use crate::collect::{lower_is_better, metric_title, RunResults};
use crate::error::Result;

const BETTER: RGBColor = RGBColor(44, 160, 44);
const WORSE: RGBColor = RGBColor(214, 39, 40);

/// One panel: metric title, lower-is-better, and the (baseline, other) value of each case.
type Panel = (String, bool, Vec<(f64, f64)>);

/// Panels side by side.
struct PairedPlot {
    names: (String, String),
    panels: Vec<Panel>,
}

impl Draw for PairedPlot {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("paired");
        let parts = area.split_evenly((1, self.panels.len().max(1)));
        for ((title, lower, pairs), part) in self.panels.iter().zip(parts.iter()) {
            let all: Vec<f64> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
            let (lo, hi) = if *lower {
                axis_range(&all, Some(0.0), None)
            } else {
                axis_range(&all, Some(0.0), Some(1.0))
            };
            let mut chart = ChartBuilder::on(part)
                .caption(title, (FONT, 22))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.3..1.3f64, lo..hi)
                .map_err(&e)?;
            let names = [self.names.0.clone(), self.names.1.clone()];
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(RGBColor(235, 235, 235))
                .x_labels(3)
                .x_label_formatter(&|x: &f64| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && (0.0..=1.0).contains(&i) {
                        names[i as usize].clone()
                    } else {
                        String::new()
                    }
                })
                .y_desc(title.as_str())
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 17))
                .draw()
                .map_err(&e)?;
            for &(a, b) in pairs.iter().filter(|(a, b)| a.is_finite() && b.is_finite()) {
                let better = if *lower { b < a } else { b > a };
                let c = if better { BETTER } else { WORSE };
                chart
                    .draw_series([PathElement::new(
                        vec![(0.0, a), (1.0, b)],
                        c.mix(0.8).stroke_width(2),
                    )])
                    .map_err(&e)?;
                chart
                    .draw_series([(0.0, a), (1.0, b)].map(|p| Circle::new(p, 4, c.filled())))
                    .map_err(&e)?;
            }
        }
        Ok(())
    }
}

/// One paired plot per configuration other than the baseline.
pub fn paired(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let Some(base) = r.baseline() else {
        return Ok(Vec::new());
    };
    let metrics: Vec<usize> = (0..r.metrics.len().min(2)).collect();
    let mut out = Vec::new();
    for (gi, g) in r.groups.iter().enumerate() {
        if gi == base || metrics.is_empty() {
            continue;
        }
        let b = &r.groups[base];
        let panels: Vec<Panel> = metrics
            .iter()
            .map(|&m| {
                let theirs = r.per_case(b, m);
                let pairs = r
                    .per_case(g, m)
                    .into_iter()
                    .filter_map(|(case, x)| {
                        theirs
                            .iter()
                            .find(|(c, _)| *c == case)
                            .map(|(_, y)| (*y, x))
                    })
                    .collect();
                (
                    metric_title(&r.metrics[m]),
                    lower_is_better(&r.metrics[m]),
                    pairs,
                )
            })
            .collect();
        let n = panels.first().map(|p| p.2.len()).unwrap_or(0);
        let stem = format!(
            "paired_{}",
            g.label.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        );
        let (png, svg) = render(
            dir,
            &stem,
            (460 * panels.len() as u32, 460),
            &PairedPlot {
                names: (b.label.clone(), g.label.clone()),
                panels,
            },
        )?;
        out.push(Figure {
            stem,
            title: format!("Paired plot: {} against {}", g.label, b.label),
            caption: format!(
                "One line per test case ({n} cases, each the mean over seeds) from its value under the baseline `{}` to its value under `{}`; green where it got better, red where it got worse.",
                b.label, g.label
            ),
            png,
            svg,
        });
    }
    Ok(out)
}
