//! Timing of training steps (forward, backward, optimizer separately) and peak memory, for
//! `metricunet bench train`. Numbers are printed, never asserted.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use metricunet_core::config::{
    default_segmentation_loss, MetricConfig, PluginSpec, TrainingConfig,
};
use metricunet_core::VoxelMetricModule;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::named_vars;
use crate::error::Result;
use crate::optim::Sgd;
use crate::trainer::{ModelSpec, StageSpec};

/// One configuration to time.
#[derive(Debug, Clone)]
pub struct StepCase {
    /// e.g. `paper unet` or `paper metricunet + hard-negative`.
    pub label: String,
    pub backbone: PluginSpec,
    pub in_channels: usize,
    /// Square patch side.
    pub size: usize,
    pub batch: usize,
    pub metric: MetricConfig,
}

impl StepCase {
    /// The stage of this case (seed 0, default training settings).
    fn stage_spec(&self, name: &str) -> StageSpec {
        StageSpec {
            model: ModelSpec {
                name: name.into(),
                backbone: self.backbone.clone(),
                in_channels: self.in_channels,
            },
            training: TrainingConfig::default(),
            segmentation_loss: default_segmentation_loss(),
            metric: self.metric.clone(),
            seed: 0,
            config_hash: String::new(),
        }
    }
}

/// What a timed or compared step starts from: the seeded network, the metric module, SGD
/// (momentum 0.9, weight decay 1e-4), the sampler RNG and the synthetic batch.
struct Setup {
    net: Box<dyn metricunet_core::Backbone>,
    module: VoxelMetricModule,
    named: Vec<(String, candle_core::Var)>,
    opt: Sgd,
    rng: ChaCha8Rng,
    x: Tensor,
    labels: Vec<u8>,
}

impl Setup {
    /// One training step (forward, loss with the metric module, backward, SGD), each phase
    /// ended by a wait for the device: their durations in seconds. Without `wait_after_net`
    /// the forward is not waited for on its own (its time then lands in the loss's, which
    /// reads the loss value and so waits anyway).
    fn timed_step(&mut self, device: &Device, wait_after_net: bool) -> Result<[f64; 4]> {
        device.synchronize()?;
        let t = Instant::now();
        let out = self.net.forward_t(&self.x, true)?;
        if wait_after_net {
            device.synchronize()?;
        }
        let t_net = t.elapsed().as_secs_f64();
        let step =
            self.module
                .step_loss(&out.logits, &out.embedding, &self.labels, &mut self.rng)?;
        let _ = step.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        device.synchronize()?;
        let t_loss = t.elapsed().as_secs_f64();
        let grads = step.total.backward()?;
        device.synchronize()?;
        let t_back = t.elapsed().as_secs_f64();
        self.opt.step(&self.named, &grads, 0.01)?;
        device.synchronize()?;
        let t_all = t.elapsed().as_secs_f64();
        Ok([t_net, t_loss - t_net, t_back - t_loss, t_all - t_back])
    }

    fn new(case: &StepCase, name: &str, device: &Device, dtype: DType) -> Result<Self> {
        let spec = case.stage_spec(name);
        let vars = VarMap::new();
        let net = spec.model.build_as(&vars, 0, device, dtype)?;
        let (x, labels) = synthetic_batch(case, device, 2)?;
        Ok(Self {
            module: VoxelMetricModule::from_config(
                &default_segmentation_loss(),
                "segmentation_loss",
                &case.metric,
            )?,
            named: named_vars(&vars)?,
            net,
            opt: Sgd::new(0.9, 1e-4),
            rng: ChaCha8Rng::seed_from_u64(1),
            x: x.to_dtype(dtype)?,
            labels,
        })
    }
}

/// Medians over the timed steps, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StepTiming {
    pub label: String,
    pub batch: usize,
    pub size: usize,
    pub forward_s: f64,
    pub backward_s: f64,
    pub optimizer_s: f64,
    pub step_s: f64,
    pub steps: usize,
    /// Peak resident memory of the process during this case (MB), where the OS tells.
    pub peak_rss_mb: Option<f64>,
    /// High-water marks of the CUDA memory pool over the timed steps (MB): memory handed to
    /// tensors and memory held (PyTorch's `max_memory_allocated` / `max_memory_reserved`).
    pub peak_gpu: Option<metricunet_ops::device_memory::PoolPeaks>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Reset the kernel's peak-RSS counter of this process (Linux), so the next reading is
/// this case's peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size since the last reset, in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// A batch like a real one: smooth random intensities and a disc of foreground in each
/// image (so every sampler finds anchors, positives and negatives).
fn synthetic_batch(case: &StepCase, device: &Device, seed: u64) -> Result<(Tensor, Vec<u8>)> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (b, c, s) = (case.batch, case.in_channels, case.size);
    let x: Vec<f32> = (0..b * c * s * s).map(|_| rng.random::<f32>()).collect();
    let mut y = vec![0u8; b * s * s];
    let r2 = (s as f64 / 5.0).powi(2);
    for i in 0..b {
        let (cx, cy) = (
            s as f64 / 2.0 + rng.random_range(-3.0..3.0),
            s as f64 / 2.0 + rng.random_range(-3.0..3.0),
        );
        for yy in 0..s {
            for xx in 0..s {
                if (xx as f64 - cx).powi(2) + (yy as f64 - cy).powi(2) <= r2 {
                    y[i * s * s + yy * s + xx] = 1;
                }
            }
        }
    }
    Ok((Tensor::from_vec(x, (b, c, s, s), device)?, y))
}

/// Time `steps` training steps of `case` after `warmup` untimed ones.
pub fn time_steps(
    case: &StepCase,
    device: &Device,
    warmup: usize,
    steps: usize,
) -> Result<StepTiming> {
    reset_peak_rss();
    let mut s = Setup::new(case, "bench", device, DType::F32)?;
    let (mut fw, mut bw, mut op) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        if i == warmup {
            metricunet_ops::device_memory::reset_peaks(device)?;
        }
        let [net, loss, back, opt] = s.timed_step(device, false)?;
        if i >= warmup {
            fw.push(net + loss);
            bw.push(back);
            op.push(opt);
        }
    }
    let step: Vec<f64> = fw
        .iter()
        .zip(&bw)
        .zip(&op)
        .map(|((a, b), c)| a + b + c)
        .collect();
    Ok(StepTiming {
        label: case.label.clone(),
        batch: case.batch,
        size: case.size,
        forward_s: median(fw),
        backward_s: median(bw),
        optimizer_s: median(op),
        step_s: median(step),
        steps,
        peak_rss_mb: peak_rss_mb(),
        peak_gpu: metricunet_ops::device_memory::peaks(device)?,
    })
}

/// One row of a step profile: an op's pass (or a phase of the step), its time per step and
/// its share of the profiled step.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    pub op: String,
    pub pass: String,
    pub calls_per_step: f64,
    pub seconds_per_step: f64,
    pub share: f64,
}

/// A profile of `steps` training steps of `case` (after `warmup`): each op of
/// `metricunet-ops` timed between device waits ([`metricunet_ops::profile`]), the loss with
/// the metric module and the optimizer as phases, and the rest of the forward and backward
/// (candle's own ops: pooling, concatenations, casts, ...) as the difference to their
/// synchronised totals. Rows largest first; the shares add up to 1.
pub fn profile_steps(
    case: &StepCase,
    device: &Device,
    warmup: usize,
    steps: usize,
) -> Result<Vec<ProfileRow>> {
    use metricunet_ops::profile::{self, Pass};
    let mut s = Setup::new(case, "bench", device, DType::F32)?;
    // synchronised totals of the profiled steps: forward, loss, backward, optimizer
    let mut phase = [0.0f64; 4];
    for i in 0..warmup + steps {
        if i == warmup {
            profile::set_enabled(true);
        }
        let times = s.timed_step(device, true)?;
        if i >= warmup {
            for (acc, d) in phase.iter_mut().zip(times) {
                *acc += d;
            }
        }
    }
    profile::set_enabled(false);
    let ops = profile::take();
    let n = steps.max(1) as f64;
    let op_total = |pass: Pass| -> f64 {
        ops.iter()
            .filter(|o| o.pass == pass)
            .map(|o| o.seconds)
            .sum()
    };
    let row = |op: &str, pass: &str, calls: u64, seconds: f64| ProfileRow {
        op: op.into(),
        pass: pass.into(),
        calls_per_step: calls as f64 / n,
        seconds_per_step: seconds.max(0.0) / n,
        share: 0.0,
    };
    let mut rows: Vec<ProfileRow> = ops
        .iter()
        .map(|o| row(o.op, &o.pass.to_string(), o.calls, o.seconds))
        .collect();
    rows.push(row(
        "loss + metric module",
        "forward",
        steps as u64,
        phase[1],
    ));
    rows.push(row("optimizer (SGD)", "-", steps as u64, phase[3]));
    // the rest: candle's own ops (pooling, casts, the loss's and the metric module's backward,
    // the gradient store's sums)
    rows.push(row(
        "other (candle ops)",
        "forward",
        0,
        phase[0] - op_total(Pass::Forward),
    ));
    rows.push(row(
        "other (candle ops)",
        "backward",
        0,
        phase[2] - op_total(Pass::Backward),
    ));
    let sum: f64 = rows.iter().map(|r| r.seconds_per_step).sum();
    for r in &mut rows {
        r.share = if sum > 0.0 {
            r.seconds_per_step / sum
        } else {
            0.0
        };
    }
    rows.sort_by(|a, b| b.seconds_per_step.total_cmp(&a.seconds_per_step));
    Ok(rows)
}

/// The numbers of one training step from a seeded start, for comparing devices.
#[derive(Debug, Clone)]
pub struct StepSnapshot {
    /// Total loss of the step.
    pub loss: f64,
    /// Logits of the forward pass, flattened.
    pub logits: Vec<f64>,
    /// Gradient of every trainable variable, by name.
    pub grads: Vec<(String, Vec<f64>)>,
    /// Every variable before the step, by name.
    pub before: Vec<(String, Vec<f64>)>,
    /// Every variable after the SGD step (BatchNorm running statistics included), by name.
    pub after: Vec<(String, Vec<f64>)>,
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?)
}

/// One training step of `case` on `device` in `dtype` (f32, or f64 for a reference) from the
/// same seeded weights, batch and sampler seed as on any other device: forward, loss,
/// backward, one SGD step (lr 0.01, momentum 0.9, weight decay 1e-4).
pub fn one_step(case: &StepCase, device: &Device, dtype: DType) -> Result<StepSnapshot> {
    let mut s = Setup::new(case, "parity", device, dtype)?;
    let mut before = Vec::new();
    for (name, var) in &s.named {
        before.push((name.clone(), flat(var.as_tensor())?));
    }
    let out = s.net.forward_t(&s.x, true)?;
    let step = s
        .module
        .step_loss(&out.logits, &out.embedding, &s.labels, &mut s.rng)?;
    let loss = step.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let grads = step.total.backward()?;
    let mut grad_values = Vec::new();
    for (name, var) in &s.named {
        if let Some(g) = grads.get(var.as_tensor()) {
            grad_values.push((name.clone(), flat(g)?));
        }
    }
    s.opt.step(&s.named, &grads, 0.01)?;
    let mut after = Vec::new();
    for (name, var) in &s.named {
        after.push((name.clone(), flat(var.as_tensor())?));
    }
    Ok(StepSnapshot {
        loss,
        logits: flat(&out.logits)?,
        grads: grad_values,
        before,
        after,
    })
}

/// `||a - b|| / ||b||` (Euclidean norms; `||a - b||` where `b` is zero).
pub fn relative_difference(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (x - y).powi(2);
        n += y.powi(2);
    }
    if n > 0.0 {
        (d / n).sqrt()
    } else {
        d.sqrt()
    }
}

/// How far one step on a device is from the reference. `grads` and `after` are over all
/// variables together (`||a - b|| / ||b||` of the concatenated vectors); `worst_grad` and
/// `worst_after` are the largest per-tensor differences, each tensor's difference divided by
/// `max(||b_tensor||, 1e-4 ||b_all||)`: a gradient that is zero up to rounding (the bias of a
/// convolution followed by BatchNorm: the normalisation removes any constant, so its exact
/// gradient is 0) is compared on the scale of the whole gradient, not on its own noise.
#[derive(Debug, Clone)]
pub struct StepDifference {
    pub loss: f64,
    pub logits: f64,
    pub grads: f64,
    pub after: f64,
    pub worst_grad: (String, f64),
    pub worst_after: (String, f64),
}

impl StepDifference {
    /// Loss, logits, all gradients, all stepped variables.
    pub fn whole_step(&self) -> [f64; 4] {
        [self.loss, self.logits, self.grads, self.after]
    }

    /// The largest of loss, logits, all gradients and all stepped variables (NaN if any is).
    pub fn max(&self) -> f64 {
        let v = self.whole_step();
        if v.iter().any(|x| x.is_nan()) {
            return f64::NAN;
        }
        v.into_iter().fold(0.0, f64::max)
    }
}

/// The verdict of a device check: the device's step is as accurate as the CPU's f32 step when
/// each whole-step difference of the device from the exact (f64) step is within
/// `max(tolerance, factor x` the CPU f32 step's difference from it`)`. A wrong kernel is off by
/// far more than rounding; f32 rounding itself is 1e-4..1e-3 for the gradients of this network
/// (BatchNorm reductions over 16 k values per channel).
pub fn within_rounding(
    device_vs_exact: &StepDifference,
    cpu_vs_exact: &StepDifference,
    tolerance: f64,
    factor: f64,
) -> bool {
    let (d, c) = (device_vs_exact.whole_step(), cpu_vs_exact.whole_step());
    d.iter()
        .zip(&c)
        .all(|(d, c)| !d.is_nan() && *d <= tolerance.max(factor * c))
}

fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x.powi(2)).sum()
}

fn diff2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Compare `got` with `reference` (both from [`one_step`]).
pub fn compare_steps(got: &StepSnapshot, reference: &StepSnapshot) -> Result<StepDifference> {
    // (all together, worst tensor)
    let compare =
        |a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]| -> Result<(f64, (String, f64))> {
            if a.len() != b.len() {
                return Err(crate::error::TrainError::Invalid(format!(
                    "{} tensors against {} in the reference",
                    a.len(),
                    b.len()
                )));
            }
            // per tensor: (name, ||a - b||^2, ||b||^2)
            let mut sq = Vec::with_capacity(a.len());
            for ((na, va), (nb, vb)) in a.iter().zip(b) {
                if na != nb || va.len() != vb.len() {
                    return Err(crate::error::TrainError::Invalid(format!(
                        "tensor {na} ({} values) against {nb} ({} values) in the reference",
                        va.len(),
                        vb.len()
                    )));
                }
                sq.push((na, diff2(va, vb), norm2(vb)));
            }
            let diff: f64 = sq.iter().map(|t| t.1).sum();
            let total: f64 = sq.iter().map(|t| t.2).sum();
            let floor = 1e-4 * total.sqrt();
            let mut worst = (String::from("-"), 0.0f64);
            for (name, d, n) in sq {
                let r = d.sqrt() / n.sqrt().max(floor).max(f64::MIN_POSITIVE);
                if r > worst.1 || r.is_nan() {
                    worst = (name.clone(), r);
                }
            }
            let all = if total > 0.0 {
                (diff / total).sqrt()
            } else {
                diff.sqrt()
            };
            Ok((all, worst))
        };
    let (grads, worst_grad) = compare(&got.grads, &reference.grads)?;
    let (after, worst_after) = compare(&got.after, &reference.after)?;
    Ok(StepDifference {
        loss: (got.loss - reference.loss).abs() / reference.loss.abs().max(f64::MIN_POSITIVE),
        logits: relative_difference(&got.logits, &reference.logits),
        grads,
        after,
        worst_grad,
        worst_after,
    })
}
