//! Voxel samplers: which voxels of a batch form the (anchor, positive, negative) tuples
//! of the online voxel-metric module (paper Section III.B.2).

use std::fmt::Debug;

use rand::{Rng, RngCore};

use crate::error::{CoreError, Result};
use crate::params::{ParamSpec, Params};

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
        self.item(i).probs(sampler)
    }
    /// Item `i` as a sampler's [`candidates`](Sampler::candidates) sees it.
    pub fn item(&self, i: usize) -> SampleItem<'a> {
        let range = i * self.item_len()..(i + 1) * self.item_len();
        SampleItem {
            labels: &self.labels[range.clone()],
            probs: self.fg_prob.map(|p| &p[range]),
            h: self.h,
            w: self.w,
        }
    }
}

/// One image of a batch: its labels and (when computed) foreground probabilities, flat
/// `H x W` (`index = y * W + x`).
#[derive(Debug, Clone, Copy)]
pub struct SampleItem<'a> {
    /// 0 = background, anything else = foreground.
    pub labels: &'a [u8],
    probs: Option<&'a [f32]>,
    h: usize,
    w: usize,
}

impl<'a> SampleItem<'a> {
    /// `(H, W)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.h, self.w)
    }
    /// Whether voxel `v` is foreground.
    pub fn is_foreground(&self, v: usize) -> bool {
        self.labels[v] != 0
    }
    /// The foreground probabilities, or an error naming `sampler` when the batch was built
    /// without them (a sampler that reads them says so by
    /// [`needs_probabilities`](Sampler::needs_probabilities)).
    pub fn probs(&self, sampler: &str) -> Result<&'a [f32]> {
        self.probs.ok_or_else(|| {
            CoreError::Shape(format!(
                "sampler `{sampler}` needs foreground probabilities, the batch has none"
            ))
        })
    }
}

/// How many tuples a sampler draws: up to `k` anchors per image, each with `m` positives and
/// `m` negatives. Every sampler declares both parameters ([`Draw::K`], [`Draw::M`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub k: usize,
    pub m: usize,
}

impl Draw {
    /// `k` as samplers declare it (paper: 20).
    pub const K: ParamSpec = ParamSpec::int("k", 20, 1, "anchors drawn per image");
    /// `m` as samplers declare it (paper: 1).
    pub const M: ParamSpec = ParamSpec::int("m", 1, 1, "positives and negatives drawn per anchor");

    /// `k` and `m` from a sampler's validated parameters.
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(Self {
            k: p.usize("k")?,
            m: p.usize("m")?,
        })
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
/// A sampler only says which voxels of an image may be anchors
/// ([`candidates`](Sampler::candidates)) and how many tuples it draws
/// ([`draw`](Sampler::draw)); the provided [`sample`](Sampler::sample) does the rest for every
/// image: up to `k` anchors among the candidates, each with `m` positives and negatives
/// ([`draw_tuples`]). Distances and losses are the job of a
/// [`MetricLoss`](crate::MetricLoss).
///
/// ```
/// use metricunet_core::{Draw, Result, SampleBatch, SampleItem, Sampler};
/// use rand::SeedableRng;
///
/// /// Anchors anywhere in the foreground.
/// #[derive(Debug)]
/// struct Everywhere(Draw);
///
/// impl Sampler for Everywhere {
///     fn draw(&self) -> Draw {
///         self.0
///     }
///     fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
///         Ok((0..item.labels.len()).filter(|&v| item.is_foreground(v)).collect())
///     }
/// }
///
/// let labels = [0u8, 1, 1, 0, 1, 1, 0, 0, 0];
/// let batch = SampleBatch::new(&labels, None, 1, 3, 3)?;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
/// let t = Everywhere(Draw { k: 4, m: 1 }).sample(&batch, &mut rng)?;
/// assert_eq!(t.len(), 4);
/// assert!(t.anchors.iter().chain(&t.positives).all(|&v| labels[v] == 1));
/// assert!(t.negatives.iter().all(|&v| labels[v] == 0));
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
pub trait Sampler: Send + Sync + Debug {
    /// Whether [`candidates`](Sampler::candidates) reads the foreground probabilities; when
    /// no configured sampler does, the module skips computing them.
    fn needs_probabilities(&self) -> bool {
        false
    }
    /// Anchors per image and positives / negatives per anchor.
    fn draw(&self) -> Draw;
    /// The voxels of one image (item-local indices) that may be anchors. Fewer than `k`
    /// (or none) is fine: that image then gives fewer (or no) tuples.
    fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>>;
    /// Draw tuples from `batch` with the caller's seeded `rng`: per image, up to `k` of its
    /// candidates as anchors, each with `m` positives and negatives. Override it only for a
    /// sampler that pairs voxels some other way.
    fn sample(&self, batch: &SampleBatch<'_>, rng: &mut dyn RngCore) -> Result<Tuples> {
        let Draw { k, m } = self.draw();
        let mut out = Tuples::empty(m);
        for i in 0..batch.batch_size() {
            let item = batch.item(i);
            let candidates = self.candidates(&item)?;
            draw_tuples(
                i * batch.item_len(),
                item.labels,
                &candidates,
                k,
                m,
                rng,
                &mut out,
            );
        }
        Ok(out)
    }
}

/// Register a sampler by name: its parameters are `k` and `m` ([`Draw::K`], [`Draw::M`])
/// plus any further [`ParamSpec`]s listed after the constructor, which receives the
/// validated `Draw` and all parameters:
///
/// ```
/// use metricunet_core::{register_sampler, Draw, ParamSpec, Result, SampleItem, Sampler};
///
/// #[derive(Debug)]
/// struct Bright(Draw, f32);
/// impl Sampler for Bright {
///     fn needs_probabilities(&self) -> bool {
///         true
///     }
///     fn draw(&self) -> Draw {
///         self.0
///     }
///     fn candidates(&self, item: &SampleItem<'_>) -> Result<Vec<usize>> {
///         let p = item.probs("doc-bright")?;
///         Ok((0..p.len()).filter(|&v| p[v] > self.1).collect())
///     }
/// }
///
/// register_sampler!(
///     "doc-bright",
///     "anchors where the network says foreground",
///     |draw, p| Ok(Bright(draw, p.f64("above")? as f32)),
///     ParamSpec::float("above", 0.5, Some(0.0), Some(1.0), "probability threshold"),
/// );
///
/// let plugin = metricunet_core::registry::sampler("doc-bright", "metric.samplers[0]")?;
/// assert_eq!(plugin.params.iter().map(|p| p.name).collect::<Vec<_>>(), ["k", "m", "above"]);
/// # Ok::<(), metricunet_core::CoreError>(())
/// ```
#[macro_export]
macro_rules! register_sampler {
    ($name:literal, $description:literal, $build:expr $(, $extra:expr)* $(,)?) => {
        $crate::inventory::submit! {
            $crate::SamplerPlugin {
                name: $name,
                description: $description,
                params: &[$crate::Draw::K, $crate::Draw::M $(, $extra)*],
                build: |p: &$crate::Params| -> $crate::Result<::std::boxed::Box<dyn $crate::Sampler>> {
                    $crate::sampler::build_sampler(p, $build)
                },
            }
        }
    };
}

/// The constructor [`register_sampler!`] registers: `k` and `m` read, then `build`.
pub fn build_sampler<S: Sampler + 'static>(
    params: &Params,
    build: impl FnOnce(Draw, &Params) -> Result<S>,
) -> Result<Box<dyn Sampler>> {
    Ok(Box::new(build(Draw::from_params(params)?, params)?))
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
