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

/// f32 or f64.
pub trait Elem:
    Copy
    + Send
    + Sync
    + Default
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    const ONE: Self;
    const HALF: Self;
}
impl Elem for f32 {
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
}
impl Elem for f64 {
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
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
/// already zero).
fn pad<T: Elem>(src: &[T], c: usize, g: &Geometry, dst: &mut [T]) {
    let (p, wp, s) = (g.p(), g.wp(), g.stride());
    for ch in 0..c {
        for y in 0..g.h {
            let from = &src[(ch * g.h + y) * g.w..][..g.w];
            dst[ch * s + (y + p) * wp + p..][..g.w].copy_from_slice(from);
        }
    }
}

/// Image `i` of a batch given as channel groups `(values, channels)` (the channels of a
/// concatenation, in order), zero-padded (`channels * stride` values).
fn padded_image<T: Elem>(parts: &[(&[T], usize)], i: usize, g: &Geometry) -> Vec<T> {
    let hw = g.h * g.w;
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut padded = vec![T::default(); total * g.stride()];
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
    padded
}

/// The valid columns of a wide `c x h x wp` result into `c x h x w`.
fn unwide<T: Elem>(wide: &[T], c: usize, g: &Geometry, dst: &mut [T]) {
    let (wp, n) = (g.wp(), g.wide());
    for ch in 0..c {
        for y in 0..g.h {
            dst[(ch * g.h + y) * g.w..][..g.w].copy_from_slice(&wide[ch * n + y * wp..][..g.w]);
        }
    }
}

/// `dst (+)= lhs * rhs` for an `m x n` result with inner dimension `k`; every operand is a
/// pointer with its row and column strides (the gemm crate takes them column first).
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
    gemm::gemm(
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

/// `out (m x wide) = sum over taps  A_t (m x kdim) * padded (kdim x wide, shifted by tap)`.
#[allow(clippy::too_many_arguments)]
fn conv_wide<T: Elem>(
    weights: &[T],
    view: TapView,
    padded: &[T],
    m: usize,
    kdim: usize,
    g: &Geometry,
    out: &mut [T],
    par: Parallelism,
) {
    let (n, s, kk) = (g.wide(), g.stride(), g.taps());
    debug_assert!(padded.len() >= kdim * s && out.len() >= m * n && weights.len() >= m * kdim * kk);
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
    let mut out = vec![T::default(); g.batch * c_to * hw];
    let ptr = OutPtr(out.as_mut_ptr());
    for_images(g.batch, |i, par| {
        let padded = padded_image(input, i, g);
        let mut wide = vec![T::default(); c_to * n];
        conv_wide(weights, view, &padded, c_to, c_from, g, &mut wide, par);
        // SAFETY: image i owns out[i * c_to * hw .. (i + 1) * c_to * hw]
        let dst =
            unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * c_to * hw), c_to * hw) };
        unwide(&wide, c_to, g, dst);
    });
    out
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
pub fn weight_grad_parts<T: Elem>(x: &[(&[T], usize)], grad: &[T], g: &Geometry) -> Vec<T> {
    let (hw, s, n, kk) = (g.h * g.w, g.stride(), g.wide(), g.taps());
    let len = g.cout * g.cin * kk;
    // one image's contribution, accumulated into `acc`
    let add_image = |i: usize, acc: &mut [T], par: Parallelism| {
        let padded = padded_image(x, i, g);
        // the output gradient on the wide grid, zero in the discarded columns
        let mut wide = vec![T::default(); g.cout * n];
        let gi = &grad[i * g.cout * hw..][..g.cout * hw];
        for o in 0..g.cout {
            for y in 0..g.h {
                wide[o * n + y * g.wp()..][..g.w]
                    .copy_from_slice(&gi[(o * g.h + y) * g.w..][..g.w]);
            }
        }
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
    };
    sum_over_images(g.batch, len, add_image)
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

    /// Forward against the direct loops; the gradients against the adjoint identities
    /// <conv(x), gy> = <x, input_grad(gy)> = <w, weight_grad(x, gy)>, which hold exactly for
    /// the true gradients (the loss L = <conv(x, w), gy> is linear in x and in w).
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
            let gw = weight_grad(&x, &gy, &g);
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
}
