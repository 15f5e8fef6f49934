//! `random`: anchors drawn uniformly among the foreground voxels (paper Fig. 5a).

use metricunet_core::{register_sampler, Draw, Result, SampleItem, Sampler};

/// Random sampling: `k` foreground anchors per image, `m` random positives and negatives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomSampler(pub Draw);

impl Sampler for RandomSampler {
    fn draw(&self) -> Draw {
        self.0
    }
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
        Ok((0..item.labels.len())
            .filter(|&v| item.is_foreground(v))
            .collect())
    }
}

register_sampler!(
    "random",
    "anchors drawn at random among foreground voxels (paper Fig. 5a)",
    |draw, _| Ok(RandomSampler(draw)),
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_labels, draw, square};

    #[test]
    fn draws_k_foreground_anchors_per_image() {
        let mut labels = square();
        labels.extend(square());
        let t = draw(
            &RandomSampler(Draw { k: 5, m: 2 }),
            &labels,
            None,
            2,
            8,
            8,
            3,
        );
        assert_eq!(t.len(), 10);
        assert_labels(&t, &labels);
        // anchors of image 1 stay in image 1, distinct within an image
        assert!(t.anchors[..5].iter().all(|&a| a < 64) && t.anchors[5..].iter().all(|&a| a >= 64));
        let mut first: Vec<usize> = t.anchors[..5].to_vec();
        first.sort_unstable();
        first.dedup();
        assert_eq!(first.len(), 5);
    }

    #[test]
    fn same_seed_same_tuples() {
        let labels = square();
        let s = RandomSampler(Draw { k: 20, m: 1 });
        assert_eq!(
            draw(&s, &labels, None, 1, 8, 8, 9),
            draw(&s, &labels, None, 1, 8, 8, 9)
        );
        assert_ne!(
            draw(&s, &labels, None, 1, 8, 8, 9),
            draw(&s, &labels, None, 1, 8, 8, 10)
        );
    }

    #[test]
    fn fewer_candidates_than_k_gives_fewer_tuples() {
        let labels = square(); // 16 foreground voxels
        let t = draw(
            &RandomSampler(Draw { k: 20, m: 1 }),
            &labels,
            None,
            1,
            8,
            8,
            1,
        );
        assert_eq!(t.len(), 16);
    }

    #[test]
    fn empty_or_full_images_give_no_tuples() {
        let s = RandomSampler(Draw { k: 20, m: 1 });
        assert!(draw(&s, &[0; 64], None, 1, 8, 8, 1).is_empty());
        assert!(draw(&s, &[1; 64], None, 1, 8, 8, 1).is_empty());
        let mut single = vec![0u8; 64];
        single[9] = 1;
        assert!(draw(&s, &single, None, 1, 8, 8, 1).is_empty());
    }
}
