//! The embedding view in the report: for the first test case, each configuration's
//! embedding map on the slice with the most reference foreground, its first three principal
//! components as RGB and a scatter of its first two, and the boundary separation number of
//! every seed (`metricunet_eval::embedding`).

use std::path::Path;

use candle_core::Device;
use metricunet_data::preprocess::{preprocess, PreprocessParams, Preprocessed};
use metricunet_eval::embedding::{
    cell_views, EmbeddingView, BACKGROUND, BOUNDARY_BG, BOUNDARY_FG, FOREGROUND,
};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::samplers::{sampler_picks, SamplerPanel, SamplerView};
use super::{axis_range, load_test_case, outline, plot_err, render, Draw, Figure, FONT, REFERENCE};
use crate::collect::RunResults;
use crate::error::{ReportError, Result};

/// One trained cell's embedding views: the first test case's (drawn) and the boundary
/// separation averaged over every test case that has one.
#[derive(Debug, Clone)]
pub struct SeedViews {
    pub seed: u64,
    pub first: EmbeddingView,
    /// Mean over the test cases of each one's separation (its slice with the most foreground).
    pub separation: Option<f64>,
    /// How many test cases that mean is over.
    pub cases: usize,
}

/// Every configuration's embedding views: (label, one entry per seed).
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// The drawn (first) test case.
    pub case: String,
    pub groups: Vec<(String, Vec<SeedViews>)>,
}

impl Embeddings {
    /// Mean separation over the seeds of group `g` and each seed's value.
    pub fn separation(&self, g: usize) -> (Option<f64>, Vec<Option<f64>>) {
        let each: Vec<Option<f64>> = self.groups[g].1.iter().map(|v| v.separation).collect();
        let finite: Vec<f64> = each.iter().flatten().copied().collect();
        let mean = (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64);
        (mean, each)
    }
}

/// The views of every finished cell on every test case (CPU, inference mode); each test case
/// is read and preprocessed once per preprocessing setting.
pub fn embeddings(r: &RunResults) -> Result<Option<Embeddings>> {
    let mut prepared: Vec<(String, Vec<(String, Preprocessed)>)> = Vec::new();
    let mut groups = Vec::new();
    for g in &r.groups {
        let mut views = Vec::new();
        for &c in &g.cells {
            let cell = &r.cells[c];
            let params = PreprocessParams::from(&cell.config.data);
            let key = params.fingerprint();
            let k = match prepared.iter().position(|(f, _)| *f == key) {
                Some(k) => k,
                None => {
                    let mut cases = Vec::new();
                    for tc in &cell.record.test_cases {
                        let loaded = load_test_case(tc, &cell.config)?;
                        let p = preprocess(&loaded.image.volume, loaded.label.as_ref(), &params)?;
                        cases.push((tc.id.clone(), p));
                    }
                    prepared.push((key, cases));
                    prepared.len() - 1
                }
            };
            let cell_views = cell_views(&cell.dir, &cell.config, &prepared[k].1, &Device::Cpu)
                .map_err(|e| ReportError::file(&cell.dir, format!("embedding view: {e}")))?;
            let Some(first) = cell_views.first().cloned() else {
                continue;
            };
            let finite: Vec<f64> = cell_views
                .iter()
                .filter_map(|v| v.separation)
                .filter(|s| s.is_finite())
                .collect();
            views.push(SeedViews {
                seed: cell.record.seed,
                first,
                separation: (!finite.is_empty())
                    .then(|| finite.iter().sum::<f64>() / finite.len() as f64),
                cases: finite.len(),
            });
        }
        if !views.is_empty() {
            groups.push((g.label.clone(), views));
        }
    }
    let Some(case) = groups.first().map(|(_, v)| v[0].first.case.clone()) else {
        return Ok(None);
    };
    Ok(Some(Embeddings { case, groups }))
}

const CLASS_COLOURS: [(u8, &str, RGBColor); 4] = [
    (BACKGROUND, "background", RGBColor(120, 120, 120)),
    (FOREGROUND, "foreground", RGBColor(255, 140, 0)),
    (
        BOUNDARY_BG,
        "boundary, background side",
        RGBColor(31, 119, 180),
    ),
    (
        BOUNDARY_FG,
        "boundary, foreground side",
        RGBColor(214, 39, 40),
    ),
];

struct Panels<'a>(&'a Embeddings);

impl Draw for Panels<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = plot_err("embedding");
        let n = self.0.groups.len();
        let parts = area.split_evenly((2, n));
        for (k, (label, views)) in self.0.groups.iter().enumerate() {
            let v = &views[0].first;
            let (h, w) = (v.h, v.w);
            let sep = v
                .separation
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into());
            // top: the first three principal components as RGB, reference outline on top
            let mut chart = ChartBuilder::on(&parts[k])
                .caption(
                    format!("{label} (seed {}): PCA RGB", views[0].seed),
                    (FONT, 14),
                )
                .margin(6)
                .build_cartesian_2d(0.0..w as f64, 0.0..h as f64)
                .map_err(&e)?;
            chart
                .draw_series((0..h * w).map(|p| {
                    let (r, c) = (p / w, p % w);
                    let y = (h - r - 1) as f64;
                    let [a, b, d] = v.rgb[p];
                    Rectangle::new(
                        [(c as f64, y), (c as f64 + 1.0, y + 1.0)],
                        RGBColor(a, b, d).filled(),
                    )
                }))
                .map_err(&e)?;
            let segs = outline(h, w, |r, c| v.labels[r * w + c] != 0);
            chart
                .draw_series(
                    segs.into_iter()
                        .map(|s| PathElement::new(s.to_vec(), REFERENCE.stroke_width(1))),
                )
                .map_err(&e)?;
            // bottom: PC1 against PC2 of sampled voxels, by class
            let xs: Vec<f64> = v.scatter.iter().map(|p| p.0).collect();
            let ys: Vec<f64> = v.scatter.iter().map(|p| p.1).collect();
            let (x0, x1) = axis_range(&xs, None, None);
            let (y0, y1) = axis_range(&ys, None, None);
            let mut chart = ChartBuilder::on(&parts[n + k])
                .caption(
                    format!("PC1 / PC2, separation on this slice {sep}"),
                    (FONT, 14),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(44)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(&e)?;
            chart
                .configure_mesh()
                .light_line_style(RGBColor(240, 240, 240))
                .label_style((FONT, 11))
                .x_labels(4)
                .y_labels(4)
                .draw()
                .map_err(&e)?;
            for (class, name, colour) in CLASS_COLOURS {
                let s = chart
                    .draw_series(
                        v.scatter
                            .iter()
                            .filter(|p| p.2 == class)
                            .map(|p| Circle::new((p.0, p.1), 2, colour.mix(0.7).filled())),
                    )
                    .map_err(&e)?;
                if k == 0 {
                    s.label(name)
                        .legend(move |(x, y)| Circle::new((x + 6, y), 3, colour.filled()));
                }
            }
            if k == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .label_font((FONT, 11))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(&e)?;
            }
        }
        Ok(())
    }
}

/// The sampler lab on the report's test slice: for each configuration with samplers (its
/// first seed), where every sampler puts its anchors, positives and negatives with the
/// trained network (`samplers_<configuration>`).
pub fn sampler_figures(e: &Embeddings, dir: &Path) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    for (label, views) in &e.groups {
        let (seed, v) = (&views[0].seed, &views[0].first);
        let Some(draw) = &v.draw else { continue };
        let panels = draw
            .samplers
            .iter()
            .map(|s| {
                let m = s.tuples.m;
                SamplerPanel {
                    name: s.name.clone(),
                    candidates: s.candidates.iter().sum(),
                    batch_candidates: s.candidates.iter().sum(),
                    batch_anchors: s.tuples.len(),
                    anchors: s.tuples.anchors.clone(),
                    positives: s.tuples.positives[..s.tuples.len() * m].to_vec(),
                    negatives: s.tuples.negatives[..s.tuples.len() * m].to_vec(),
                }
            })
            .collect();
        let view = SamplerView {
            title: format!("{label} (seed {seed}), test case {} slice {}", e.case, v.z),
            h: v.h,
            w: v.w,
            image: v.image.clone(),
            labels: v.labels.clone(),
            probabilities: draw.probabilities.clone(),
            samplers: panels,
        };
        let stem = format!(
            "samplers_{}",
            label.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let mut fig = sampler_picks(&view, dir, &stem)?;
        fig.caption = format!(
            "{} With the trained stage-2 network (inference mode) on the embedding view's slice, as one training step on this slice alone would draw them (seed 0). `metricunet samplers show` draws a training batch instead.",
            fig.caption
        );
        out.push(fig);
    }
    Ok(out)
}

/// The embedding figure of `e` (first seed of each configuration).
pub fn embedding_figure(e: &Embeddings, dir: &Path) -> Result<Figure> {
    let n = e.groups.len().max(1) as u32;
    let stem = format!(
        "embedding_{}",
        e.case
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    );
    let (png, svg) = render(dir, &stem, (n * 360, 700), &Panels(e))?;
    let v = &e.groups[0].1[0].first;
    Ok(Figure {
        stem,
        title: format!("Embedding view: {}", e.case),
        caption: format!(
            "Test case {}, stage-2 crop around the reference, axial slice {} (the one with the most reference foreground; array orientation, row 0 at the top). Top: the backbone's embedding map (the {}-channel features the samplers draw from) projected on its first three principal components, as red, green and blue (each scaled between its 1st and 99th percentile), reference outline in green. Bottom: the first two components of up to 300 voxels per class; boundary = within 2 voxels of the other class. Boundary separation: the mean embedding distance between a foreground and a background voxel of that band over the mean distance between two voxels of the same class there (1: the classes are not apart).",
            e.case, v.z, v.dims
        ),
        png,
        svg,
    })
}
