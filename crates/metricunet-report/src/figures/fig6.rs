//! Fig. 6: box plots of the first two metrics per value of each grid axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_range, plot_err, render, Draw, Figure, FONT, SERIES};
use crate::collect::{metric_title, RunResults};
use crate::error::Result;

/// Box plots of some metrics (panels side by side) for groups of values.
struct BoxPlots {
    /// x-axis title, e.g. `metric.lambda`.
    axis: String,
    names: Vec<String>,
    /// Per panel: metric title and per group the values.
    panels: Vec<(String, Vec<Vec<f64>>, bool)>,
}

impl Draw for BoxPlots {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("fig6");
        let parts = area.split_evenly((1, self.panels.len().max(1)));
        for ((title, groups, unit_is_mm), part) in self.panels.iter().zip(parts.iter()) {
            let all: Vec<f64> = groups.iter().flatten().copied().collect();
            let (lo, hi) = if *unit_is_mm {
                axis_range(&all, Some(0.0), None)
            } else {
                axis_range(&all, Some(0.0), Some(1.0))
            };
            let n = self.names.len();
            let mut chart = ChartBuilder::on(part)
                .caption(title, (FONT, 22))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5..n as f64 - 0.5, lo..hi)
                .map_err(&e)?;
            let names = &self.names;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(RGBColor(235, 235, 235))
                // n labels on [-0.5, n - 0.5] fall on the integers, one per group
                .x_labels(n)
                .x_label_formatter(&|x: &f64| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 {
                        names.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .x_desc(self.axis.as_str())
                .y_desc(title.as_str())
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 17))
                .draw()
                .map_err(&e)?;
            for (i, v) in groups.iter().enumerate() {
                let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                if f.is_empty() {
                    continue;
                }
                f.sort_by(f64::total_cmp);
                let c = SERIES[i % SERIES.len()];
                let x = i as f64;
                let (q1, med, q3) = (
                    crate::stats::quantile(&f, 0.25),
                    crate::stats::quantile(&f, 0.5),
                    crate::stats::quantile(&f, 0.75),
                );
                let iqr = q3 - q1;
                // Tukey whiskers: the most extreme values within 1.5 IQR of the box
                let low = f
                    .iter()
                    .copied()
                    .find(|&y| y >= q1 - 1.5 * iqr)
                    .unwrap_or(q1)
                    .min(q1);
                let high = f
                    .iter()
                    .rev()
                    .copied()
                    .find(|&y| y <= q3 + 1.5 * iqr)
                    .unwrap_or(q3)
                    .max(q3);
                let (w, cap) = (0.22, 0.1);
                chart
                    .draw_series([
                        Rectangle::new([(x - w, q1), (x + w, q3)], c.mix(0.12).filled()),
                        Rectangle::new([(x - w, q1), (x + w, q3)], c.stroke_width(2)),
                    ])
                    .map_err(&e)?;
                chart
                    .draw_series(
                        [
                            vec![(x - w, med), (x + w, med)],
                            vec![(x, q3), (x, high)],
                            vec![(x, q1), (x, low)],
                            vec![(x - cap, high), (x + cap, high)],
                            vec![(x - cap, low), (x + cap, low)],
                        ]
                        .into_iter()
                        .enumerate()
                        .map(|(k, pts)| {
                            PathElement::new(pts, c.stroke_width(if k == 0 { 3 } else { 2 }))
                        }),
                    )
                    .map_err(&e)?;
                // every value, spread sideways by rank so equal values stay visible
                let m = v.len().max(1) as f64;
                chart
                    .draw_series(v.iter().enumerate().filter(|(_, y)| y.is_finite()).map(
                        |(k, &y)| {
                            let dx = if m > 1.0 {
                                (k as f64 / (m - 1.0) - 0.5) * 0.3
                            } else {
                                0.0
                            };
                            Circle::new((x + dx, y), 4, BLACK.mix(0.6).filled())
                        },
                    ))
                    .map_err(&e)?;
            }
        }
        Ok(())
    }
}

/// Fig. 6: for every grid axis (or, without a grid, every configuration), box plots of the
/// first two metrics (DSC and ASD) over the values of that axis, pooled over the others.
pub fn fig6(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let metrics: Vec<usize> = (0..r.metrics.len().min(2)).collect();
    if metrics.is_empty() || r.groups.is_empty() {
        return Ok(Vec::new());
    }
    // axes along which something varies (a one-value axis makes a one-box plot)
    let mut axes: Vec<Option<String>> = r
        .plan
        .axes
        .iter()
        .filter(|a| {
            let mut v: Vec<Option<String>> = r.groups.iter().map(|g| r.axis_value(g, a)).collect();
            v.sort();
            v.dedup();
            v.len() > 1
        })
        .cloned()
        .map(Some)
        .collect();
    if axes.is_empty() {
        axes.push(None);
    }
    let mut out = Vec::new();
    for axis in axes {
        // values of this axis, in first-appearance order, and the groups with each
        let mut names: Vec<String> = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (gi, g) in r.groups.iter().enumerate() {
            let key = match &axis {
                Some(a) => r.axis_value(g, a).unwrap_or_else(|| "-".into()),
                None => g.label.clone(),
            };
            match names.iter().position(|n| *n == key) {
                Some(k) => members[k].push(gi),
                None => {
                    names.push(key);
                    members.push(vec![gi]);
                }
            }
        }
        let panels = metrics
            .iter()
            .map(|&m| {
                let groups = members
                    .iter()
                    .map(|gs| gs.iter().flat_map(|&g| r.values(&r.groups[g], m)).collect())
                    .collect();
                (
                    metric_title(&r.metrics[m]),
                    groups,
                    crate::collect::lower_is_better(&r.metrics[m]),
                )
            })
            .collect();
        let axis_name = axis.clone().unwrap_or_else(|| "configuration".into());
        let stem = format!(
            "fig6_{}",
            axis_name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
        );
        let width = (260 + 110 * names.len() as u32).clamp(420, 900);
        let (png, svg) = render(
            dir,
            &stem,
            (width * metrics.len() as u32, 420),
            &BoxPlots {
                axis: axis_name.clone(),
                names,
                panels,
            },
        )?;
        out.push(Figure {
            stem,
            title: format!("Fig. 6: DSC and ASD per {axis_name}"),
            caption: format!(
                "Box plots of the test cases' {} for each value of `{axis_name}`, pooled over seeds{} (box: quartiles and median; whiskers: the most extreme values within 1.5 IQR of the box; dots: every test case).",
                metrics.iter().map(|&m| metric_title(&r.metrics[m])).collect::<Vec<_>>().join(" and "),
                if r.plan.axes.len() > 1 { " and the other grid axes" } else { "" }
            ),
            png,
            svg,
        });
    }
    Ok(out)
}
