//! The data of an experiment: cases found or generated, preprocessed (cached), split.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metricunet_core::config::DataConfig;
use metricunet_data::cache::{load_all, Cache};
use metricunet_data::dataset::{cases_for, Case};
use metricunet_data::preprocess::{PreprocessParams, Preprocessed};
use metricunet_data::split::{split, Split};

use crate::error::{Result, RunError};
use crate::lock::DirLock;

/// Preprocessed cases and their split.
pub struct PreparedData {
    pub cases: Vec<(Case, Preprocessed)>,
    /// Cases left out by `data.skip_bad_cases`, with the reason.
    pub skipped: Vec<(Case, String)>,
    pub split: Split,
}

impl PreparedData {
    /// Find, preprocess (through the cache in `work_dir/preprocessed`) and split the cases of
    /// `cfg`; relative paths are taken from `experiment_dir`.
    /// Phantom generation and preprocessing hold the lock of `work_dir`, so concurrent shards
    /// never write the same files at once (the later ones find them made).
    pub fn load(cfg: &DataConfig, experiment_dir: &Path, work_dir: &Path) -> Result<Self> {
        let lock = DirLock::acquire_waiting(work_dir, Duration::from_secs(2))?;
        let cases = cases_for(cfg, experiment_dir, work_dir)?;
        let params = PreprocessParams::from(cfg);
        let cache = Cache::new(work_dir.join("preprocessed"));
        let (cases, skipped) = load_all(
            &cases,
            &cfg.label_map,
            &params,
            Some(&cache),
            cfg.skip_bad_cases,
        )?;
        drop(lock);
        let ids: Vec<String> = cases.iter().map(|(c, _)| c.id.clone()).collect();
        let sp = &cfg.split;
        let split = split(&ids, [sp.train, sp.val, sp.test], sp.seed)?;
        if split.train.is_empty() {
            return Err(RunError::Invalid(format!(
                "data.split: no training case among {} cases; add cases or raise data.split.train",
                ids.len()
            )));
        }
        Ok(Self {
            cases,
            skipped,
            split,
        })
    }

    /// The preprocessed cases with these ids, in the order given.
    pub fn pick(&self, ids: &[String]) -> Vec<&Preprocessed> {
        ids.iter()
            .filter_map(|id| self.cases.iter().find(|(c, _)| &c.id == id))
            .map(|(_, p)| p)
            .collect()
    }

    /// A case and its preprocessed form by id.
    pub fn case(&self, id: &str) -> Option<&(Case, Preprocessed)> {
        self.cases.iter().find(|(c, _)| c.id == id)
    }

    /// One line: `20 cases (12 train, 4 val, 4 test; 0 skipped)`.
    pub fn summary(&self) -> String {
        format!(
            "{} cases ({} train, {} val, {} test; {} skipped)",
            self.cases.len(),
            self.split.train.len(),
            self.split.val.len(),
            self.split.test.len(),
            self.skipped.len()
        )
    }
}

/// The working folder of an experiment's data (phantom files, preprocessing cache):
/// `data.cache_dir`, else `runs/cache`.
pub fn work_dir(cfg: &DataConfig) -> PathBuf {
    cfg.cache_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join("cache"))
}
