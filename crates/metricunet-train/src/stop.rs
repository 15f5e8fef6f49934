//! Stop rules: what may end training before its configured iterations, as a finished run
//! (weights written). A rule sees every log row; its state is a function of the rows, so a
//! resumed run replays the kept rows of its log and stops exactly where the uninterrupted
//! run would. Interruption (a kill, or the caller's event handler breaking) is not a stop
//! rule: it leaves the last checkpoint for `--resume`.

use metricunet_core::config::PlateauConfig;

use crate::trainer::IterationLog;

/// Decides after each row whether training is done.
pub trait StopRule {
    /// `Some(reason)` when training ends after `row`.
    fn observe(&mut self, row: &IterationLog) -> Option<String>;
}

/// Validation `metric` has not beaten its best by more than `min_delta` for `patience`
/// validations in a row (higher is better).
#[derive(Debug, Clone)]
pub struct Plateau {
    metric: String,
    patience: usize,
    min_delta: f64,
    best: Option<f64>,
    flat: usize,
}

impl Plateau {
    /// From `training.plateau`, on the validation score `metric`.
    pub fn new(metric: &str, cfg: &PlateauConfig) -> Self {
        Self {
            metric: metric.to_string(),
            patience: cfg.patience.max(1),
            min_delta: cfg.min_delta,
            best: None,
            flat: 0,
        }
    }
}

impl StopRule for Plateau {
    fn observe(&mut self, row: &IterationLog) -> Option<String> {
        let value = row.validation(&self.metric)?;
        match self.best {
            Some(best) if value <= best + self.min_delta => self.flat += 1,
            _ => {
                self.best = Some(value);
                self.flat = 0;
            }
        }
        (self.flat >= self.patience).then(|| {
            format!(
                "validation {} has not improved on {:.4} for {} validations",
                self.metric,
                self.best.unwrap_or(value),
                self.flat
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iteration: usize, dsc: Option<f64>) -> IterationLog {
        IterationLog {
            iteration,
            lr: 0.0,
            terms: Vec::new(),
            samples_per_s: 0.0,
            validation: vec![("dsc".into(), dsc)],
        }
    }

    #[test]
    fn stops_after_patience_flat_validations_only() {
        let mut p = Plateau::new(
            "dsc",
            &PlateauConfig {
                patience: 2,
                min_delta: 0.01,
            },
        );
        let seq = [
            Some(0.5),
            None,
            Some(0.6),
            Some(0.605), // within min_delta: flat 1
            None,
            Some(0.7), // better: reset
            Some(0.70),
            Some(0.69), // flat 2: stop
        ];
        let stops: Vec<bool> = seq
            .iter()
            .enumerate()
            .map(|(i, v)| p.observe(&row(i + 1, *v)).is_some())
            .collect();
        assert_eq!(
            stops,
            [false, false, false, false, false, false, false, true]
        );
    }
}
