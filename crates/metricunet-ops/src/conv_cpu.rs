//! CPU kernels of the "same" convolution (stride 1, padding k / 2, odd k, no bias) without an
//! im2col matrix: forward, input gradient and weight gradient as k * k matrix products per
//! image over a zero-padded copy of the image ("implicit gemm" on a wide grid).
//!
//! The padded image of one channel is stored row by row, `wp = w + 2p` values per row, so the
//! input seen by kernel tap (dy, dx) for every output position is the same buffer read from
//! offset `dy * wp + dx`: a plain strided matrix the gemm crate reads directly. Outputs are
//! computed on the wide grid `h x wp` (the `2p` extra columns of each row are discarded), so
//! no (C k k) x (H W) column matrix is ever formed: per image the extra memory is one padded
//! input and one wide output. candle's CPU conv2d builds the column matrix for the whole batch
//! (1.3 GB for the paper network's largest layer at batch 30).
//!
//! Images are spread over the rayon threads (one gemm per thread); a batch smaller than the
//! thread count hands the threads to the gemm instead.

use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use crate::cpu_values::written_in_full;

/// f32 or f64.
pub trait Elem:
    Fma
    + Copy
    + Send
    + Sync
    + Default
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + PartialOrd
    + 'static
{
    const ONE: Self;
    const HALF: Self;
    const NAN: Self;
    fn is_nan(self) -> bool;
    /// The per-image buffers kept between op calls ([`Scratch`]).
    fn kept() -> &'static Mutex<Vec<Vec<Self>>>;
    /// The direct kernel of [`crate::direct`] for a product of `m` rows, `kdim` channels, `kk`
    /// taps and `n` positions with the weights `weight(row, channel, tap)`, where it runs for
    /// this type and shape (f32, AVX-512F, `m` a multiple of 4, the layers
    /// [`crate::direct::chosen`] names); `None`: the gemm path.
    fn direct(
        _dims: (usize, usize, usize, usize),
        _weight: &dyn Fn(usize, usize, usize) -> Self,
    ) -> Option<Direct<Self>> {
        None
    }
    /// [`crate::transpose::transpose`] without its checks (the caller's): the plain loop, or
    /// a faster one where this type and CPU have it.
    fn transpose(src: &[Self], dst: &mut [Self], s: crate::transpose::Shape) {
        crate::transpose::scalar(src, dst, s)
    }
}

/// The direct kernel with its packed weights (see [`Elem::direct`]).
pub struct Direct<T> {
    packed: Vec<T>,
    /// `run(packed, padded, (m, kdim, n, s), tap offsets, out)`; unsafe: the contract of
    /// [`crate::direct::conv_wide`].
    run: DirectFn<T>,
}

type DirectFn<T> = unsafe fn(&[T], &[T], (usize, usize, usize, usize), &[usize], &mut [T]);

impl Elem for f32 {
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const NAN: Self = f32::NAN;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn kept() -> &'static Mutex<Vec<Vec<Self>>> {
        &KEPT_F32
    }
    fn direct(
        (m, kdim, kk, n): (usize, usize, usize, usize),
        weight: &dyn Fn(usize, usize, usize) -> Self,
    ) -> Option<Direct<Self>> {
        #[cfg(target_arch = "x86_64")]
        if crate::direct::supported() && m % crate::direct::ROWS == 0 && direct_wanted(kdim, kk, n)
        {
            return Some(Direct {
                packed: crate::direct::pack(m, kdim, kk, weight),
                run: crate::direct::conv_wide,
            });
        }
        let _ = (m, kdim, kk, n, weight);
        None
    }
    fn transpose(src: &[Self], dst: &mut [Self], s: crate::transpose::Shape) {
        if !crate::transpose::f32_blocks(src, dst, s) {
            crate::transpose::scalar(src, dst, s)
        }
    }
}
impl Elem for f64 {
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const NAN: Self = f64::NAN;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn kept() -> &'static Mutex<Vec<Vec<Self>>> {
        &KEPT_F64
    }
}

/// Per-image buffers of one op call, handed from image to image instead of allocated per image.
/// [`Scratch::with`] gives `f` a buffer of `len` values **not zeroed** (what an earlier image
/// left there), so only for buffers that `f` writes in full before reading them. Each thread
/// working on the images takes one buffer, so an op holds as many as before (one per thread
/// at a time); only a new buffer pays the allocation's zero-fill and page faults (per image
/// those were 12 % (memset) and 3 % (kernel page clearing) of a paper-network step at batch
/// 8). With fewer images than threads the buffers are kept for the next call (up to
/// [`keep_bytes`]), else freed at the end of the call.
pub(crate) struct Scratch<T: Elem> {
    free: Mutex<Vec<Vec<T>>>,
    /// Whether the buffers are kept after the call (fewer images than threads).
    keep: bool,
    #[cfg(test)]
    poison: bool,
}

/// At most this many bytes of per-image buffers are kept between op calls (per element type),
/// so that ops with one image per thread (batch 1: every op) reuse them too: 64 MiB, or
/// `METRICUNET_SCRATCH_KEEP_MB` (0: none kept, each call's buffers freed at its end). The
/// largest of the paper network's at batch 1 (Winograd's transformed input and products of a
/// 64 x 64 layer with 288 / 256 channels) are 19 and 17 MB.
fn keep_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        crate::cpu_values::env_count("METRICUNET_SCRATCH_KEEP_MB", 64).saturating_mul(1 << 20)
    })
}

static KEPT_F32: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static KEPT_F64: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

/// A lock whose holder panicked still guards plain buffers: take it anyway.
fn lock<V>(m: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Elem> Scratch<T> {
    /// The buffers of one call on `batch` images: with fewer images than threads (each thread
    /// sees at most one image, so nothing is reused within the call) they are kept for the
    /// next call; with more, each thread reuses its own within the call and they are freed at
    /// its end (keeping them as well cost 0.3 GB of peak memory in whole-case inference,
    /// batches of 8, for no measured gain).
    pub(crate) fn new(batch: usize) -> Self {
        Scratch {
            free: Mutex::new(Vec::new()),
            keep: batch < rayon::current_num_threads(),
            #[cfg(test)]
            poison: POISON.with(|p| p.get()),
        }
    }

    /// A buffer of at least `len` values: this call's own, else one kept from an earlier call
    /// (the smallest that is large enough, else the largest), else a new zeroed one.
    fn take(&self, len: usize) -> Vec<T> {
        if let Some(b) = lock(&self.free).pop() {
            return b;
        }
        let mut kept = lock(T::kept());
        let fits = (0..kept.len())
            .filter(|&k| kept[k].capacity() >= len)
            .min_by_key(|&k| kept[k].capacity());
        let largest = (0..kept.len()).max_by_key(|&k| kept[k].capacity());
        match fits.or(largest) {
            Some(k) => kept.swap_remove(k),
            None => Vec::new(),
        }
    }

    pub(crate) fn with<R>(&self, len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        let mut buf = self.take(len);
        #[cfg(test)]
        if self.poison {
            // tests: every buffer handed out full of NaN, so a value read before it is written
            // shows in the result
            buf.clear();
        }
        #[cfg(test)]
        let fill = if self.poison { T::NAN } else { T::default() };
        #[cfg(not(test))]
        let fill = T::default();
        // only a new (or grown) buffer is filled; a reused one keeps the last image's values
        buf.resize(len.max(buf.len()), fill);
        let out = f(&mut buf[..len]);
        lock(&self.free).push(buf);
        out
    }
}

impl<T: Elem> Drop for Scratch<T> {
    /// Where kept, this call's buffers join the kept ones; the oldest go while more than
    /// [`keep_bytes`].
    fn drop(&mut self) {
        if !self.keep {
            return;
        }
        let mine = std::mem::take(&mut *lock(&self.free));
        let mut kept = lock(T::kept());
        kept.extend(mine);
        let bytes = |v: &Vec<Vec<T>>| {
            v.iter().map(|b| b.capacity()).sum::<usize>() * std::mem::size_of::<T>()
        };
        while bytes(&kept) > keep_bytes() {
            kept.remove(0);
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: the fresh buffers of a [`Scratch`] made on this thread start full of NaN.
    pub(crate) static POISON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Shapes of one "same" convolution.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    /// Odd kernel side.
    pub k: usize,
}

impl Geometry {
    /// The geometry of `side` x `side` images.
    pub fn square(batch: usize, cin: usize, cout: usize, side: usize, k: usize) -> Self {
        Geometry {
            batch,
            cin,
            cout,
            h: side,
            w: side,
            k,
        }
    }
    fn p(&self) -> usize {
        self.k / 2
    }
    /// Padded row length.
    fn wp(&self) -> usize {
        self.w + 2 * self.p()
    }
    /// Values per channel of a padded image: `hp * wp` plus `k - 1` so that the last tap's
    /// reads of the wide grid stay inside the buffer.
    fn stride(&self) -> usize {
        (self.h + 2 * self.p()) * self.wp() + self.k - 1
    }
    /// Positions of the wide output grid.
    fn wide(&self) -> usize {
        self.h * self.wp()
    }
    fn taps(&self) -> usize {
        self.k * self.k
    }
    /// Offset of tap `t` in a padded channel.
    fn tap_offset(&self, t: usize) -> usize {
        (t / self.k) * self.wp() + t % self.k
    }
}

/// Zero-padded copy of `c` channels of one `h x w` image into `dst` (`c * stride` values,
/// every one written: the border and the tail zeros, the image copied inside).
fn pad<T: Elem>(src: &[T], c: usize, g: &Geometry, dst: &mut [T]) {
    let (p, w, wp, s) = (g.p(), g.w, g.wp(), g.stride());
    let zero = T::default();
    for ch in 0..c {
        let plane = &mut dst[ch * s..][..s];
        // the top rows and the left border of the first image row
        plane[..p * wp + p].fill(zero);
        for y in 0..g.h {
            let at = (y + p) * wp + p;
            plane[at..][..w].copy_from_slice(&src[(ch * g.h + y) * w..][..w]);
            // this row's right border and the next row's left border (two values for a 3x3
            // kernel: plain stores, not a call to memset per row, which was 1.6 % of the
            // quickstart's step)
            for v in &mut plane[at + w..][..2 * p] {
                *v = zero;
            }
        }
        // the bottom rows (after the last row's right border) and the tail
        plane[(g.h + p) * wp + p..].fill(zero);
    }
}

/// Image `i` of a batch given as channel groups `(values, channels)` (the channels of a
/// concatenation, in order), zero-padded into `padded` (`channels * stride` values, all
/// written).
fn padded_image<T: Elem>(parts: &[(&[T], usize)], i: usize, g: &Geometry, padded: &mut [T]) {
    let hw = g.h * g.w;
    let mut at = 0;
    for &(batch, c) in parts {
        pad(
            &batch[i * c * hw..][..c * hw],
            c,
            g,
            &mut padded[at * g.stride()..],
        );
        at += c;
    }
}

/// The valid columns of a wide `c x h x wp` result into `c x h x w`.
fn unwide<T: Elem>(wide: &[T], c: usize, g: &Geometry, dst: &mut [MaybeUninit<T>]) {
    let (wp, n) = (g.wp(), g.wide());
    for ch in 0..c {
        for y in 0..g.h {
            dst[(ch * g.h + y) * g.w..][..g.w].write_copy_of_slice(&wide[ch * n + y * wp..][..g.w]);
        }
    }
}

/// Whether the matrix products may take the gemm crate's AVX-512 kernels (where the CPU has
/// them): `METRICUNET_AVX512=0` makes every product of these ops take its AVX2 + FMA kernels,
/// as on a CPU without AVX-512, for A/B measurements (candle's own matrix products, a small
/// part of a step, keep gemm's own choice). Read once.
pub fn avx512_allowed() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&FLAG, "METRICUNET_AVX512", true)
}

/// The arguments of a gemm call, in the gemm crate's order: `m, n, k, dst, dst_cs, dst_rs,
/// read_dst, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, alpha, beta, conj_dst, conj_lhs,
/// conj_rhs, parallelism`.
type GemmFn<T> = unsafe fn(
    usize,
    usize,
    usize,
    *mut T,
    isize,
    isize,
    bool,
    *const T,
    isize,
    isize,
    *const T,
    isize,
    isize,
    T,
    T,
    bool,
    bool,
    bool,
    Parallelism,
);

/// The gemm crate's AVX2 + FMA kernels for one element type, by name (the crate's own dispatch
/// takes AVX-512 wherever the CPU has it).
pub trait Fma: Sized {
    /// The FMA-kernel gemm, or `None` where the CPU lacks AVX2 + FMA (or is not x86-64).
    fn fma_gemm() -> Option<GemmFn<Self>>;
}

/// A product's operands as `(pointer, column stride, row stride)`, in the form the gemm
/// crate's kernels take: as `gemm::gemm` prepares them before its dispatch (the problem
/// transposed when the destination is column-oriented, negative strides turned positive).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Operands<T> {
    m: usize,
    n: usize,
    dst: (*mut T, isize, isize),
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl<T> Operands<T> {
    fn new(
        (m, n, k): (usize, usize, usize),
        dst: (*mut T, isize, isize),
        lhs: (*const T, isize, isize),
        rhs: (*const T, isize, isize),
    ) -> Self {
        let mut o = if dst.1.abs() < dst.2.abs() {
            // dst^T = rhs^T lhs^T
            Operands {
                m: n,
                n: m,
                dst: (dst.0, dst.2, dst.1),
                lhs: (rhs.0, rhs.2, rhs.1),
                rhs: (lhs.0, lhs.2, lhs.1),
            }
        } else {
            Operands {
                m,
                n,
                dst,
                lhs,
                rhs,
            }
        };
        if o.dst.2 < 0 && o.m > 0 {
            o.dst = (
                o.dst.0.wrapping_offset((o.m - 1) as isize * o.dst.2),
                o.dst.1,
                -o.dst.2,
            );
            o.lhs = (
                o.lhs.0.wrapping_offset((o.m - 1) as isize * o.lhs.2),
                o.lhs.1,
                -o.lhs.2,
            );
        }
        if o.dst.1 < 0 && o.n > 0 {
            o.dst = (
                o.dst.0.wrapping_offset((o.n - 1) as isize * o.dst.1),
                -o.dst.1,
                o.dst.2,
            );
            o.rhs = (
                o.rhs.0.wrapping_offset((o.n - 1) as isize * o.rhs.1),
                -o.rhs.1,
                o.rhs.2,
            );
        }
        if o.lhs.1 < 0 && k > 0 {
            o.lhs = (
                o.lhs.0.wrapping_offset((k - 1) as isize * o.lhs.1),
                -o.lhs.1,
                o.lhs.2,
            );
            o.rhs = (
                o.rhs.0.wrapping_offset((k - 1) as isize * o.rhs.2),
                o.rhs.1,
                -o.rhs.2,
            );
        }
        o
    }
}

/// One element type's FMA gemm, as the gemm crate's own `gemm_def!` builds it for its
/// dispatch (same kernels, same blocking), from that crate's public kernel tables.
macro_rules! fma_gemm {
    ($ty:ident, $kernels:path) => {
        impl Fma for $ty {
            fn fma_gemm() -> Option<GemmFn<$ty>> {
                #[cfg(target_arch = "x86_64")]
                {
                    use gemm_common::simd::MixedSimd;
                    use $kernels as k;
                    #[allow(clippy::too_many_arguments)]
                    unsafe fn run(
                        m: usize,
                        n: usize,
                        k_: usize,
                        dst: *mut $ty,
                        dst_cs: isize,
                        dst_rs: isize,
                        read_dst: bool,
                        lhs: *const $ty,
                        lhs_cs: isize,
                        lhs_rs: isize,
                        rhs: *const $ty,
                        rhs_cs: isize,
                        rhs_rs: isize,
                        alpha: $ty,
                        beta: $ty,
                        _conj_dst: bool,
                        _conj_lhs: bool,
                        _conj_rhs: bool,
                        par: Parallelism,
                    ) {
                        const N: usize = 32 / std::mem::size_of::<$ty>();
                        // `fma_gemm` only hands this out where the CPU has AVX2 + FMA
                        let Some(simd) =
                            <gemm_common::simd::V3 as MixedSimd<$ty, $ty, $ty, $ty>>::try_new()
                        else {
                            unreachable!("AVX2 + FMA were detected")
                        };
                        let o = Operands::new(
                            (m, n, k_),
                            (dst, dst_cs, dst_rs),
                            (lhs, lhs_cs, lhs_rs),
                            (rhs, rhs_cs, rhs_rs),
                        );
                        // SAFETY: the caller's contract (`matmul`); `Operands::new` only
                        // re-expresses the same elements (transposed / strides made positive).
                        unsafe {
                            gemm_common::gemm::gemm_basic_generic::<
                                _,
                                $ty,
                                N,
                                { k::MR_DIV_N * N },
                                { k::NR },
                                { k::MR_DIV_N },
                                { k::H_M },
                                { k::H_N },
                            >(
                                simd,
                                o.m,
                                o.n,
                                k_,
                                o.dst.0,
                                o.dst.1,
                                o.dst.2,
                                read_dst,
                                o.lhs.0,
                                o.lhs.1,
                                o.lhs.2,
                                o.rhs.0,
                                o.rhs.1,
                                o.rhs.2,
                                alpha,
                                beta,
                                false,
                                false,
                                false,
                                |a, b, c| a * b + c,
                                &k::UKR,
                                &k::H_UKR,
                                false,
                                par,
                            )
                        }
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        return Some(run);
                    }
                }
                None
            }
        }
    };
}
fma_gemm!(f32, gemm_f32::microkernel::fma::f32);
fma_gemm!(f64, gemm_f64::microkernel::fma::f64);

/// `dst (+)= lhs * rhs` for an `m x n` result with inner dimension `k`; every operand is a
/// pointer with its row and column strides (the gemm crate takes them column first). The
/// gemm crate's own dispatch (AVX-512 where the CPU has it), or its AVX2 + FMA kernels under
/// `METRICUNET_AVX512=0` ([`avx512_allowed`]).
///
/// # Safety
/// Every `(r, c)` the strides address must lie inside the buffer behind its pointer, and `dst`
/// must not overlap what another thread writes.
pub(crate) unsafe fn matmul<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    par: Parallelism,
) {
    let gemm: GemmFn<T> = if avx512_allowed() {
        gemm::gemm::<T>
    } else {
        T::fma_gemm().unwrap_or(gemm::gemm::<T>)
    };
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        accumulate,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        par,
    );
}

/// A kernel tap as a matrix: element (r, c) of tap t at `base + t_index(t) + r * rs + c * cs`.
#[derive(Clone, Copy)]
struct TapView {
    rs: isize,
    cs: isize,
    flip: bool,
}

impl TapView {
    /// The index of element (r, c) of tap t (of `kk`) in the weights.
    fn index(&self, r: usize, c: usize, t: usize, kk: usize) -> usize {
        let wt = if self.flip { kk - 1 - t } else { t };
        wt + r * self.rs as usize + c * self.cs as usize
    }
}

/// Whether the direct kernel is wanted for `kdim` channels in, `kk` taps and `n` positions:
/// switched on and [`crate::direct::chosen`] (tests choose with [`DIRECT`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn direct_wanted(kdim: usize, kk: usize, n: usize) -> bool {
    #[cfg(test)]
    if let Some(wanted) = DIRECT.with(|d| d.get()) {
        return wanted;
    }
    crate::direct::switched_on() && crate::direct::chosen(kdim, kk, n)
}

#[cfg(test)]
thread_local! {
    /// Tests: `Some(false)` the gemm path, `Some(true)` the direct kernel wherever it runs.
    pub(crate) static DIRECT: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// `out (m x wide) = sum over taps  A_t (m x kdim) * padded (kdim x wide, shifted by tap)`:
/// through the direct kernel where `direct` holds it, else k * k gemm calls.
#[allow(clippy::too_many_arguments)]
fn conv_wide<T: Elem>(
    weights: &[T],
    view: TapView,
    direct: Option<&Direct<T>>,
    padded: &[T],
    m: usize,
    kdim: usize,
    g: &Geometry,
    out: &mut [T],
    par: Parallelism,
) {
    let (n, s, kk) = (g.wide(), g.stride(), g.taps());
    debug_assert!(padded.len() >= kdim * s && out.len() >= m * n && weights.len() >= m * kdim * kk);
    if let Some(d) = direct {
        let offsets: Vec<usize> = (0..kk).map(|t| g.tap_offset(t)).collect();
        // SAFETY: `Elem::direct` gave this kernel only where the CPU has it and m is a
        // multiple of its rows; `d.packed` holds m * kdim * kk values (`pack`), `out` m * n;
        // the padded image's reads end before (kdim - 1) * s + n + max offset <= kdim * s (as
        // for the gemm path below).
        unsafe { (d.run)(&d.packed, padded, (m, kdim, n, s), &offsets, out) };
        return;
    }
    for t in 0..kk {
        let wt = if view.flip { kk - 1 - t } else { t };
        // SAFETY: every index the gemm reads or writes is inside the slices: the weights'
        // (r, c) at wt + r * rs + c * cs < m * kdim * kk; the padded input's (c, j) at
        // c * s + j + tap_offset(t) <= (kdim - 1) * s + (h + 2p) * wp + k - 2 < kdim * s;
        // out's (r, j) at r * n + j < m * n.
        unsafe {
            matmul(
                (m, n, kdim),
                (out.as_mut_ptr(), n as isize, 1),
                t > 0,
                (weights.as_ptr().add(wt), view.rs, view.cs),
                (padded.as_ptr().add(g.tap_offset(t)), s as isize, 1),
                par,
            );
        }
    }
}

/// How to spread `batch` images over the threads: (images in parallel, gemm parallelism).
fn split(batch: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if batch >= threads || threads == 1 {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// Per image in parallel (or in sequence with a parallel gemm): `f(image, par)`.
pub(crate) fn for_images<F: Fn(usize, Parallelism) + Sync + Send>(batch: usize, f: F) {
    let (images, par) = split(batch);
    if images {
        (0..batch).into_par_iter().for_each(|i| f(i, par));
    } else {
        (0..batch).for_each(|i| f(i, par));
    }
}

/// A `Send` pointer to a disjoint per-image part of an output buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr<T>(pub(crate) *mut T);
// SAFETY: each image writes only its own `chunk` of the buffer (see the callers).
unsafe impl<T: Send> Send for OutPtr<T> {}
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// (A method, so that closures capture the `Send` wrapper, not the raw pointer.)
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `sum over the images i of add(i)`, for per-image contributions to an accumulator of `len`
/// values (`add(i, acc, par)` adds image i's into `acc`). With at least as many images as
/// threads each thread adds its share of the images into its own accumulator (gemm on one
/// thread) and the accumulators are summed in thread order; with fewer, the images run in
/// sequence and `par` hands the threads to the gemm.
pub(crate) fn sum_over_images<T: Elem>(
    batch: usize,
    len: usize,
    add: impl Fn(usize, &mut [T], Parallelism) + Sync,
) -> Vec<T> {
    let (images, par) = split(batch);
    if !images {
        let mut acc = vec![T::default(); len];
        (0..batch).for_each(|i| add(i, &mut acc, par));
        return acc;
    }
    let threads = rayon::current_num_threads().min(batch).max(1);
    let per = batch.div_ceil(threads);
    let partial: Vec<Vec<T>> = (0..threads)
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![T::default(); len];
            for i in chunk * per..((chunk + 1) * per).min(batch) {
                add(i, &mut acc, par);
            }
            acc
        })
        .collect();
    let mut total = vec![T::default(); len];
    for part in partial {
        for (a, b) in total.iter_mut().zip(part) {
            *a += b;
        }
    }
    total
}

/// One "same" convolution of a batch through per-tap matrices of `weights`; `c_from`
/// channels in, `c_to` out (forward: cin -> cout; input gradient: cout -> cin).
fn conv_batch<T: Elem>(
    input: &[(&[T], usize)],
    weights: &[T],
    view: TapView,
    c_to: usize,
    g: &Geometry,
) -> Vec<T> {
    let (hw, n) = (g.h * g.w, g.wide());
    let c_from: usize = input.iter().map(|p| p.1).sum();
    let (wides, pads) = (Scratch::new(g.batch), Scratch::new(g.batch));
    let kk = g.taps();
    let direct = T::direct((c_to, c_from, kk, n), &|r, c, t| {
        weights[view.index(r, c, t, kk)]
    });
    let fill = |out: &mut [MaybeUninit<T>]| {
        let ptr = OutPtr(out.as_mut_ptr());
        for_images(g.batch, |i, par| {
            // `padded_image` writes every value of `padded`, the first tap's product every
            // value of `wide`
            pads.with(c_from * g.stride(), |padded: &mut [T]| {
                padded_image(input, i, g, padded);
                wides.with(c_to * n, |wide: &mut [T]| {
                    let d = direct.as_ref();
                    conv_wide(weights, view, d, padded, c_to, c_from, g, wide, par);
                    // SAFETY: image i owns out[i * c_to * hw .. (i + 1) * c_to * hw]
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(ptr.get().add(i * c_to * hw), c_to * hw)
                    };
                    unwide(wide, c_to, g, dst);
                })
            })
        })
    };
    // SAFETY: each image's `unwide` writes its c_to x h x w values, the images cover `out`
    unsafe { written_in_full(g.batch * c_to * hw, fill) }
}

/// Forward: `x (N, cin, H, W)`, `w (cout, cin, k, k)` -> `(N, cout, H, W)`.
pub fn forward<T: Elem>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    forward_parts(&[(x, g.cin)], w, g)
}

/// [`forward`] of the channel concatenation of `parts` (each `(N, c_i, H, W)`, `sum c_i =
/// cin`), without forming it.
pub fn forward_parts<T: Elem>(parts: &[(&[T], usize)], w: &[T], g: &Geometry) -> Vec<T> {
    let kk = g.taps() as isize;
    let view = TapView {
        rs: g.cin as isize * kk,
        cs: kk,
        flip: false,
    };
    conv_batch(parts, w, view, g.cout, g)
}

/// Input gradient: the output gradient `(N, cout, H, W)` convolved with the flipped kernel,
/// its in- and out-channels swapped -> `(N, cin, H, W)`.
pub fn input_grad<T: Elem>(grad: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let kk = g.taps() as isize;
    let view = TapView {
        rs: kk,
        cs: g.cin as isize * kk,
        flip: true,
    };
    conv_batch(&[(grad, g.cout)], w, view, g.cin, g)
}

/// Weight gradient: `gw[o][i][t] = sum over images and positions  grad[o][j] * x_padded[i][j + tap t]`
/// -> `(cout, cin, k, k)`.
pub fn weight_grad<T: Elem>(x: &[T], grad: &[T], g: &Geometry) -> Vec<T> {
    weight_grad_parts(&[(x, g.cin)], grad, g)
}

/// [`weight_grad`] with the input given as channel groups (see [`forward_parts`]).
///
/// Through [`add_rows_channels_last`] (one product per kernel row over a channels-last copy of
/// the padded input), or with `METRICUNET_CHANNELS_LAST_WGRAD=0` through [`add_padded`] (one
/// product per tap over the channels-first padded image).
pub fn weight_grad_parts<T: Elem>(x: &[(&[T], usize)], grad: &[T], g: &Geometry) -> Vec<T> {
    if channels_last_wanted(g.cin) {
        return weight_grad_channels_last(x, grad, g);
    }
    let (s, n, kk) = (g.stride(), g.wide(), g.taps());
    let len = g.cout * g.cin * kk;
    let (pads, wides) = (Scratch::new(g.batch), Scratch::new(g.batch));
    // one image's contribution, accumulated into `acc`
    let add_image = |i: usize, acc: &mut [T], par: Parallelism| {
        // both written in full below
        pads.with(g.cin * s, |padded: &mut [T]| {
            wides.with(g.cout * n, |wide: &mut [T]| {
                add_padded((x, grad, g), i, padded, wide, acc, par)
            })
        })
    };
    sum_over_images(g.batch, len, add_image)
}

/// The fewest input channels for which [`weight_grad_channels_last`] is taken: with fewer, its
/// products are too narrow (`bench conv --model quickstart`: 8 channels in, 64 x 64, 0.32 ->
/// 0.65 ms; 16 channels in, 32 x 32, 0.23 -> 0.22 ms; 40 channels in, 64 x 64, 5.5 -> 3.7 ms).
const CHANNELS_LAST_MIN_CIN: usize = 16;

/// Whether the weight gradient of a layer with `cin` channels in takes the channels-last
/// products: switched on (`METRICUNET_CHANNELS_LAST_WGRAD`, on unless `0`, read once) and at
/// least [`CHANNELS_LAST_MIN_CIN`] channels. Tests choose with [`CHANNELS_LAST`].
fn channels_last_wanted(cin: usize) -> bool {
    #[cfg(test)]
    if let Some(wanted) = CHANNELS_LAST.with(|d| d.get()) {
        return wanted;
    }
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::cpu_values::env_flag(&ON, "METRICUNET_CHANNELS_LAST_WGRAD", true)
        && cin >= CHANNELS_LAST_MIN_CIN
}

#[cfg(test)]
thread_local! {
    /// Tests: `Some(true)` the channels-last weight gradient, `Some(false)` the per-tap one.
    pub(crate) static CHANNELS_LAST: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// [`weight_grad_parts`] through [`add_rows_channels_last`]: the work is split into blocks of
/// output rows (one per image, or, with fewer images than threads, each image's rows over the
/// threads), each block's part summed into a per-thread accumulator in `(cout, k, k, cin)`
/// order, which is put into `(cout, cin, k, k)` order at the end.
fn weight_grad_channels_last<T: Elem>(x: &[(&[T], usize)], grad: &[T], g: &Geometry) -> Vec<T> {
    let (k, kk) = (g.k, g.taps());
    let len = g.cout * g.cin * kk;
    let threads = rayon::current_num_threads().max(1);
    let splits = if g.batch >= threads {
        1
    } else {
        threads.div_ceil(g.batch).min(g.h)
    };
    let rows_per = g.h.div_ceil(splits);
    let (pads, wides) = (Scratch::new(g.batch), Scratch::new(g.batch));
    let add_block = |b: usize, acc: &mut [T], par: Parallelism| {
        let (i, y0) = (b / splits, (b % splits) * rows_per);
        let y1 = (y0 + rows_per).min(g.h);
        if y0 >= y1 {
            return;
        }
        let rows = y1 - y0;
        let positions = (rows + 2 * g.p()) * g.wp() + k - 1;
        // both written in full below
        pads.with(positions * g.cin, |padded: &mut [T]| {
            wides.with(g.cout * rows * g.wp(), |wide: &mut [T]| {
                add_rows_channels_last((x, grad, g), i, (y0, y1), padded, wide, acc, par)
            })
        })
    };
    let ohwi = sum_over_images(g.batch * splits, len, add_block);
    // (cout, k, k, cin) -> (cout, cin, k, k)
    let mut out = vec![T::default(); len];
    for o in 0..g.cout {
        for t in 0..kk {
            for c in 0..g.cin {
                out[(o * g.cin + c) * kk + t] = ohwi[(o * kk + t) * g.cin + c];
            }
        }
    }
    out
}

/// Output rows `y0..y1` of image `i`'s weight gradient, added into `acc` (`(cout, k, k, cin)`
/// order), with `padded` (`((y1 - y0 + 2p) * wp + k - 1) * cin` values) and `wide` (`cout *
/// (y1 - y0) * wp`) to write into, `par` the threads of its products (where there are fewer blocks
/// of rows than threads). The padded input rows `y0..y1 + 2p` are copied channels
/// last (`padded[q * cin + c]` for padded position q), so that for kernel row `dy` the `k * cin`
/// products of one position `(dx, c)` are `k * cin` consecutive values: `acc[o][dy][..] +=
/// sum over positions j  wide[o][j] * padded[(j + dy * wp) * cin ..][..k * cin]`, one matrix
/// product per kernel row (rows of the right operand overlap, each row `cin` after the last),
/// whose operands need no transposing copy in the gemm.
fn add_rows_channels_last<T: Elem>(
    (x, grad, g): WeightGradOperands<'_, T>,
    i: usize,
    (y0, y1): (usize, usize),
    padded: &mut [T],
    wide: &mut [T],
    acc: &mut [T],
    par: Parallelism,
) {
    let (hw, p, w, wp, k, cin) = (g.h * g.w, g.p(), g.w, g.wp(), g.k, g.cin);
    let rows = y1 - y0;
    let n = rows * wp;
    // padded rows r = 0..rows + 2p are the image's rows y0 + r - p (zero outside the image)
    padded.fill(T::default());
    let mut at = 0;
    for &(batch, c) in x {
        let img = &batch[i * c * hw..][..c * hw];
        for r in 0..rows + 2 * p {
            let Some(y) = (y0 + r).checked_sub(p).filter(|&y| y < g.h) else {
                continue;
            };
            // row y of the part's c channels into positions p..p + w of padded row r
            let shape = crate::transpose::Shape {
                rows: c,
                cols: w,
                src_stride: hw,
                dst_stride: cin,
            };
            crate::transpose::transpose(
                &img[y * w..],
                &mut padded[(r * wp + p) * cin + at..],
                shape,
            );
        }
        at += c;
    }
    wide_rows(&grad[i * g.cout * hw..][..g.cout * hw], g, (y0, y1), wide);
    for dy in 0..k {
        // SAFETY: acc's (o, col) at dy * k * cin + o * k * k * cin + col < cout * k * k * cin
        // for col < k * cin; wide's (o, j) at o * n + j < cout * n; padded's (j, col) at
        // (j + dy * wp) * cin + col <= ((n - 1) + (k - 1) * wp) * cin + k * cin - 1
        // = ((rows + k - 1) * wp + k - 1) * cin - 1 < padded.len() (2p = k - 1).
        unsafe {
            matmul(
                (g.cout, k * cin, n),
                (
                    acc.as_mut_ptr().add(dy * k * cin),
                    (k * k * cin) as isize,
                    1,
                ),
                true,
                (wide.as_ptr(), n as isize, 1),
                (padded.as_ptr().add(dy * wp * cin), cin as isize, 1),
                par,
            );
        }
    }
}

/// Rows `y0..y1` of one image's output gradient (`cout x h x w`) on the wide grid: `wide[o *
/// (y1 - y0) * wp + (y - y0) * wp + x]`, zero in the discarded columns `x >= w` (every value
/// written).
fn wide_rows<T: Elem>(image: &[T], g: &Geometry, (y0, y1): (usize, usize), wide: &mut [T]) {
    let (w, wp) = (g.w, g.wp());
    let n = (y1 - y0) * wp;
    for o in 0..g.cout {
        for y in y0..y1 {
            let row = &mut wide[o * n + (y - y0) * wp..][..wp];
            row[..w].copy_from_slice(&image[(o * g.h + y) * w..][..w]);
            row[w..].fill(T::default());
        }
    }
}

/// The operands of [`weight_grad_parts`]: the input's channel groups, the output gradient,
/// the geometry.
type WeightGradOperands<'a, T> = (&'a [(&'a [T], usize)], &'a [T], &'a Geometry);

/// Image `i`'s part of [`weight_grad_parts`], added into `acc`, with `padded` (`cin * stride`)
/// and `wide` (`cout * h * wp`) to write into.
fn add_padded<T: Elem>(
    (x, grad, g): WeightGradOperands<'_, T>,
    i: usize,
    padded: &mut [T],
    wide: &mut [T],
    acc: &mut [T],
    par: Parallelism,
) {
    let (hw, s, n, kk) = (g.h * g.w, g.stride(), g.wide(), g.taps());
    padded_image(x, i, g, padded);
    wide_rows(&grad[i * g.cout * hw..][..g.cout * hw], g, (0, g.h), wide);
    let acc_ptr = OutPtr(acc.as_mut_ptr());
    let tap = |t: usize, par: Parallelism| {
        // SAFETY: acc's (o, c) at t + o * cin * kk + c * kk < len; wide's (o, j) < cout * n;
        // padded's (j, c) at c * s + j + tap_offset(t) < cin * s (as in `conv_wide`).
        // Different taps write disjoint elements of acc (offset t, stride kk).
        unsafe {
            matmul(
                (g.cout, g.cin, n),
                (acc_ptr.get().add(t), (g.cin * kk) as isize, kk as isize),
                true,
                (wide.as_ptr(), n as isize, 1),
                (padded.as_ptr().add(g.tap_offset(t)), 1, s as isize),
                par,
            );
        }
    };
    match par {
        // fewer images than threads: the taps over the threads
        Parallelism::Rayon(_) if kk > 1 => (0..kk)
            .into_par_iter()
            .for_each(|t| tap(t, Parallelism::None)),
        _ => (0..kk).for_each(|t| tap(t, par)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Direct loops, the definition: y[n][o][y][x] = sum_i,dy,dx w[o][i][dy][dx] x[n][i][y+dy-p][x+dx-p].
    fn direct(x: &[f64], w: &[f64], g: &Geometry) -> Vec<f64> {
        let (p, k) = (g.p() as isize, g.k);
        let mut y = vec![0.0; g.batch * g.cout * g.h * g.w];
        for n in 0..g.batch {
            for o in 0..g.cout {
                for yy in 0..g.h {
                    for xx in 0..g.w {
                        let mut acc = 0.0;
                        for i in 0..g.cin {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let (sy, sx) = (
                                        yy as isize + dy as isize - p,
                                        xx as isize + dx as isize - p,
                                    );
                                    if sy < 0 || sx < 0 || sy >= g.h as isize || sx >= g.w as isize
                                    {
                                        continue;
                                    }
                                    acc += w[((o * g.cin + i) * k + dy) * k + dx]
                                        * x[((n * g.cin + i) * g.h + sy as usize) * g.w
                                            + sx as usize];
                                }
                            }
                        }
                        y[((n * g.cout + o) * g.h + yy) * g.w + xx] = acc;
                    }
                }
            }
        }
        y
    }

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The geometry of a `(batch, cin, cout, h, w, k)` case.
    fn case((batch, cin, cout, h, w, k): (usize, usize, usize, usize, usize, usize)) -> Geometry {
        Geometry {
            batch,
            cin,
            cout,
            h,
            w,
            k,
        }
    }

    /// A batch `x` (`g.batch` images) cut into two channel groups of its own, as a
    /// concatenation's operands: the first `cin / 2` channels and the rest of `x`'s values, each
    /// read as whole images of its channels; and the per-image concatenation of the two (what
    /// the convolution of the concatenation sees).
    fn halves<'a, T: Copy>(x: &'a [T], g: &Geometry) -> ([(&'a [T], usize); 2], Vec<T>) {
        let (hw, c1) = (g.h * g.w, g.cin / 2);
        let c2 = g.cin - c1;
        let parts = [(&x[..g.batch * c1 * hw], c1), (&x[g.batch * c1 * hw..], c2)];
        let cat = (0..g.batch)
            .flat_map(|i| {
                let a = &parts[0].0[i * c1 * hw..][..c1 * hw];
                let b = &parts[1].0[i * c2 * hw..][..c2 * hw];
                a.iter().chain(b).copied().collect::<Vec<T>>()
            })
            .collect();
        (parts, cat)
    }

    /// Forward against the direct loops; the gradients against the adjoint identities
    /// <conv(x), gy> = <x, input_grad(gy)> = <w, weight_grad(x, gy)>, which hold exactly for
    /// the true gradients (the loss L = <conv(x, w), gy> is linear in x and in w).
    /// The AVX2 + FMA kernels taken under `METRICUNET_AVX512=0` compute the product the gemm
    /// crate's own dispatch computes (f64: to rounding, as the two may sum in another order)
    /// for the layouts the ops use: row-major and column-major results (the latter transposed
    /// before the kernels), strided operands, accumulation and overwriting.
    #[test]
    fn fma_kernels_match_the_dispatched_product() {
        let Some(fma) = f64::fma_gemm() else {
            eprintln!("no AVX2 + FMA on this CPU: nothing to compare");
            return;
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (m, n, k) in [(1, 1, 1), (7, 13, 5), (33, 70, 19), (64, 9, 130)] {
            let lhs = random(m * k * 2, &mut rng);
            let rhs = random(k * n, &mut rng);
            let start = random(m * n, &mut rng);
            // (dst column stride, dst row stride): row-major, column-major
            for (dcs, drs) in [(1, n as isize), (m as isize, 1)] {
                for accumulate in [false, true] {
                    let run = |f: GemmFn<f64>| {
                        let mut dst = start.clone();
                        // lhs: every other column of an m x 2k row-major matrix
                        unsafe {
                            f(
                                m,
                                n,
                                k,
                                dst.as_mut_ptr(),
                                dcs,
                                drs,
                                accumulate,
                                lhs.as_ptr(),
                                2,
                                (2 * k) as isize,
                                rhs.as_ptr(),
                                1,
                                n as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                Parallelism::None,
                            );
                        }
                        dst
                    };
                    let (got, want) = (run(fma), run(gemm::gemm::<f64>));
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-12 * (1.0 + b.abs()),
                            "{m}x{n}x{k}: {a} vs {b}"
                        );
                    }
                    // and the definition
                    for r in 0..m {
                        for c in 0..n {
                            let mut v: f64 = (0..k)
                                .map(|j| lhs[r * 2 * k + 2 * j] * rhs[j * n + c])
                                .sum();
                            if accumulate {
                                v += start[(r as isize * drs + c as isize * dcs) as usize];
                            }
                            let at = (r as isize * drs + c as isize * dcs) as usize;
                            assert!((got[at] - v).abs() < 1e-12 * (1.0 + v.abs()));
                        }
                    }
                }
            }
        }
    }

    /// The direct AVX-512 kernel (f32 forward and input gradient) against the gemm path and
    /// the f64 definition: 3x3, 5x5 and 1x1, tiles of 1-6 vectors, partial last tiles, batches below and above the thread count, the concatenation's two inputs,
    /// and an input gradient with 6 channels (not a multiple of 4: the gemm path). Scratch
    /// buffers start as NaN, so a value the kernel does not write shows.
    #[test]
    fn direct_kernel_matches_the_gemm_path_and_the_definition() {
        if !crate::direct::supported() {
            eprintln!("no AVX-512F here: the direct kernel is not used, nothing to compare");
            DIRECT.with(|d| d.set(Some(true)));
            assert!(f32::direct((8, 3, 9, 4096), &|_, _, _| 0.0).is_none());
            DIRECT.with(|d| d.set(None));
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let geometries = [
            (1, 3, 8, 5, 7, 3),
            (3, 40, 32, 9, 13, 3),
            (2, 8, 4, 4, 4, 1),
            (1, 16, 12, 17, 3, 3),
            (5, 6, 8, 6, 6, 5),
            // tiles of 5 and of 2 vectors (80 and 24 positions)
            (2, 8, 8, 8, 8, 3),
            (1, 4, 4, 3, 6, 3),
        ];
        for dims in geometries {
            let g = case(dims);
            let (batch, cin, cout, h, w, k) = dims;
            let x = random(batch * cin * h * w, &mut rng);
            let wt = random(cout * cin * k * k, &mut rng);
            let gy = random(batch * cout * h * w, &mut rng);
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x32, w32, gy32) = (f32s(&x), f32s(&wt), f32s(&gy));
            let passes = |gemm: bool| {
                DIRECT.with(|d| d.set(Some(!gemm)));
                POISON.with(|p| p.set(true));
                let (parts, split) = halves(&x32, &g);
                let out = [
                    forward(&x32, &w32, &g),
                    input_grad(&gy32, &w32, &g),
                    forward_parts(&parts, &w32, &g),
                    forward(&split, &w32, &g),
                ];
                POISON.with(|p| p.set(false));
                DIRECT.with(|d| d.set(None));
                out
            };
            let (ours, gemm) = (passes(false), passes(true));
            DIRECT.with(|d| d.set(Some(true)));
            assert!(f32::direct((cout, cin, k * k, 1), &|_, _, _| 0.0).is_some());
            DIRECT.with(|d| d.set(None));
            // the rule where switched on: narrow 3x3 layers with at least 256 positions
            assert!(!crate::direct::chosen(cin, 9, 255));
            assert!(crate::direct::chosen(cin, 9, 256));
            assert!(!crate::direct::chosen(65, 9, 4096));
            assert!(!crate::direct::chosen(cin, 1, 4096));
            let want = direct(&x, &wt, &g);
            for (pass, (a, b)) in ours.iter().zip(&gemm).enumerate() {
                let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (p - q).abs() <= 1e-5 * scale,
                        "{g:?} pass {pass}: {p} vs {q}"
                    );
                }
            }
            for (p, q) in ours[0].iter().zip(&want) {
                assert!(
                    (f64::from(*p) - q).abs() < 1e-5 * (1.0 + q.abs()),
                    "{g:?}: {p} vs {q}"
                );
            }
            // the concatenation's forward is the forward of the concatenated input
            assert_eq!(ours[2], ours[3], "{g:?}");
        }
    }

    #[test]
    fn forward_and_gradients_against_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for g in [
            Geometry {
                batch: 3,
                cin: 2,
                cout: 3,
                h: 5,
                w: 7,
                k: 3,
            },
            Geometry {
                batch: 1,
                cin: 4,
                cout: 2,
                h: 6,
                w: 4,
                k: 1,
            },
            // one image, fewer than the threads: taps of the weight gradient in parallel
            Geometry {
                batch: 1,
                cin: 3,
                cout: 4,
                h: 5,
                w: 6,
                k: 3,
            },
            Geometry {
                batch: 2,
                cin: 3,
                cout: 5,
                h: 7,
                w: 6,
                k: 5,
            },
        ] {
            let x = random(g.batch * g.cin * g.h * g.w, &mut rng);
            let w = random(g.cout * g.cin * g.k * g.k, &mut rng);
            let gy = random(g.batch * g.cout * g.h * g.w, &mut rng);
            let y = forward(&x, &w, &g);
            let want = direct(&x, &w, &g);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
            let l = dot(&y, &gy);
            let gx = input_grad(&gy, &w, &g);
            // the per-tap products, then the channels-last ones
            CHANNELS_LAST.with(|c| c.set(Some(false)));
            let gw_taps = weight_grad(&x, &gy, &g);
            CHANNELS_LAST.with(|c| c.set(Some(true)));
            let gw = weight_grad(&x, &gy, &g);
            CHANNELS_LAST.with(|c| c.set(None));
            for (a, b) in gw.iter().zip(&gw_taps) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
            assert!((dot(&x, &gx) - l).abs() < 1e-10 * (1.0 + l.abs()), "{g:?}");
            assert!((dot(&w, &gw) - l).abs() < 1e-10 * (1.0 + l.abs()), "{g:?}");
            // and element by element: d L / d x at one voxel by a unit perturbation
            let mut x1 = x.clone();
            x1[5] += 1.0;
            let d = dot(&direct(&x1, &w, &g), &gy) - l;
            assert!((d - gx[5]).abs() < 1e-10, "{g:?}: {d} vs {}", gx[5]);
            let mut w1 = w.clone();
            w1[1] += 1.0;
            let d = dot(&direct(&x, &w1, &g), &gy) - l;
            assert!((d - gw[1]).abs() < 1e-10, "{g:?}: {d} vs {}", gw[1]);
        }
    }

    /// The channels-last weight gradient against the per-tap one and the definition: channel
    /// groups (a concatenation), fewer images than threads (each image's rows split over the
    /// threads, including row counts that do not divide), kernel sides 1, 3 and 5, buffers
    /// handed out full of NaN (a value read before it is written shows); and the rule.
    #[test]
    fn channels_last_weight_gradient_is_the_per_tap_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for (batch, cin, cout, h, w, k) in [
            (1, 5, 3, 7, 6, 3),
            (1, 16, 8, 3, 5, 3),
            (3, 6, 4, 5, 9, 3),
            (2, 7, 2, 6, 6, 1),
            (1, 4, 3, 8, 7, 5),
            (1, 3, 2, 1, 4, 3),
            // 16-channel blocks with a remainder, rows longer than a block
            (2, 35, 4, 3, 21, 3),
        ] {
            let g = case((batch, cin, cout, h, w, k));
            let x = random(batch * cin * h * w, &mut rng);
            let gy = random(batch * cout * h * w, &mut rng);
            let (parts, cat) = halves(&x, &g);
            let run = |channels_last: bool| {
                CHANNELS_LAST.with(|c| c.set(Some(channels_last)));
                POISON.with(|p| p.set(true));
                let out = weight_grad_parts(&parts, &gy, &g);
                POISON.with(|p| p.set(false));
                CHANNELS_LAST.with(|c| c.set(None));
                out
            };
            let (ours, taps) = (run(true), run(false));
            assert_eq!(ours.len(), cout * cin * k * k);
            // f32 (its transposition in 16 x 16 blocks where the CPU has AVX-512) to f32 rounding
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x32, gy32) = (f32s(&x), f32s(&gy));
            let (parts32, _) = halves(&x32, &g);
            CHANNELS_LAST.with(|c| c.set(Some(true)));
            POISON.with(|p| p.set(true));
            let ours32 = weight_grad_parts(&parts32, &gy32, &g);
            POISON.with(|p| p.set(false));
            CHANNELS_LAST.with(|c| c.set(None));
            let scale = taps.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (a, b) in ours32.iter().zip(&taps) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-5 * scale,
                    "{g:?}: {a} vs {b}"
                );
            }
            for (a, b) in ours.iter().zip(&taps) {
                assert!((a - b).abs() < 1e-12, "{g:?}: {a} vs {b}");
            }
            // the definition: d/dw <conv(x, w), gy> at every weight, with x the concatenation
            let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
            let zero = vec![0.0; cout * cin * k * k];
            for j in 0..zero.len() {
                let mut unit = zero.clone();
                unit[j] = 1.0;
                let d = dot(&direct(&cat, &unit, &g), &gy);
                assert!(
                    (d - ours[j]).abs() < 1e-10,
                    "{g:?} weight {j}: {d} vs {}",
                    ours[j]
                );
            }
        }
        assert!(!channels_last_wanted(CHANNELS_LAST_MIN_CIN - 1));
        assert_eq!(
            channels_last_wanted(CHANNELS_LAST_MIN_CIN),
            crate::cpu_values::env_switch("METRICUNET_CHANNELS_LAST_WGRAD", true)
        );
    }
}
