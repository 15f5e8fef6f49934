//! Fig. 8 and Fig. 1-style heat maps: each configuration's contour and foreground
//! probability on the axial slice through the reference's centroid.

use std::path::Path;

use metricunet_data::io::read_nifti;
use metricunet_data::Volume;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use super::{
    load_test_case, outline, plot_err, render, scale_bar_and_legend, Draw, Figure, Segment,
    CONTOUR, FONT, REFERENCE,
};
use crate::collect::RunResults;
use crate::error::{ReportError, Result};

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

/// The outline of `mask` in the slice's display coordinates.
fn edges(s: &CaseSlice, mask: &[bool]) -> Vec<Segment> {
    outline(s.rows.len(), s.cols.len(), |r, c| s.at(mask, c, r))
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
                scale_bar_and_legend(&mut chart, (1.0, 1.5), (1.0 + len, 1.5), "fig8")?;
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
    let loaded = load_test_case(case, &first.config)?;
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
