//! Paths for products with few rows (`m` small: token-by-token generation, the LSTM's
//! per-step recurrent products), where packing `B` would cost as much as the product itself.
//! Leaves out: the large shapes, which amortize packing (`blocked.rs`).
//!
//! - One row, `op(B)` row-major: the GEMV kernel sweeps `B` row by row (`raw/gemv.rs`).
//! - `op(B)` row-major (`transb = No`): the register-tile micro-kernel reads `B` in place, one
//!   `NR`-wide column strip at a time with the whole depth `k` (rows `ldb` apart); only a
//!   ragged last strip is copied, zero-padded, so the kernel never reads past `B`.
//! - `op(B) = Bᵀ` (`transb = Yes`): `C[i, j]` is the dot product of row `i` of `op(A)` and row
//!   `j` of `B`, both contiguous along `k`, computed in `DR × DS` blocks by the dot kernel.
//!
//! Work is split over column chunks of `C`; how chunks are assigned to threads does not change
//! any element's arithmetic.

use rayon::prelude::*;

use super::blocked::{SCRATCH, with_scratch};
use super::dot::{DR, DS, Dot};
use super::gemv::{GEMV_CHUNK, gemv};
use super::kernel::{ASrc, MatMut, NR, NV, Tile, Update, row_panels};
use super::pack::pack_b;
use super::{Product, Transpose};
use crate::simd::LANES;

/// Up to this many rows, a row-major `op(B)` is read in place: measured on the LSTM's
/// 360 × 1440, GPT-2's 768 × 2304 and 256 × 1024, this path beats packing B by 1.2–1.8× up
/// to 32 rows and by 0–10% at 64 (except at `ldb = 2048`: 216 against 224 GFLOP/s).
pub(crate) const B_IN_PLACE_MAX_M: usize = 64;
/// Up to this many rows, `A·Bᵀ` runs as dot products: about 150 GFLOP/s from 8 rows on,
/// where packing `Bᵀ` for the blocked path reaches 84 (8 rows), 127 (16), 153 (24), 172 (32)
/// and 198 (48) on the LSTM's 360 × 1440.
pub(crate) const DOT_MAX_M: usize = 24;

/// Columns of C per task on the register-tile path: four strips.
const TILE_CHUNK: usize = 4 * NR;
/// Columns of C per task on the dot path.
const DOT_CHUNK: usize = 16 * DS;

/// `c = alpha·op(A)·B + beta·c` for one row (`m = 1`, `transb = No`): `B` swept row by row
/// by the GEMV kernel, in column chunks; arguments checked.
pub(crate) fn gemv_row(p: &Product<'_>, mut c: MatMut<'_>) {
    let Product {
        transa,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        ..
    } = *p;
    if transa == Transpose::Yes && lda > 1 {
        // op(A) is a column of A, lda apart: gather it.
        return with_scratch(&SCRATCH, k, |x| {
            for (xp, col) in x.iter_mut().zip(a.chunks(lda)) {
                *xp = col[0];
            }
            let p = Product {
                transa: Transpose::No,
                a: x,
                lda: k,
                ..*p
            };
            gemv_row(&p, c);
        });
    }
    let x = &a[..k];
    let c = c.row(0);
    // Long rows stream best (2048 columns measured 10–20% faster than 512); in parallel,
    // about four tasks. Widths are whole vectors, so no column changes arithmetic.
    let parallel = p.parallel();
    let width = if parallel {
        (n.div_ceil(4).div_ceil(LANES) * LANES).clamp(512, GEMV_CHUNK)
    } else {
        GEMV_CHUNK
    };
    let task = |(t, c): (usize, &mut [f32])| {
        let _task = crate::launch::task(t);
        let mut y = [0.0f32; GEMV_CHUNK];
        let w = c.len();
        gemv(&mut y, x, &b[t * width..], ldb, w);
        for (cj, &yj) in c.iter_mut().zip(&y[..w]) {
            *cj = if beta == 0.0 {
                alpha * yj
            } else {
                alpha * yj + beta * *cj
            };
        }
    };
    crate::launch::ways(if parallel { n.div_ceil(width) } else { 1 });
    if parallel && n > width {
        c.par_chunks_mut(width).enumerate().for_each(task);
    } else {
        c.chunks_mut(width).enumerate().for_each(task);
    }
}

/// `C = alpha·op(A)·B + beta·C` with `B` read in place (`transb = No`); arguments checked.
pub(crate) fn gemm_b_in_place(p: &Product<'_>, c: MatMut<'_>) {
    let Product {
        transa,
        m,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        ..
    } = *p;
    let up = Update { alpha, beta };
    let asrc = |i: usize| ASrc::at(a, lda, transa, i, 0);
    c.blocks(m, TILE_CHUNK)
        .for_each(p.parallel(), |_, j0, mut view| {
            let cols = view.cols();
            for jr in (0..cols).step_by(NR) {
                let left = cols - jr;
                if left >= NR {
                    let strip = &b[j0 + jr..];
                    for (i, h) in row_panels(m) {
                        Tile::run(h, NV, k, asrc(i), strip, ldb, &mut view, i, jr, NR, up);
                    }
                } else {
                    // Ragged last strip: copy it zero-padded to a whole number of vectors.
                    let w = left.div_ceil(LANES) * LANES;
                    with_scratch(&SCRATCH, k * w, |strip| {
                        pack_b(strip, b, ldb, Transpose::No, 0, k, j0 + jr, left, 0);
                        for (i, h) in row_panels(m) {
                            Tile::run(
                                h,
                                w / LANES,
                                k,
                                asrc(i),
                                strip,
                                w,
                                &mut view,
                                i,
                                jr,
                                left,
                                up,
                            );
                        }
                    });
                }
            }
        });
}

/// `C = alpha·op(A)·Bᵀ + beta·C` by dot products (`transb = Yes`); arguments checked.
pub(crate) fn gemm_dot(p: &Product<'_>, c: MatMut<'_>) {
    let Product {
        transa,
        m,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
        ..
    } = *p;
    if transa == Transpose::Yes {
        // op(A) = Aᵀ has rows strided by lda; copy its m × k (m is small) into rows.
        return with_scratch(&SCRATCH, m * k, |at| {
            for (p, col) in a.chunks(lda).take(k).enumerate() {
                for (i, &x) in col[..m].iter().enumerate() {
                    at[i * k + p] = x;
                }
            }
            let p = Product {
                transa: Transpose::No,
                a: at,
                lda: k,
                ..*p
            };
            gemm_dot(&p, c);
        });
    }
    c.blocks(m, DOT_CHUNK)
        .for_each(p.parallel(), |_, j0, mut view| {
            let cols = view.cols();
            for js in (0..cols).step_by(DS) {
                let s = DS.min(cols - js);
                let bs = &b[(j0 + js) * ldb..];
                for ir in (0..m).step_by(DR) {
                    let r = DR.min(m - ir);
                    let out = Dot::run(r, s, k, &a[ir * lda..], lda, bs, ldb);
                    for (ii, out_i) in out.iter().enumerate().take(r) {
                        let row = &mut view.row(ir + ii)[js..js + s];
                        for (x, &d) in row.iter_mut().zip(out_i) {
                            *x = if beta == 0.0 {
                                alpha * d
                            } else {
                                alpha * d + beta * *x
                            };
                        }
                    }
                }
            }
        });
}
