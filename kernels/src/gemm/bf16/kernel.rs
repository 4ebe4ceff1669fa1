//! The bf16 GEMM's leaf: the `vdpbf16ps` micro-kernel. The only file of the bf16 GEMM with
//! intrinsics and raw pointers; compiled only when the build enables `avx512bf16` (see
//! `crate::precision`). Leaves out: blocking and threads (`mod.rs`), and the pairs of bf16
//! both operands are stored as and their rounding (`crate::bf16`, shared with attention).
//!
//! # Micro-kernel contract
//!
//! A tile computes an `R × 16V` block of `C` (`R ≤ MR`, `V ∈ {1, 2}`) over `k2` pairs:
//!
//! ```text
//! acc[i][j] = Σ_{q < k2} pairdot(a[i·rsa + q·csa], b[q·NRB + j])      (i < R, j < 16V; q ascending)
//! C[i][j]   = alpha·acc[i][j] + beta·C[i][j]                          (j < n_eff; beta = 0: C not read)
//! ```
//!
//! - `a` holds pairs of `op(A)`: `(rsa, csa) = (k2, 1)` for rows of pairs (A stored row-major,
//!   packed by [`crate::bf16::pairs_of_row`]) or `(1, mc)` for columns (A stored transposed, packed by
//!   [`crate::bf16::pairs_of_two_rows`]). Each pair is broadcast to all 16 lanes.
//! - `b` is a packed B micro-panel: `k2` rows of [`NRB`] = 32 pairs (one per column of `C`),
//!   zero past the matrix edge; the `V = 1` kernel reads the first 16 of each row.
//! - `R·V` accumulators stay in registers (24 of the 32 with `R = 12, V = 2`): per pair,
//!   `V` loads of `b`, `R` broadcasts and `R·V` `vdpbf16ps`, each 32 flops.
//! - Columns past `n_eff` are computed but neither read nor written (masked loads and stores),
//!   so every element's arithmetic is the same wherever the edge of `C` falls.

// A leaf built only with AVX512_BF16: its intrinsics take raw pointers (see lib.rs).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::bf16::{bits_bh, mask16, splat, zero};
use crate::gemm::kernel::MatMut;

/// Pairs per row of a packed B micro-panel: the widest tile's columns.
pub(crate) const NRB: usize = 32;
/// Rows of the widest tile (12 × 2 vectors = 24 accumulators, as in the fp32 kernel).
pub(crate) const MRB: usize = 12;

/// How a tile combines its product with the `C` it overwrites.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    pub alpha: f32,
    /// `0` means: do not read `C`.
    pub beta: f32,
}

/// Where a tile reads its pairs of `op(A)`: element `(i, q)` at `data[i·rsa + q·csa]`.
#[derive(Clone, Copy)]
pub(crate) struct APairs<'s> {
    pub data: &'s [u32],
    pub rsa: usize,
    pub csa: usize,
}

/// One `rows × 16·nv` tile over `k2` pairs into the block of `c` at (`i0`, `j0`) (`n_eff`
/// valid columns), per the module contract.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn run_tile(
    rows: usize,
    nv: usize,
    k2: usize,
    a: APairs<'_>,
    b: &[u32],
    c: &mut MatMut<'_>,
    i0: usize,
    j0: usize,
    n_eff: usize,
    up: Update,
) {
    assert!(
        (1..=MRB).contains(&rows) && (1..=2).contains(&nv),
        "tile {rows}×{nv}"
    );
    assert!(n_eff >= 1 && n_eff <= 16 * nv, "tile columns");
    if k2 > 0 {
        let need = (rows - 1) * a.rsa + (k2 - 1) * a.csa + 1;
        assert!(a.data.len() >= need, "tile: A pairs too short");
        assert!(
            b.len() >= (k2 - 1) * NRB + 16 * nv,
            "tile: B panel too short"
        );
    }
    let (cp, ldc) = c.block_ptr(i0, j0, rows, n_eff);
    let f = TABLE[nv - 1][rows - 1];
    // SAFETY: the asserts above and `block_ptr`'s establish the contract of `tile`: the
    // rows × k2 pairs of A, k2 rows of b (16·nv pairs each, NRB apart), and the rows × n_eff
    // block of C, inside the window `c` borrows uniquely.
    unsafe {
        f(
            k2,
            a.data.as_ptr(),
            a.rsa,
            a.csa,
            b.as_ptr(),
            cp,
            ldc,
            n_eff,
            up,
        )
    }
}

type TileFn =
    unsafe fn(usize, *const u32, usize, usize, *const u32, *mut f32, usize, usize, Update);

/// `TABLE[V-1][R-1]` is the kernel for an `R × 16V` tile.
static TABLE: [[TileFn; MRB]; 2] = [tiles::<1>(), tiles::<2>()];

const fn tiles<const V: usize>() -> [TileFn; MRB] {
    let mut t: [TileFn; MRB] = [tile::<1, V>; MRB];
    macro_rules! fill {
        ($($r:literal)*) => { $( t[$r - 1] = tile::<$r, V>; )* };
    }
    fill!(1 2 3 4 5 6 7 8 9 10 11 12);
    t
}

/// The `R × 16V` micro-kernel (see the module contract). Named in the style of the fp32
/// kernels: type bf16→fp32, ISA AVX512_BF16, tile up to 12 × 32.
///
/// # Safety
/// `a` holds the `R × k2` pairs at `a[i·rsa + q·csa]`; `b` holds `k2` rows of `16V` pairs
/// `NRB` apart; the `R × n_eff` block at `c` (leading dimension `ldc`) is writable and,
/// unless `beta = 0`, readable; `1 ≤ n_eff ≤ 16V`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn tile<const R: usize, const V: usize>(
    k2: usize,
    a: *const u32,
    rsa: usize,
    csa: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    n_eff: usize,
    up: Update,
) {
    let mut acc = [[zero(); V]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..k2 {
        // SAFETY: q < k2, so row q of the B panel (16V pairs) and pair column q of A
        // (a + i·rsa for i < R) are in bounds.
        unsafe {
            let bv: [__m512bh; V] =
                std::array::from_fn(|v| bits_bh(_mm512_loadu_si512(b.add(16 * v).cast())));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai = bits_bh(_mm512_set1_epi32(*a.add(i * rsa) as i32));
                for v in 0..V {
                    acc_i[v] = _mm512_dpbf16_ps(acc_i[v], ai, bv[v]);
                }
            }
            a = a.add(csa);
            b = b.add(NRB);
        }
    }
    let alpha = splat(up.alpha);
    let beta = splat(up.beta);
    for (i, acc_i) in acc.iter().enumerate() {
        for (v, &x) in acc_i.iter().enumerate() {
            let cols = n_eff.saturating_sub(16 * v).min(16);
            if cols == 0 {
                continue;
            }
            let m = mask16(cols);
            // SAFETY: row i, columns 16v..16v+cols of the block are in bounds (cols ≤ n_eff
            // − 16v); masked lanes are not touched.
            unsafe {
                let p = c.add(i * ldc + 16 * v);
                let out = if up.beta == 0.0 {
                    _mm512_mul_ps(x, alpha)
                } else {
                    _mm512_fmadd_ps(x, alpha, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p), beta))
                };
                _mm512_mask_storeu_ps(p, m, out);
            }
        }
    }
}
