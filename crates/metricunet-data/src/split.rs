//! Seeded train / validation / test split of case ids.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Which case goes where; written into every run's output so results name their cases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub seed: u64,
    pub train: Vec<String>,
    pub val: Vec<String>,
    pub test: Vec<String>,
}

/// Shuffle `ids` (sorted first, so the split depends on the set, not the listing order)
/// with `seed` and cut by the fractions: `round(n * test)` test cases, `round(n * val)`
/// validation cases, the rest for training; with 3 or more cases each part gets at least
/// one wherever its fraction is positive.
pub fn split(ids: &[String], fractions: [f64; 3], seed: u64) -> Result<Split> {
    let [train, val, test] = fractions;
    if (train + val + test - 1.0).abs() > 1e-6 || fractions.iter().any(|f| *f < 0.0) {
        return Err(DataError::Invalid(format!(
            "split fractions {fractions:?} must be non-negative and sum to 1"
        )));
    }
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    let n = ids.len();
    if n == 0 {
        return Err(DataError::Invalid("no case to split".into()));
    }
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let at_least = |f: f64| {
        if n >= 3 && f > 0.0 {
            ((n as f64 * f).round() as usize).max(1)
        } else {
            (n as f64 * f).round() as usize
        }
    };
    let n_test = at_least(test).min(n);
    let n_val = at_least(val).min(n - n_test);
    let mut n_train = n - n_test - n_val;
    if n_train == 0 && train > 0.0 && n >= 3 {
        n_train = 1;
    }
    let n_val = n - n_test - n_train;
    Ok(Split {
        seed,
        test: ids[..n_test].to_vec(),
        val: ids[n_test..n_test + n_val].to_vec(),
        train: ids[n_test + n_val..].to_vec(),
    })
}

/// Write a split as YAML (temporary file, then rename).
pub fn write_split(path: &std::path::Path, s: &Split) -> Result<()> {
    let text = serde_norway::to_string(s)
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(metricunet_core::fsio::write_atomic(path, text.as_bytes())?)
}

/// Read a split written by [`write_split`].
pub fn read_split(path: &std::path::Path) -> Result<Split> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_norway::from_str(&text)
        .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case_{i:03}")).collect()
    }

    #[test]
    fn paper_fractions_and_determinism() {
        let s = split(&ids(20), [0.7, 0.1, 0.2], 3).expect("split");
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (14, 2, 4));
        let mut all: Vec<String> = s
            .train
            .iter()
            .chain(&s.val)
            .chain(&s.test)
            .cloned()
            .collect();
        all.sort();
        assert_eq!(all, ids(20));
        assert_eq!(s, split(&ids(20), [0.7, 0.1, 0.2], 3).expect("again"));
        let mut reversed = ids(20);
        reversed.reverse();
        assert_eq!(s, split(&reversed, [0.7, 0.1, 0.2], 3).expect("order-free"));
        assert_ne!(s, split(&ids(20), [0.7, 0.1, 0.2], 4).expect("other seed"));
    }

    #[test]
    fn split_file_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = split(&ids(10), [0.7, 0.1, 0.2], 1).expect("split");
        let p = dir.path().join("run/split.yaml");
        write_split(&p, &s).expect("write");
        assert_eq!(read_split(&p).expect("read"), s);
        assert!(read_split(&dir.path().join("none.yaml"))
            .unwrap_err()
            .to_string()
            .contains("none.yaml"));
    }

    #[test]
    fn small_sets_keep_every_part() {
        let s = split(&ids(3), [0.7, 0.1, 0.2], 0).expect("split");
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (1, 1, 1));
        assert!(split(&ids(3), [0.5, 0.1, 0.1], 0).is_err());
        assert!(split(&[], [0.7, 0.1, 0.2], 0).is_err());
    }
}
