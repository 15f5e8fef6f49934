//! Which cells a process runs: `--shard I/N` or `--shard I/cells`.

use std::fmt;
use std::str::FromStr;

/// `--shard I/N`: this process runs the cells whose index is I modulo N (I in 0..N);
/// `--shard I/cells`: it runs cell I alone (one shard per cell). Either way the split is fixed
/// by the sweep, not by how many shards run at once, so one lost shard can be run again alone
/// (`sbatch --array=I`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    /// N, or `None` for one cell per shard.
    pub count: Option<usize>,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("--shard {s}: expected I/N with 0 <= I < N (e.g. 0/4), or I/cells to run cell I alone")
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count = match n.trim() {
            "cells" => None,
            n => Some(n.parse::<usize>().map_err(|_| bad())?),
        };
        if count.is_some_and(|n| n == 0 || index >= n) {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            Some(n) => write!(f, "{}/{n}", self.index),
            None => write!(f, "{}/cells", self.index),
        }
    }
}

impl Shard {
    /// Whether this shard runs the cell with `index`.
    pub fn owns(&self, index: usize) -> bool {
        match self.count {
            Some(n) => index % n == self.index,
            None => index == self.index,
        }
    }
}
