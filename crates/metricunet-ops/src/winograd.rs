//! Winograd F(2x2, 3x3) for the 3x3 "same" convolution on the CPU: forward, input gradient and
//! weight gradient, each as 16 matrix products per image instead of the 9 of the direct
//! ([`crate::conv_cpu`]) path, on 4 times fewer columns (one per 2x2 output tile instead of one
//! per output): 2.25x fewer multiplications in the products, plus the tile transforms.
//!
//! With `d` a 4x4 input tile, `g` a 3x3 kernel and the matrices `B^T`, `G`, `A^T` of Lavin &
//! Gray (2016), a 2x2 output tile is `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A`. Per image:
//!
//! - forward: `V[ξ] (cin x tiles)` from the input tiles (stored channel-major, `V[c][ξ][t]`), `U[ξ] (cout x cin)` from the kernel
//!   (once per call), `M[ξ] = U[ξ] V[ξ]` for the 16 positions ξ of the 4x4 transform, then
//!   `A^T M A` per output tile;
//! - input gradient: the forward of the output gradient with the flipped kernel, its in- and
//!   out-channels swapped (for stride 1 and padding 1 the adjoint is that convolution);
//! - weight gradient: `Y` is linear in `U`, so `dL/dU[ξ] = sum over tiles of (A dY A^T)[ξ]
//!   V[ξ]^T` (16 products with the tiles as inner dimension, summed over the images) and
//!   `dL/dg = G^T (dL/dU) G`.
//!
//! Images of odd height or width get a last tile that reaches past the image: its input is
//! zero there, its outputs there are dropped (and their gradients are zero). Checked against the
//! direct path and by the adjoint identities in f64 (tests below), and by finite differences
//! through the network in `tests/finite_differences.rs` (with `METRICUNET_WINOGRAD=1`).
//!
//! The transforms add and subtract values of similar size, so the rounding error stays of the
//! order of the direct path's in f32 (measured by `metricunet bench conv`).

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv_cpu::{for_images, matmul, sum_over_images, Elem, Geometry, OutPtr, Scratch};
use crate::simd::vectorised;

/// 2x2 output tiles of one image, `ty` rows of `tx`.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    ty: usize,
    tx: usize,
}

impl Tiles {
    fn of(g: &Geometry) -> Self {
        Tiles {
            ty: g.h.div_ceil(2),
            tx: g.w.div_ceil(2),
        }
    }
    fn count(&self) -> usize {
        self.ty * self.tx
    }
    /// Row length of the zero-bordered plane a channel is copied into (image at (1, 1)).
    fn pw(&self) -> usize {
        2 * self.tx + 2
    }
    fn plane(&self) -> usize {
        (2 * self.ty + 2) * self.pw()
    }
}

/// `[x0 - x2, x1 + x2, x2 - x1, x1 - x3]`: one side of `B^T d B`.
#[inline(always)]
fn bt<T: Elem>(x: [T; 4]) -> [T; 4] {
    [x[0] - x[2], x[1] + x[2], x[2] - x[1], x[1] - x[3]]
}

/// `[x0, (x0 + x1 + x2) / 2, (x0 - x1 + x2) / 2, x2]`: one side of `G g G^T`.
#[inline(always)]
fn gk<T: Elem>(x: [T; 3]) -> [T; 4] {
    let h = T::HALF;
    let s = x[0] + x[2];
    [x[0], (s + x[1]) * h, (s - x[1]) * h, x[2]]
}

/// `[x0 + x1 + x2, x1 - x2 - x3]`: one side of `A^T m A`.
#[inline(always)]
fn at<T: Elem>(x: [T; 4]) -> [T; 2] {
    [x[0] + x[1] + x[2], x[1] - x[2] - x[3]]
}

/// `[x0, x0 + x1, x0 - x1, -x1]`: one side of `A dy A^T` (the adjoint of [`at`]).
#[inline(always)]
fn a<T: Elem>(x: [T; 2]) -> [T; 4] {
    [x[0], x[0] + x[1], x[0] - x[1], T::default() - x[1]]
}

/// `[x0 + (x1 + x2) / 2, (x1 - x2) / 2, (x1 + x2) / 2 + x3]`: one side of `G^T dU G` (the
/// adjoint of [`gk`]).
#[inline(always)]
fn gt<T: Elem>(x: [T; 4]) -> [T; 3] {
    let h = T::HALF;
    let s = (x[1] + x[2]) * h;
    [x[0] + s, (x[1] - x[2]) * h, s + x[3]]
}

/// The kernel `(m, kdim, 3, 3)` transformed: `U[ξ][o][c]` (16 x m x kdim). With `swap`, the
/// kernel is read as its adjoint for the input gradient: `w'[o][c] = flip(w[c][o])`, `w` being
/// `(kdim, m, 3, 3)`.
fn kernel_transform<T: Elem>(w: &[T], m: usize, kdim: usize, swap: bool) -> Vec<T> {
    let mut u = vec![T::default(); 16 * m * kdim];
    for o in 0..m {
        for c in 0..kdim {
            let k: [T; 9] = std::array::from_fn(|t| {
                if swap {
                    w[(c * m + o) * 9 + 8 - t]
                } else {
                    w[(o * kdim + c) * 9 + t]
                }
            });
            // G g: columns of g, one at a time
            let cols: [[T; 4]; 3] = std::array::from_fn(|s| gk([k[s], k[3 + s], k[6 + s]]));
            for r in 0..4 {
                let row = gk([cols[0][r], cols[1][r], cols[2][r]]);
                for (s, v) in row.into_iter().enumerate() {
                    u[((r * 4 + s) * m + o) * kdim + c] = v;
                }
            }
        }
    }
    u
}

/// Runs `f(index, chunk)` for the consecutive `len`-value chunks of `buf`, on the threads when
/// `parallel` (each chunk is one channel's block, so no two calls share a value).
fn per_chunk<T: Elem>(
    buf: &mut [T],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if parallel {
        buf.par_chunks_mut(len)
            .enumerate()
            .for_each(|(k, c)| f(k, c));
    } else {
        buf.chunks_mut(len).enumerate().for_each(|(k, c)| f(k, c));
    }
}

/// The 16 blocks of `nt` values of one channel's transform (`[ξ][t]`), as separate slices.
fn blocks<T>(v: &mut [T], nt: usize) -> Vec<&mut [T]> {
    v.chunks_mut(nt).take(16).collect()
}

/// The row pass of a transform for one row of tiles: `rt[r][x] = f(the K input rows at x)[r]`
/// for every column x (4 rows of `len` values, contiguous vectors).
#[inline(always)]
fn row_pass<T: Elem, const K: usize>(
    rows: [&[T]; K],
    len: usize,
    rt: &mut [T],
    f: impl Fn([T; K]) -> [T; 4],
) {
    // every slice exactly `len` long, so that the loop needs no bounds checks
    let rows = rows.map(|r| &r[..len]);
    let (r0, rest) = rt.split_at_mut(len);
    let (r1, rest) = rest.split_at_mut(len);
    let (r2, r3) = rest.split_at_mut(len);
    let r3 = &mut r3[..len];
    for x in 0..len {
        let [a0, a1, a2, a3] = f(std::array::from_fn(|k| rows[k][x]));
        r0[x] = a0;
        r1[x] = a1;
        r2[x] = a2;
        r3[x] = a3;
    }
}

/// The column pass of a transform for one row of tiles: for each of the 4 rows of `rt` (`len`
/// values each) and each tile (a window of `width` values moving by 2), `f` of the window gives
/// the tile's 4 values in that row, written to blocks `4 r .. 4 r + 4` of `out` at the tile's
/// position within `span`.
#[inline(always)]
fn column_pass<T: Elem>(
    rt: &[T],
    len: usize,
    width: usize,
    out: &mut [&mut [T]],
    span: std::ops::Range<usize>,
    f: impl Fn(&[T]) -> [T; 4],
) {
    for (r, quad) in out.chunks_exact_mut(4).enumerate().take(4) {
        let src = &rt[r * len..][..len];
        let [o0, o1, o2, o3] = quad else {
            unreachable!("chunks of 4")
        };
        let (o0, o1, o2, o3) = (
            &mut o0[span.clone()],
            &mut o1[span.clone()],
            &mut o2[span.clone()],
            &mut o3[span.clone()],
        );
        let tiles = o0
            .iter_mut()
            .zip(o1.iter_mut())
            .zip(o2.iter_mut().zip(o3.iter_mut()));
        for (e, ((o0, o1), (o2, o3))) in src.windows(width).step_by(2).zip(tiles) {
            [*o0, *o1, *o2, *o3] = f(e);
        }
    }
}

/// Image `i` of a batch given as channel groups `(values, channels)` transformed:
/// `V[c][ξ][t]` (channels x 16 x tiles) into `v`; the channels on the threads when `parallel`.
///
/// Per row of tiles: first `B^T` over the tile's 4 rows for every column of the row span at
/// once (contiguous vectors), then `B` over each tile's 4 columns (a window of 4 moving by 2),
/// each of the 16 results written to its own contiguous block.
fn input_transform<T: Elem>(
    parts: &[(&[T], usize)],
    i: usize,
    g: &Geometry,
    tl: Tiles,
    v: &mut [T],
    parallel: bool,
) {
    let (hw, nt) = (g.h * g.w, tl.count());
    // channel c of the concatenation: its image
    let channels: Vec<&[T]> = parts
        .iter()
        .flat_map(|&(batch, cp)| (0..cp).map(move |ch| &batch[(i * cp + ch) * hw..][..hw]))
        .collect();
    debug_assert!(v.len() >= channels.len() * 16 * nt);
    per_chunk(v, 16 * nt, parallel, |c, v| {
        vectorised(
            #[inline(always)]
            || input_channel(channels[c], g, tl, v),
        )
    });
}

/// One channel's image transformed into its 16 blocks of `nt` values (see
/// [`input_transform`]); inlined into each instruction set's copy ([`vectorised`]).
#[inline(always)]
fn input_channel<T: Elem>(img: &[T], g: &Geometry, tl: Tiles, v: &mut [T]) {
    let (nt, pw) = (tl.count(), tl.pw());
    // the border (and, for odd sizes, the last row and column) stays zero
    let mut plane = vec![T::default(); tl.plane()];
    for y in 0..g.h {
        plane[(y + 1) * pw + 1..][..g.w].copy_from_slice(&img[y * g.w..][..g.w]);
    }
    let mut out = blocks(v, nt);
    let mut rt = vec![T::default(); 4 * pw];
    for ty in 0..tl.ty {
        let rows: [&[T]; 4] = std::array::from_fn(|r| &plane[(2 * ty + r) * pw..][..pw]);
        // B^T over the tile's 4 rows, then B over each tile's 4 columns
        row_pass(rows, pw, &mut rt, bt);
        let span = ty * tl.tx..(ty + 1) * tl.tx;
        column_pass(&rt, pw, 4, &mut out, span, |e| bt([e[0], e[1], e[2], e[3]]));
    }
}

/// `M[o][ξ][t]` back to one image's `(m, h, w)` output: `A^T M A` per tile, a row of tiles at
/// a time (`A^T` over the 4 rows as contiguous vectors, then `A` over the 4 columns).
fn output_transform<T: Elem>(mm: &[T], g: &Geometry, tl: Tiles, dst: &mut [T], parallel: bool) {
    let nt = tl.count();
    per_chunk(dst, g.h * g.w, parallel, |o, out| {
        vectorised(
            #[inline(always)]
            || output_channel(&mm[o * 16 * nt..][..16 * nt], g, tl, out),
        )
    });
}

/// One output channel `(h, w)` from its products `mo` (`[ξ][t]`, see [`output_transform`]);
/// inlined into each instruction set's copy ([`vectorised`]).
#[inline(always)]
fn output_channel<T: Elem>(mo: &[T], g: &Geometry, tl: Tiles, out: &mut [T]) {
    let nt = tl.count();
    // cols[s][r']: row r' of A^T M for column s of every tile of the row
    let mut cols = vec![T::default(); 8 * tl.tx];
    let mut row = vec![T::default(); 2 * tl.tx];
    for ty in 0..tl.ty {
        let span = ty * tl.tx..(ty + 1) * tl.tx;
        for s in 0..4 {
            // every slice exactly `tx` long: no bounds checks in the loop
            let m: [&[T]; 4] =
                std::array::from_fn(|r| &mo[(r * 4 + s) * nt + span.start..][..tl.tx]);
            let (c0, c1) = cols[2 * s * tl.tx..][..2 * tl.tx].split_at_mut(tl.tx);
            let c1 = &mut c1[..tl.tx];
            for t in 0..tl.tx {
                let [a0, a1] = at([m[0][t], m[1][t], m[2][t], m[3][t]]);
                c0[t] = a0;
                c1[t] = a1;
            }
        }
        for r in 0..2 {
            let y = 2 * ty + r;
            if y >= g.h {
                break;
            }
            let c: [&[T]; 4] = std::array::from_fn(|s| &cols[(2 * s + r) * tl.tx..][..tl.tx]);
            for (t, pair) in row[..2 * tl.tx].chunks_exact_mut(2).enumerate() {
                let [a0, a1] = at([c[0][t], c[1][t], c[2][t], c[3][t]]);
                pair[0] = a0;
                pair[1] = a1;
            }
            out[y * g.w..][..g.w].copy_from_slice(&row[..g.w]);
        }
    }
}

/// One image's output gradient `(m, h, w)` transformed: `A dY A^T` per tile, `D[o][ξ][t]`, a
/// row of tiles at a time (as [`input_transform`]).
fn grad_transform<T: Elem>(gy: &[T], g: &Geometry, tl: Tiles, d: &mut [T], parallel: bool) {
    let nt = tl.count();
    per_chunk(d, 16 * nt, parallel, |o, d| {
        vectorised(
            #[inline(always)]
            || grad_channel(&gy[o * g.h * g.w..][..g.h * g.w], g, tl, d),
        )
    });
}

/// One channel of the output gradient transformed into its 16 blocks (see
/// [`grad_transform`]); inlined into each instruction set's copy ([`vectorised`]).
#[inline(always)]
fn grad_channel<T: Elem>(img: &[T], g: &Geometry, tl: Tiles, d: &mut [T]) {
    let (nt, wide) = (tl.count(), 2 * tl.tx);
    let mut out = blocks(d, nt);
    // the two rows of a tile row, zero past the image
    let mut rows = vec![T::default(); 2 * wide];
    let mut rt = vec![T::default(); 4 * wide];
    for ty in 0..tl.ty {
        for r in 0..2 {
            let y = 2 * ty + r;
            let dst = &mut rows[r * wide..][..wide];
            if y < g.h {
                dst[..g.w].copy_from_slice(&img[y * g.w..][..g.w]);
            } else {
                dst[..g.w].fill(T::default());
            }
        }
        let (y0, y1) = rows.split_at(wide);
        // A over the tile's 2 rows, then A^T over each tile's 2 columns
        row_pass([y0, y1], wide, &mut rt, a);
        let span = ty * tl.tx..(ty + 1) * tl.tx;
        column_pass(&rt, wide, 2, &mut out, span, |e| a([e[0], e[1]]));
    }
}

/// Whether the images run one after the other (`par` hands the threads out): then the
/// transforms and the 16 products of an image are spread over the threads.
fn spare_threads(par: Parallelism) -> bool {
    matches!(par, Parallelism::Rayon(_))
}

/// The 16 products `M[o][ξ][·] = U[ξ] (m x kdim) V[·][ξ][·] (kdim x nt)`; with threads to
/// spare the 16 run on the threads, each on one.
/// Every value of `mm` (`16 m nt`) is written (the products do not accumulate).
fn products<T: Elem>(
    u: &[T],
    v: &[T],
    (m, kdim, nt): (usize, usize, usize),
    mm: &mut [T],
    par: Parallelism,
) {
    debug_assert!(mm.len() >= 16 * m * nt);
    let out = OutPtr(mm.as_mut_ptr());
    let row = (16 * nt) as isize;
    let one = |xi: usize, par: Parallelism| {
        // SAFETY: product ξ reads U's (r, c) at ξ m kdim + r kdim + c < 16 m kdim and V's
        // (c, j) at c 16 nt + ξ nt + j < 16 kdim nt, and writes M's (o, j) at o 16 nt + ξ nt
        // + j: the values of block ξ, which no other product writes.
        unsafe {
            matmul(
                (m, nt, kdim),
                (out.get().add(xi * nt), row, 1),
                false,
                (u.as_ptr().add(xi * m * kdim), kdim as isize, 1),
                (v.as_ptr().add(xi * nt), row, 1),
                par,
            );
        }
    };
    sixteen(spare_threads(par), par, one);
}

/// `one(ξ, parallelism)` for the 16 positions ξ of the transform: on the threads, each product
/// single-threaded, when `parallel`; else one after the other, each with `par`.
fn sixteen(parallel: bool, par: Parallelism, one: impl Fn(usize, Parallelism) + Sync) {
    if parallel {
        (0..16)
            .into_par_iter()
            .for_each(|xi| one(xi, Parallelism::None));
    } else {
        (0..16).for_each(|xi| one(xi, par));
    }
}

/// The convolution of a batch (channel groups `input`, `kdim` channels in all) with the
/// transformed kernel `u` (16 x m x kdim) -> `(N, m, H, W)`.
fn conv_batch<T: Elem>(input: &[(&[T], usize)], u: &[T], m: usize, g: &Geometry) -> Vec<T> {
    let tl = Tiles::of(g);
    let (hw, nt) = (g.h * g.w, tl.count());
    let kdim: usize = input.iter().map(|p| p.1).sum();
    let mut out = vec![T::default(); g.batch * m * hw];
    let ptr = OutPtr(out.as_mut_ptr());
    let (vs, ms) = (Scratch::new(g.batch), Scratch::new(g.batch));
    for_images(g.batch, |i, par| {
        // both written in full: the transform fills every block, the products every value
        vs.with(16 * kdim * nt, |v: &mut [T]| {
            input_transform(input, i, g, tl, v, spare_threads(par));
            ms.with(16 * m * nt, |mm: &mut [T]| {
                products(u, v, (m, kdim, nt), mm, par);
                // SAFETY: image i owns out[i * m * hw .. (i + 1) * m * hw]
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(ptr.get().add(i * m * hw), m * hw) };
                output_transform(mm, g, tl, dst, spare_threads(par));
            });
        });
    });
    out
}

fn check(g: &Geometry) {
    assert_eq!(
        g.k, 3,
        "Winograd F(2x2, 3x3) is for 3x3 kernels, got {}",
        g.k
    );
}

/// Forward: `x (N, cin, H, W)`, `w (cout, cin, 3, 3)` -> `(N, cout, H, W)`.
pub fn forward<T: Elem>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    forward_parts(&[(x, g.cin)], w, g)
}

/// [`forward`] of the channel concatenation of `parts` (each `(N, c_i, H, W)`, `sum c_i = cin`).
pub fn forward_parts<T: Elem>(parts: &[(&[T], usize)], w: &[T], g: &Geometry) -> Vec<T> {
    check(g);
    let u = kernel_transform(w, g.cout, g.cin, false);
    conv_batch(parts, &u, g.cout, g)
}

/// Input gradient `(N, cin, H, W)` of the output gradient `(N, cout, H, W)`.
pub fn input_grad<T: Elem>(grad: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    check(g);
    let u = kernel_transform(w, g.cin, g.cout, true);
    conv_batch(&[(grad, g.cout)], &u, g.cin, g)
}

/// Weight gradient `(cout, cin, 3, 3)`.
pub fn weight_grad<T: Elem>(x: &[T], grad: &[T], g: &Geometry) -> Vec<T> {
    weight_grad_parts(&[(x, g.cin)], grad, g)
}

/// [`weight_grad`] with the input given as channel groups (see [`forward_parts`]).
pub fn weight_grad_parts<T: Elem>(x: &[(&[T], usize)], grad: &[T], g: &Geometry) -> Vec<T> {
    check(g);
    let tl = Tiles::of(g);
    let (hw, nt, cout, cin) = (g.h * g.w, tl.count(), g.cout, g.cin);
    // dL/dU summed over the images: 16 x cout x cin
    let (vs, ds) = (Scratch::new(g.batch), Scratch::new(g.batch));
    let du = sum_over_images(g.batch, 16 * cout * cin, |i, acc: &mut [T], par| {
        let parallel = spare_threads(par);
        // both written in full by their transforms
        vs.with(16 * cin * nt, |v: &mut [T]| {
            input_transform(x, i, g, tl, v, parallel);
            ds.with(16 * cout * nt, |d: &mut [T]| {
                grad_transform(&grad[i * cout * hw..][..cout * hw], g, tl, d, parallel);
                let acc_ptr = OutPtr(acc.as_mut_ptr());
                let row = (16 * nt) as isize;
                let one = |xi: usize, par: Parallelism| {
                    // SAFETY: product ξ writes only acc's block ξ (cout cin values), reads D's
                    // (o, t) at o 16 nt + ξ nt + t and V's transposed (t, c) at c 16 nt + ξ nt + t.
                    unsafe {
                        matmul(
                            (cout, cin, nt),
                            (acc_ptr.get().add(xi * cout * cin), cin as isize, 1),
                            true,
                            (d.as_ptr().add(xi * nt), row, 1),
                            (v.as_ptr().add(xi * nt), 1, row),
                            par,
                        );
                    }
                };
                sixteen(parallel, par, one);
            });
        });
    });
    // dL/dg = G^T dU G per (o, c)
    let mut gw = vec![T::default(); cout * cin * 9];
    for o in 0..cout {
        for c in 0..cin {
            let at_ = |xi: usize| du[(xi * cout + o) * cin + c];
            let cols: [[T; 3]; 4] =
                std::array::from_fn(|s| gt([at_(s), at_(4 + s), at_(8 + s), at_(12 + s)]));
            for r in 0..3 {
                let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
                gw[(o * cin + c) * 9 + r * 3..][..3].copy_from_slice(&row);
            }
        }
    }
    gw
}

/// Whether the automatic choice takes Winograd for this 3x3 layer, from the per-layer
/// measurements of `metricunet bench conv` on the paper and quickstart networks at batch 1 and
/// 8 and from whole training steps (bench/NOTES.md, session 10; Winograd / direct time):
///
/// - fewer than 64 channels in or out: never. Below 32 the products are too thin for the
///   transforms to pay (1.1-2x slower); at 32 the quickstart's 64 x 64 layers win alone
///   (0.81-1.08) but its whole training step did not (four alternating pairs: 0.97-1.06).
/// - images of at least 32 x 32: always (0.46-0.89 at batch 8, the top 256-channel layers
///   0.46-0.57; 0.52-1.09 at batch 1);
/// - smaller images only with enough tiles over the batch: at least 2048 output positions per
///   channel (16 x 16 at batch 8: 0.61-0.84; at batch 1 1.04-1.32), or 512 with 128 channels
///   (8 x 8 at batch 8: 0.72-0.95, where the quickstart's 64-channel 8 x 8 layer took
///   1.03-1.15).
///
/// One rule for the forward and both gradients (the weight gradient gains least, but gains).
pub fn chosen_automatically(g: &Geometry) -> bool {
    let (c, hw) = (g.cin.min(g.cout), g.h * g.w);
    let positions = g.batch * hw;
    g.k == 3 && c >= 64 && (hw >= 1024 || positions >= 2048 || (c >= 128 && positions >= 512))
}

/// The setting of `METRICUNET_WINOGRAD`: `0` never, `1` every 3x3 layer, unset or `auto` the
/// measured rule ([`chosen_automatically`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Never,
    Always,
    Auto,
}

fn setting() -> Setting {
    static SETTING: std::sync::OnceLock<Setting> = std::sync::OnceLock::new();
    *SETTING.get_or_init(|| match std::env::var("METRICUNET_WINOGRAD").as_deref() {
        Ok("0") => Setting::Never,
        Ok("1") => Setting::Always,
        Ok("auto") | Err(_) => Setting::Auto,
        Ok(other) => {
            tracing::warn!("METRICUNET_WINOGRAD={other}: expected 0, 1 or auto; using auto");
            Setting::Auto
        }
    })
}

/// Whether the CPU convolution runs this layer (forward and gradients) through Winograd.
pub fn chosen(g: &Geometry) -> bool {
    g.k == 3
        && match setting() {
            Setting::Never => false,
            Setting::Always => true,
            Setting::Auto => chosen_automatically(g),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv_cpu;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn layer(batch: usize, cin: usize, cout: usize, side: usize) -> Geometry {
        Geometry::square(batch, cin, cout, side, 3)
    }

    /// The automatic choice on the paper network's layers (encoder 32/64/128/256, decoder
    /// 128/64/256 on 64 x 64) and the quickstart's (encoder 8/16/32/64, decoder 32/16/32:
    /// none of its layers, so the main job's numbers are those of the direct path).
    #[test]
    fn automatic_choice_follows_the_measured_rule() {
        let auto = |g: Geometry| chosen_automatically(&g);
        for batch in [1, 8, 30] {
            assert!(auto(layer(batch, 288, 256, 64)), "conv6c at batch {batch}");
            assert!(auto(layer(batch, 256, 256, 64)), "conv6d at batch {batch}");
            assert!(auto(layer(batch, 64, 64, 32)), "conv2b at batch {batch}");
            assert!(!auto(layer(batch, 32, 32, 64)), "conv1b: 32 channels");
            assert!(!auto(layer(batch, 3, 32, 64)), "conv1a: 3 channels in");
            // quickstart
            assert!(!auto(layer(batch, 40, 32, 64)), "quickstart conv6c: 32 out");
            assert!(
                !auto(layer(batch, 8, 8, 64)),
                "quickstart conv1b: 8 channels"
            );
            assert!(!auto(layer(batch, 32, 16, 32)), "quickstart conv5c: 16 out");
            assert!(
                !auto(layer(batch, 32, 32, 16)),
                "quickstart conv3b: 16 x 16"
            );
            assert!(!auto(layer(batch, 64, 64, 8)), "quickstart conv4b: 8 x 8");
        }
        assert!(!auto(layer(1, 128, 128, 16)), "16 x 16 at batch 1");
        assert!(auto(layer(8, 128, 128, 16)), "16 x 16 at batch 8");
        assert!(auto(layer(8, 64, 128, 16)), "conv3a at batch 8");
        assert!(!auto(layer(1, 256, 256, 8)), "8 x 8 at batch 1");
        assert!(auto(layer(8, 256, 256, 8)), "8 x 8 at batch 8");
        assert!(!auto(Geometry::square(8, 256, 256, 64, 1)), "1 x 1");
    }

    fn geometries() -> Vec<Geometry> {
        let g = |batch, cin, cout, h, w| Geometry {
            batch,
            cin,
            cout,
            h,
            w,
            k: 3,
        };
        vec![
            g(3, 2, 3, 6, 8),
            // odd height and width: a last row and column of tiles half outside the image
            g(2, 3, 4, 5, 7),
            // one image (fewer than the threads): the 16 products spread over the threads
            g(1, 4, 2, 4, 4),
            // a 1 x 1 image, a single tile with three quarters outside
            g(2, 3, 2, 1, 1),
            g(2, 5, 6, 3, 9),
        ]
    }

    fn assert_near(what: &str, g: &Geometry, got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what} {g:?}: lengths");
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what} {g:?} at {k}: {a} vs {b}"
            );
        }
    }

    /// Forward, input and weight gradient equal (f64 rounding) to the direct path, which its
    /// own tests check against the definition by loops.
    #[test]
    fn equals_the_direct_convolution_and_its_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        for g in geometries() {
            let x = random(g.batch * g.cin * g.h * g.w, &mut rng);
            let w = random(g.cout * g.cin * 9, &mut rng);
            let gy = random(g.batch * g.cout * g.h * g.w, &mut rng);
            assert_near(
                "forward",
                &g,
                &forward(&x, &w, &g),
                &conv_cpu::forward(&x, &w, &g),
                1e-13,
            );
            assert_near(
                "input gradient",
                &g,
                &input_grad(&gy, &w, &g),
                &conv_cpu::input_grad(&gy, &w, &g),
                1e-13,
            );
            assert_near(
                "weight gradient",
                &g,
                &weight_grad(&x, &gy, &g),
                &conv_cpu::weight_grad(&x, &gy, &g),
                1e-12,
            );
        }
    }

    /// The per-image buffers are handed on without zeroing: with every fresh one full of NaN
    /// (so whatever an image read before writing would show), all three passes of both paths
    /// equal their zero-filled results, at batch 1 (the images in sequence, the transforms and
    /// products over the threads) and batch 5 (the images over the threads, buffers reused).
    #[test]
    fn unzeroed_buffers_never_reach_a_result() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        for g in [layer(1, 6, 5, 9), layer(5, 4, 7, 6)] {
            let x = random(g.batch * g.cin * g.h * g.w, &mut rng);
            let w = random(g.cout * g.cin * 9, &mut rng);
            let gy = random(g.batch * g.cout * g.h * g.w, &mut rng);
            let passes = || {
                [
                    forward(&x, &w, &g),
                    input_grad(&gy, &w, &g),
                    weight_grad(&x, &gy, &g),
                    conv_cpu::forward(&x, &w, &g),
                    conv_cpu::input_grad(&gy, &w, &g),
                    conv_cpu::weight_grad(&x, &gy, &g),
                ]
            };
            let clean = passes();
            conv_cpu::POISON.with(|p| p.set(true));
            let poisoned = passes();
            conv_cpu::POISON.with(|p| p.set(false));
            for (k, (a, b)) in poisoned.iter().zip(&clean).enumerate() {
                assert!(
                    a.iter().all(|v| v.is_finite()),
                    "pass {k} {g:?}: NaN reached the result"
                );
                assert_near("poisoned", &g, a, b, 0.0);
            }
            assert_near("forward", &g, &clean[0], &clean[3], 1e-13);
        }
    }

    /// The adjoint identities <conv(x), gy> = <x, input_grad(gy)> = <w, weight_grad(x, gy)>
    /// hold for the Winograd ops among themselves (the loss <conv(x, w), gy> is linear in x
    /// and in w), and a unit change of one weight changes the loss by its gradient.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        for g in geometries() {
            let x = random(g.batch * g.cin * g.h * g.w, &mut rng);
            let w = random(g.cout * g.cin * 9, &mut rng);
            let gy = random(g.batch * g.cout * g.h * g.w, &mut rng);
            let l = dot(&forward(&x, &w, &g), &gy);
            let (gx, gw) = (input_grad(&gy, &w, &g), weight_grad(&x, &gy, &g));
            assert!((dot(&x, &gx) - l).abs() < 1e-11 * (1.0 + l.abs()), "{g:?}");
            assert!((dot(&w, &gw) - l).abs() < 1e-11 * (1.0 + l.abs()), "{g:?}");
            for k in [0, 4, w.len() - 1] {
                let mut w1 = w.clone();
                w1[k] += 1.0;
                let d = dot(&forward(&x, &w1, &g), &gy) - l;
                assert!(
                    (d - gw[k]).abs() < 1e-10,
                    "{g:?} weight {k}: {d} vs {}",
                    gw[k]
                );
            }
        }
    }

    /// The concatenation given as channel groups equals the concatenated input.
    #[test]
    fn channel_groups_are_the_concatenation() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let g = Geometry {
            batch: 2,
            cin: 5,
            cout: 3,
            h: 6,
            w: 5,
            k: 3,
        };
        let (a, b) = (random(2 * 2 * 30, &mut rng), random(2 * 3 * 30, &mut rng));
        let mut cat = Vec::new();
        for i in 0..2 {
            cat.extend_from_slice(&a[i * 60..][..60]);
            cat.extend_from_slice(&b[i * 90..][..90]);
        }
        let w = random(3 * 5 * 9, &mut rng);
        let gy = random(2 * 3 * 30, &mut rng);
        let parts = [(&a[..], 2), (&b[..], 3)];
        assert_near(
            "forward",
            &g,
            &forward_parts(&parts, &w, &g),
            &forward(&cat, &w, &g),
            1e-14,
        );
        assert_near(
            "weight gradient",
            &g,
            &weight_grad_parts(&parts, &gy, &g),
            &weight_grad(&cat, &gy, &g),
            1e-14,
        );
    }

    /// In f32 on a layer of the paper network's width, the error against the f64 direct
    /// convolution stays of f32 rounding's order, relative to the output's scale.
    #[test]
    fn f32_error_is_of_rounding_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let g = Geometry {
            batch: 1,
            cin: 64,
            cout: 16,
            h: 12,
            w: 10,
            k: 3,
        };
        let x = random(g.cin * g.h * g.w, &mut rng);
        let w = random(g.cout * g.cin * 9, &mut rng);
        let want = conv_cpu::forward(&x, &w, &g);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let scale = want.iter().map(|a| a * a).sum::<f64>().sqrt() / (want.len() as f64).sqrt();
        for (name, got) in [
            ("winograd", forward(&f(&x), &f(&w), &g)),
            ("direct", conv_cpu::forward(&f(&x), &f(&w), &g)),
        ] {
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            // 576 products per output: a few hundred f32 ulps of the scale at most
            assert!(
                worst < 2e-5 * scale,
                "{name}: {worst} against scale {scale}"
            );
        }
    }

    /// The tile transforms compiled for each instruction set give the same bits (f32 and f64,
    /// odd and even sizes, a batch with spare threads and one without).
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        use crate::simd::testing::{assert_same_bits, at_every_level};
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (batch, side) in [(1, 9), (3, 12)] {
            let g = Geometry {
                batch,
                cin: 5,
                cout: 7,
                h: side,
                w: side + 1,
                k: 3,
            };
            let x = random(g.batch * g.cin * g.h * g.w, &mut rng);
            let w = random(g.cout * g.cin * 9, &mut rng);
            let dy = random(g.batch * g.cout * g.h * g.w, &mut rng);
            let run64 = || {
                vec![
                    forward(&x, &w, &g),
                    input_grad(&dy, &w, &g),
                    weight_grad(&x, &dy, &g),
                ]
            };
            assert_same_bits("winograd f64", &at_every_level(run64));
            let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x, w, dy) = (f(&x), f(&w), f(&dy));
            let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
            let run32 = || {
                vec![
                    wide(forward(&x, &w, &g)),
                    wide(input_grad(&dy, &w, &g)),
                    wide(weight_grad(&x, &dy, &g)),
                ]
            };
            assert_same_bits("winograd f32", &at_every_level(run32));
        }
    }
}
