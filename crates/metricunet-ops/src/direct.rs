//! A direct AVX-512 kernel for the "same" convolution on the wide grid (f32): the forward and
//! the input gradient of [`crate::conv_cpu`] without the k * k matrix products.
//!
//! [`crate::conv_cpu`] computes `out (m x wide) = sum over taps  A_t (m x kdim) * padded (kdim x
//! wide, shifted by the tap)` as k * k gemm calls per image. With the narrow layers of the
//! quickstart network (8-64 channels) each call has a short inner dimension (`kdim` = the
//! input channels): every call packs the shifted input again and loads and stores the whole
//! output again, and the products ran at 75-180 GFLOP/s. Here one tile of 64 positions x 4
//! output channels is kept in 16 registers while the loop runs over all taps and input
//! channels, reading the padded image where it lies (64 consecutive positions of the wide grid
//! are 64 consecutive values of each padded channel, shifted by the tap's offset) and the
//! weights from a small packed copy; the tile is stored once. No packing of the input, no
//! output traffic per tap.
//!
//! On by default (`METRICUNET_DIRECT_CONV=0` switches it off): used for f32 on CPUs with
//! AVX-512F (and `METRICUNET_AVX512` not 0) where the output channels are a multiple of 4, on
//! the layers [`chosen`] names; elsewhere the gemm path. Per layer it takes 0.4-0.9x the gemm
//! path's time; the quickstart's training step: ten alternating pairs in session 14 median
//! 1.055x (0.99-1.60), five pairs in session 15 (with the channels-last weight gradient)
//! median 1.10x (1.04-1.20). It was off until session 15 because its sums run in another
//! order, which changes the main job's rounding and with it the quickstart's table; session
//! 15 switched it on together with a rerun of the main job and a rewrite of that README section.
//! The sums run in another order than the gemm path's (taps and channels in one chain per
//! value), so the two agree to f32 rounding (tests in [`crate::conv_cpu`]).

/// Output channels per tile.
pub(crate) const ROWS: usize = 4;

/// Where switched on, whether the kernel is taken for a product over `kdim` input channels, `kk` taps and `n`
/// positions of the wide grid: narrow layers with a spatial kernel and at least 256 positions.
/// Measured (`bench conv --model quickstart`, `bench train`, session 14): on the quickstart's
/// 16 x 16 to 64 x 64 layers (8-40 channels in) 0.4-0.9x the gemm path's time; on its 8 x 8
/// layers (80 positions) 1.1-1.3x; on the paper network, where the gemm path's inner dimension
/// is long (1x1 layers of 256 channels; 3x3 layers of 128-256 channels not on Winograd), the
/// training step took 1.04-1.12x with the kernel everywhere, so those stay on the gemm path.
pub(crate) fn chosen(kdim: usize, kk: usize, n: usize) -> bool {
    kk > 1 && kdim <= 64 && n >= 256
}

/// Whether this CPU runs the kernel: x86-64 with AVX-512F and `METRICUNET_AVX512` not 0
/// (read once).
pub(crate) fn supported() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && crate::conv_cpu::avx512_allowed()
    })
}

/// Whether the kernel is switched on: unless `METRICUNET_DIRECT_CONV=0` (see the module doc;
/// read once).
pub(crate) fn switched_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&ON, "METRICUNET_DIRECT_CONV", true)
}

/// The weights as the kernel reads them: for each block of [`ROWS`] output rows, each input
/// channel and each tap, the block's [`ROWS`] values. `weight(r, c, t)` is row `r`, channel
/// `c`, tap `t` (`m` rows, `kdim` channels, `kk` taps; `m` a multiple of [`ROWS`]).
pub(crate) fn pack(
    m: usize,
    kdim: usize,
    kk: usize,
    weight: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut packed = Vec::with_capacity(m * kdim * kk);
    for block in 0..m / ROWS {
        for c in 0..kdim {
            for t in 0..kk {
                packed.extend((0..ROWS).map(|i| weight(block * ROWS + i, c, t)));
            }
        }
    }
    packed
}

/// `out[r * n + j] = sum over c < kdim, t < offsets.len() of W(r, c, t) * padded[c * s + j +
/// offsets[t]]` for `r < m`, `j < n`, with `W` as [`pack`] laid it out.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `m` is a multiple of [`ROWS`]; `packed` holds `m *
/// kdim * offsets.len()` values, `out` `m * n`; `padded` holds `(kdim - 1) * s + n + max
/// offset` values at least (every position read; positions at or past `n` are not read).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn conv_wide(
    packed: &[f32],
    padded: &[f32],
    dims: (usize, usize, usize, usize),
    offsets: &[usize],
    out: &mut [f32],
) {
    // SAFETY: the caller's promise, passed on
    unsafe {
        match vectors_per_tile(dims.2) {
            1 => tiles::<1>(packed, padded, dims, offsets, out),
            2 => tiles::<2>(packed, padded, dims, offsets, out),
            3 => tiles::<3>(packed, padded, dims, offsets, out),
            4 => tiles::<4>(packed, padded, dims, offsets, out),
            5 => tiles::<5>(packed, padded, dims, offsets, out),
            _ => tiles::<6>(packed, padded, dims, offsets, out),
        }
    }
}

/// Vectors of 16 positions per tile for `n` positions: the fewest vectors computed in all
/// (the last tile's lanes past `n` are computed for nothing), the widest tile among those.
/// The 8 x 8 layers (n = 80) take one tile of 5, the 64 x 64 ones (n = 4224) 44 tiles of 6.
fn vectors_per_tile(n: usize) -> usize {
    let vectors = n.div_ceil(16);
    (1..=6)
        .rev()
        .min_by_key(|&v| vectors.div_ceil(v) * v)
        .unwrap_or(4)
}

/// [`conv_wide`] with tiles of `V` vectors (16 `V` positions) by [`ROWS`] rows: `ROWS * V`
/// accumulators, `V` loads and [`ROWS`] broadcasts per channel and tap.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tiles<const V: usize>(
    packed: &[f32],
    padded: &[f32],
    (m, kdim, n, s): (usize, usize, usize, usize),
    offsets: &[usize],
    out: &mut [f32],
) {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
        _mm512_setzero_ps,
    };
    let kk = offsets.len();
    debug_assert!(m % ROWS == 0 && packed.len() >= m * kdim * kk && out.len() >= m * n);
    // lanes of a vector with `rest` positions left before n
    let mask = |rest: usize| -> u16 {
        if rest >= 16 {
            u16::MAX
        } else {
            (1u16 << rest) - 1
        }
    };
    for block in 0..m / ROWS {
        // SAFETY (all pointer arithmetic below): inside `packed`, `padded` and `out` by the
        // function's contract; masked lanes are neither read nor written
        let weights = unsafe { packed.as_ptr().add(block * kdim * kk * ROWS) };
        let mut j0 = 0;
        while j0 < n {
            let rest = n - j0;
            let masks: [u16; V] = std::array::from_fn(|v| mask(rest.saturating_sub(16 * v)));
            let mut acc: [[__m512; V]; ROWS] = [[_mm512_setzero_ps(); V]; ROWS];
            for c in 0..kdim {
                let channel = unsafe { padded.as_ptr().add(c * s + j0) };
                let wc = unsafe { weights.add(c * kk * ROWS) };
                for (t, &off) in offsets.iter().enumerate() {
                    let p = unsafe { channel.add(off) };
                    let a: [__m512; V] = std::array::from_fn(|v| unsafe {
                        _mm512_maskz_loadu_ps(masks[v], p.add(16 * v))
                    });
                    let w = unsafe { wc.add(t * ROWS) };
                    for (i, row) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(unsafe { *w.add(i) });
                        for (r, av) in row.iter_mut().zip(&a) {
                            *r = _mm512_fmadd_ps(*av, b, *r);
                        }
                    }
                }
            }
            for (i, row) in acc.iter().enumerate() {
                let o = unsafe { out.as_mut_ptr().add((block * ROWS + i) * n + j0) };
                for (v, r) in row.iter().enumerate() {
                    unsafe { _mm512_mask_storeu_ps(o.add(16 * v), masks[v], *r) };
                }
            }
            j0 += 16 * V;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_widths() {
        // one tile of 5 for 80 positions, no lanes wasted for 4224 (264 vectors: 44 of 6)
        assert_eq!(vectors_per_tile(80), 5);
        assert_eq!(vectors_per_tile(4224), 6);
        assert_eq!(vectors_per_tile(16), 1);
        assert_eq!(vectors_per_tile(17), 2);
        // 1088 positions = 68 vectors: 17 tiles of 4
        assert_eq!(vectors_per_tile(1088), 4);
    }
}
