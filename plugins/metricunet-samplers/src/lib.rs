//! The voxel samplers of the MetricUNet paper (Section III.B.2), one file each, registered
//! by name with `inventory`: `random`, `hard-negative` (Eq. 1) and `contour-aware`.
//!
//! Every sampler only says which voxels of an image may be anchors (`Sampler::candidates`);
//! the trait's provided `sample` then picks `k` of them per image and pairs each with `m`
//! positives and `m` negatives.

mod contour_aware;
mod hard_negative;
mod random;

pub use contour_aware::{boundary_voxels, ContourAwareSampler};
pub use hard_negative::HardNegativeSampler;
pub use random::RandomSampler;

/// Call from a binary to make sure this crate (and its registrations) is linked.
pub fn link() {}

#[cfg(test)]
pub(crate) mod testutil {
    use metricunet_core::{SampleBatch, Sampler, Tuples};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Draw with a fixed seed.
    pub fn draw(
        s: &dyn Sampler,
        labels: &[u8],
        probs: Option<&[f32]>,
        n: usize,
        h: usize,
        w: usize,
        seed: u64,
    ) -> Tuples {
        let batch = SampleBatch::new(labels, probs, n, h, w).expect("batch");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let t = s.sample(&batch, &mut rng).expect("sample");
        t.check().expect("consistent tuples");
        t
    }

    /// An 8x8 image with a 4x4 foreground square at rows/cols 2..6.
    pub fn square() -> Vec<u8> {
        (0..64)
            .map(|i| u8::from((2..6).contains(&(i / 8)) && (2..6).contains(&(i % 8))))
            .collect()
    }

    /// Every positive has its anchor's label, every negative the other one.
    pub fn assert_labels(t: &Tuples, labels: &[u8]) {
        for (a, &anchor) in t.anchors.iter().enumerate() {
            for j in 0..t.m {
                let (p, n) = (t.positives[a * t.m + j], t.negatives[a * t.m + j]);
                assert_eq!(labels[p], labels[anchor]);
                assert_ne!(p, anchor);
                assert_ne!(labels[n], labels[anchor]);
            }
        }
    }
}
