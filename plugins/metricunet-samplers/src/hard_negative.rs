//! `hard-negative`: focal hard-negative sampling (paper Eq. 1, Fig. 5b). A voxel is hard
//! when the segmentation head's foreground probability is off its label by more than
//! `tau`; anchors are drawn among the hard foreground voxels.

use metricunet_core::{register_sampler, Draw, ParamSpec, Result, SampleItem, Sampler};

/// Focal hard-negative sampling: anchors in `{|p - y| > tau} AND {y = 1}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HardNegativeSampler {
    pub draw: Draw,
    pub tau: f32,
}

impl Sampler for HardNegativeSampler {
    fn needs_probabilities(&self) -> bool {
        true
    }
    fn draw(&self) -> Draw {
        self.draw
    }
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
        let probs = item.probs("hard-negative")?;
        // Eq. 1 on the foreground: |p - 1| > tau. A NaN probability is never hard.
        Ok((0..item.labels.len())
            .filter(|&v| item.is_foreground(v) && (1.0 - probs[v]).abs() > self.tau)
            .collect())
    }
}

register_sampler!(
    "hard-negative",
    "focal hard-negative sampling: anchors on foreground voxels with |p - y| > tau (paper Eq. 1)",
    |draw, p| Ok(HardNegativeSampler {
        draw,
        tau: p.f64("tau")? as f32
    }),
    ParamSpec::float(
        "tau",
        0.1,
        Some(0.0),
        Some(1.0),
        "threshold on |p - y| (paper: 0.1)"
    ),
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_labels, draw, square};

    #[test]
    fn anchors_only_on_hard_foreground() {
        let labels = square();
        // confident everywhere (p = y) except foreground voxels 18 and 27 (p = 0.5, hard)
        // and background voxel 0 (p = 0.9, hard but background: never an anchor)
        let mut probs: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
        probs[18] = 0.5;
        probs[27] = 0.5;
        probs[0] = 0.9;
        let t = draw(
            &HardNegativeSampler {
                draw: Draw { k: 20, m: 1 },
                tau: 0.1,
            },
            &labels,
            Some(&probs),
            1,
            8,
            8,
            4,
        );
        let mut anchors = t.anchors.clone();
        anchors.sort_unstable();
        assert_eq!(anchors, vec![18, 27]);
        assert_labels(&t, &labels);
    }

    #[test]
    fn threshold_is_strict() {
        let labels = square();
        let probs: Vec<f32> = labels
            .iter()
            .map(|&l| if l == 1 { 0.75 } else { 0.0 })
            .collect();
        let s = |tau| HardNegativeSampler {
            draw: Draw { k: 20, m: 1 },
            tau,
        };
        assert!(draw(&s(0.25), &labels, Some(&probs), 1, 8, 8, 1).is_empty()); // |0.75-1| = 0.25, not > 0.25
        assert_eq!(draw(&s(0.2), &labels, Some(&probs), 1, 8, 8, 1).len(), 16);
    }

    #[test]
    fn no_hard_voxel_no_tuple_and_nan_is_not_hard() {
        let labels = square();
        let perfect: Vec<f32> = labels.iter().map(|&l| f32::from(l)).collect();
        let s = HardNegativeSampler {
            draw: Draw { k: 20, m: 1 },
            tau: 0.1,
        };
        assert!(draw(&s, &labels, Some(&perfect), 1, 8, 8, 1).is_empty());
        assert!(draw(&s, &labels, Some(&[f32::NAN; 64]), 1, 8, 8, 1).is_empty());
    }

    #[test]
    fn missing_probabilities_is_an_error_not_a_panic() {
        let labels = square();
        let batch = metricunet_core::SampleBatch::new(&labels, None, 1, 8, 8).expect("batch");
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let s = HardNegativeSampler {
            draw: Draw { k: 20, m: 1 },
            tau: 0.1,
        };
        assert!(s.sample(&batch, &mut rng).is_err());
    }
}
