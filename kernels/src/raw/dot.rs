//! The dot-product micro-kernel for `C = A·Bᵀ` with few rows of `A` (GEMV-like products such
//! as the logits of one generated token, `x · wteᵀ`). Both operands are read in place, along
//! their contiguous rows, so nothing is packed. Leaves out: the loop over blocks and the
//! `alpha`/`beta` update (`small.rs`).
//!
//! # Contract
//!
//! ```text
//! out[r][s] = Σ_{p < k} a[r·lda + p] · b[s·ldb + p]        (r < R ≤ DR, s < S ≤ DS)
//! ```
//!
//! Each lane accumulates every `LANES`-th `p` in ascending order with FMAs. A ragged tail
//! (`k % LANES = t ≠ 0`, `k ≥ LANES`) is one more step over the last `LANES` elements
//! `k-LANES..k`, with the lanes already counted masked to zero in `a`; the lanes are then
//! summed in `wide`'s fixed order. (`k < LANES` runs scalar.) The order depends only on `k`,
//! never on where a block starts.

use super::vector::load;
use crate::simd::{F32s, LANES};

/// Rows of A per block: `DR·DS` accumulators plus `DS` loads must fit the register file.
pub(crate) const DR: usize = if LANES == 16 { 4 } else { 2 };
/// Rows of B (columns of C) per block.
pub(crate) const DS: usize = 4;

/// One `R × S` block of dot products, picked by size, with bounds checked.
pub(crate) struct Dot;

impl Dot {
    /// `out[r][s]` per the module contract for `r < rows`, `s < cols`; the rest is zero.
    ///
    /// `a` must hold `rows` rows of `k` floats `lda` apart, `b` `cols` rows `ldb` apart.
    #[inline]
    pub(crate) fn run(
        rows: usize,
        cols: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> [[f32; DS]; DR] {
        assert!(
            (1..=DR).contains(&rows) && (1..=DS).contains(&cols),
            "dot {rows}×{cols}"
        );
        assert!(lda >= k && ldb >= k, "dot: leading dimension < k");
        assert!(a.len() >= (rows - 1) * lda + k, "dot: A too short");
        assert!(b.len() >= (cols - 1) * ldb + k, "dot: B too short");
        let f = DOTS[rows - 1][cols - 1];
        // SAFETY: the asserts establish the contract of `dot`: rows (cols) rows of k
        // readable floats, lda (ldb) apart.
        unsafe { f(k, a.as_ptr(), lda, b.as_ptr(), ldb) }
    }
}

type DotFn = unsafe fn(usize, *const f32, usize, *const f32, usize) -> [[f32; DS]; DR];

/// `DOTS[R-1][S-1]` is the `R × S` kernel.
// Clippy sees the indexing of rows past DR that the `$r <= DR` guard never runs (DR depends on
// the build's lanes).
#[allow(clippy::out_of_bounds_indexing)]
static DOTS: [[DotFn; DS]; DR] = {
    let mut t: [[DotFn; DS]; DR] = [[dot::<1, 1>; DS]; DR];
    macro_rules! fill {
        ($($r:literal)*) => { $(
            if $r <= DR {
                t[$r - 1] = [dot::<$r, 1>, dot::<$r, 2>, dot::<$r, 3>, dot::<$r, 4>];
            }
        )* };
    }
    fill!(1 2 3 4);
    t
};

/// The `R × S` dot-product kernel (see the module contract).
///
/// # Safety
/// `a + r·lda` has `k` readable floats for each `r < R`, `b + s·ldb` for each `s < S`.
#[inline(never)]
unsafe fn dot<const R: usize, const S: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
) -> [[f32; DS]; DR] {
    let mut acc = [[F32s::ZERO; S]; R];
    let mut out = [[0.0f32; DS]; DR];
    if k < LANES {
        for (r, out_r) in out.iter_mut().enumerate().take(R) {
            for (s, x) in out_r.iter_mut().enumerate().take(S) {
                for p in 0..k {
                    // SAFETY: p < k is inside both rows.
                    unsafe { *x += *a.add(r * lda + p) * *b.add(s * ldb + p) };
                }
            }
        }
        return out;
    }
    // SAFETY: callers of `step` pass p + LANES ≤ k, so every load is inside its row.
    let step = |acc: &mut [[F32s; S]; R], p: usize, mask: F32s| unsafe {
        let bv: [F32s; S] = std::array::from_fn(|s| load(b.add(s * ldb + p)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = load(a.add(r * lda + p)) & mask;
            for s in 0..S {
                acc_r[s] = av.mul_add(bv[s], acc_r[s]);
            }
        }
    };
    let all = F32s::splat(f32::from_bits(u32::MAX));
    let kv = k - k % LANES;
    for p in (0..kv).step_by(LANES) {
        step(&mut acc, p, all);
    }
    if kv < k {
        // Lanes below LANES - (k - kv) were counted by the full steps.
        let counted = LANES - (k - kv);
        let mask: [f32; LANES] =
            std::array::from_fn(|l| f32::from_bits(if l < counted { 0 } else { u32::MAX }));
        step(&mut acc, k - LANES, F32s::from(mask));
    }
    for (out_r, acc_r) in out.iter_mut().zip(&acc) {
        for (x, v) in out_r.iter_mut().zip(acc_r) {
            *x = v.reduce_add();
        }
    }
    out
}
