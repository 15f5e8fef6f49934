//! Voxel samplers: which voxels of a batch form the (anchor, positive, negative) tuples
//! of the online voxel-metric module (paper Section III.B.2).

use std::fmt::Debug;

use rand::{Rng, RngCore};

use crate::error::{CoreError, Result};

/// What a sampler sees of one training batch: the binary reference labels and (when the
/// sampler asks for them) the segmentation head's foreground probabilities, both flat in
/// `N x H x W` order (`index = (n * H + y) * W + x`), on the grid of the embedding map.
#[derive(Debug, Clone, Copy)]
pub struct SampleBatch<'a> {
    labels: &'a [u8],
    fg_prob: Option<&'a [f32]>,
    n: usize,
    h: usize,
    w: usize,
}

impl<'a> SampleBatch<'a> {
    /// Check that `labels` (0 = background, anything else = foreground) and `fg_prob`
    /// hold `n * h * w` values each.
    pub fn new(
        labels: &'a [u8],
        fg_prob: Option<&'a [f32]>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Self> {
        let len = n * h * w;
        if labels.len() != len {
            return Err(CoreError::Shape(format!(
                "labels hold {} values, batch {n}x{h}x{w} needs {len}",
                labels.len()
            )));
        }
        if let Some(p) = fg_prob {
            if p.len() != len {
                return Err(CoreError::Shape(format!(
                    "foreground probabilities hold {} values, batch {n}x{h}x{w} needs {len}",
                    p.len()
                )));
            }
        }
        Ok(Self {
            labels,
            fg_prob,
            n,
            h,
            w,
        })
    }

    /// Batch size `N`.
    pub fn batch_size(&self) -> usize {
        self.n
    }
    /// `(H, W)` of one item.
    pub fn dims(&self) -> (usize, usize) {
        (self.h, self.w)
    }
    /// Voxels per item, `H * W`.
    pub fn item_len(&self) -> usize {
        self.h * self.w
    }
    /// Labels of item `i` (flat `H x W`).
    pub fn item_labels(&self, i: usize) -> &'a [u8] {
        &self.labels[i * self.item_len()..(i + 1) * self.item_len()]
    }
    /// Foreground probabilities of item `i`, or an error naming `sampler` when the batch
    /// was built without them.
    pub fn item_probs(&self, i: usize, sampler: &str) -> Result<&'a [f32]> {
        let p = self.fg_prob.ok_or_else(|| {
            CoreError::Shape(format!(
                "sampler `{sampler}` needs foreground probabilities, the batch has none"
            ))
        })?;
        Ok(&p[i * self.item_len()..(i + 1) * self.item_len()])
    }
}

/// Sampled tuples: each anchor comes with `m` positives (same label) and `m` negatives
/// (the other label). Indices are flat into the batch (`(n * H + y) * W + x`).
/// `positives[a * m + j]` is the `j`-th positive of anchor `a`; likewise `negatives`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuples {
    /// Positives and negatives per anchor.
    pub m: usize,
    pub anchors: Vec<usize>,
    pub positives: Vec<usize>,
    pub negatives: Vec<usize>,
}

impl Tuples {
    /// No tuples, `m` per anchor.
    pub fn empty(m: usize) -> Self {
        Self {
            m,
            anchors: Vec::new(),
            positives: Vec::new(),
            negatives: Vec::new(),
        }
    }
    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }
    /// True when there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
    /// Check the invariant `positives.len() == negatives.len() == m * anchors.len()`.
    pub fn check(&self) -> Result<()> {
        let want = self.m * self.anchors.len();
        if self.positives.len() != want || self.negatives.len() != want {
            return Err(CoreError::Shape(format!(
                "{} anchors with m = {} need {want} positives and negatives, got {} and {}",
                self.anchors.len(),
                self.m,
                self.positives.len(),
                self.negatives.len()
            )));
        }
        Ok(())
    }
}

/// A strategy that draws voxel tuples from a batch.
///
/// A sampler only chooses voxels; distances and losses are the job of a
/// [`MetricLoss`](crate::MetricLoss). Most samplers only decide which voxels may be
/// anchors and leave the rest to [`draw_tuples`]:
///
/// ```
/// use metricunet_core::{draw_tuples, Result, SampleBatch, Sampler, Tuples};
/// use rand::{RngCore, SeedableRng};
///
/// /// Anchors anywhere in the foreground, 4 per image, one positive and negative each.
/// #[derive(Debug)]
/// struct Everywhere;
///
/// impl Sampler for Everywhere {
///     fn sample(&self, batch: &SampleBatch<'_>, rng: &mut dyn RngCore) -> Result<Tuples> {
///         let mut out = Tuples::empty(1);
///         for i in 0..batch.batch_size() {
///             let labels = batch.item_labels(i);
///             let fg: Vec<usize> = (0..labels.len()).filter(|&v| labels[v] != 0).collect();
///             draw_tuples(i * batch.item_len(), labels, &fg, 4, 1, rng, &mut out);
///         }
///         Ok(out)
///     }
/// }
///
/// let labels = [0u8, 1, 1, 0, 1, 1, 0, 0, 0];
/// let batch = SampleBatch::new(&labels, None, 1, 3, 3)?;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
/// let t = Everywhere.sample(&batch, &mut rng)?;
/// assert_eq!(t.len(), 4);
/// assert!(t.anchors.iter().chain(&t.positives).all(|&v| labels[v] == 1));
/// assert!(t.negatives.iter().all(|&v| labels[v] == 0));
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait Sampler: Send + Sync + Debug {
    /// Whether [`sample`](Sampler::sample) reads the foreground probabilities; when no
    /// configured sampler does, the module skips computing them.
    fn needs_probabilities(&self) -> bool {
        false
    }
    /// Draw tuples from `batch` with the caller's seeded `rng`. A batch item without
    /// enough candidates contributes fewer or no tuples; this is never an error.
    fn sample(&self, batch: &SampleBatch<'_>, rng: &mut dyn RngCore) -> Result<Tuples>;
}

/// The shared second half of every sampler: pick up to `k` anchors out of `candidates`
/// (item-local indices, without replacement) and give each `m` positives drawn uniformly
/// among the other voxels of its label and `m` negatives among the voxels of the other
/// label, both with replacement. Anchors without a possible positive or negative are
/// dropped. Tuples are appended to `out` with `offset` (the item's first flat index)
/// added. Returns the number of anchors added.
pub fn draw_tuples(
    offset: usize,
    labels: &[u8],
    candidates: &[usize],
    k: usize,
    m: usize,
    rng: &mut dyn RngCore,
    out: &mut Tuples,
) -> usize {
    if candidates.is_empty() || k == 0 || m == 0 {
        return 0;
    }
    let (fg, bg): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&v| labels[v] != 0);
    let chosen: Vec<usize> = if candidates.len() <= k {
        candidates.to_vec()
    } else {
        rand::seq::index::sample(rng, candidates.len(), k)
            .into_iter()
            .map(|i| candidates[i])
            .collect()
    };
    let mut added = 0;
    for a in chosen {
        let (same, other) = if labels[a] != 0 {
            (&fg, &bg)
        } else {
            (&bg, &fg)
        };
        if same.len() < 2 || other.is_empty() {
            continue;
        }
        out.anchors.push(offset + a);
        for _ in 0..m {
            // Uniform over `same` without the anchor (which appears in it exactly once).
            let j = rng.random_range(0..same.len() - 1);
            let p = if same[j] == a {
                same[same.len() - 1]
            } else {
                same[j]
            };
            out.positives.push(offset + p);
            out.negatives
                .push(offset + other[rng.random_range(0..other.len())]);
        }
        added += 1;
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn batch_rejects_wrong_lengths() {
        assert!(SampleBatch::new(&[0; 8], None, 1, 3, 3).is_err());
        assert!(SampleBatch::new(&[0; 9], Some(&[0.0; 8]), 1, 3, 3).is_err());
        let b = SampleBatch::new(&[0; 18], None, 2, 3, 3).expect("valid");
        assert_eq!(b.item_labels(1).len(), 9);
        assert!(b.item_probs(0, "hard-negative").is_err());
    }

    #[test]
    fn draw_tuples_respects_labels_and_offsets() {
        let labels = [1u8, 1, 1, 0, 0, 0, 0, 0, 0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Tuples::empty(3);
        let n = draw_tuples(100, &labels, &[0, 1, 2], 20, 3, &mut rng, &mut out);
        assert_eq!(n, 3);
        out.check().expect("consistent");
        for (a, &anchor) in out.anchors.iter().enumerate() {
            for j in 0..3 {
                let p = out.positives[a * 3 + j];
                assert!((100..103).contains(&p) && p != anchor);
                assert!((103..109).contains(&out.negatives[a * 3 + j]));
            }
        }
    }

    #[test]
    fn draw_tuples_drops_impossible_anchors() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut out = Tuples::empty(1);
        // one foreground voxel: no positive other than the anchor itself
        assert_eq!(
            draw_tuples(0, &[1, 0, 0], &[0], 5, 1, &mut rng, &mut out),
            0
        );
        // no background: no negative
        assert_eq!(
            draw_tuples(0, &[1, 1, 1], &[0, 1], 5, 1, &mut rng, &mut out),
            0
        );
        assert!(out.is_empty());
        // background anchors are paired with background positives and foreground negatives
        assert_eq!(
            draw_tuples(0, &[1, 0, 0], &[1], 5, 1, &mut rng, &mut out),
            1
        );
        assert_eq!((out.positives[0], out.negatives[0]), (2, 0));
    }
}
