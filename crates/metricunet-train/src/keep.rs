//! The best validation point's weights, held while training runs (`training.keep: best`):
//! offered every validated row, they replace the held copy when the row ranks higher by the
//! validator's [`Ranking`]: for segmentation (stage 2) a higher DSC, ties by lower ASD; for
//! localisation (stage 1) fewer cases where nothing was found, then a smaller centroid error,
//! then a higher DSC. The checkpoint carries them, so a resumed run keeps comparing against
//! the same best.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::error::{Result, TrainError};
use crate::trainer::IterationLog;

/// Which direction of a score is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// Validation scores in the order they decide which point is best; later ones break ties.
pub type Ranking = &'static [(&'static str, Better)];

/// A segmentation network's ranking: DSC, ties by ASD.
pub const SEGMENTATION: Ranking = &[("dsc", Better::Higher), ("asd", Better::Lower)];

/// A localiser's ranking (stage 1, whose centroid is what the pipeline uses): the cases where
/// it found nothing, then the centroid error (mm), then DSC.
pub const LOCALISER: Ranking = &[
    ("not_found", Better::Lower),
    ("loc_mm", Better::Lower),
    ("dsc", Better::Higher),
];

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

    /// Whether `row` (validated) beats `held` by `ranking`: the first score that differs
    /// decides (a defined score beats an undefined one); a full tie (say, both networks still
    /// predict nothing: DSC 0, ASD undefined) goes to the later, longer trained row. A row
    /// without the ranking's first score never beats anything.
    pub fn beats(row: &IterationLog, held: Option<&BestWeights>, ranking: Ranking) -> bool {
        let Some(&(first, _)) = ranking.first() else {
            return held.is_none();
        };
        if row.validation(first).is_none() {
            return false;
        }
        let Some(held) = held else {
            return true;
        };
        for &(name, better) in ranking {
            match (row.validation(name), held.score(name)) {
                (Some(a), Some(b)) if a != b => {
                    return match better {
                        Better::Higher => a > b,
                        Better::Lower => a < b,
                    }
                }
                (Some(_), None) => return true,
                (None, Some(_)) => return false,
                _ => {}
            }
        }
        true
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
        let beats =
            |r: &IterationLog, h: Option<&BestWeights>| BestWeights::beats(r, h, SEGMENTATION);
        assert!(beats(&row(2, Some(0.1), None), None));
        assert!(!beats(&row(2, None, Some(1.0)), None));
        let h = held(0.8, Some(3.0));
        assert!(beats(&row(2, Some(0.81), Some(9.0)), Some(&h)));
        assert!(!beats(&row(2, Some(0.79), Some(1.0)), Some(&h)));
        assert!(beats(&row(2, Some(0.8), Some(2.0)), Some(&h)));
        // a full tie goes to the later row
        assert!(beats(&row(2, Some(0.8), Some(3.0)), Some(&h)));
        assert!(!beats(&row(2, Some(0.8), None), Some(&h)));
        assert!(beats(&row(2, Some(0.0), None), Some(&held(0.0, None))));
        assert!(beats(&row(2, Some(0.8), Some(5.0)), Some(&held(0.8, None))));
    }

    #[test]
    fn a_localiser_is_ranked_by_what_it_found_then_its_centroid_error() {
        let loc = |it: usize, dsc: f64, loc_mm: Option<f64>, not_found: f64| IterationLog {
            iteration: it,
            lr: 0.1,
            terms: vec![],
            samples_per_s: 1.0,
            validation: vec![
                ("dsc".into(), Some(dsc)),
                ("asd".into(), None),
                ("loc_mm".into(), loc_mm),
                ("not_found".into(), Some(not_found)),
            ],
        };
        let hold = |r: &IterationLog| BestWeights {
            iteration: r.iteration,
            scores: r.validation.clone(),
            weights: vec![],
        };
        let beats =
            |r: &IterationLog, h: &IterationLog| BestWeights::beats(r, Some(&hold(h)), LOCALISER);
        // DSC equal to 3 decimals, one centroid 49 mm off, the other 1.3 mm
        let far = loc(300, 0.5725, Some(49.2), 0.0);
        let near = loc(400, 0.5721, Some(1.3), 0.0);
        assert!(beats(&near, &far) && !beats(&far, &near));
        // (ranked by DSC, as before, the far one would be kept)
        assert!(BestWeights::beats(&far, Some(&hold(&near)), SEGMENTATION));
        // finding every case beats a closer centroid over fewer cases
        let partial = loc(500, 0.7, Some(0.5), 1.0);
        assert!(!beats(&partial, &near) && beats(&near, &partial));
        // equal errors: DSC decides
        assert!(beats(&loc(600, 0.6, Some(1.3), 0.0), &near));
    }

    #[test]
    fn scores_survive_their_text() {
        let h = held(0.123_456_789_012_345_6, None);
        let back = BestWeights::parse_scores(&h.scores_text()).expect("parse");
        assert_eq!(back, h.scores);
        assert!(BestWeights::parse_scores("dsc=x").is_err());
    }
}
