//! Overlap metrics: DSC (Eq. 5), sensitivity and positive predictive value (Eq. 7).

use metricunet_core::{
    inventory, CoreError, MaskRef, Metric, MetricPlugin, MetricValue, Params, Result,
};

/// `(|P and G|, |P|, |G|)` of two masks on the same grid.
pub(crate) fn counts(pred: &MaskRef<'_>, reference: &MaskRef<'_>) -> Result<(usize, usize, usize)> {
    if pred.dims() != reference.dims() {
        return Err(CoreError::Shape(format!(
            "prediction dims {:?} differ from reference dims {:?}",
            pred.dims(),
            reference.dims()
        )));
    }
    let (mut tp, mut p, mut g) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.data().iter().zip(reference.data()) {
        tp += usize::from(a && b);
        p += usize::from(a);
        g += usize::from(b);
    }
    Ok((tp, p, g))
}

#[derive(Debug)]
struct Dsc;
#[derive(Debug)]
struct Sensitivity;
#[derive(Debug)]
struct Ppv;

impl Metric for Dsc {
    fn unit(&self) -> &'static str {
        ""
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn compute(
        &self,
        pred: &MaskRef<'_>,
        reference: &MaskRef<'_>,
        _spacing: [f64; 3],
    ) -> Result<MetricValue> {
        let (tp, p, g) = counts(pred, reference)?;
        Ok(if p + g == 0 {
            MetricValue::undefined("both masks empty")
        } else {
            MetricValue::ok(2.0 * tp as f64 / (p + g) as f64)
        })
    }
}

impl Metric for Sensitivity {
    fn unit(&self) -> &'static str {
        ""
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn compute(
        &self,
        pred: &MaskRef<'_>,
        reference: &MaskRef<'_>,
        _spacing: [f64; 3],
    ) -> Result<MetricValue> {
        let (tp, _, g) = counts(pred, reference)?;
        Ok(if g == 0 {
            MetricValue::undefined("reference empty")
        } else {
            MetricValue::ok(tp as f64 / g as f64)
        })
    }
}

impl Metric for Ppv {
    fn unit(&self) -> &'static str {
        ""
    }
    fn higher_is_better(&self) -> bool {
        true
    }
    fn compute(
        &self,
        pred: &MaskRef<'_>,
        reference: &MaskRef<'_>,
        _spacing: [f64; 3],
    ) -> Result<MetricValue> {
        let (tp, p, _) = counts(pred, reference)?;
        Ok(if p == 0 {
            MetricValue::undefined("prediction empty")
        } else {
            MetricValue::ok(tp as f64 / p as f64)
        })
    }
}

inventory::submit! {
    MetricPlugin {
        name: "dsc",
        description: "Dice similarity coefficient 2|P and G| / (|P| + |G|) (paper Eq. 5)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Dsc)) },
    }
}

inventory::submit! {
    MetricPlugin {
        name: "sen",
        description: "sensitivity |P and G| / |G| (paper Eq. 7)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Sensitivity)) },
    }
}

inventory::submit! {
    MetricPlugin {
        name: "ppv",
        description: "positive predictive value |P and G| / |P| (paper Eq. 7)",
        params: &[],
        build: |_: &Params| -> Result<Box<dyn Metric>> { Ok(Box::new(Ppv)) },
    }
}
