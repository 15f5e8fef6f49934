//! BatchNorm (training mode) + ReLU on CUDA: the kernels of `bn_relu.cu` (compiled to PTX by
//! build.rs). The statistics stay on the device (no host synchronisation inside a step); the
//! graph keeps the input, the output and a (2, C) f64 tensor of mean and variance, as the CPU
//! op keeps its vectors. Same formulas as the CPU op in `crate::bn_relu`.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::{cuda, storage, tensor, view, Kernel};
use crate::profile::{self, Pass};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bn_relu.ptx"));
const MODULE: &str = "metricunet_bn_relu";
const OP: &str = "batch-norm-relu (cuda)";
/// Threads per block, as `THREADS` in the kernel source.
const THREADS: u32 = 256;
/// Values per thread a block's chunk is sized for.
const PER_THREAD: usize = 4;

/// Grid of (planes, chunks of one plane) blocks, as the kernels index it.
fn grid(planes: usize, hw: usize) -> Result<LaunchConfig> {
    let chunk = THREADS as usize * PER_THREAD;
    let chunks = hw.div_ceil(chunk).clamp(1, 65_535);
    let planes = u32::try_from(planes)
        .map_err(|_| candle_core::Error::Msg(format!("{OP}: {planes} planes")))?;
    Ok(LaunchConfig {
        grid_dim: (planes.max(1), chunks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Launch the kernel `$name` of `bn_relu.cu` on `$cfg` with the arguments `$arg`, in the
/// kernel's order and of its types. Expands to an `unsafe` launch: the call site states why the
/// arguments and buffers fit (`// SAFETY:`).
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),+ $(,)?) => {{
        let f = $dev.get_or_load_custom_func($name, MODULE, PTX)?;
        let cfg = $cfg;
        let mut b = f.builder();
        $( b.arg($arg); )+
        // SAFETY: stated at the call site
        unsafe { b.launch(cfg) }.w()?;
    }};
}

/// One block per `THREADS` channels.
fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((c as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{OP}: {what} = {v} too large")))
}

/// (2, C) f64 tensor: the per-channel mean and biased variance of `x` (N, C, H, W).
pub fn statistics(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (guard, l) = storage(OP, x)?;
    let s = cuda(&guard)?;
    let dev = &s.device;
    let sums = dev.alloc_zeros::<f64>(2 * c)?;
    let stats = dev.alloc_zeros::<f64>(2 * c)?;
    let (cc, hw) = (u32_of(c, "channels")?, u32_of(h * w, "H * W")?);
    match x.dtype() {
        DType::F32 => launch_sums::<f32>(dev, s, l, &sums, cc, hw, n * c)?,
        DType::F64 => launch_sums::<f64>(dev, s, l, &sums, cc, hw, n * c)?,
        other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
    }
    let m = (n * h * w).max(1) as f64;
    // SAFETY: argument types as in the kernel's signature; the buffers hold 2 C values.
    launch!(dev, "bn_stats_finish", per_channel(c); &sums, &stats, &cc, &m);
    let dev = dev.clone();
    drop(guard);
    Ok(tensor(stats, &dev, (2, c)))
}

fn launch_sums<T: Kernel>(
    dev: &CudaDevice,
    s: &CudaStorage,
    l: &Layout,
    sums: &candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
    c: u32,
    hw: u32,
    planes: usize,
) -> Result<()> {
    let x = view::<T>(OP, s, l)?;
    // SAFETY: argument types as in the kernel's signature; x holds planes * hw values.
    launch!(dev, &format!("bn_stats_sums_{}", T::SUFFIX), grid(planes, hw as usize)?;
        &x, sums, &c, &hw);
    Ok(())
}

/// The op of one layer: its batch statistics (from [`statistics`]) and epsilon.
pub struct BnReluCuda {
    pub stats: Tensor,
    pub eps: f64,
}

impl BnReluCuda {
    fn forward<T: Kernel>(
        &self,
        [(s1, l1), (s2, l2), (s3, l3)]: [(&CudaStorage, &Layout); 3],
    ) -> Result<(CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dev = &s1.device;
        let (sg, sl) = storage(OP, &self.stats)?;
        let stats = view::<f64>(OP, cuda(&sg)?, sl)?;
        let x = view::<T>(OP, s1, l1)?;
        let gb = view::<T>(OP, s2, l2)?;
        let beta = view::<T>(OP, s3, l3)?;
        if gb.len() != 2 * c || beta.len() != c || stats.len() != 2 * c {
            candle_core::bail!(
                "{OP}: {c} channels, operands of {} and {}",
                gb.len(),
                beta.len()
            )
        }
        // SAFETY: every value is written by the kernel before it is read.
        let y = unsafe { dev.alloc::<T>(n * c * h * w) }?;
        let (cc, hw) = (u32_of(c, "channels")?, u32_of(h * w, "H * W")?);
        // SAFETY: argument types as in the kernel's signature, sizes checked above.
        launch!(dev, &format!("bn_relu_forward_{}", T::SUFFIX), grid(n * c, h * w)?;
            &x, &stats, &gb, &beta, &y, &cc, &hw, &self.eps);
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            l1.shape().clone(),
        ))
    }

    /// (dx, dgb = [dgamma, 0], dbeta).
    fn backward<T: Kernel>(
        &self,
        x: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, c, h, w) = x.dims4()?;
        let dy = dy.contiguous()?;
        let guards = [
            storage(OP, x)?,
            storage(OP, gb)?,
            storage(OP, y)?,
            storage(OP, &dy)?,
            storage(OP, &self.stats)?,
        ];
        let s0 = cuda(&guards[0].0)?;
        let dev = &s0.device;
        let xv = view::<T>(OP, s0, guards[0].1)?;
        let gbv = view::<T>(OP, cuda(&guards[1].0)?, guards[1].1)?;
        let yv = view::<T>(OP, cuda(&guards[2].0)?, guards[2].1)?;
        let dyv = view::<T>(OP, cuda(&guards[3].0)?, guards[3].1)?;
        let stats = view::<f64>(OP, cuda(&guards[4].0)?, guards[4].1)?;
        let (cc, hw) = (u32_of(c, "channels")?, u32_of(h * w, "H * W")?);
        let m = (n * h * w).max(1) as f64;
        let sums = dev.alloc_zeros::<f64>(2 * c)?;
        // SAFETY: argument types as in the kernel's signature; all planes hold hw values.
        launch!(dev, &format!("bn_relu_backward_sums_{}", T::SUFFIX), grid(n * c, h * w)?;
            &xv, &yv, &dyv, &stats, &sums, &cc, &hw);
        // SAFETY: written in full by the kernels below before any read.
        let dx = unsafe { dev.alloc::<T>(n * c * h * w) }?;
        let dgb = unsafe { dev.alloc::<T>(2 * c) }?;
        let dbeta = unsafe { dev.alloc::<T>(c) }?;
        // SAFETY: as above.
        launch!(dev, &format!("bn_relu_backward_dx_{}", T::SUFFIX), grid(n * c, h * w)?;
            &xv, &yv, &dyv, &stats, &sums, &gbv, &dx, &cc, &hw, &self.eps, &m);
        // SAFETY: as above; dgb holds 2 C values, dbeta C.
        launch!(dev, &format!("bn_relu_backward_params_{}", T::SUFFIX), per_channel(c);
            &stats, &sums, &dgb, &dbeta, &cc, &self.eps);
        let dev = dev.clone();
        drop(guards);
        Ok((
            tensor(dx, &dev, x.shape().clone()),
            tensor(dgb, &dev, gb.shape().clone()),
            tensor(dbeta, &dev, c),
        ))
    }
}

impl CustomOp3 for BnReluCuda {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{OP}: a CUDA op was given CPU tensors")
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let parts = [(s1, l1), (s2, l2), (s3, l3)];
        match s1.dtype() {
            DType::F32 => self.forward::<f32>(parts),
            DType::F64 => self.forward::<f64>(parts),
            other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        profile::timed(
            crate::bn_relu::PROFILE_NAME,
            Pass::Backward,
            x.device(),
            || {
                let (dx, dgb, dbeta) = match x.dtype() {
                    DType::F32 => self.backward::<f32>(x, gb, res, grad)?,
                    DType::F64 => self.backward::<f64>(x, gb, res, grad)?,
                    other => candle_core::bail!("{OP}: f32 or f64 only, got {other:?}"),
                };
                Ok((Some(dx), Some(dgb), Some(dbeta)))
            },
        )
    }
}

/// Whether `METRICUNET_CUDA_BN=1` asks for these kernels (off by default until measured).
pub fn enabled() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&FLAG, "METRICUNET_CUDA_BN", false)
}
