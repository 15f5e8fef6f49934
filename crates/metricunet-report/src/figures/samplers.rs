//! The sampler lab's figure: where each configured sampler puts its anchors, positives and
//! negatives on one training image, over the CT and the reference contour, with counts.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use super::{dark_legend, outline, plot_err, render, Draw, Figure, FONT, REFERENCE};
use crate::error::{ReportError, Result};

/// One sampler's draw on the image shown (item-local indices, `y * W + x`).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerPanel {
    pub name: String,
    /// Anchor candidates on this image and on the whole batch.
    pub candidates: usize,
    pub batch_candidates: usize,
    /// Anchors drawn on the whole batch.
    pub batch_anchors: usize,
    pub anchors: Vec<usize>,
    /// `m` per anchor, in anchor order.
    pub positives: Vec<usize>,
    pub negatives: Vec<usize>,
}

/// One training image and what every sampler drew on it.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerView {
    /// What the image is, e.g. `phantom_003, patch 2 of a batch of 8`.
    pub title: String,
    pub h: usize,
    pub w: usize,
    /// The network's input slice, scaled to [0, 1].
    pub image: Vec<f32>,
    /// The reference (0 background).
    pub labels: Vec<u8>,
    /// The foreground probability the samplers saw, when one of them reads it.
    pub probabilities: Option<Vec<f32>>,
    pub samplers: Vec<SamplerPanel>,
}

const ANCHOR: RGBColor = RGBColor(255, 215, 0);
const POSITIVE: RGBColor = RGBColor(0, 220, 0);
const NEGATIVE: RGBColor = RGBColor(255, 0, 200);

impl SamplerView {
    fn check(&self) -> Result<()> {
        let n = self.h * self.w;
        let bad = |what: &str| ReportError::Plot {
            name: "samplers".into(),
            message: format!("{what} does not hold {}x{} values", self.h, self.w),
        };
        if self.image.len() != n {
            return Err(bad("the image"));
        }
        if self.labels.len() != n {
            return Err(bad("the reference"));
        }
        if self.probabilities.as_ref().is_some_and(|p| p.len() != n) {
            return Err(bad("the probability map"));
        }
        for s in &self.samplers {
            if s.anchors
                .iter()
                .chain(&s.positives)
                .chain(&s.negatives)
                .any(|&v| v >= n)
            {
                return Err(bad(&format!("sampler `{}`: an index", s.name)));
            }
        }
        Ok(())
    }

    /// Display coordinates of the centre of voxel `v` (row 0 at the top).
    fn at(&self, v: usize) -> (f64, f64) {
        let (r, c) = (v / self.w, v % self.w);
        (c as f64 + 0.5, (self.h - r) as f64 - 0.5)
    }
}

impl Draw for SamplerView {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("samplers");
        let (h, w) = (self.h, self.w);
        let with_probs = usize::from(self.probabilities.is_some());
        let n = self.samplers.len() + with_probs;
        let cols = n.clamp(1, 3);
        let parts = area.split_evenly((n.div_ceil(cols).max(1), cols));
        let outline = outline(h, w, |r, c| self.labels[r * w + c] != 0);
        for (k, part) in parts.iter().enumerate().take(n) {
            let (title, probs) = if k < with_probs {
                ("P(foreground) the samplers saw".to_string(), true)
            } else {
                let s = &self.samplers[k - with_probs];
                (
                    format!(
                        "{}: {} anchors of {} candidates (batch {} of {})",
                        s.name,
                        s.anchors.len(),
                        s.candidates,
                        s.batch_anchors,
                        s.batch_candidates
                    ),
                    false,
                )
            };
            let mut chart = ChartBuilder::on(part)
                .caption(title, (FONT, 14))
                .margin(6)
                .build_cartesian_2d(0.0..w as f64, 0.0..h as f64)
                .map_err(&e)?;
            let pixels = (0..h * w).map(|v| {
                let (r, c) = (v / w, v % w);
                let y = (h - r - 1) as f64;
                let colour = match (&self.probabilities, probs) {
                    (Some(p), true) => ViridisRGB::get_color(f64::from(p[v]).clamp(0.0, 1.0)),
                    _ => {
                        let g = (self.image[v].clamp(0.0, 1.0) * 255.0) as u8;
                        RGBColor(g, g, g)
                    }
                };
                Rectangle::new([(c as f64, y), (c as f64 + 1.0, y + 1.0)], colour.filled())
            });
            chart.draw_series(pixels).map_err(&e)?;
            chart
                .draw_series(
                    outline
                        .iter()
                        .map(|s| PathElement::new(s.to_vec(), REFERENCE.stroke_width(2))),
                )
                .map_err(&e)?
                .label("reference")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], REFERENCE.stroke_width(3))
                });
            if probs {
                continue;
            }
            let s = &self.samplers[k - with_probs];
            let m = if s.anchors.is_empty() {
                0
            } else {
                s.positives.len() / s.anchors.len()
            };
            // each anchor joined to its positives and negatives
            let links = s.anchors.iter().enumerate().flat_map(|(a, &v)| {
                let from = self.at(v);
                let pos = s.positives[a * m..(a + 1) * m]
                    .iter()
                    .map(move |&p| (from, p, POSITIVE));
                let neg = s.negatives[a * m..(a + 1) * m]
                    .iter()
                    .map(move |&q| (from, q, NEGATIVE));
                pos.chain(neg)
            });
            chart
                .draw_series(links.map(|(from, to, c)| {
                    PathElement::new(vec![from, self.at(to)], c.mix(0.45).stroke_width(1))
                }))
                .map_err(&e)?;
            chart
                .draw_series(
                    s.negatives
                        .iter()
                        .map(|&v| Cross::new(self.at(v), 4, NEGATIVE.stroke_width(2))),
                )
                .map_err(&e)?
                .label("negative")
                .legend(|(x, y)| Cross::new((x + 8, y), 4, NEGATIVE.stroke_width(2)));
            chart
                .draw_series(
                    s.positives
                        .iter()
                        .map(|&v| Circle::new(self.at(v), 3, POSITIVE.filled())),
                )
                .map_err(&e)?
                .label("positive")
                .legend(|(x, y)| Circle::new((x + 8, y), 3, POSITIVE.filled()));
            chart
                .draw_series(
                    s.anchors
                        .iter()
                        .map(|&v| Circle::new(self.at(v), 4, ANCHOR.filled())),
                )
                .map_err(&e)?
                .label("anchor")
                .legend(|(x, y)| Circle::new((x + 8, y), 4, ANCHOR.filled()));
            dark_legend(&mut chart, "samplers")?;
        }
        Ok(())
    }
}

/// Draw `view` as `<dir>/<stem>.png` and `.svg`.
pub fn sampler_picks(view: &SamplerView, dir: &Path, stem: &str) -> Result<Figure> {
    view.check()?;
    let n = view.samplers.len() + usize::from(view.probabilities.is_some());
    let cols = n.clamp(1, 3) as u32;
    let rows = n.div_ceil(3).max(1) as u32;
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let (png, svg) = render(dir, stem, (cols * 420, rows * 440), view)?;
    Ok(Figure {
        stem: stem.to_string(),
        title: format!("Samplers: {}", view.title),
        caption: format!(
            "{}: the network's input slice (grey), the reference outline (green), and for each configured sampler its anchors (yellow), positives (green dots) and negatives (magenta crosses), each anchor joined to its own; counts for this image and for the whole batch.{}",
            view.title,
            if view.probabilities.is_some() {
                " The first panel is the foreground probability the samplers saw (viridis, 0 dark to 1 yellow): hard-negative anchors lie where it is far from the reference."
            } else {
                ""
            }
        ),
        png,
        svg,
    })
}
