//! The GEMM's register tile: the micro-kernel (`micro.rs`) started from zero, then the BLAS
//! update `C = alpha·acc + beta·C` on an `R × V·LANES` block of `C`, with the ragged right
//! edge through a scratch tile. The contract is `crate::gemm::kernel`'s module doc; [`Tile`]
//! is its checked entry point, so the blocked driver and the small-shape paths stay in safe
//! code. Leaves out: packing B and the choice of blocking (`crate::gemm`).

use super::matmut::MatMut;
use super::micro::micro_kernel;
use super::vector::{load, store};
use crate::gemm::kernel::{ALayout, ASrc, MR, NR, NV, Update};
use crate::simd::{F32s, LANES};

/// One tile-shaped multiply: picks the kernel for `rows × V` and checks the bounds.
pub(crate) struct Tile;

impl Tile {
    /// `C[i0.., j0..] (rows × n_eff) = alpha·(op(A) slice · b) + beta·C` per the module
    /// contract, with `V = nv` vectors per row (1 or 2) and `rows ≤ MR`.
    ///
    /// `b` must hold `kc` rows of `nv·LANES` floats `rsb` apart.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn run(
        rows: usize,
        nv: usize,
        kc: usize,
        a: ASrc<'_>,
        b: &[f32],
        rsb: usize,
        c: &mut MatMut<'_>,
        i0: usize,
        j0: usize,
        n_eff: usize,
        up: Update,
    ) {
        let w = nv * LANES;
        assert!(
            (1..=MR).contains(&rows) && (1..=NV).contains(&nv),
            "tile {rows}×{nv}"
        );
        assert!(n_eff >= 1 && n_eff <= w && rsb >= w, "tile columns");
        if kc > 0 {
            let need = match a.layout {
                ALayout::Rows => (rows - 1) * a.ld + kc,
                ALayout::Cols => (kc - 1) * a.ld + rows,
            };
            assert!(a.data.len() >= need, "tile: A too short");
            assert!(b.len() >= (kc - 1) * rsb + w, "tile: B too short");
        }
        assert!(
            i0 + rows <= c.rows() && j0 + n_eff <= c.cols(),
            "tile outside C"
        );
        let (cp, ldc) = c.block_ptr(i0, j0, rows, n_eff);
        let f = TABLE[(a.layout == ALayout::Cols) as usize][nv - 1][rows - 1];
        // SAFETY: the asserts above establish the contract of `tile`: A holds the rows × kc
        // slice in its layout, b holds kc rows of w floats rsb apart, and the rows × n_eff
        // block of C at `cp` lies inside the window `c` borrows uniquely (`block_ptr`).
        unsafe {
            f(
                kc,
                a.data.as_ptr(),
                a.ld,
                b.as_ptr(),
                rsb,
                cp,
                ldc,
                n_eff,
                up,
            )
        }
    }
}

type TileFn =
    unsafe fn(usize, *const f32, usize, *const f32, usize, *mut f32, usize, usize, Update);

/// `TABLE[COLS][V-1][R-1]` is the kernel for an `R × V·LANES` tile, `COLS` = A stored
/// transposed.
static TABLE: [[[TileFn; MR]; NV]; 2] = [
    [tiles::<1, false>(), tiles::<2, false>()],
    [tiles::<1, true>(), tiles::<2, true>()],
];

// Clippy sees the indexing of rows past MR that the `$r <= MR` guard never runs (MR depends on
// the build's lanes).
#[allow(clippy::out_of_bounds_indexing)]
const fn tiles<const V: usize, const COLS: bool>() -> [TileFn; MR] {
    let mut t: [TileFn; MR] = [tile::<1, V, COLS>; MR];
    macro_rules! fill {
        ($($r:literal)*) => { $( if $r <= MR { t[$r - 1] = tile::<$r, V, COLS>; } )* };
    }
    fill!(1 2 3 4 5 6 7 8 9 10 11 12);
    t
}

/// The `R × V·LANES` micro-kernel (see the module contract); `COLS` picks the A layout.
///
/// # Safety
/// `a` holds the `R × kc` slice of `op(A)` in its layout with leading dimension `lda`; `b`
/// holds `kc` rows of `V·LANES` floats `rsb` apart; the `R × n_eff` block at `c` (leading
/// dimension `ldc`) is writable and, unless `beta = 0`, readable; `n_eff ≤ V·LANES`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn tile<const R: usize, const V: usize, const COLS: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    rsb: usize,
    c: *mut f32,
    ldc: usize,
    n_eff: usize,
    up: Update,
) {
    let (rsa, csa) = if COLS { (1, lda) } else { (lda, 1) };
    let mut acc = [[F32s::ZERO; V]; R];
    // SAFETY: forwarded from this function's contract (A's R × kc slice, kc rows of b).
    unsafe { micro_kernel::<f32, R, V>(&mut acc, kc, a, rsa, csa, b, rsb) };
    if n_eff == V * LANES {
        // SAFETY: the R × V·LANES block at c is in bounds (n_eff = V·LANES).
        unsafe { update::<R, V>(&acc, c, ldc, up) };
    } else {
        // Ragged right edge: run the same update on a scratch tile, copy the valid columns.
        let mut scratch = [[0.0f32; NR]; R];
        for (i, row) in scratch.iter_mut().enumerate() {
            if up.beta != 0.0 {
                // SAFETY: row i, columns < n_eff of C are in bounds and readable.
                let src = unsafe { std::slice::from_raw_parts(c.add(i * ldc), n_eff) };
                row[..n_eff].copy_from_slice(src);
            }
        }
        // SAFETY: scratch is R rows of NR ≥ V·LANES floats.
        unsafe { update::<R, V>(&acc, scratch.as_mut_ptr().cast(), NR, up) };
        for (i, row) in scratch.iter().enumerate() {
            // SAFETY: row i, columns < n_eff of C are in bounds and writable.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n_eff) };
            dst.copy_from_slice(&row[..n_eff]);
        }
    }
}

/// `C = alpha·acc + beta·C` on a full `R × V·LANES` block.
///
/// # Safety
/// The block at `c` (leading dimension `ldc`) is writable, and readable unless `beta = 0`.
#[inline(always)]
unsafe fn update<const R: usize, const V: usize>(
    acc: &[[F32s; V]; R],
    c: *mut f32,
    ldc: usize,
    up: Update,
) {
    let alpha = F32s::splat(up.alpha);
    let beta = F32s::splat(up.beta);
    for (i, acc_i) in acc.iter().enumerate() {
        for (v, &x) in acc_i.iter().enumerate() {
            // SAFETY: (i, v·LANES..) is inside the block the caller vouches for.
            unsafe {
                let p = c.add(i * ldc + v * LANES);
                let out = if up.beta == 0.0 {
                    x * alpha
                } else {
                    x.mul_add(alpha, load(p) * beta)
                };
                store(p, out);
            }
        }
    }
}
