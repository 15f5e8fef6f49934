//! Summary statistics and the Wilcoxon signed-rank test, as scipy computes them.
//!
//! `wilcoxon` follows `scipy.stats.wilcoxon(d)` (1.17, defaults: two-sided, zeros dropped,
//! no continuity correction, `method="auto"`): the exact null distribution when there are no
//! ties and no zeros and n <= 50; an exact enumeration of the 2^n sign flips when there are
//! ties or zeros and n <= 13; otherwise the normal approximation with the tie correction.
//! Tests pin its p-values to scipy's.

/// Mean of the finite values (NaN when there is none).
pub fn mean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return f64::NAN;
    }
    f.iter().sum::<f64>() / f.len() as f64
}

/// Sample standard deviation (n - 1) of the finite values (NaN with fewer than two).
pub fn std(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.len() < 2 {
        return f64::NAN;
    }
    let m = f.iter().sum::<f64>() / f.len() as f64;
    (f.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (f.len() - 1) as f64).sqrt()
}

/// Median of the finite values (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// Linear-interpolation quantile (numpy's default) of the finite values.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return f64::NAN;
    }
    f.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (f.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    f[lo] + (f[hi] - f[lo]) * (pos - lo as f64)
}

/// Resamples of [`bootstrap_mean_ci`] in reports.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// Percentile bootstrap confidence interval of the mean of `v`'s finite values: `resamples`
/// resamples with replacement of the same size, drawn from a ChaCha8 seeded with `seed` (a
/// report is the same every time it is written), and the `(1 - level) / 2` and
/// `(1 + level) / 2` quantiles of their means. None with fewer than two values.
pub fn bootstrap_mean_ci(v: &[f64], level: f64, resamples: usize, seed: u64) -> Option<(f64, f64)> {
    use rand::{Rng, SeedableRng};
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.len() < 2 || resamples == 0 {
        return None;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = f.len();
    let means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| f[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    let a = (1.0 - level) / 2.0;
    Some((quantile(&means, a), quantile(&means, 1.0 - a)))
}

/// Outcome of a signed-rank test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wilcoxon {
    /// min(R+, R-), as scipy reports it for the two-sided test.
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Non-zero differences used.
    pub n: usize,
    pub method: WilcoxonMethod,
}

/// How the p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WilcoxonMethod {
    Exact,
    Permutation,
    Normal,
}

/// Average ranks (1-based) of `v` and the sizes of its tie groups.
fn average_ranks(v: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut ties = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        ties.push(j - i + 1);
        i = j + 1;
    }
    (ranks, ties)
}

/// Counts of each rank sum 0..=n(n+1)/2 over the 2^n sign patterns of ranks 1..n.
fn rank_sum_counts(n: usize) -> Vec<f64> {
    let max = n * (n + 1) / 2;
    let mut c = vec![0.0f64; max + 1];
    c[0] = 1.0;
    for k in 1..=n {
        for s in (k..=max).rev() {
            c[s] += c[s - k];
        }
    }
    c
}

/// Two-sided Wilcoxon signed-rank test of the paired differences `d` (non-finite values are
/// ignored). `None` when no difference is non-zero.
pub fn wilcoxon(d: &[f64]) -> Option<Wilcoxon> {
    let d: Vec<f64> = d.iter().copied().filter(|x| x.is_finite()).collect();
    let n_all = d.len();
    let nz: Vec<f64> = d.iter().copied().filter(|&x| x != 0.0).collect();
    let n = nz.len();
    if n == 0 {
        return None;
    }
    let abs: Vec<f64> = nz.iter().map(|x| x.abs()).collect();
    let (ranks, ties) = average_ranks(&abs);
    let r_plus: f64 = nz
        .iter()
        .zip(&ranks)
        .filter(|(x, _)| **x > 0.0)
        .map(|(_, r)| r)
        .sum();
    let total = (n * (n + 1)) as f64 / 2.0;
    let statistic = r_plus.min(total - r_plus);
    let has_ties = ties.iter().any(|&t| t > 1);
    let zeros = n_all - n;
    let (p, method) = if n_all <= 50 && !has_ties && zeros == 0 {
        let counts = rank_sum_counts(n);
        let all = 2f64.powi(n as i32);
        let cdf = |k: f64| -> f64 {
            let k = k.ceil() as usize;
            counts[..=k.min(counts.len() - 1)].iter().sum::<f64>() / all
        };
        let sf = |k: f64| -> f64 {
            let k = k.floor() as usize;
            counts[k.min(counts.len())..].iter().sum::<f64>() / all
        };
        (
            (2.0 * sf(r_plus).min(cdf(r_plus))).min(1.0),
            WilcoxonMethod::Exact,
        )
    } else if n_all <= 13 {
        // every sign pattern of the non-zero differences, with their (tied) ranks
        let gamma = (1e-14 * r_plus).abs();
        let (mut le, mut ge) = (0u64, 0u64);
        for mask in 0u32..(1 << n) {
            let t: f64 = (0..n)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| ranks[i])
                .sum();
            if t <= r_plus + gamma {
                le += 1;
            }
            if t >= r_plus - gamma {
                ge += 1;
            }
        }
        let all = f64::from(1u32 << n);
        (
            (2.0 * (le as f64 / all).min(ge as f64 / all)).min(1.0),
            WilcoxonMethod::Permutation,
        )
    } else {
        let nf = n as f64;
        let tie_correct: f64 = ties.iter().map(|&t| (t * t * t - t) as f64).sum();
        let se = ((nf * (nf + 1.0) * (2.0 * nf + 1.0) - tie_correct / 2.0) / 24.0).sqrt();
        let z = (r_plus - nf * (nf + 1.0) / 4.0) / se;
        (
            libm::erfc(z.abs() / std::f64::consts::SQRT_2),
            WilcoxonMethod::Normal,
        )
    };
    Some(Wilcoxon {
        statistic,
        p_value: p,
        n,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x - y).collect()
    }

    /// Reference values: scipy 1.17.1, `scipy.stats.wilcoxon(a, b)` / `wilcoxon(d)`.
    #[test]
    fn wilcoxon_matches_scipy() {
        let cases: Vec<(Vec<f64>, f64, f64, WilcoxonMethod)> = vec![
            (
                diff(
                    &[0.82, 0.79, 0.85, 0.88, 0.76, 0.81, 0.90, 0.84],
                    &[0.80, 0.80, 0.81, 0.85, 0.70, 0.80, 0.86, 0.80],
                ),
                1.5,
                0.0234375,
                WilcoxonMethod::Permutation,
            ),
            (
                diff(
                    &[1.0, 2.0, 3.5, -0.5, 4.0, 2.5],
                    &[1.2, 2.5, 3.2, 0.0, 4.9, 3.6],
                ),
                2.0,
                0.09375,
                // |-0.5| twice: a tie, so scipy enumerates the sign flips
                WilcoxonMethod::Permutation,
            ),
            (
                vec![
                    0.5, -0.5, 1.0, 1.0, 2.0, -1.0, 3.0, 0.5, 1.5, 2.0, -0.25, 0.75,
                ],
                11.0,
                0.02685546875,
                WilcoxonMethod::Permutation,
            ),
            (
                vec![0.0, 0.3, 0.1, -0.2, 0.4, 0.5, 0.0, 0.6],
                2.0,
                0.09375,
                WilcoxonMethod::Permutation,
            ),
            (
                vec![1.0, 2.0, 3.0, 4.0, 5.5],
                0.0,
                0.0625,
                WilcoxonMethod::Exact,
            ),
        ];
        for (d, stat, p, method) in cases {
            let w = wilcoxon(&d).expect("defined");
            assert_eq!(w.statistic, stat, "{d:?}");
            assert!((w.p_value - p).abs() < 1e-12, "{d:?}: {} vs {p}", w.p_value);
            assert_eq!(w.method, method);
        }
        // n = 60 (normal approximation)
        let d = [
            0.445584, 0.921618, 0.430437, -1.203157, 1.005356, 0.546375, -0.436953, 0.681118,
            0.464572, 0.394132, 0.128422, 0.646713, -0.636454, -0.06291, -0.382119, 0.698846,
            0.139722, -0.192457, -0.681908, -0.157192, 0.108142, -0.175603, 1.394064, 1.106724,
            -2.611162, -1.789013, -0.074772, -0.32219, 0.313643, 0.317322, 2.217839, -1.012021,
            -0.277605, 2.142772, 0.746703, 0.763063, -0.414006, -1.548075, 0.267465, 0.209014,
            -1.127352, -0.583227, 0.027956, -0.844752, 0.00173, 0.195483, 0.135586, -0.406292,
            0.693748, 0.991167, 0.420848, -0.71823, 0.831652, -0.40144, 0.979161, -0.971787,
            1.014467, 0.079937, -1.148749, -0.213899,
        ];
        let w = wilcoxon(&d).expect("defined");
        assert_eq!(w.statistic, 822.0);
        assert_eq!(w.method, WilcoxonMethod::Normal);
        assert!(
            (w.p_value - 0.49357801242517574).abs() < 1e-9,
            "{}",
            w.p_value
        );
        assert!(wilcoxon(&[0.0, 0.0]).is_none());
    }

    #[test]
    fn summaries_by_hand() {
        let v = [3.0, 1.0, f64::NAN, 2.0, 10.0];
        assert_eq!(mean(&v), 4.0);
        assert_eq!(median(&v), 2.5);
        // deviations from 4: 1, 9, 4, 36 -> 50 / 3
        assert!((std(&v) - (50.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert!(std(&[1.0]).is_nan() && mean(&[]).is_nan());
    }
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;

    /// A constant sample has a zero-width interval; for 400 draws of N(0.3, 1) the 95 %
    /// interval is the normal theory one, mean ± 1.96 s / sqrt(n), within 5 % of its width.
    #[test]
    fn the_bootstrap_interval_matches_normal_theory() {
        assert_eq!(
            bootstrap_mean_ci(&[0.25; 9], 0.95, 1000, 1),
            Some((0.25, 0.25))
        );
        assert_eq!(bootstrap_mean_ci(&[0.2], 0.95, 1000, 1), None);
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Box-Muller normals
        let v: Vec<f64> = (0..400)
            .map(|_| {
                let (u1, u2): (f64, f64) = (
                    rand::Rng::random_range(&mut rng, 1e-12..1.0),
                    rand::Rng::random_range(&mut rng, 0.0..1.0),
                );
                0.3 + (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            })
            .collect();
        let (lo, hi) = bootstrap_mean_ci(&v, 0.95, 20_000, 2).expect("ci");
        let (m, half) = (mean(&v), 1.96 * std(&v) / 20.0);
        assert!(lo < m && m < hi);
        assert!(
            ((hi - lo) / (2.0 * half) - 1.0).abs() < 0.05,
            "{lo} {hi} vs {m} ± {half}"
        );
        assert!(((lo + hi) / 2.0 - m).abs() < 0.1 * half);
        // the same seed gives the same interval
        assert_eq!(
            bootstrap_mean_ci(&v, 0.95, 500, 3),
            bootstrap_mean_ci(&v, 0.95, 500, 3)
        );
    }
}
