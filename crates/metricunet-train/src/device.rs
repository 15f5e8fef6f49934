//! The one place where the compute device is chosen. candle's `cuda_if_available` only looks
//! at the compile-time feature, and with cudarc's dynamic loading a machine without libcuda
//! makes `Device::new_cuda` panic: both are caught here and turned into an error (`cuda`) or
//! a logged fall-back to the CPU (`auto`).

use candle_core::Device;
use metricunet_core::config::{DeviceChoice, Precision};

use crate::error::{Result, TrainError};

fn try_cuda() -> std::result::Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err(
            "this binary was built without CUDA; rebuild with `--features cuda` (see README)"
                .into(),
        );
    }
    // A missing driver panics inside cudarc's loader: keep it from taking the run down.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let attempt = std::panic::catch_unwind(|| Device::new_cuda(0));
    std::panic::set_hook(previous);
    match attempt {
        Ok(Ok(d)) => {
            set_tf32(tf32_requested());
            match metricunet_ops::device_memory::keep_pool_if_asked(&d) {
                Ok(true) => tracing::info!(
                    "CUDA memory pool keeps freed memory (METRICUNET_CUDA_POOL_KEEP=1)"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("METRICUNET_CUDA_POOL_KEEP=1: the pool could not be set: {e}")
                }
            }
            Ok(d)
        }
        Ok(Err(e)) => Err(format!("no usable CUDA device: {e}")),
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the CUDA driver library could not be loaded".into());
            Err(format!("no usable CUDA device: {why}"))
        }
    }
}

/// Whether `METRICUNET_TF32=1` asks for TF32 matrix products on CUDA.
pub fn tf32_requested() -> bool {
    std::env::var("METRICUNET_TF32").is_ok_and(|v| v == "1")
}

/// Let cuBLAS use TF32 tensor cores for f32 matrix products (candle's reduced-precision
/// flag; the convolutions are im2col + matrix products). PyTorch allows TF32 in cuDNN
/// convolutions by default. TF32 keeps 10 mantissa bits: relative errors ~1e-3 per product.
/// Off unless `METRICUNET_TF32=1`. Without the `cuda` feature this does nothing.
pub fn set_tf32(on: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// The device for `choice`: `cpu`, `cuda` (an error if unavailable) or `auto` (CUDA when
/// it works, else the CPU, logged).
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => try_cuda().map_err(TrainError::Device),
        DeviceChoice::Auto => match try_cuda() {
            Ok(d) => {
                tracing::info!("device: CUDA 0");
                Ok(d)
            }
            Err(why) => {
                tracing::info!("device: CPU ({why})");
                Ok(Device::Cpu)
            }
        },
    }
}

/// Strict f32 again when dropped: training's precision does not leak into the inference that
/// follows it in the same process.
#[must_use = "the precision returns to f32 when this is dropped"]
pub struct PrecisionGuard;

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        metricunet_ops::precision::set_tf32(false);
        metricunet_ops::precision::set_bf16(false);
    }
}

/// Set the CUDA convolutions' arithmetic to `training.precision` until the guard is dropped.
/// On the CPU every precision computes in f32; anything else is said once per call.
pub fn training_precision(p: Precision, device: &Device) -> PrecisionGuard {
    if !device.is_cuda() && !p.is_f32() {
        tracing::warn!(
            "training.precision: {} applies on CUDA only; the CPU computes in f32",
            p.as_str()
        );
    }
    let on_gpu = device.is_cuda();
    metricunet_ops::precision::set_tf32(on_gpu && matches!(p, Precision::Tf32 | Precision::Bf16));
    metricunet_ops::precision::set_bf16(on_gpu && p == Precision::Bf16);
    PrecisionGuard
}

/// A short name for logs and run records.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => {
            let mut paths = metricunet_ops::cuda_paths();
            if tf32_requested() {
                paths.insert(0, "TF32");
            }
            if paths.is_empty() {
                "cuda:0".into()
            } else {
                format!("cuda:0 ({})", paths.join(", "))
            }
        }
        _ => format!("{d:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_is_f32_on_the_cpu_and_again_after_training() {
        for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            let guard = training_precision(p, &Device::Cpu);
            assert!(!metricunet_ops::precision::tf32() && !metricunet_ops::precision::bf16());
            drop(guard);
        }
        assert!(!metricunet_ops::precision::tf32() && !metricunet_ops::precision::bf16());
    }

    #[test]
    fn cpu_and_auto_work_without_a_gpu() {
        assert!(matches!(select_device(DeviceChoice::Cpu), Ok(Device::Cpu)));
        assert!(select_device(DeviceChoice::Auto).is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = select_device(DeviceChoice::Cuda).unwrap_err().to_string();
        assert!(
            e.contains("without CUDA") && e.contains("--features cuda"),
            "{e}"
        );
    }
}
