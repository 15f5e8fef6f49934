//! `metricunet samplers show`: where every configured sampler of a cell puts its anchors,
//! positives and negatives on one training batch of a case, drawn exactly as a training
//! step draws them (same patches, same network pass, same random stream), with counts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use metricunet_core::config::{Cell, StageName};
use metricunet_core::VoxelMetricModule;
use metricunet_report::figures::{sampler_picks, SamplerPanel, SamplerView};
use metricunet_runner::data::{work_dir, PreparedData};
use metricunet_train::pool::stage_pool;
use metricunet_train::ModelSpec;
use rand::SeedableRng;

/// Options of `samplers show` besides the experiment and cell.
pub struct ShowArgs {
    /// A training case id (default: the first training case).
    pub case: Option<String>,
    /// Trained stage-2 weights (default: the network as initialised from the cell's seed).
    pub weights: Option<PathBuf>,
    /// Where the figure goes.
    pub out: PathBuf,
}

/// Draw one batch of `case` through `cell`'s samplers; write the figure and return the
/// counts as text.
pub fn show(cell: &Cell, experiment_dir: &Path, args: &ShowArgs) -> Result<String> {
    let cfg = &cell.config;
    let stage = cfg.stage(StageName::Stage2);
    if stage.metric.samplers.is_empty() {
        bail!(
            "cell {} ({}) configures no sampler (metric.samplers is empty); pick a cell with samplers with --cell (see `metricunet validate`)",
            cell.index,
            cell.label()
        );
    }
    let data = PreparedData::load(&cfg.data, experiment_dir, &work_dir(&cfg.data))?;
    let id = match &args.case {
        Some(id) => {
            if data.case(id).is_none() {
                let ids: Vec<&str> = data.cases.iter().map(|(c, _)| c.id.as_str()).collect();
                bail!(
                    "--case {id}: no such case; the experiment's cases are {}",
                    ids.join(", ")
                );
            }
            id.clone()
        }
        None => data
            .split
            .train
            .first()
            .cloned()
            .context("the split has no training case")?,
    };
    let case = &data.case(&id).context("case vanished")?.1;
    // the case's stage-2 training patches, drawn as training draws them
    let pool = stage_pool(
        &[case],
        StageName::Stage2,
        stage.patches,
        cfg.stage1.downsample,
        cfg.model.crop,
        cell.seed,
    )?;
    let batch_size = stage.training.batch_size.min(pool.n);
    let idx: Vec<usize> = (0..batch_size).collect();
    let device = Device::Cpu;
    let (x, labels) = pool.batch(&idx, &device)?;
    let spec = ModelSpec::of(cfg, StageName::Stage2);
    let (_vars, net, weights) = match &args.weights {
        Some(w) => {
            let (vars, net) = spec.load(w, &device)?;
            (vars, net, format!("trained weights {}", w.display()))
        }
        None => {
            let vars = VarMap::new();
            let net = spec.build(&vars, cell.seed ^ 0x52, &device)?;
            (
                vars,
                net,
                "the network as initialised (untrained: pass --weights to see a trained one)"
                    .to_string(),
            )
        }
    };
    let out = net.forward_t(&x, true)?;
    let module = VoxelMetricModule::from_config(
        stage.segmentation_loss,
        "model.segmentation_loss",
        &stage.metric,
    )?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cell.seed);
    let drawn = module.draw(&out.logits, &labels, &mut rng)?;
    let (h, w) = (pool.h, pool.w);
    let hw = h * w;
    // the image shown: the one with the most anchors over all samplers
    let per_item = |i: usize| -> usize {
        drawn
            .samplers
            .iter()
            .map(|s| s.tuples.anchors.iter().filter(|&&v| v / hw == i).count())
            .sum()
    };
    let item = (0..batch_size)
        .max_by_key(|&i| (per_item(i), usize::MAX - i))
        .unwrap_or(0);
    let local = |v: &[usize]| -> Vec<usize> { v.iter().map(|&v| v - item * hw).collect() };
    let mut panels = Vec::new();
    let mut text = format!(
        "case {id}, stage-2 training batch of {batch_size} patches ({h} x {w}), {weights}\n{:<20} {:>10} {:>8}   per image (candidates/anchors)\n",
        "sampler", "candidates", "anchors"
    );
    for s in &drawn.samplers {
        let m = s.tuples.m;
        let on_item: Vec<usize> = (0..s.tuples.len())
            .filter(|&a| s.tuples.anchors[a] / hw == item)
            .collect();
        let pick = |v: &[usize]| -> Vec<usize> {
            on_item
                .iter()
                .flat_map(|&a| v[a * m..(a + 1) * m].iter().copied())
                .collect()
        };
        let anchors: Vec<usize> = on_item.iter().map(|&a| s.tuples.anchors[a]).collect();
        let per_image: Vec<String> = (0..batch_size)
            .map(|i| {
                let a = s.tuples.anchors.iter().filter(|&&v| v / hw == i).count();
                format!("{}/{a}", s.candidates[i])
            })
            .collect();
        text.push_str(&format!(
            "{:<20} {:>10} {:>8}   {}\n",
            s.name,
            s.candidates.iter().sum::<usize>(),
            s.tuples.len(),
            per_image.join(" ")
        ));
        panels.push(SamplerPanel {
            name: s.name.clone(),
            candidates: s.candidates[item],
            batch_candidates: s.candidates.iter().sum(),
            batch_anchors: s.tuples.len(),
            anchors: local(&anchors),
            positives: local(&pick(&s.tuples.positives)),
            negatives: local(&pick(&s.tuples.negatives)),
        });
    }
    // the middle input slice of the image shown
    let (_, c, _, _) = x.dims4()?;
    let image = x
        .get(item)?
        .get(c / 2)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let view = SamplerView {
        title: format!("{id}, patch {} of a batch of {batch_size}", item + 1),
        h,
        w,
        image,
        labels: labels[item * hw..(item + 1) * hw].to_vec(),
        probabilities: drawn
            .probabilities
            .as_ref()
            .map(|p| p[item * hw..(item + 1) * hw].to_vec()),
        samplers: panels,
    };
    let stem = format!(
        "samplers_{}",
        id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    );
    let fig = sampler_picks(&view, &args.out, &stem)?;
    text.push_str(&format!(
        "figure (patch {} of the batch): {} and {}\n",
        item + 1,
        fig.png.display(),
        fig.svg.display()
    ));
    Ok(text)
}
