//! Fig. 6: box plots of the first two metrics per value of each grid axis.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{axis_range, plot_err, render, Draw, Figure, FONT, SERIES};
use crate::collect::{metric_title, RunResults};
use crate::error::Result;
use metricunet_core::config::GridMode;

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
/// first two metrics (DSC and ASD) over the values of that axis. With several axes, each
/// axis is drawn with the others held at the file's own values (the baseline), as the paper
/// varies one parameter at a time; a product grid also gets the view pooled over the other
/// axes, labelled as pooled (a one-at-a-time grid has no such view: its cells off the
/// baseline vary one axis each).
pub fn fig6(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let metrics: Vec<usize> = (0..r.metrics.len().min(2)).collect();
    if metrics.is_empty() || r.groups.is_empty() {
        return Ok(Vec::new());
    }
    let one_at_a_time = r.plan.grid_mode == GridMode::OneAtATime;
    let all: Vec<usize> = (0..r.groups.len()).collect();
    let baseline = |axis: &str| {
        r.plan
            .baseline
            .iter()
            .find(|(k, _)| k == axis)
            .map(|(_, v)| v.clone())
    };
    // the groups whose axes other than `axis` are all at their baseline
    let held = |axis: &str| -> Option<Vec<usize>> {
        let others: Vec<(&String, String)> = r
            .plan
            .axes
            .iter()
            .filter(|a| *a != axis)
            .map(|a| baseline(a).map(|b| (a, b)))
            .collect::<Option<_>>()?;
        Some(
            all.iter()
                .copied()
                .filter(|&g| {
                    others
                        .iter()
                        .all(|(a, b)| r.axis_value(&r.groups[g], a).as_ref() == Some(b))
                })
                .collect(),
        )
    };
    // the number of distinct values of `axis` among `groups`
    let spread = |axis: &str, groups: &[usize]| {
        let mut v: Vec<Option<String>> = groups
            .iter()
            .map(|&g| r.axis_value(&r.groups[g], axis))
            .collect();
        v.sort();
        v.dedup();
        v.len()
    };
    let metric_names = metrics
        .iter()
        .map(|&m| metric_title(&r.metrics[m]))
        .collect::<Vec<_>>()
        .join(" and ");
    let whiskers = "box: quartiles and median; whiskers: the most extreme values within 1.5 IQR of the box; dots: every test case";
    let mut out = Vec::new();
    let varies = r.plan.axes.iter().any(|a| spread(a, &all) > 1);
    if !varies {
        // no grid, or one whose axes take one value each: a box per configuration
        out.push(draw(
            r,
            dir,
            &metrics,
            None,
            &all,
            "fig6_configuration".into(),
            "Fig. 6: DSC and ASD per configuration".into(),
            format!("Box plots of the test cases' {metric_names} for each configuration, pooled over seeds ({whiskers})."),
        )?);
        return Ok(out);
    }
    let several = r.plan.axes.len() > 1;
    for axis in &r.plan.axes {
        let stem = format!(
            "fig6_{}",
            axis.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_")
        );
        let others: Vec<String> = r
            .plan
            .axes
            .iter()
            .filter(|a| *a != axis)
            .map(|a| format!("{a} = {}", baseline(a).unwrap_or_default()))
            .collect();
        // each axis with the others at their baseline
        let at_baseline = if several { held(axis) } else { None };
        if let Some(groups) = at_baseline.filter(|g| spread(axis, g) > 1) {
            out.push(draw(
                r,
                dir,
                &metrics,
                Some(axis),
                &groups,
                if one_at_a_time { stem.clone() } else { format!("{stem}_at_baseline") },
                format!("Fig. 6: DSC and ASD per {axis}, {} held", others.join(", ")),
                format!(
                    "Box plots of the test cases' {metric_names} for each value of `{axis}` with the other grid {} at the file's own value ({}), pooled over seeds ({whiskers}).",
                    if others.len() > 1 { "axes" } else { "axis" },
                    others.join(", ")
                ),
            )?);
        }
        // pooled over the other axes (a product grid), or the only view (one axis)
        if !one_at_a_time && spread(axis, &all) > 1 {
            out.push(draw(
                r,
                dir,
                &metrics,
                Some(axis),
                &all,
                stem,
                if several {
                    format!("Fig. 6: DSC and ASD per {axis}, pooled over the other grid axes")
                } else {
                    format!("Fig. 6: DSC and ASD per {axis}")
                },
                format!(
                    "Box plots of the test cases' {metric_names} for each value of `{axis}`, pooled over seeds{} ({whiskers}).",
                    if several {
                        " and over every value of the other grid axes (each box mixes them; see the held view where the file's own values are in the grid)"
                    } else {
                        ""
                    }
                ),
            )?);
        }
    }
    Ok(out)
}

/// One Fig. 6 figure: a box per value of `axis` (or per configuration) over `groups`.
#[allow(clippy::too_many_arguments)]
fn draw(
    r: &RunResults,
    dir: &Path,
    metrics: &[usize],
    axis: Option<&String>,
    groups: &[usize],
    stem: String,
    title: String,
    caption: String,
) -> Result<Figure> {
    // values of this axis, in first-appearance order, and the groups with each
    let mut names: Vec<String> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for &gi in groups {
        let g = &r.groups[gi];
        let key = match axis {
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
    let width = (260 + 110 * names.len() as u32).clamp(420, 900);
    let (png, svg) = render(
        dir,
        &stem,
        (width * metrics.len() as u32, 420),
        &BoxPlots {
            axis: axis.cloned().unwrap_or_else(|| "configuration".into()),
            names,
            panels,
        },
    )?;
    Ok(Figure {
        stem,
        title,
        caption,
        png,
        svg,
    })
}
