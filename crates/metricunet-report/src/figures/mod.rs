//! Figures (plotters, PNG and SVG, headless): Fig. 6 box plots per grid value, Fig. 7
//! training curves, Fig. 8 contour overlays with Fig. 1-style probability heat maps.

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use metricunet_core::fsio::write_atomic_at;

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
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

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

/// A white scale bar from `a` to `b` (chart coordinates) and the legend in the upper right,
/// white on translucent black: what the figures drawn on a CT slice put over the image.
fn scale_bar_and_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    a: (f64, f64),
    b: (f64, f64),
    name: &str,
) -> Result<()> {
    let e = plot_err(name);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![a, b],
            WHITE.stroke_width(3),
        )))
        .map_err(&e)?;
    dark_legend(chart, name)
}

/// The legend in the upper right, white on translucent black (over a CT slice).
fn dark_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    name: &str,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12).into_font().color(&WHITE))
        .background_style(BLACK.mix(0.5))
        .draw()
        .map_err(plot_err(name))?;
    Ok(())
}

/// A line segment in display coordinates.
type Segment = [(f64, f64); 2];

/// The outline of a mask on an `h x w` image drawn with row 0 at the top (display y grows
/// upwards): the unit edges between a voxel where `fg(row, column)` holds and one where it
/// does not (or the image border).
fn outline(h: usize, w: usize, fg: impl Fn(usize, usize) -> bool) -> Vec<Segment> {
    let mut out = Vec::new();
    for r in 0..h {
        for c in 0..w {
            if !fg(r, c) {
                continue;
            }
            let (x0, x1) = (c as f64, c as f64 + 1.0);
            let (y1, y0) = ((h - r) as f64, (h - r - 1) as f64);
            if c == 0 || !fg(r, c - 1) {
                out.push([(x0, y0), (x0, y1)]);
            }
            if c + 1 == w || !fg(r, c + 1) {
                out.push([(x1, y0), (x1, y1)]);
            }
            if r == 0 || !fg(r - 1, c) {
                out.push([(x0, y1), (x1, y1)]);
            }
            if r + 1 == h || !fg(r + 1, c) {
                out.push([(x0, y0), (x1, y0)]);
            }
        }
    }
    out
}

/// A test case of a cell's record, read and checked, its labels mapped by `config`.
fn load_test_case(
    case: &metricunet_store::TestCase,
    config: &metricunet_core::config::Experiment,
) -> Result<metricunet_data::dataset::LoadedCase> {
    Ok(metricunet_data::dataset::load_case(
        &metricunet_data::dataset::Case {
            id: case.id.clone(),
            image: case.image.clone(),
            label: case.label.clone(),
        },
        &config.data.label_map,
    )?)
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

mod embedding;
mod fig6;
mod fig7;
mod fig8;
mod paired;
mod samplers;
mod worst;

pub use embedding::{embedding_figure, embeddings, sampler_figures, Embeddings};
pub use fig6::fig6;
pub use fig7::{band, fig7, read_log, Band, Curve, LogCurves};
pub use fig8::fig8;
pub use paired::paired;
pub use samplers::{sampler_picks, SamplerPanel, SamplerView};
pub use worst::worst_cases;
