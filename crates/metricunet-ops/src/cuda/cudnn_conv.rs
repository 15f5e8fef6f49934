//! The "same" convolution (stride 1, padding k / 2) through cuDNN: forward, data gradient and
//! filter gradient (feature `cudnn`, switch `METRICUNET_CUDNN_CONV=1`, off by default until
//! measured on a GPU).
//!
//! candle's cuDNN forward builds its descriptors, asks cuDNN's heuristics for an algorithm and
//! allocates (and zeroes) a new workspace on every call, and it has no backward: candle's
//! backward is a convolution with the flipped kernel plus per-tap matrix products. Here each
//! layer shape gets one plan (descriptors and the three algorithms, chosen once by cuDNN's
//! heuristics as PyTorch does without `cudnn.benchmark`), kept per thread, and one workspace
//! is grown as needed and reused (stream-ordered, so reuse between launches is safe).
//!
//! Precision ([`crate::precision`]): f32 convolutions use FMA math only (strict f32) unless
//! TF32 is on, then cuDNN's default math mode, which lets them use TF32 tensor cores on Ampere
//! and newer (PyTorch's default for convolutions). bf16 tensors are convolved with f32
//! accumulation (cuDNN's "pseudo-bf16" configuration).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
    cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
};
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor, WithDType};
use half::bf16;

use super::{cuda, storage, tensor, view};

const OP: &str = "conv2d-same (cudnn)";

/// Whether `METRICUNET_CUDNN_CONV=1` asks for this path.
pub fn enabled() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&FLAG, "METRICUNET_CUDNN_CONV", false)
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{OP}: {e}"))
}

/// A layer shape: device, batch, in and out channels, height, width, kernel side, TF32.
type Key = (DeviceId, [usize; 6], bool);

/// Descriptors and algorithms of one layer shape.
struct Plan<T: Planned> {
    conv: ConvDescriptor<T::Compute>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
    fwd: cudnnConvolutionFwdAlgo_t,
    bwd_data: cudnnConvolutionBwdDataAlgo_t,
    bwd_filter: cudnnConvolutionBwdFilterAlgo_t,
    /// Workspace bytes of forward, data gradient, filter gradient.
    workspace: [usize; 3],
}

/// The element types with a plan cache of their own (thread-local: descriptors are not `Send`)
/// and the type cuDNN accumulates them in.
trait Planned: CudnnDataType + CudaDType + DeviceRepr + WithDType {
    type Compute: CudnnDataType;
    fn with_plans<R>(f: impl FnOnce(&mut HashMap<Key, Rc<Plan<Self>>>) -> R) -> R;
}

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static WORKSPACE: RefCell<HashMap<DeviceId, CudaSlice<u8>>> = RefCell::new(HashMap::new());
    static PLANS_F32: RefCell<HashMap<Key, Rc<Plan<f32>>>> = RefCell::new(HashMap::new());
    static PLANS_F64: RefCell<HashMap<Key, Rc<Plan<f64>>>> = RefCell::new(HashMap::new());
    static PLANS_BF16: RefCell<HashMap<Key, Rc<Plan<bf16>>>> = RefCell::new(HashMap::new());
}

impl Planned for f32 {
    type Compute = f32;
    fn with_plans<R>(f: impl FnOnce(&mut HashMap<Key, Rc<Plan<Self>>>) -> R) -> R {
        PLANS_F32.with(|p| f(&mut p.borrow_mut()))
    }
}

impl Planned for f64 {
    type Compute = f64;
    fn with_plans<R>(f: impl FnOnce(&mut HashMap<Key, Rc<Plan<Self>>>) -> R) -> R {
        PLANS_F64.with(|p| f(&mut p.borrow_mut()))
    }
}

impl Planned for bf16 {
    type Compute = f32;
    fn with_plans<R>(f: impl FnOnce(&mut HashMap<Key, Rc<Plan<Self>>>) -> R) -> R {
        PLANS_BF16.with(|p| f(&mut p.borrow_mut()))
    }
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(err)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| err(format!("dimension {v} too large")))
}

/// The plan of this shape, made on first use.
fn plan<T: Planned>(dev: &CudaDevice, dims: [usize; 6]) -> Result<Rc<Plan<T>>> {
    let tf32 = crate::precision::tf32();
    let key = (dev.id(), dims, tf32);
    if let Some(p) = T::with_plans(|m| m.get(&key).cloned()) {
        return Ok(p);
    }
    let [n, cin, cout, h, w, k] = dims;
    let cudnn = handle(dev)?;
    let pad = int(k / 2)?;
    let mut conv = cudnn
        .create_conv2d::<T::Compute>(
            [pad, pad],
            [1, 1],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(err)?;
    // FMA math (strict) only matters for f32: f64 has no tensor-core path, and bf16 is asked
    // for to use the tensor cores
    let math = if tf32 || T::DTYPE != DType::F32 {
        cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        cudnnMathType_t::CUDNN_FMA_MATH
    };
    conv.set_math_type(math).map_err(err)?;
    let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let x = cudnn
        .create_4d_tensor::<T>(nchw, [int(n)?, int(cin)?, int(h)?, int(w)?])
        .map_err(err)?;
    let wd = cudnn
        .create_4d_filter::<T>(nchw, [int(cout)?, int(cin)?, int(k)?, int(k)?])
        .map_err(err)?;
    let y = cudnn
        .create_4d_tensor::<T>(nchw, [int(n)?, int(cout)?, int(h)?, int(w)?])
        .map_err(err)?;
    let (fwd, ws_f) = {
        let op = ConvForward {
            conv: &conv,
            x: &x,
            w: &wd,
            y: &y,
        };
        let a = op.pick_algorithm().map_err(err)?;
        (a, op.get_workspace_size(a).map_err(err)?)
    };
    let (bwd_data, ws_d) = {
        let op = ConvBackwardData {
            conv: &conv,
            dx: &x,
            w: &wd,
            dy: &y,
        };
        let a = op.pick_algorithm().map_err(err)?;
        (a, op.get_workspace_size(a).map_err(err)?)
    };
    let (bwd_filter, ws_w) = {
        let op = ConvBackwardFilter {
            conv: &conv,
            x: &x,
            dw: &wd,
            dy: &y,
        };
        let a = op.pick_algorithm().map_err(err)?;
        (a, op.get_workspace_size(a).map_err(err)?)
    };
    tracing::debug!(
        "{OP}: plan for {dims:?} (tf32 {tf32}): {fwd:?} / {bwd_data:?} / {bwd_filter:?}, workspace {ws_f} / {ws_d} / {ws_w} bytes"
    );
    let p = Rc::new(Plan {
        conv,
        x,
        w: wd,
        y,
        fwd,
        bwd_data,
        bwd_filter,
        workspace: [ws_f, ws_d, ws_w],
    });
    T::with_plans(|m| m.insert(key, p.clone()));
    Ok(p)
}

/// `f` with the device's workspace of at least `bytes` (`None` for 0 bytes).
fn with_workspace<R>(
    dev: &CudaDevice,
    bytes: usize,
    f: impl FnOnce(Option<&mut CudaSlice<u8>>) -> Result<R>,
) -> Result<R> {
    if bytes == 0 {
        return f(None);
    }
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        let grow = ws.get(&dev.id()).is_none_or(|s| s.len() < bytes);
        if grow {
            // the old workspace is freed stream-ordered, after the launches that use it
            ws.remove(&dev.id());
            // SAFETY: a workspace is scratch space cuDNN writes before it reads.
            let s = unsafe { dev.alloc::<u8>(bytes) }?;
            ws.insert(dev.id(), s);
        }
        f(ws.get_mut(&dev.id()))
    })
}

fn dims(x: &[usize], w: &[usize]) -> Result<[usize; 6]> {
    match (x, w) {
        (&[n, cin, h, wd], &[cout, wcin, k, k2]) if wcin == cin && k == k2 && k % 2 == 1 => {
            Ok([n, cin, cout, h, wd, k])
        }
        _ => candle_core::bail!("{OP}: input {x:?} and kernel {w:?} do not fit"),
    }
}

fn forward_t<T: Planned>(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let d = dims(l1.dims(), l2.dims())?;
    let [n, _, cout, h, w, _] = d;
    let dev = &s1.device;
    let p = plan::<T>(dev, d)?;
    let x = view::<T>(OP, s1, l1)?;
    let wv = view::<T>(OP, s2, l2)?;
    // SAFETY: cuDNN writes every output value (beta = 0).
    let mut y = unsafe { dev.alloc::<T>(n * cout * h * w) }?;
    let op = ConvForward {
        conv: &p.conv,
        x: &p.x,
        w: &p.w,
        y: &p.y,
    };
    with_workspace(dev, p.workspace[0], |ws| {
        // SAFETY: the buffers match the plan's descriptors (shapes from the same layouts).
        unsafe {
            op.launch(
                p.fwd,
                ws,
                (T::from_f64(1.0), T::from_f64(0.0)),
                &x,
                &wv,
                &mut y,
            )
        }
        .map_err(err)
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        Shape::from((n, cout, h, w)),
    ))
}

/// The forward of [`crate::conv::conv2d_same`]'s op on CUDA.
pub fn forward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    match s1.dtype() {
        DType::F32 => forward_t::<f32>(s1, l1, s2, l2),
        DType::F64 => forward_t::<f64>(s1, l1, s2, l2),
        DType::BF16 => forward_t::<bf16>(s1, l1, s2, l2),
        other => candle_core::bail!("{OP}: f32, f64 or bf16 only, got {other:?}"),
    }
}

fn backward_t<T: Planned>(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    let d = dims(x.dims(), w.dims())?;
    let grad = grad.contiguous()?;
    let guards = [storage(OP, x)?, storage(OP, w)?, storage(OP, &grad)?];
    let sx = cuda(&guards[0].0)?;
    let dev = &sx.device;
    let p = plan::<T>(dev, d)?;
    let xv = view::<T>(OP, sx, guards[0].1)?;
    let wv = view::<T>(OP, cuda(&guards[1].0)?, guards[1].1)?;
    let gv = view::<T>(OP, cuda(&guards[2].0)?, guards[2].1)?;
    // SAFETY: cuDNN writes every value of both gradients (beta = 0).
    let mut dx = unsafe { dev.alloc::<T>(x.elem_count()) }?;
    let mut dw = unsafe { dev.alloc::<T>(w.elem_count()) }?;
    let data = ConvBackwardData {
        conv: &p.conv,
        dx: &p.x,
        w: &p.w,
        dy: &p.y,
    };
    with_workspace(dev, p.workspace[1], |ws| {
        // SAFETY: buffers as the plan's descriptors.
        unsafe {
            data.launch(
                p.bwd_data,
                ws,
                (T::from_f64(1.0), T::from_f64(0.0)),
                &mut dx,
                &wv,
                &gv,
            )
        }
        .map_err(err)
    })?;
    let filter = ConvBackwardFilter {
        conv: &p.conv,
        x: &p.x,
        dw: &p.w,
        dy: &p.y,
    };
    with_workspace(dev, p.workspace[2], |ws| {
        // SAFETY: buffers as the plan's descriptors.
        unsafe {
            filter.launch(
                p.bwd_filter,
                ws,
                (T::from_f64(1.0), T::from_f64(0.0)),
                &xv,
                &mut dw,
                &gv,
            )
        }
        .map_err(err)
    })?;
    let dev = dev.clone();
    drop(guards);
    Ok((
        tensor(dx, &dev, x.shape().clone()),
        tensor(dw, &dev, w.shape().clone()),
    ))
}

/// Input and weight gradient of the same convolution on CUDA.
pub fn backward(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
    match x.dtype() {
        DType::F32 => backward_t::<f32>(x, w, grad),
        DType::F64 => backward_t::<f64>(x, w, grad),
        DType::BF16 => backward_t::<bf16>(x, w, grad),
        other => candle_core::bail!("{OP}: f32, f64 or bf16 only, got {other:?}"),
    }
}
