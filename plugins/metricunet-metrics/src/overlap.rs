//! Overlap metrics: DSC (Eq. 5), sensitivity and positive predictive value (Eq. 7).

use metricunet_core::{inventory, Comparison, Metric, MetricPlugin, MetricValue, Params, Result};

/// `|P and G|`, `|P|`, `|G|`: computed once per comparison, shared by every metric.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub tp: usize,
    pub p: usize,
    pub g: usize,
}

pub(crate) fn counts(c: &Comparison<'_>) -> Result<Counts> {
    let k = c.cached(|c| {
        let (mut tp, mut p, mut g) = (0usize, 0usize, 0usize);
        for (&a, &b) in c.pred().data().iter().zip(c.reference().data()) {
            tp += usize::from(a && b);
            p += usize::from(a);
            g += usize::from(b);
        }
        Ok(Counts { tp, p, g })
    })?;
    Ok(*k)
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
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        let Counts { tp, p, g } = counts(c)?;
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
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        let Counts { tp, g, .. } = counts(c)?;
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
    fn compute(&self, c: &Comparison<'_>) -> Result<MetricValue> {
        let Counts { tp, p, .. } = counts(c)?;
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
