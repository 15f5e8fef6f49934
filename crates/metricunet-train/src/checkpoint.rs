//! Checkpoints: one safetensors file holding the weights (BatchNorm running statistics
//! included), the momentum buffers, the best validation point's weights (`b.`, with its
//! iteration and scores as metadata) and, as metadata, the iteration, the RNG state and a hash
//! of the configuration. Written to a temporary file and renamed, so a kill at any moment
//! leaves either the previous checkpoint or the new one, never half of one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use metricunet_core::config::TrainingConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};

use metricunet_core::fsio::write_atomic_at;

use crate::error::{Result, TrainError};
use crate::keep::BestWeights;
use crate::optim::Sgd;

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// Iterations completed.
    pub iteration: usize,
    /// ChaCha8 seed, stream and word position of the training RNG.
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    /// Hash of the resolved configuration that produced it.
    pub config_hash: String,
}

pub use metricunet_model::named_vars;

/// A stage's checkpoint file: when to write it, and how a run starts from it.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    path: PathBuf,
    config_hash: String,
    every: usize,
    iterations: usize,
}

impl Checkpointer {
    /// The checkpoint at `path` of a run of `config_hash` with `training`'s
    /// `checkpoint_every` and `iterations` (a checkpoint is also written at the end).
    pub fn new(path: PathBuf, config_hash: &str, training: &TrainingConfig) -> Self {
        Self {
            path,
            config_hash: config_hash.to_string(),
            every: training.checkpoint_every,
            iterations: training.iterations,
        }
    }

    /// Where a run starts: after the checkpoint's iteration with its RNG, weights, momentum
    /// buffers and best validation point loaded (with `resume`), or at 0 with the RNG of
    /// `seed` when there is no checkpoint. A checkpoint without `resume`, or of another configuration, is an error.
    pub fn restore(
        &self,
        vars: &VarMap,
        opt: &mut Sgd,
        device: &Device,
        resume: bool,
        seed: u64,
    ) -> Result<(usize, ChaCha8Rng, Option<BestWeights>)> {
        if !self.path.exists() {
            return Ok((0, ChaCha8Rng::seed_from_u64(seed), None));
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !resume {
            return Err(TrainError::Invalid(format!(
                "{} already holds a checkpoint; pass --resume to continue it, or choose another output folder",
                dir.display()
            )));
        }
        let (meta, best) = load(&self.path, vars, opt, device)?;
        if meta.config_hash != self.config_hash {
            return Err(TrainError::Checkpoint {
                path: self.path.clone(),
                message: format!(
                    "made by configuration {}, this run is {}; use another output folder",
                    meta.config_hash, self.config_hash
                ),
            });
        }
        let mut rng = ChaCha8Rng::from_seed(meta.rng_seed);
        rng.set_stream(meta.rng_stream);
        rng.set_word_pos(meta.rng_word_pos);
        Ok((meta.iteration, rng, best))
    }

    /// Whether a checkpoint is written after `iteration`.
    pub fn due(&self, iteration: usize) -> bool {
        (self.every > 0 && iteration.is_multiple_of(self.every)) || iteration == self.iterations
    }

    /// Write the checkpoint of `iteration` with the best validation point so far
    /// (atomically).
    pub fn save(
        &self,
        iteration: usize,
        vars: &VarMap,
        opt: &Sgd,
        rng: &ChaCha8Rng,
        best: Option<&BestWeights>,
    ) -> Result<()> {
        let meta = CheckpointMeta {
            iteration,
            rng_seed: rng.get_seed(),
            rng_stream: rng.get_stream(),
            rng_word_pos: rng.get_word_pos(),
            config_hash: self.config_hash.clone(),
        };
        save(&self.path, vars, opt, &meta, best)
    }
}

fn bytes_f32(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Save weights (prefix `w.`), momentum buffers (prefix `m.`), the best validation point's
/// weights (prefix `b.`) and `meta` to `path`.
pub fn save(
    path: &Path,
    vars: &VarMap,
    opt: &Sgd,
    meta: &CheckpointMeta,
    best: Option<&BestWeights>,
) -> Result<()> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, var) in named_vars(vars)? {
        owned.push((
            format!("w.{name}"),
            var.dims().to_vec(),
            bytes_f32(var.as_tensor())?,
        ));
    }
    for (name, buf) in opt.buffers() {
        owned.push((format!("m.{name}"), buf.dims().to_vec(), bytes_f32(buf)?));
    }
    for (name, t) in best.map(|b| b.weights.as_slice()).unwrap_or_default() {
        owned.push((format!("b.{name}"), t.dims().to_vec(), bytes_f32(t)?));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let mut info = HashMap::from([
        ("format".to_string(), "metricunet-checkpoint-1".to_string()),
        ("iteration".to_string(), meta.iteration.to_string()),
        ("rng_seed".to_string(), hex(&meta.rng_seed)),
        ("rng_stream".to_string(), meta.rng_stream.to_string()),
        ("rng_word_pos".to_string(), meta.rng_word_pos.to_string()),
        ("config_hash".to_string(), meta.config_hash.clone()),
    ]);
    if let Some(b) = best {
        info.insert("best_iteration".into(), b.iteration.to_string());
        info.insert("best_scores".into(), b.scores_text());
    }
    Ok(write_atomic_at(path, |tmp| {
        safetensors::serialize_to_file(views, Some(info), tmp).map_err(|e| e.to_string())
    })?)
}

/// Save the weights alone (the model a prediction loads), atomically.
pub fn save_weights(path: &Path, vars: &VarMap) -> Result<()> {
    Ok(write_atomic_at(path, |tmp| {
        vars.save(tmp).map_err(|e| e.to_string())
    })?)
}

/// Load a checkpoint into `vars` (every variable must be present with its shape) and
/// `opt`; returns its metadata and its best validation point, if it holds one.
pub fn load(
    path: &Path,
    vars: &VarMap,
    opt: &mut Sgd,
    device: &Device,
) -> Result<(CheckpointMeta, Option<BestWeights>)> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let info = header
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata".into()))?;
    let field = |k: &str| {
        info.get(k)
            .cloned()
            .ok_or_else(|| bad(format!("metadata `{k}` missing")))
    };
    if field("format")? != "metricunet-checkpoint-1" {
        return Err(bad(format!("unknown format `{}`", field("format")?)));
    }
    let to_tensor = |name: &str| -> Result<Tensor> {
        let v = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        if v.dtype() != Dtype::F32 {
            return Err(bad(format!("{name}: expected f32")));
        }
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::from_vec(data, v.shape(), device)?)
    };
    let best_iteration = info.get("best_iteration").cloned();
    let mut best_weights = Vec::new();
    for (name, var) in named_vars(vars)? {
        let t = to_tensor(&format!("w.{name}"))?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "{name}: shape {:?}, the model has {:?}",
                t.dims(),
                var.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
        if best_iteration.is_some() {
            let b = to_tensor(&format!("b.{name}"))?;
            if b.dims() != var.dims() {
                return Err(bad(format!("best {name}: shape {:?}", b.dims())));
            }
            best_weights.push((name, b.to_dtype(var.dtype())?));
        }
    }
    let best = match best_iteration {
        Some(it) => Some(BestWeights {
            iteration: it
                .parse()
                .map_err(|e| bad(format!("best_iteration: {e}")))?,
            scores: BestWeights::parse_scores(&field("best_scores")?)
                .map_err(|e| bad(e.to_string()))?,
            weights: best_weights,
        }),
        None => None,
    };
    let mut buffers = BTreeMap::new();
    for name in st.names() {
        if let Some(var_name) = name.strip_prefix("m.") {
            buffers.insert(var_name.to_string(), to_tensor(name)?);
        }
    }
    opt.set_buffers(buffers);
    let seed = unhex(&field("rng_seed")?)
        .filter(|v| v.len() == 32)
        .ok_or_else(|| bad("bad rng_seed".into()))?;
    let parse = |k: &str| -> Result<u128> {
        field(k)?
            .parse::<u128>()
            .map_err(|e| bad(format!("{k}: {e}")))
    };
    let mut rng_seed = [0u8; 32];
    rng_seed.copy_from_slice(&seed);
    let meta = CheckpointMeta {
        iteration: parse("iteration")? as usize,
        rng_seed,
        rng_stream: parse("rng_stream")? as u64,
        rng_word_pos: parse("rng_word_pos")?,
        config_hash: field("config_hash")?,
    };
    Ok((meta, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_says_so_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let vars = VarMap::new();
        vars.get(
            (2, 3),
            "w",
            candle_nn::Init::Const(1.0),
            DType::F32,
            &Device::Cpu,
        )
        .expect("var");
        // a folder that cannot be made (a file is in its place) stands for a full disk
        let blocker = dir.path().join("full");
        std::fs::write(&blocker, b"x").expect("file");
        let e = save_weights(&blocker.join("model.safetensors"), &vars)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.safetensors") || e.contains("full"), "{e}");
        assert!(
            e.contains("cannot write") && !e.contains("not a usable checkpoint"),
            "{e}"
        );
        // and a write that works replaces the file whole
        let ok = dir.path().join("model.safetensors");
        save_weights(&ok, &vars).expect("save");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
