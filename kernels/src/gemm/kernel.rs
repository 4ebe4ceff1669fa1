//! The register-tiled GEMM micro-kernel's shape and contract, and the safe descriptions of
//! its operands ([`ASrc`], [`Update`]).
//!
//! The kernel itself lives in the crate's unsafe core: the shared micro-kernel
//! (`raw/micro.rs`, also attention's), the GEMM tile around it and its checked entry point
//! [`Tile`] (`raw/gemm_tile.rs`), and the window of `C` it writes through, [`MatMut`]
//! (`raw/matmut.rs`). They check the bounds once per tile, so the blocked driver
//! (`blocked.rs`) and the small-shape paths (`small.rs`) stay in safe code. Leaves out:
//! packing (`pack.rs`) and the choice of blocking (`blocked.rs`).
//!
//! # Micro-kernel contract
//!
//! A tile computes an `R × W` block of `C`, `R ≤ MR` rows and `W = V·LANES ≤ NR` columns,
//! from a depth-`kc` slice of the product:
//!
//! ```text
//! acc[i][j] = Σ_{p < kc} a[i·rsa + p·csa] · b[p·rsb + j]    (i < R, j < W; p ascending)
//! C[i][j]   = alpha·acc[i][j] + beta·C[i][j]                (j < n_eff; beta = 0: C is not read)
//! ```
//!
//! - `a` is `op(A)` read in place, no packing: `(rsa, csa) = (lda, 1)` when A is stored
//!   row-major ([`ALayout::Rows`]), `(1, lda)` when it is stored transposed ([`ALayout::Cols`]).
//!   The `R × kc` slice (12 KiB at `kc = 256`) stays in L1 while the tile sweeps across B.
//!   Packing A would cost a transposing copy amortized over only `n` columns; measured, it
//!   lost 5–15% on every shape of the model, so A is broadcast straight from its rows.
//! - `b` holds `kc` rows of `W` contiguous floats, `rsb` floats apart: a packed B micro-panel
//!   (`rsb = W`, zero-padded past the matrix edge) or, on the small-M path, `B` itself in
//!   place (`rsb = ldb`).
//! - `acc` stays in registers: `R·V` accumulators. Per `p`: `V` vector loads of `b`, `R`
//!   broadcasts of `a` (one `vbroadcastss` feeding `V` FMAs) and `R·V` FMAs. `R` is exact —
//!   a ragged last panel runs the `R`-row kernel, so no FMA is spent on padding rows.
//! - Columns past `n_eff` (the ragged right edge of `C`) are computed but not stored: the tile
//!   goes through an `R × W` scratch copy of `C` so the arithmetic of every element is the same
//!   as in a full tile — results do not depend on where tile boundaries fall.
//! - Every element is one FMA chain in ascending `p`, then the `alpha`/`beta` update, so a
//!   product split into K blocks (`beta = 1` after the first) is reduced in a fixed order.

use super::Transpose;
pub(crate) use crate::raw::gemm_tile::Tile;
pub(crate) use crate::raw::matmut::MatMut;
use crate::simd::LANES;

/// Rows of the register tile (broadcast from A). AVX-512 has 32 vector registers:
/// 12 rows × 2 vectors = 24 accumulators + 2 B vectors + a broadcast; a 14-row tile measured
/// no faster. The 16-register AVX2 and 128-bit paths fit 6 × 2 = 12 accumulators.
pub const MR: usize = if LANES == 16 { 12 } else { 6 };
/// Vectors per row of the register tile.
pub(crate) const NV: usize = 2;
/// Columns of the register tile (`2·LANES`: 32 with AVX-512, 16 with AVX2).
pub const NR: usize = NV * LANES;

/// Splits `rows` into register-tile heights `(first row, height)`: `MR` each, except that a
/// remainder of at most `MR/2` rows is merged with the last full panel and split into two
/// halves (16 rows → 8 + 8, not 12 + 4), since a very short tile keeps too few FMAs in flight.
pub(crate) fn row_panels(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let (full, rem) = (rows / MR, rows % MR);
    let (full, tail) = if rem != 0 && rem <= MR / 2 && full > 0 {
        (full - 1, [(MR + rem).div_ceil(2), (MR + rem) / 2])
    } else {
        (full, [rem, 0])
    };
    let heads = (0..full).map(|t| (t * MR, MR));
    let tails = [(full * MR, tail[0]), (full * MR + tail[0], tail[1])];
    heads.chain(tails.into_iter().filter(|&(_, h)| h > 0))
}

/// How a tile combines its product with the `C` it overwrites.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    pub alpha: f32,
    /// `0` means: do not read `C`.
    pub beta: f32,
}

/// How `op(A)` lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ALayout {
    /// `op(A)[i, p] = a[i·ld + p]` (`transa = No`).
    Rows,
    /// `op(A)[i, p] = a[p·ld + i]` (`transa = Yes`).
    Cols,
}

/// Where a tile reads its `R × kc` slice of `op(A)`: `data` starts at element `(0, 0)`.
#[derive(Clone, Copy)]
pub(crate) struct ASrc<'s> {
    pub data: &'s [f32],
    pub ld: usize,
    pub layout: ALayout,
}

impl<'s> ASrc<'s> {
    /// `op(A)` of an sgemm call (`a`, `lda`, `transa`) from element `(i, p)` on.
    pub(crate) fn at(a: &'s [f32], lda: usize, transa: Transpose, i: usize, p: usize) -> Self {
        match transa {
            Transpose::No => ASrc {
                data: &a[i * lda + p..],
                ld: lda,
                layout: ALayout::Rows,
            },
            Transpose::Yes => ASrc {
                data: &a[p * lda + i..],
                ld: lda,
                layout: ALayout::Cols,
            },
        }
    }
}
