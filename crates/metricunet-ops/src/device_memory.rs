//! GPU memory as the CUDA driver's stream-ordered allocator sees it.
//!
//! candle allocates every CUDA tensor through cudarc with `cuMemAllocAsync` from the device's
//! default memory pool. That pool is the allocator PyTorch's caching allocator corresponds to:
//! its high-water marks of memory handed out (`USED_MEM_HIGH`) and of memory held
//! (`RESERVED_MEM_HIGH`) are the figures `torch.cuda.max_memory_allocated` and
//! `max_memory_reserved` give, so `bench train` reports both beside PyTorch's.
//!
//! By default the pool gives memory back to the driver whenever the stream synchronises
//! (release threshold 0), so each step allocates its activations anew. [`keep_pool`] raises the
//! threshold so freed blocks stay in the pool for the next step, as PyTorch's allocator keeps
//! them (`METRICUNET_CUDA_POOL_KEEP=1`, off by default until measured on a GPU).
//!
//! Everything here is a no-op returning `None` on the CPU and in builds without `cuda`.

use candle_core::{Device, Result};

/// High-water marks of the device's default memory pool since the last [`reset_peaks`], MB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolPeaks {
    /// Most memory handed out to tensors at once.
    pub used_mb: f64,
    /// Most memory the pool held from the driver at once.
    pub reserved_mb: f64,
}

#[cfg(feature = "cuda")]
mod imp {
    use super::PoolPeaks;
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::{Device, Result};

    fn pool(device: &Device) -> Result<Option<sys::CUmemoryPool>> {
        let Device::Cuda(d) = device else {
            return Ok(None);
        };
        let stream = d.cuda_stream();
        let ctx = stream.context();
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
        // SAFETY: the device handle comes from a live context.
        let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }
            .map_err(candle_core::Error::wrap)?;
        Ok(Some(pool))
    }

    fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, value: u64) -> Result<()> {
        let mut v = value;
        // SAFETY: the three attributes set here take a cuuint64_t.
        unsafe { result::mem_pool::set_attribute(pool, attr, (&mut v as *mut u64).cast()) }
            .map_err(candle_core::Error::wrap)
    }

    fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
        let mut v = 0u64;
        // SAFETY: the attributes read here are cuuint64_t.
        unsafe { result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast()) }
            .map_err(candle_core::Error::wrap)?;
        Ok(v)
    }

    pub fn reset_peaks(device: &Device) -> Result<bool> {
        let Some(p) = pool(device)? else {
            return Ok(false);
        };
        use sys::CUmemPool_attribute as A;
        set(p, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        set(p, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
        Ok(true)
    }

    pub fn peaks(device: &Device) -> Result<Option<PoolPeaks>> {
        let Some(p) = pool(device)? else {
            return Ok(None);
        };
        use sys::CUmemPool_attribute as A;
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        Ok(Some(PoolPeaks {
            used_mb: mb(get(p, A::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?),
            reserved_mb: mb(get(p, A::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?),
        }))
    }

    pub fn keep_pool(device: &Device) -> Result<bool> {
        let Some(p) = pool(device)? else {
            return Ok(false);
        };
        set(
            p,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            u64::MAX,
        )?;
        Ok(true)
    }
}

/// Zero the pool's high-water marks; `false` where there is no pool (CPU, no `cuda`).
pub fn reset_peaks(device: &Device) -> Result<bool> {
    #[cfg(feature = "cuda")]
    return imp::reset_peaks(device);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(false)
    }
}

/// The pool's high-water marks since the last reset; `None` where there is no pool.
pub fn peaks(device: &Device) -> Result<Option<PoolPeaks>> {
    #[cfg(feature = "cuda")]
    return imp::peaks(device);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(None)
    }
}

/// Keep freed memory in the pool across synchronisations (a caching allocator); `true` where
/// it was set.
pub fn keep_pool(device: &Device) -> Result<bool> {
    #[cfg(feature = "cuda")]
    return imp::keep_pool(device);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        Ok(false)
    }
}

/// Whether `METRICUNET_CUDA_POOL_KEEP=1` asks for [`keep_pool`] (read once).
pub fn pool_keep_asked() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&FLAG, "METRICUNET_CUDA_POOL_KEEP", false)
}

/// [`keep_pool`] where `METRICUNET_CUDA_POOL_KEEP=1` asks for it.
pub fn keep_pool_if_asked(device: &Device) -> Result<bool> {
    if pool_keep_asked() {
        keep_pool(device)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_on_the_cpu() -> Result<()> {
        assert!(!reset_peaks(&Device::Cpu)?);
        assert_eq!(peaks(&Device::Cpu)?, None);
        assert!(!keep_pool(&Device::Cpu)?);
        Ok(())
    }
}
