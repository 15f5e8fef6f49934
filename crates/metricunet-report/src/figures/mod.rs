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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12).into_font().color(&WHITE))
        .background_style(BLACK.mix(0.5))
        .draw()
        .map_err(&e)?;
    Ok(())
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
