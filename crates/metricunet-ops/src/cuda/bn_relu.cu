// BatchNorm (training mode) + ReLU for an (N, C, H, W) contiguous tensor, the CUDA twin of
// bn_relu.rs: statistics in double, one pass forward, the closed-form backward in two passes.
//
// Every kernel runs on a grid of (planes = N * C, chunks) blocks: block (p, q) handles the
// q-th chunk of the hw values of plane p (image p / C, channel p % C), so a channel's values
// are contiguous within a block and no index is divided per value. Per-channel sums go
// through a block reduction and one double atomicAdd per block into a zeroed buffer.
//
// Compiled to PTX by build.rs (nvcc --ptx) when the crate's `cuda` feature is on.

#include <stdint.h>

#define THREADS 256

// Sum of v over the block (THREADS threads); the result is valid in thread 0.
__device__ __forceinline__ double block_sum(double v, double* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < THREADS / 32 ? shared[threadIdx.x] : 0.0;
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();  // shared may be reused by the caller's next block_sum
  return v;
}

// sums[c] += sum x, sums[C + c] += sum x^2 over the chunk of plane blockIdx.x.
template <typename T>
__device__ void stats_sums(const T* x, double* sums, uint32_t C, uint32_t hw) {
  __shared__ double shared[THREADS / 32];
  const size_t plane = blockIdx.x;
  const uint32_t ch = plane % C;
  const T* p = x + plane * hw;
  double s = 0.0, s2 = 0.0;
  for (uint32_t j = blockIdx.y * THREADS + threadIdx.x; j < hw; j += gridDim.y * THREADS) {
    const double v = (double)p[j];
    s += v;
    s2 += v * v;
  }
  s = block_sum(s, shared);
  s2 = block_sum(s2, shared);
  if (threadIdx.x == 0) {
    atomicAdd(&sums[ch], s);
    atomicAdd(&sums[C + ch], s2);
  }
}

// stats = [mean (C), biased variance (C)] from the sums over m values per channel.
__device__ void stats_finish(const double* sums, double* stats, uint32_t C, double m) {
  const uint32_t ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= C) return;
  const double mean = sums[ch] / m;
  const double var = sums[C + ch] / m - mean * mean;
  stats[ch] = mean;
  stats[C + ch] = var > 0.0 ? var : 0.0;
}

// y = max(0, (x - mean) * invstd * gamma + beta); gb = [gamma (C), bias (C)] (the bias only
// moves the batch mean: it does not enter the output).
template <typename T>
__device__ void forward(const T* x, const double* stats, const T* gb, const T* beta, T* y,
                        uint32_t C, uint32_t hw, double eps) {
  const size_t plane = blockIdx.x;
  const uint32_t ch = plane % C;
  const double invstd = rsqrt(stats[C + ch] + eps);
  const double scale_d = (double)gb[ch] * invstd;
  // (x - mean) * scale + beta: centred first, so a large mean does not cancel in T
  const T scale = (T)scale_d, mean = (T)stats[ch], b = beta[ch];
  const T* p = x + plane * hw;
  T* q = y + plane * hw;
  for (uint32_t j = blockIdx.y * THREADS + threadIdx.x; j < hw; j += gridDim.y * THREADS) {
    const T v = (p[j] - mean) * scale + b;
    q[j] = v > (T)0 ? v : (T)0;
  }
}

// With g = dy where y > 0: sums[c] += sum g, sums[C + c] += sum g * (x - mean).
template <typename T>
__device__ void backward_sums(const T* x, const T* y, const T* dy, const double* stats,
                              double* sums, uint32_t C, uint32_t hw) {
  __shared__ double shared[THREADS / 32];
  const size_t plane = blockIdx.x;
  const uint32_t ch = plane % C;
  const double mean = stats[ch];
  const size_t at = plane * hw;
  double sg = 0.0, sgx = 0.0;
  for (uint32_t j = blockIdx.y * THREADS + threadIdx.x; j < hw; j += gridDim.y * THREADS) {
    if (y[at + j] > (T)0) {
      const double g = (double)dy[at + j];
      sg += g;
      sgx += g * ((double)x[at + j] - mean);
    }
  }
  sg = block_sum(sg, shared);
  sgx = block_sum(sgx, shared);
  if (threadIdx.x == 0) {
    atomicAdd(&sums[ch], sg);
    atomicAdd(&sums[C + ch], sgx);
  }
}

// dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m), dgamma = sgx * invstd.
template <typename T>
__device__ void backward_dx(const T* x, const T* y, const T* dy, const double* stats,
                            const double* sums, const T* gb, T* dx, uint32_t C, uint32_t hw,
                            double eps, double m) {
  const size_t plane = blockIdx.x;
  const uint32_t ch = plane % C;
  const double mean = stats[ch];
  const double invstd = rsqrt(stats[C + ch] + eps);
  const double k = (double)gb[ch] * invstd;
  const double mb = sums[ch] / m;
  const double mg = sums[C + ch] * invstd / m;
  // dx = k * g - k * mg * invstd * (x - mean) - k * mb = a * g + b * (x - mean) + c
  const T a = (T)k;
  const T b = (T)(-k * mg * invstd);
  const T c = (T)(-k * mb);
  const T mu = (T)mean;
  const size_t at = plane * hw;
  for (uint32_t j = blockIdx.y * THREADS + threadIdx.x; j < hw; j += gridDim.y * THREADS) {
    const T g = y[at + j] > (T)0 ? dy[at + j] : (T)0;
    dx[at + j] = a * g + b * (x[at + j] - mu) + c;
  }
}

// dgb = [sgx * invstd (dgamma), 0 (the bias)], dbeta = sg.
template <typename T>
__device__ void backward_params(const double* stats, const double* sums, T* dgb, T* dbeta,
                                uint32_t C, double eps) {
  const uint32_t ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= C) return;
  const double invstd = rsqrt(stats[C + ch] + eps);
  dgb[ch] = (T)(sums[C + ch] * invstd);
  dgb[C + ch] = (T)0;
  dbeta[ch] = (T)sums[ch];
}

extern "C" __global__ void bn_stats_finish(const double* sums, double* stats, uint32_t C,
                                           double m) {
  stats_finish(sums, stats, C, m);
}

#define INSTANTIATE(T, SUFFIX)                                                                \
  extern "C" __global__ void __launch_bounds__(THREADS)                                       \
      bn_stats_sums_##SUFFIX(const T* x, double* sums, uint32_t C, uint32_t hw) {             \
    stats_sums<T>(x, sums, C, hw);                                                            \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) bn_relu_forward_##SUFFIX(             \
      const T* x, const double* stats, const T* gb, const T* beta, T* y, uint32_t C,          \
      uint32_t hw, double eps) {                                                              \
    forward<T>(x, stats, gb, beta, y, C, hw, eps);                                            \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) bn_relu_backward_sums_##SUFFIX(       \
      const T* x, const T* y, const T* dy, const double* stats, double* sums, uint32_t C,     \
      uint32_t hw) {                                                                          \
    backward_sums<T>(x, y, dy, stats, sums, C, hw);                                           \
  }                                                                                           \
  extern "C" __global__ void __launch_bounds__(THREADS) bn_relu_backward_dx_##SUFFIX(         \
      const T* x, const T* y, const T* dy, const double* stats, const double* sums,           \
      const T* gb, T* dx, uint32_t C, uint32_t hw, double eps, double m) {                    \
    backward_dx<T>(x, y, dy, stats, sums, gb, dx, C, hw, eps, m);                             \
  }                                                                                           \
  extern "C" __global__ void bn_relu_backward_params_##SUFFIX(                                \
      const double* stats, const double* sums, T* dgb, T* dbeta, uint32_t C, double eps) {    \
    backward_params<T>(stats, sums, dgb, dbeta, C, eps);                                      \
  }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
