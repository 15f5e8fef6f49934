//! Metrics of one predicted mask against its reference, with every registered (or every
//! configured) metric.

use std::path::Path;

use metricunet_core::config::PluginSpec;
use metricunet_core::{registry, Comparison, MaskRef};
use metricunet_data::io::read_nifti;
use metricunet_data::volume::Volume;
use metricunet_data::DataError;

/// One metric of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEntry {
    pub name: String,
    /// NaN where undefined (then `flag` says why).
    pub value: f64,
    pub flag: Option<String>,
    /// As the metric declares it ("" or "mm").
    pub unit: &'static str,
}

/// One case's metrics, in the order of the metric list.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseMetrics {
    pub case: String,
    pub values: Vec<MetricEntry>,
}

impl CaseMetrics {
    /// A metric's value by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|e| e.name == name).map(|e| e.value)
    }
}

/// Every registered metric with default parameters, the paper's (DSC, ASD, SEN, PPV) first.
pub fn all_metrics() -> Vec<PluginSpec> {
    registry::metric_names()
        .into_iter()
        .map(PluginSpec::named)
        .collect()
}

/// Evaluate binary `pred` against `reference` (same grid) with `metrics`.
pub fn evaluate_masks(
    case: &str,
    pred: &Volume<bool>,
    reference: &Volume<bool>,
    metrics: &[PluginSpec],
) -> Result<CaseMetrics, metricunet_core::CoreError> {
    let spacing = reference.geometry.spacing;
    let p = MaskRef::new(&pred.data, pred.geometry.dims)?;
    let r = MaskRef::new(&reference.data, reference.geometry.dims)?;
    // one comparison for all metrics: they share counts and surface distances
    let c = Comparison::new(p, r, spacing)?;
    let mut values = Vec::with_capacity(metrics.len());
    for (i, spec) in metrics.iter().enumerate() {
        let (m, _) = registry::build_metric(spec, &format!("evaluation.metrics[{i}]"))?;
        let v = m.compute(&c)?;
        values.push(MetricEntry {
            name: spec.name.clone(),
            value: v.value,
            flag: v.flag,
            unit: m.unit(),
        });
    }
    Ok(CaseMetrics {
        case: case.to_string(),
        values,
    })
}

/// Read a label file and select `label` (any non-zero voxel when `None`).
pub fn read_mask(path: &Path, label: Option<i64>) -> Result<Volume<bool>, DataError> {
    let v = read_nifti(path)?.volume;
    if let Some(x) = v.data.iter().find(|x| !x.is_finite() || x.fract() != 0.0) {
        return Err(DataError::bad(
            path,
            format!("a label map holds integers, found {x}"),
        ));
    }
    Ok(match label {
        Some(l) => v.map(move |x| x as i64 == l),
        None => v.map(|x| x != 0.0),
    })
}

/// Evaluate two files: `pred` (voxels equal to `label`, or non-zero) against `reference`
/// (voxels equal to `ref_label`, or non-zero). Grids must agree (shape, affine to 1e-3 mm).
pub fn evaluate_files(
    case: &str,
    pred: &Path,
    reference: &Path,
    label: Option<i64>,
    ref_label: Option<i64>,
    metrics: &[PluginSpec],
) -> Result<CaseMetrics, DataError> {
    let p = read_mask(pred, label)?;
    let r = read_mask(reference, ref_label)?;
    if p.geometry.dims != r.geometry.dims {
        return Err(DataError::bad(
            pred,
            format!(
                "dims {:?} differ from the reference's {:?} ({})",
                p.geometry.dims,
                r.geometry.dims,
                reference.display()
            ),
        ));
    }
    let d = p.geometry.affine_distance(&r.geometry);
    if d > 1e-3 {
        return Err(DataError::bad(
            pred,
            format!(
                "affine differs from the reference's by {d:.4} mm ({})",
                reference.display()
            ),
        ));
    }
    evaluate_masks(case, &p, &r, metrics).map_err(|e| DataError::bad(pred, e.to_string()))
}

/// Case rows as a Polars table: `case`, one f64 column per metric (NaN where undefined), one
/// `<metric>_flag` string column per metric (null where defined).
pub fn metrics_frame(
    rows: &[CaseMetrics],
) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::{Column, DataFrame};
    let Some(first) = rows.first() else {
        return Ok(DataFrame::empty());
    };
    let names: Vec<String> = first.values.iter().map(|e| e.name.clone()).collect();
    let mut cols = vec![Column::new(
        "case".into(),
        rows.iter().map(|r| r.case.clone()).collect::<Vec<_>>(),
    )];
    for (i, n) in names.iter().enumerate() {
        let v: Vec<f64> = rows
            .iter()
            .map(|r| r.values.get(i).map_or(f64::NAN, |e| e.value))
            .collect();
        cols.push(Column::new(n.as_str().into(), v));
    }
    for (i, n) in names.iter().enumerate() {
        let f: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.values.get(i).and_then(|e| e.flag.clone()))
            .collect();
        cols.push(Column::new(format!("{n}_flag").into(), f));
    }
    DataFrame::new(rows.len(), cols)
}

/// Write a table as CSV atomically (temporary file, then rename).
pub fn write_csv(df: &mut polars::prelude::DataFrame, path: &Path) -> Result<(), DataError> {
    use polars::prelude::{CsvWriter, SerWriter};
    Ok(metricunet_core::fsio::write_atomic_with(path, |f| {
        CsvWriter::new(f).finish(df).map_err(|e| e.to_string())
    })?)
}
