//! The best validation point's weights, held while training runs (`training.keep: best`):
//! offered every validated row, they replace the held copy when the row's DSC is higher
//! (ties: lower ASD). The checkpoint carries them, so a resumed run keeps comparing against
//! the same best.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::error::{Result, TrainError};
use crate::trainer::IterationLog;

/// The score that decides, higher is better.
pub const DECIDES: &str = "dsc";
/// The score that breaks ties, lower is better.
pub const BREAKS_TIES: &str = "asd";

/// A validation point's weights and scores.
#[derive(Debug, Clone)]
pub struct BestWeights {
    /// Iterations completed when it was validated.
    pub iteration: usize,
    /// Its validation scores by name (`None` where undefined).
    pub scores: Vec<(String, Option<f64>)>,
    /// Every variable (BatchNorm running statistics included), copied.
    pub weights: Vec<(String, Tensor)>,
}

impl BestWeights {
    /// The score `name`, if measured.
    pub fn score(&self, name: &str) -> Option<f64> {
        self.scores
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| *v)
    }

    /// Whether `row` (validated) beats `held`: a higher DSC, or the same DSC and a lower ASD
    /// (a defined ASD beats an undefined one), or the same DSC and ASD (say, both networks
    /// still predict nothing: DSC 0, ASD undefined) and so the later, longer trained one. A
    /// row without DSC never does.
    pub fn beats(row: &IterationLog, held: Option<&BestWeights>) -> bool {
        let Some(dsc) = row.validation(DECIDES) else {
            return false;
        };
        let Some(held) = held else {
            return true;
        };
        let old = held.score(DECIDES).unwrap_or(f64::NEG_INFINITY);
        if dsc != old {
            return dsc > old;
        }
        match (row.validation(BREAKS_TIES), held.score(BREAKS_TIES)) {
            (Some(a), Some(b)) => a <= b,
            (Some(_), None) | (None, None) => true,
            (None, Some(_)) => false,
        }
    }

    /// A copy of `vars` as the best at `row`.
    pub fn capture(row: &IterationLog, vars: &VarMap) -> Result<Self> {
        let weights = crate::checkpoint::named_vars(vars)?
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            iteration: row.iteration,
            scores: row.validation.clone(),
            weights,
        })
    }

    /// The scores as one metadata string: `name=value;...` (`none` where undefined).
    pub fn scores_text(&self) -> String {
        self.scores
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v:?}"),
                None => format!("{k}=none"),
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Scores from [`BestWeights::scores_text`].
    pub fn parse_scores(text: &str) -> Result<Vec<(String, Option<f64>)>> {
        text.split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| TrainError::Invalid(format!("best scores: `{p}`")))?;
                let v = match v {
                    "none" => None,
                    v => Some(
                        v.parse::<f64>()
                            .map_err(|e| TrainError::Invalid(format!("best scores: `{p}`: {e}")))?,
                    ),
                };
                Ok((k.to_string(), v))
            })
            .collect()
    }

    /// Write the weights as a model file (what `VarMap::save` writes), atomically.
    pub fn save_weights(&self, path: &std::path::Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self.weights.iter().cloned().collect();
        Ok(metricunet_core::fsio::write_atomic_at(path, |tmp| {
            candle_core::safetensors::save(&map, tmp).map_err(|e| e.to_string())
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(it: usize, dsc: Option<f64>, asd: Option<f64>) -> IterationLog {
        IterationLog {
            iteration: it,
            lr: 0.1,
            terms: vec![],
            samples_per_s: 1.0,
            validation: vec![("dsc".into(), dsc), ("asd".into(), asd)],
        }
    }

    fn held(dsc: f64, asd: Option<f64>) -> BestWeights {
        BestWeights {
            iteration: 1,
            scores: vec![("dsc".into(), Some(dsc)), ("asd".into(), asd)],
            weights: vec![],
        }
    }

    #[test]
    fn higher_dsc_wins_and_asd_breaks_ties() {
        assert!(BestWeights::beats(&row(2, Some(0.1), None), None));
        assert!(!BestWeights::beats(&row(2, None, Some(1.0)), None));
        let h = held(0.8, Some(3.0));
        assert!(BestWeights::beats(&row(2, Some(0.81), Some(9.0)), Some(&h)));
        assert!(!BestWeights::beats(
            &row(2, Some(0.79), Some(1.0)),
            Some(&h)
        ));
        assert!(BestWeights::beats(&row(2, Some(0.8), Some(2.0)), Some(&h)));
        // a full tie goes to the later row
        assert!(BestWeights::beats(&row(2, Some(0.8), Some(3.0)), Some(&h)));
        assert!(!BestWeights::beats(&row(2, Some(0.8), None), Some(&h)));
        assert!(BestWeights::beats(
            &row(2, Some(0.0), None),
            Some(&held(0.0, None))
        ));
        assert!(BestWeights::beats(
            &row(2, Some(0.8), Some(5.0)),
            Some(&held(0.8, None))
        ));
    }

    #[test]
    fn scores_survive_their_text() {
        let h = held(0.123_456_789_012_345_6, None);
        let back = BestWeights::parse_scores(&h.scores_text()).expect("parse");
        assert_eq!(back, h.scores);
        assert!(BestWeights::parse_scores("dsc=x").is_err());
    }
}
