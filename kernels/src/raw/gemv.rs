//! The one-row micro-kernel `y = x · B` (`m = 1`, `B` row-major): the product of one token's
//! activations with a weight matrix during generation. Leaves out: splitting the columns
//! into chunks and the `alpha`/`beta` update (`small.rs`).
//!
//! # Contract
//!
//! ```text
//! y[j] = Σ_{p < k} x[p] · b[p·ldb + j]        (j < w ≤ GEMV_CHUNK; p ascending, one FMA each)
//! ```
//!
//! `y` lives in L1 (`GEMV_CHUNK` floats) while `B` is swept eight rows at a time, each row a
//! sequential run of `w` floats: the hardware prefetchers stream `B` from L3 or memory at full
//! bandwidth, whatever `ldb` is. (Walking `B` down an `NR`-wide column strip instead strides
//! `ldb` per row; with `ldb = 2048` that aliases in L1/L2 and ran at less than half the speed.)
//! Columns past the last whole vector are summed in scalar, in the same ascending order.

use super::vector::{load, store};
use crate::simd::{F32s, LANES};

/// Columns per call: an 8 KiB accumulator row.
pub(crate) const GEMV_CHUNK: usize = 2048;

/// `y[..w] = x · B[.., ..w]` per the module contract, with bounds checked.
pub(crate) fn gemv(y: &mut [f32], x: &[f32], b: &[f32], ldb: usize, w: usize) {
    let k = x.len();
    assert!(
        w <= y.len() && w <= GEMV_CHUNK && w <= ldb,
        "gemv: chunk width {w}"
    );
    assert!(k == 0 || b.len() >= (k - 1) * ldb + w, "gemv: B too short");
    // SAFETY: the asserts establish the contract of `gemv_rows`.
    unsafe { gemv_rows(k, x.as_ptr(), b.as_ptr(), ldb, y.as_mut_ptr(), w) }
}

/// # Safety
/// `x` holds `k` floats, `b + p·ldb` holds `w` floats for each `p < k`, `y` holds `w`.
#[inline(never)]
unsafe fn gemv_rows(k: usize, x: *const f32, b: *const f32, ldb: usize, y: *mut f32, w: usize) {
    let wv = w - w % LANES;
    // SAFETY: (whole body) every access is y[j] or b[p·ldb + j] with p < k and j < w.
    unsafe {
        for j in (0..wv).step_by(LANES) {
            store(y.add(j), F32s::ZERO);
        }
        for j in wv..w {
            *y.add(j) = 0.0;
        }
        let mut p = 0;
        while p + 8 <= k {
            let xs: [F32s; 8] = std::array::from_fn(|q| F32s::splat(*x.add(p + q)));
            let rows: [*const f32; 8] = std::array::from_fn(|q| b.add((p + q) * ldb));
            for j in (0..wv).step_by(LANES) {
                let mut acc = load(y.add(j));
                for q in 0..8 {
                    acc = xs[q].mul_add(load(rows[q].add(j)), acc);
                }
                store(y.add(j), acc);
            }
            for j in wv..w {
                let mut acc = *y.add(j);
                for (q, row) in rows.iter().enumerate() {
                    acc = (*x.add(p + q)).mul_add(*row.add(j), acc);
                }
                *y.add(j) = acc;
            }
            p += 8;
        }
        for p in p..k {
            let xp = F32s::splat(*x.add(p));
            let row = b.add(p * ldb);
            for j in (0..wv).step_by(LANES) {
                let acc = load(y.add(j));
                let bv = load(row.add(j));
                store(y.add(j), xp.mul_add(bv, acc));
            }
            for j in wv..w {
                *y.add(j) = (*x.add(p)).mul_add(*row.add(j), *y.add(j));
            }
        }
    }
}
