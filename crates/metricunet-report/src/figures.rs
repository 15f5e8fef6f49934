//! Figures (plotters, PNG and SVG, headless): Fig. 6 box plots per grid value, Fig. 7
//! training curves, Fig. 8 contour overlays with Fig. 1-style probability heat maps.

use std::path::{Path, PathBuf};

use metricunet_data::dataset::{load_case, Case};
use metricunet_data::io::read_nifti;
use metricunet_data::Volume;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use metricunet_core::config::StageName;
use metricunet_core::fsio::write_atomic_at;

use crate::collect::{metric_title, RunResults};
use crate::error::{ReportError, Result};

/// A written figure: its PNG and SVG, and what it shows.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stem in the figures folder, e.g. `fig6_metric.lambda`.
    pub stem: String,
    pub title: String,
    pub caption: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

const FONT: &str = "sans-serif";
/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`), embedded so that
/// figures render the same on machines without system fonts (GPU nodes, containers).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Register the embedded font as `FONT` (once).
fn ensure_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot {
            name: "font".into(),
            message: "the embedded DejaVu Sans font could not be read".into(),
        })
    }
}
/// Curve and box colours; contour colours on the CT are `CONTOUR`.
const SERIES: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const CONTOUR: [RGBColor; 6] = [
    RGBColor(255, 40, 40),
    RGBColor(0, 200, 255),
    RGBColor(255, 220, 0),
    RGBColor(255, 0, 255),
    RGBColor(255, 140, 0),
    RGBColor(120, 120, 255),
];
const REFERENCE: RGBColor = RGBColor(0, 230, 0);

fn plot_err<E: std::fmt::Display>(name: &str) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot {
        name: name.to_string(),
        message: e.to_string(),
    }
}

/// Something drawable on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Render `d` to `<dir>/<stem>.png` and `.svg`, each through a temporary file and a rename.
fn render<D: Draw>(dir: &Path, stem: &str, size: (u32, u32), d: &D) -> Result<(PathBuf, PathBuf)> {
    ensure_font()?;
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    // each through the one atomic-write helper; a drawing error is kept whole
    for (target, is_svg) in [(&png, false), (&svg, true)] {
        let mut failed = None;
        let written = write_atomic_at(target, |tmp| {
            let drawn = if is_svg {
                draw_on(&SVGBackend::new(tmp, size).into_drawing_area(), stem, d)
            } else {
                draw_on(&BitMapBackend::new(tmp, size).into_drawing_area(), stem, d)
            };
            drawn.map_err(|e| {
                let message = e.to_string();
                failed = Some(e);
                message
            })
        });
        if let Err(e) = written {
            return Err(failed.unwrap_or(ReportError::Write(e)));
        }
    }
    Ok((png, svg))
}

fn draw_on<DB: DrawingBackend, D: Draw>(
    root: &DrawingArea<DB, Shift>,
    stem: &str,
    d: &D,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err(stem))?;
    d.draw(root)?;
    root.present().map_err(plot_err(stem))
}

fn axis_range(v: &[f64], lo_floor: Option<f64>, hi_cap: Option<f64>) -> (f64, f64) {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let (mut lo, mut hi) = f
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    lo -= pad;
    hi += pad;
    if let Some(f) = lo_floor {
        lo = lo.max(f);
    }
    if let Some(c) = hi_cap {
        hi = hi.min(c);
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    (lo, hi)
}

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

/// Points (iteration, value) of a curve.
pub type Curve = Vec<(f64, f64)>;

/// (iteration, cross-entropy) and (iteration, validation DSC) of a training log.
pub fn read_log(path: &Path) -> Result<(Curve, Curve)> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |n: &str| header.iter().position(|h| *h == n);
    let (it, ce, val) = (col("iteration"), col("ce"), col("val_dsc"));
    let (Some(it), Some(ce)) = (it, ce) else {
        return Err(ReportError::file(path, "no `iteration` and `ce` columns"));
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
                    format!("Training cross-entropy (moving average of {})", self.window),
                    "cross-entropy loss",
                    0.0..hi,
                )
            } else {
                (
                    "Validation DSC".to_string(),
                    "DSC (validation patches)",
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

/// Fig. 7: stage-2 cross-entropy and validation DSC against iteration, one curve per
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
            "Stage 2, first seed of each configuration: cross-entropy term of the loss per iteration (trailing moving average over {window} iterations) and Dice on the validation patches."
        ),
        png,
        svg,
    }))
}

/// One axial slice region of a case, ready to draw.
struct CaseSlice {
    case: String,
    z: usize,
    /// Rows of the crop in display order (top first), each a row of voxel indices of the
    /// slice; display coordinates are (column, row).
    cols: Vec<usize>,
    rows: Vec<usize>,
    nx: usize,
    ct: Vec<f32>,
    reference: Vec<bool>,
    /// Per configuration: name, mask, probabilities (if kept).
    configs: Vec<(String, Vec<bool>, Option<Vec<f32>>)>,
    pixel_mm: f64,
}

impl CaseSlice {
    fn at(&self, v: &[bool], c: usize, r: usize) -> bool {
        v[self.rows[r] * self.nx + self.cols[c]]
    }
}

struct Overlay<'a>(&'a CaseSlice);

/// A line segment in display coordinates.
type Segment = [(f64, f64); 2];

fn edges(s: &CaseSlice, mask: &[bool]) -> Vec<Segment> {
    let (w, h) = (s.cols.len(), s.rows.len());
    let mut out = Vec::new();
    for r in 0..h {
        for c in 0..w {
            if !s.at(mask, c, r) {
                continue;
            }
            // display y grows upwards: row 0 is the top
            let (x0, x1) = (c as f64, c as f64 + 1.0);
            let (y1, y0) = ((h - r) as f64, (h - r - 1) as f64);
            if c == 0 || !s.at(mask, c - 1, r) {
                out.push([(x0, y0), (x0, y1)]);
            }
            if c + 1 == w || !s.at(mask, c + 1, r) {
                out.push([(x1, y0), (x1, y1)]);
            }
            if r == 0 || !s.at(mask, c, r - 1) {
                out.push([(x0, y1), (x1, y1)]);
            }
            if r + 1 == h || !s.at(mask, c, r + 1) {
                out.push([(x0, y0), (x1, y0)]);
            }
        }
    }
    out
}

impl Draw for Overlay<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("fig8");
        let s = self.0;
        let (w, h) = (s.cols.len(), s.rows.len());
        let n = 1 + s.configs.len();
        let cols = n.min(4);
        let rows = n.div_ceil(cols);
        let parts = area.split_evenly((rows, cols));
        for (k, part) in parts.iter().enumerate().take(n) {
            let title = if k == 0 {
                format!("{} slice {}: CT and contours", s.case, s.z)
            } else {
                format!("P(prostate): {}", s.configs[k - 1].0)
            };
            let mut chart = ChartBuilder::on(part)
                .caption(title, (FONT, 15))
                .margin(6)
                .build_cartesian_2d(0.0..w as f64, 0.0..h as f64)
                .map_err(&e)?;
            let mut pixels = Vec::with_capacity(w * h);
            for r in 0..h {
                for c in 0..w {
                    let y = (h - r - 1) as f64;
                    let colour = if k == 0 {
                        let v = s.ct[s.rows[r] * s.nx + s.cols[c]];
                        let g = (((v + 200.0) / 500.0).clamp(0.0, 1.0) * 255.0) as u8;
                        RGBColor(g, g, g)
                    } else {
                        match &s.configs[k - 1].2 {
                            Some(p) => ViridisRGB::get_color(
                                f64::from(p[s.rows[r] * s.nx + s.cols[c]]).clamp(0.0, 1.0),
                            ),
                            None => RGBColor(220, 220, 220),
                        }
                    };
                    pixels.push(Rectangle::new(
                        [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                        colour.filled(),
                    ));
                }
            }
            chart.draw_series(pixels).map_err(&e)?;
            let mut outlines: Vec<(String, RGBColor, Vec<Segment>)> = Vec::new();
            if k == 0 {
                outlines.push(("reference".into(), REFERENCE, edges(s, &s.reference)));
                for (i, (name, m, _)) in s.configs.iter().enumerate() {
                    outlines.push((name.clone(), CONTOUR[i % CONTOUR.len()], edges(s, m)));
                }
            } else {
                // the reference on the heat map, for orientation
                outlines.push(("reference".into(), WHITE, edges(s, &s.reference)));
            }
            for (name, colour, segs) in outlines {
                let ann = chart
                    .draw_series(
                        segs.into_iter()
                            .map(|seg| PathElement::new(seg.to_vec(), colour.stroke_width(2))),
                    )
                    .map_err(&e)?;
                if k == 0 {
                    ann.label(name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
                    });
                }
            }
            if k == 0 {
                // 10 mm scale bar
                let len = 10.0 / s.pixel_mm;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(1.0, 1.5), (1.0 + len, 1.5)],
                        WHITE.stroke_width(3),
                    )))
                    .map_err(&e)?;
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .label_font((FONT, 12).into_font().color(&WHITE))
                    .background_style(BLACK.mix(0.5))
                    .draw()
                    .map_err(&e)?;
            }
        }
        Ok(())
    }
}

fn centroid_slice(m: &Volume<bool>) -> Option<usize> {
    let [nx, ny, nz] = m.geometry.dims;
    let per: Vec<usize> = (0..nz)
        .map(|z| {
            m.data[z * nx * ny..(z + 1) * nx * ny]
                .iter()
                .filter(|&&v| v)
                .count()
        })
        .collect();
    let total: usize = per.iter().sum();
    if total == 0 {
        return None;
    }
    let zc = per.iter().enumerate().map(|(z, &c)| z * c).sum::<usize>() as f64 / total as f64;
    let z = zc.round() as usize;
    // the centroid slice of a concave shape may miss it: take the nearest slice with voxels
    (0..nz)
        .filter(|&k| per[k] > 0)
        .min_by_key(|&k| k.abs_diff(z))
}

fn load_case_slice(r: &RunResults, case: &metricunet_store::TestCase) -> Result<Option<CaseSlice>> {
    let first = &r.cells[r.groups[0].cells[0]];
    let loaded = load_case(
        &Case {
            id: case.id.clone(),
            image: case.image.clone(),
            label: case.label.clone(),
        },
        &first.config.data.label_map,
    )?;
    let Some(label) = loaded.label else {
        return Ok(None);
    };
    let reference = label.map(|v| v != 0);
    let Some(z) = centroid_slice(&reference) else {
        return Ok(None);
    };
    let g = &reference.geometry;
    let [nx, ny, _] = g.dims;
    let slice = |v: &[bool]| v[z * nx * ny..(z + 1) * nx * ny].to_vec();
    let mut configs = Vec::new();
    for grp in &r.groups {
        let cell = &r.cells[grp.cells[0]];
        let pred_path = metricunet_store::prediction_path(&cell.dir, &case.id);
        if !pred_path.exists() {
            continue;
        }
        let pred = read_nifti(&pred_path)?.volume;
        if pred.geometry.dims != g.dims {
            return Err(ReportError::file(
                &pred_path,
                "grid differs from the case's",
            ));
        }
        let mask: Vec<bool> = pred.slice(z).iter().map(|&v| v != 0.0).collect();
        let prob_path = metricunet_store::probability_path(&cell.dir, &case.id);
        let prob = if prob_path.exists() {
            Some(read_nifti(&prob_path)?.volume.slice(z).to_vec())
        } else {
            None
        };
        configs.push((grp.label.clone(), mask, prob));
    }
    let ref_slice = slice(&reference.data);
    // crop: the reference and the predictions on this slice, with a margin, made square
    let mut bb = (usize::MAX, 0usize, usize::MAX, 0usize);
    for m in std::iter::once(&ref_slice).chain(configs.iter().map(|c| &c.1)) {
        for (i, _) in m.iter().enumerate().filter(|(_, &v)| v) {
            let (x, y) = (i % nx, i / nx);
            bb = (bb.0.min(x), bb.1.max(x), bb.2.min(y), bb.3.max(y));
        }
    }
    let (cx, cy) = ((bb.0 + bb.1) / 2, (bb.2 + bb.3) / 2);
    let half = ((bb.1 - bb.0).max(bb.3 - bb.2) as f64 * 0.8).max(12.0) as usize;
    let xs: Vec<usize> = (cx.saturating_sub(half)..(cx + half + 1).min(nx)).collect();
    let ys: Vec<usize> = (cy.saturating_sub(half)..(cy + half + 1).min(ny)).collect();
    // radiological display: the patient's right (world +x in RAS) on the left, anterior up
    let cols: Vec<usize> = if g.affine[0][0] > 0.0 {
        xs.into_iter().rev().collect()
    } else {
        xs
    };
    let rows: Vec<usize> = if g.affine[1][1] > 0.0 {
        ys.into_iter().rev().collect()
    } else {
        ys
    };
    Ok(Some(CaseSlice {
        case: case.id.clone(),
        z,
        cols,
        rows,
        nx,
        ct: loaded.image.volume.slice(z).to_vec(),
        reference: ref_slice,
        configs,
        pixel_mm: g.spacing[0],
    }))
}

/// Fig. 8 (with Fig. 1's heat maps): for the first `report.figure_cases` test cases, the
/// axial CT slice through the reference's centroid with the reference contour and each
/// configuration's contour, and each configuration's foreground probability.
pub fn fig8(r: &RunResults, dir: &Path) -> Result<Vec<Figure>> {
    let Some(first) = r.groups.first().map(|g| &r.cells[g.cells[0]]) else {
        return Ok(Vec::new());
    };
    let n = first.config.report.figure_cases;
    let mut out = Vec::new();
    for case in first.record.test_cases.iter().take(n) {
        let Some(s) = load_case_slice(r, case)? else {
            tracing::warn!("{}: no reference foreground; no overlay figure", case.id);
            continue;
        };
        let k = 1 + s.configs.len();
        let cols = k.min(4) as u32;
        let rows = k.div_ceil(4) as u32;
        let stem = format!(
            "fig8_{}",
            case.id
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let (png, svg) = render(dir, &stem, (cols * 330, rows * 350), &Overlay(&s))?;
        out.push(Figure {
            stem,
            title: format!("Fig. 8: {}", case.id),
            caption: format!(
                "Test case {}, axial slice {} through the reference's centroid (window -200..300 HU, radiological view: patient's right on the left, anterior up; bar 10 mm). Green: reference; other colours: each configuration's prediction (first seed). Heat maps: foreground probability (viridis, 0 dark to 1 yellow; grey where not kept), reference in white.",
                case.id, s.z
            ),
            png,
            svg,
        });
    }
    Ok(out)
}
