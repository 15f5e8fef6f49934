//! `triplet-pair`: the voxel metric loss of Eq. 2,
//!
//! ```text
//! L = sum_{a,p,n} [ d(a,p) - d(a,n) + sigma ]_+  +  beta * sum_{a,p} ( d(a,p) + epsilon )
//! ```
//!
//! with `d` the squared L2 distance between voxel embeddings. Read literally (`pair: literal`,
//! the default), epsilon only shifts the loss: the pair term's gradient does not depend on it.
//! The paper calls epsilon "the maximum distance of the positive pairs", which reads as a
//! hinge; `pair: hinged` is `beta * sum_{a,p} [ d(a,p) - epsilon ]_+`, which pulls only the
//! positives farther than epsilon from their anchor. Each anchor has `m`
//! positives and `m` negatives; the triplet term runs over all `m x m` (positive,
//! negative) pairs of an anchor and the pair term over its `m` positives, as Eq. 2's sums
//! over J and M do.
//!
//! `reduction: mean` (default) averages each term over its tuples, so the loss does not
//! grow with the batch size or `k`; `reduction: sum` is Eq. 2 read literally. The paper
//! motivates lambda = 0.01 with the "large magnitude" of distance losses, which holds for
//! squared distances of 256-d features under either reduction. Options the paper does not
//! use, for ablations: `squared: false` (plain L2 distance) and `normalize: true`
//! (embeddings scaled to unit length before distances).

use candle_core::{Tensor, D};
use metricunet_core::loss::zero_like_scalar;
use metricunet_core::{
    gather_voxels, inventory, LossPlugin, LossTerms, MetricLoss, ParamSpec, Params, Result, Tuples,
};

/// How the per-tuple terms are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
}

/// How the positive-pair term uses epsilon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairTerm {
    /// `d(a,p) + epsilon`, Eq. 2 as printed (epsilon is a constant offset).
    Literal,
    /// `[d(a,p) - epsilon]_+`, epsilon as the largest positive distance left unpenalised.
    Hinged,
}

/// Eq. 2 of the paper with its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TripletPairLoss {
    /// Triplet margin (paper: 0.7; Table III runs: 1.0).
    pub sigma: f64,
    /// Offset of the positive-pair term (paper: 0.01).
    pub epsilon: f64,
    /// Weight of the positive-pair term (paper: 0.1; 0 = triplet only).
    pub beta: f64,
    /// Squared L2 distance (the paper) or plain L2.
    pub squared: bool,
    /// Scale embeddings to unit length first.
    pub normalize: bool,
    pub reduction: Reduction,
    pub pair: PairTerm,
}

impl TripletPairLoss {
    fn distance(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let d2 = (a - b)?.sqr()?.sum(D::Minus1)?;
        if self.squared {
            Ok(d2)
        } else {
            // The offset keeps the gradient finite where two embeddings coincide.
            Ok((d2 + 1e-12)?.sqrt()?)
        }
    }

    fn reduce(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self.reduction {
            Reduction::Mean => t.mean_all()?,
            Reduction::Sum => t.sum_all()?,
        })
    }
}

impl MetricLoss for TripletPairLoss {
    fn term_names(&self) -> &'static [&'static str] {
        &["triplet", "pair"]
    }

    fn forward(&self, embeddings: &Tensor, t: &Tuples) -> Result<LossTerms> {
        t.check()?;
        if t.is_empty() {
            let z = zero_like_scalar(embeddings)?;
            return Ok(LossTerms {
                total: z.clone(),
                parts: vec![("triplet", z.clone()), ("pair", z)],
            });
        }
        let (a, m) = (t.len(), t.m);
        // One gather for anchors (each repeated m times), positives and negatives.
        let mut idx: Vec<usize> = t
            .anchors
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, m))
            .collect();
        idx.extend_from_slice(&t.positives);
        idx.extend_from_slice(&t.negatives);
        let mut rows = gather_voxels(embeddings, &idx)?;
        if self.normalize {
            let norm = rows
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            rows = rows.broadcast_div(&norm)?;
        }
        let n = a * m;
        let (anc, pos, neg) = (
            rows.narrow(0, 0, n)?,
            rows.narrow(0, n, n)?,
            rows.narrow(0, 2 * n, n)?,
        );
        let d_ap = self.distance(&anc, &pos)?.reshape((a, m))?;
        let d_an = self.distance(&anc, &neg)?.reshape((a, m))?;
        // [d(a, p_j) - d(a, n_l) + sigma]_+ over every (j, l) of an anchor.
        let triplet = d_ap.unsqueeze(2)?.broadcast_sub(&d_an.unsqueeze(1)?)?;
        let triplet = self.reduce(&(triplet + self.sigma)?.relu()?)?;
        let pair = match self.pair {
            PairTerm::Literal => d_ap + self.epsilon,
            PairTerm::Hinged => (d_ap - self.epsilon)?.relu(),
        }?;
        let pair = (self.reduce(&pair)? * self.beta)?;
        Ok(LossTerms {
            total: (&triplet + &pair)?,
            parts: vec![("triplet", triplet), ("pair", pair)],
        })
    }
}

/// The declared parameters, the one place their defaults (the paper's values) are written.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::float(
        "sigma",
        0.7,
        Some(0.0),
        None,
        "triplet margin (paper: 0.7; Table III: 1.0)",
    ),
    ParamSpec::float(
        "epsilon",
        0.01,
        Some(0.0),
        None,
        "offset of the positive-pair term (paper: 0.01), or its hinge with `pair: hinged`",
    ),
    ParamSpec::float(
        "beta",
        0.1,
        Some(0.0),
        None,
        "weight of the positive-pair term (paper: 0.1; 0 = triplet only)",
    ),
    ParamSpec::bool(
        "squared",
        true,
        "squared L2 distance as in the paper; false = plain L2",
    ),
    ParamSpec::bool(
        "normalize",
        false,
        "scale embeddings to unit length before distances",
    ),
    ParamSpec::choice(
        "reduction",
        &["mean", "sum"],
        "mean",
        "mean over tuples, or Eq. 2's literal sum",
    ),
    ParamSpec::choice(
        "pair",
        &["literal", "hinged"],
        "literal",
        "positive-pair term: beta * (d + epsilon) as Eq. 2 prints it, or beta * [d - epsilon]_+ (epsilon as the largest unpenalised positive distance)",
    ),
];

impl TripletPairLoss {
    /// The loss from validated parameters (every one of [`PARAMS`] present).
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(TripletPairLoss {
            sigma: p.f64("sigma")?,
            epsilon: p.f64("epsilon")?,
            beta: p.f64("beta")?,
            squared: p.bool("squared")?,
            normalize: p.bool("normalize")?,
            reduction: if p.str("reduction")? == "sum" {
                Reduction::Sum
            } else {
                Reduction::Mean
            },
            pair: if p.str("pair")? == "hinged" {
                PairTerm::Hinged
            } else {
                PairTerm::Literal
            },
        })
    }
}

inventory::submit! {
    LossPlugin {
        name: "triplet-pair",
        description: "hinged triplet term + beta * positive-pair term on squared L2 distances (paper Eq. 2)",
        params: PARAMS,
        build: |p: &Params| -> Result<Box<dyn MetricLoss>> { Ok(Box::new(TripletPairLoss::from_params(p)?)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// One image, 2 channels, 1 x 4 voxels at (0,0), (1,0), (0,2), (3,4).
    fn emb() -> Tensor {
        let xs = [0.0, 1.0, 0.0, 3.0];
        let ys = [0.0, 0.0, 2.0, 4.0];
        Tensor::new(&[[[xs], [ys]]], &Device::Cpu).expect("tensor")
    }

    fn parts(l: &TripletPairLoss, e: &Tensor, t: &Tuples) -> (f64, f64, f64) {
        let out = l.forward(e, t).expect("forward");
        let s = |x: &Tensor| {
            x.to_dtype(DType::F64)
                .and_then(|x| x.to_scalar::<f64>())
                .expect("scalar")
        };
        (s(&out.parts[0].1), s(&out.parts[1].1), s(&out.total))
    }

    /// The declared defaults (the paper's values).
    fn paper() -> TripletPairLoss {
        TripletPairLoss::from_params(&Params::defaults(PARAMS)).expect("declared defaults")
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn hand_computed_single_triplet() {
        // anchor 0, positive 1 (d = 1), negative 2 (d = 4)
        let t = Tuples {
            m: 1,
            anchors: vec![0],
            positives: vec![1],
            negatives: vec![2],
        };
        let l = TripletPairLoss {
            sigma: 3.5,
            ..paper()
        };
        let (tr, pa, to) = parts(&l, &emb(), &t);
        assert!(
            close(tr, 0.5) && close(pa, 0.1 * 1.01) && close(to, 0.601),
            "{tr} {pa} {to}"
        );
        // margin satisfied: hinge is zero
        let (tr, _, _) = parts(&paper(), &emb(), &t);
        assert_eq!(tr, 0.0);
        // plain distances: d_ap = 1, d_an = 2
        let l = TripletPairLoss {
            sigma: 1.5,
            beta: 0.0,
            squared: false,
            ..paper()
        };
        let (tr, pa, _) = parts(&l, &emb(), &t);
        assert!(close(tr, 0.5) && pa == 0.0, "{tr} {pa}");
    }

    #[test]
    fn hand_computed_m2_mean_and_sum() {
        // anchor 1 = (1,0); positives 0 (d=1) and 3 (d=4+16=20); negatives 2 (d=1+4=5) and 0 (d=1)
        let t = Tuples {
            m: 2,
            anchors: vec![1],
            positives: vec![0, 3],
            negatives: vec![2, 0],
        };
        let l = TripletPairLoss {
            sigma: 1.0,
            beta: 0.5,
            epsilon: 0.0,
            reduction: Reduction::Sum,
            ..paper()
        };
        // triplets: (1-5+1)+=0, (1-1+1)=1, (20-5+1)=16, (20-1+1)=20 -> 37; pair 0.5 * (1 + 20)
        let (tr, pa, to) = parts(&l, &emb(), &t);
        assert!(
            close(tr, 37.0) && close(pa, 10.5) && close(to, 47.5),
            "{tr} {pa} {to}"
        );
        let l = TripletPairLoss {
            reduction: Reduction::Mean,
            ..l
        };
        let (tr, pa, _) = parts(&l, &emb(), &t);
        assert!(close(tr, 37.0 / 4.0) && close(pa, 10.5 / 2.0), "{tr} {pa}");
    }

    /// `pair: hinged`: only positives farther than epsilon count, by how much they exceed it;
    /// `pair: literal` shifts by epsilon everywhere (its gradient does not see epsilon).
    #[test]
    fn hinged_pair_term_counts_only_positives_beyond_epsilon() {
        // anchor 1 = (1,0); positives 0 (d = 1) and 3 (d = 20); negatives far enough away
        let t = Tuples {
            m: 2,
            anchors: vec![1],
            positives: vec![0, 3],
            negatives: vec![2, 2],
        };
        let hinged = TripletPairLoss {
            beta: 1.0,
            epsilon: 2.0,
            reduction: Reduction::Sum,
            pair: PairTerm::Hinged,
            ..paper()
        };
        // [1 - 2]_+ + [20 - 2]_+ = 18
        let (_, pa, _) = parts(&hinged, &emb(), &t);
        assert!(close(pa, 18.0), "{pa}");
        let literal = TripletPairLoss {
            pair: PairTerm::Literal,
            ..hinged.clone()
        };
        // (1 + 2) + (20 + 2) = 25
        let (_, pa, _) = parts(&literal, &emb(), &t);
        assert!(close(pa, 25.0), "{pa}");
        // epsilon above every positive distance: the hinged term is 0
        let wide = TripletPairLoss {
            epsilon: 21.0,
            ..hinged
        };
        let (_, pa, _) = parts(&wide, &emb(), &t);
        assert_eq!(pa, 0.0);
        // the declared default is the literal term
        assert_eq!(paper().pair, PairTerm::Literal);
    }

    #[test]
    fn normalised_embeddings() {
        // anchor 3 = (3,4)/5, positive 1 = (1,0), negative 2 = (0,1)
        let t = Tuples {
            m: 1,
            anchors: vec![3],
            positives: vec![1],
            negatives: vec![2],
        };
        let l = TripletPairLoss {
            sigma: 1.0,
            beta: 1.0,
            epsilon: 0.0,
            normalize: true,
            ..paper()
        };
        let d_ap: f64 = 0.4 * 0.4 + 0.8 * 0.8; // (0.6-1)^2 + 0.8^2
        let d_an: f64 = 0.6 * 0.6 + 0.2 * 0.2; // 0.6^2 + (0.8-1)^2
        let (tr, pa, _) = parts(&l, &emb(), &t);
        assert!(close(tr, d_ap - d_an + 1.0) && close(pa, d_ap), "{tr} {pa}");
    }

    #[test]
    fn empty_tuples_give_zero_not_nan() {
        let l = paper();
        let (tr, pa, to) = parts(&l, &emb(), &Tuples::empty(1));
        assert_eq!((tr, pa, to), (0.0, 0.0, 0.0));
    }

    /// Central finite differences in f64 against candle's backward, for every option.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (n, c, h, w) = (2, 3, 3, 3);
        let data: Vec<f64> = (0..n * c * h * w)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let t = Tuples {
            m: 2,
            anchors: vec![0, 4, 13, 17],
            positives: vec![1, 2, 5, 8, 14, 9, 10, 12],
            negatives: vec![3, 6, 7, 0, 11, 15, 16, 9],
        };
        for (squared, normalize, reduction, pair) in [
            (true, false, Reduction::Mean, PairTerm::Literal),
            (false, false, Reduction::Sum, PairTerm::Literal),
            (true, true, Reduction::Mean, PairTerm::Literal),
            (false, true, Reduction::Sum, PairTerm::Literal),
            (true, false, Reduction::Mean, PairTerm::Hinged),
            (false, true, Reduction::Sum, PairTerm::Hinged),
        ] {
            let l = TripletPairLoss {
                sigma: 0.9,
                // the hinge at 0.5 is active for some positive pairs and not for others
                epsilon: if pair == PairTerm::Hinged { 0.5 } else { 0.01 },
                beta: 0.3,
                squared,
                normalize,
                reduction,
                pair,
            };
            let var = Var::from_vec(data.clone(), (n, c, h, w), &Device::Cpu).expect("var");
            let loss = l.forward(var.as_tensor(), &t).expect("forward").total;
            let grads = loss.backward().expect("backward");
            let g = grads
                .get(&var)
                .expect("grad")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f64>()
                .expect("vec");
            let eval = |d: &[f64]| -> f64 {
                let e = Tensor::from_vec(d.to_vec(), (n, c, h, w), &Device::Cpu).expect("t");
                l.forward(&e, &t)
                    .expect("f")
                    .total
                    .to_scalar::<f64>()
                    .expect("s")
            };
            let eps = 1e-6;
            let mut active_grads = 0;
            for i in 0..data.len() {
                let (mut up, mut down) = (data.clone(), data.clone());
                up[i] += eps;
                down[i] -= eps;
                let fd = (eval(&up) - eval(&down)) / (2.0 * eps);
                let err = (fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3);
                assert!(
                    err < 1e-5,
                    "squared={squared} normalize={normalize}: d/dx[{i}] fd {fd} vs {}",
                    g[i]
                );
                active_grads += usize::from(g[i] != 0.0);
            }
            assert!(
                active_grads > 10,
                "too few non-zero gradients ({active_grads}) to test anything"
            );
        }
    }
}
