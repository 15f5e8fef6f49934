//! Strided matrix transposition, `dst[x * dst_stride + r] = src[r * src_stride + x]`: the
//! channels-first image rows into the channels-last copy the weight gradient's products read
//! ([`crate::conv_cpu`]). Scalar in general; for f32 on CPUs with AVX-512F (and
//! `METRICUNET_AVX512` not 0) by blocks of 16 x 16 in registers (the scalar loop, one strided
//! store per value, took 4.4 % of the quickstart's training step in a perf profile).

use crate::conv_cpu::Elem;

/// The shape of a transposition: `rows` rows of `cols` values, row `r` of the source at `r *
/// src_stride`, value `x` of row `r` to `x * dst_stride + r` of the destination.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub rows: usize,
    pub cols: usize,
    pub src_stride: usize,
    pub dst_stride: usize,
}

impl Shape {
    /// Whether `src` and `dst` hold every index the shape reads and writes (a shape with no
    /// values touches nothing).
    fn fits<T>(&self, src: &[T], dst: &[T]) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last_src = (self.rows - 1) * self.src_stride + self.cols - 1;
        let last_dst = (self.cols - 1) * self.dst_stride + self.rows - 1;
        last_src < src.len() && last_dst < dst.len() && self.rows <= self.dst_stride
    }
}

/// The plain loop: any element type, any CPU.
pub(crate) fn scalar<T: Copy>(src: &[T], dst: &mut [T], s: Shape) {
    for r in 0..s.rows {
        let row = &src[r * s.src_stride..][..s.cols];
        for (x, &v) in row.iter().enumerate() {
            dst[x * s.dst_stride + r] = v;
        }
    }
}

/// `dst[x * dst_stride + r] = src[r * src_stride + x]` for `r < rows`, `x < cols`.
///
/// # Panics
/// Where `src` or `dst` is too short for the shape, or rows would overlap in `dst` (`rows >
/// dst_stride`).
pub fn transpose<T: Elem>(src: &[T], dst: &mut [T], s: Shape) {
    assert!(s.fits(src, dst), "transpose: {s:?} outside the buffers");
    T::transpose(src, dst, s);
}

/// The AVX-512 path for f32 (see the module doc); `false` where this CPU does not take it.
pub(crate) fn f32_blocks(src: &[f32], dst: &mut [f32], s: Shape) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::direct::supported() {
        debug_assert!(s.fits(src, dst));
        // SAFETY: the CPU has AVX-512F (`supported`); `transpose` checked that the shape's
        // indices lie inside both slices, and `blocks` reads and writes only those.
        unsafe { avx512::blocks(src.as_ptr(), dst.as_mut_ptr(), s) };
        return true;
    }
    let _ = (src, dst, s);
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Shape;
    use std::arch::x86_64::*;

    /// Blocks of 16 rows x 16 columns: 16 (masked) row loads, the transposition in registers,
    /// 16 (masked) stores; rows past the end read as zero and are not stored.
    ///
    /// # Safety
    /// AVX-512F; every index of `s` (see [`Shape::fits`]) inside the buffers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn blocks(src: *const f32, dst: *mut f32, s: Shape) {
        let mut r0 = 0;
        while r0 < s.rows {
            let nr = (s.rows - r0).min(16);
            let row_mask: __mmask16 = ((1u32 << nr) - 1) as u16;
            let mut x0 = 0;
            while x0 < s.cols {
                let nc = (s.cols - x0).min(16);
                let col_mask: __mmask16 = ((1u32 << nc) - 1) as u16;
                let mut v = [_mm512_setzero_ps(); 16];
                for (i, vi) in v.iter_mut().enumerate().take(nr) {
                    // SAFETY: row r0 + i < rows, columns x0..x0 + nc < cols (the mask)
                    *vi = _mm512_maskz_loadu_ps(col_mask, src.add((r0 + i) * s.src_stride + x0));
                }
                let t = transpose16(v);
                for (j, tj) in t.iter().enumerate().take(nc) {
                    // SAFETY: column x0 + j < cols, rows r0..r0 + nr < rows (the mask)
                    _mm512_mask_storeu_ps(dst.add((x0 + j) * s.dst_stride + r0), row_mask, *tj);
                }
                x0 += 16;
            }
            r0 += 16;
        }
    }

    /// The 16 x 16 transposition: `out[j]` lane `i` = `v[i]` lane `j`.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // 32-bit interleave of row pairs
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // 64-bit interleave within groups of four
        let mut u = [_mm512_setzero_ps(); 16];
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        for g in 0..4 {
            let b = 4 * g;
            u[b] = ps(_mm512_unpacklo_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 1] = ps(_mm512_unpackhi_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 2] = ps(_mm512_unpacklo_pd(pd(t[b + 1]), pd(t[b + 3])));
            u[b + 3] = ps(_mm512_unpackhi_pd(pd(t[b + 1]), pd(t[b + 3])));
        }
        // 128-bit lanes: groups of four with the group four rows on
        for h in 0..2 {
            let b = 8 * h;
            for k in 0..4 {
                t[b + k] = _mm512_shuffle_f32x4::<0x88>(u[b + k], u[b + k + 4]);
                t[b + k + 4] = _mm512_shuffle_f32x4::<0xdd>(u[b + k], u[b + k + 4]);
            }
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            out[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[k + 8]);
            out[k + 8] = _mm512_shuffle_f32x4::<0xdd>(t[k], t[k + 8]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block path against the plain loop on shapes with full and partial blocks in both
    /// directions, sources with a gap between rows, destinations with spare columns (which
    /// must stay untouched).
    #[test]
    fn blocks_match_the_plain_loop() {
        for (rows, cols, gap, spare) in [
            (16, 16, 0, 0),
            (32, 64, 5, 8),
            (40, 64, 0, 0),
            (8, 64, 3, 32),
            (3, 17, 0, 1),
            (17, 33, 2, 3),
            (1, 1, 0, 0),
            (0, 5, 0, 0),
        ] {
            let s = Shape {
                rows,
                cols,
                src_stride: cols + gap,
                dst_stride: rows + spare,
            };
            let src: Vec<f32> = (0..rows * s.src_stride).map(|i| i as f32 + 0.5).collect();
            let len = cols * s.dst_stride;
            let mut want = vec![-1.0f32; len];
            scalar(&src, &mut want, s);
            let mut got = vec![-1.0f32; len];
            transpose(&src, &mut got, s);
            assert_eq!(got, want, "{s:?}");
            // and the plain loop is the definition
            for r in 0..rows {
                for x in 0..cols {
                    assert_eq!(want[x * s.dst_stride + r], src[r * s.src_stride + x]);
                }
            }
            let mut f64s = vec![-1.0f64; len];
            let src64: Vec<f64> = src.iter().map(|&v| f64::from(v)).collect();
            transpose(&src64, &mut f64s, s);
            assert!(f64s.iter().zip(&want).all(|(a, b)| *a == f64::from(*b)));
        }
        if !crate::direct::supported() {
            eprintln!("no AVX-512F here: only the plain loop was compared with itself");
        }
    }

    #[test]
    #[should_panic(expected = "outside the buffers")]
    fn a_short_destination_is_refused() {
        let s = Shape {
            rows: 4,
            cols: 4,
            src_stride: 4,
            dst_stride: 4,
        };
        transpose(&[0.0f32; 16], &mut [0.0f32; 15], s);
    }
}
