//! The register-tiled GEMM micro-kernel and the one raw-pointer view of `C` it writes through.
//!
//! Everything here works on raw pointers for speed; the safe entry points ([`MatMut`],
//! [`Tile`]) check the bounds once per tile, so the blocked driver (`blocked.rs`) and the
//! small-shape paths (`small.rs`) stay in safe code. Leaves out: packing (`pack.rs`) and the
//! choice of blocking (`blocked.rs`).
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

use std::marker::PhantomData;

use super::Transpose;
use crate::simd::{F32s, LANES};

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

/// A mutable `rows × cols` row-major window into `C` with leading dimension `ld`. Disjoint
/// windows of one matrix can be handed to different threads, which a `&mut [f32]` cannot
/// express for column blocks.
pub(crate) struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a MatMut is a unique borrow of its window (windows handed out by `blocks` are
// disjoint), so sending it to another thread is like sending a `&mut [f32]`.
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// Views `c` as `rows × cols` with leading dimension `ld`. Panics if `c` is too short.
    pub(crate) fn new(c: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(ld >= cols, "MatMut: ld {ld} < cols {cols}");
        if rows > 0 && cols > 0 {
            assert!(c.len() >= (rows - 1) * ld + cols, "MatMut: slice too short");
        }
        MatMut {
            ptr: c.as_mut_ptr(),
            rows,
            cols,
            ld,
            _borrow: PhantomData,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i` of the window (`cols` elements).
    pub(crate) fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "MatMut: row {i} of {}", self.rows);
        // SAFETY: row i lies inside the window (checked), which this &mut self borrows uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.ld), self.cols) }
    }

    /// The `rows × cols` sub-window at `(i0, j0)`, borrowed from this one.
    pub(crate) fn sub(&mut self, i0: usize, j0: usize, rows: usize, cols: usize) -> MatMut<'_> {
        assert!(
            i0 + rows <= self.rows && j0 + cols <= self.cols,
            "MatMut::sub outside the window"
        );
        MatMut {
            ptr: if rows == 0 || cols == 0 {
                self.ptr
            } else {
                // SAFETY: (i0, j0) is inside the window (checked; an empty window is never read).
                unsafe { self.ptr.add(i0 * self.ld + j0) }
            },
            rows,
            cols,
            ld: self.ld,
            _borrow: PhantomData,
        }
    }

    /// A pointer to element `(i0, j0)` and the leading dimension, for a micro-kernel that
    /// writes the `rows × cols` block there. Panics unless the block lies inside the window.
    /// Only the bf16 micro-kernel writes through it, so builds without AVX512_BF16 leave it out.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
    pub(crate) fn block_ptr(
        &mut self,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
    ) -> (*mut f32, usize) {
        assert!(
            rows > 0 && cols > 0 && i0 + rows <= self.rows && j0 + cols <= self.cols,
            "MatMut::block_ptr outside the window"
        );
        // SAFETY: (i0, j0) is inside the window (checked).
        (unsafe { self.ptr.add(i0 * self.ld + j0) }, self.ld)
    }

    /// Splits the window into a grid of `mb × nb` blocks (the last row and column of blocks
    /// may be smaller), numbered row-major, for a parallel iterator to hand out.
    pub(crate) fn blocks(self, mb: usize, nb: usize) -> Blocks<'a> {
        assert!(mb > 0 && nb > 0, "MatMut::blocks: empty block size");
        Blocks {
            ptr: SendPtr(self.ptr),
            rows: self.rows,
            cols: self.cols,
            ld: self.ld,
            mb,
            nb,
            grid_cols: self.cols.div_ceil(nb),
            _borrow: PhantomData,
        }
    }
}

/// A raw pointer that may cross threads; only [`Blocks`] uses it, to hand out disjoint windows.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only dereferenced through the disjoint windows `Blocks::get` hands out.
unsafe impl Send for SendPtr {}
// SAFETY: as above; sharing the pointer itself reads nothing.
unsafe impl Sync for SendPtr {}

/// A grid of disjoint windows of one `MatMut`, see [`MatMut::blocks`].
pub(crate) struct Blocks<'a> {
    ptr: SendPtr,
    rows: usize,
    cols: usize,
    ld: usize,
    mb: usize,
    nb: usize,
    grid_cols: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> Blocks<'a> {
    /// Number of blocks.
    pub(crate) fn len(&self) -> usize {
        self.rows.div_ceil(self.mb) * self.grid_cols
    }

    /// Calls `f(row, col, window)` exactly once for every block — `(row, col)` is the block's
    /// origin in the whole window — on the current rayon pool when `parallel`, else in order.
    /// Consuming the grid is what makes handing out `&mut`-like windows safe: no block can be
    /// asked for twice.
    pub(crate) fn for_each(self, parallel: bool, f: impl Fn(usize, usize, MatMut<'a>) + Sync) {
        let run = |t: usize| {
            // SAFETY: every t in 0..len() is visited exactly once, by this loop alone.
            let (i0, j0, view) = unsafe { self.block(t) };
            f(i0, j0, view)
        };
        crate::launch::ways(if parallel { self.len() } else { 1 });
        if parallel && self.len() > 1 {
            use rayon::prelude::*;
            (0..self.len()).into_par_iter().for_each(run);
        } else {
            (0..self.len()).for_each(run);
        }
    }

    /// Block `t` (row-major in the grid), with its origin `(row, col)` in the whole window.
    ///
    /// # Safety
    /// Windows for distinct `t` are disjoint; the caller must not take the same `t` twice.
    unsafe fn block(&self, t: usize) -> (usize, usize, MatMut<'a>) {
        assert!(t < self.len(), "Blocks::block: block {t} of {}", self.len());
        let (bi, bj) = (t / self.grid_cols, t % self.grid_cols);
        let (i0, j0) = (bi * self.mb, bj * self.nb);
        let rows = self.mb.min(self.rows - i0);
        let cols = self.nb.min(self.cols - j0);
        // SAFETY: (i0, j0) lies inside the window (t < len), and block t covers rows
        // i0..i0+rows and columns j0..j0+cols only, which no other block number covers.
        let ptr = unsafe { self.ptr.0.add(i0 * self.ld + j0) };
        let view = MatMut {
            ptr,
            rows,
            cols,
            ld: self.ld,
            _borrow: PhantomData,
        };
        (i0, j0, view)
    }
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
            i0 + rows <= c.rows && j0 + n_eff <= c.cols,
            "tile outside C"
        );
        let f = TABLE[(a.layout == ALayout::Cols) as usize][nv - 1][rows - 1];
        // SAFETY: the asserts above establish the contract of `tile`: A holds the rows × kc
        // slice in its layout, b holds kc rows of w floats rsb apart, and the rows × n_eff
        // block of C at (i0, j0) lies inside the window `c` borrows uniquely.
        unsafe {
            let cp = c.ptr.add(i0 * c.ld + j0);
            f(
                kc,
                a.data.as_ptr(),
                a.ld,
                b.as_ptr(),
                rsb,
                cp,
                c.ld,
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

const fn tiles<const V: usize, const COLS: bool>() -> [TileFn; MR] {
    let mut t: [TileFn; MR] = [tile::<1, V, COLS>; MR];
    macro_rules! fill {
        ($($r:literal)*) => { $( if $r <= MR { t[$r - 1] = tile::<$r, V, COLS>; } )* };
    }
    fill!(1 2 3 4 5 6 7 8 9 10 11 12);
    t
}

/// Loads `LANES` floats from `p` (unaligned).
///
/// # Safety
/// `p..p+LANES` must be readable.
#[inline(always)]
unsafe fn load(p: *const f32) -> F32s {
    // SAFETY: the caller guarantees LANES readable floats; F32s is plain f32 lanes.
    unsafe { p.cast::<F32s>().read_unaligned() }
}

/// Stores `v` to `p..p+LANES` (unaligned).
///
/// # Safety
/// `p..p+LANES` must be writable.
#[inline(always)]
unsafe fn store(p: *mut f32, v: F32s) {
    // SAFETY: the caller guarantees LANES writable floats.
    unsafe { p.cast::<F32s>().write_unaligned(v) }
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
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        // SAFETY: p < kc, so row p of b (V·LANES floats) and column p of the A slice
        // (a + i·rsa for i < R) are in bounds.
        unsafe {
            let bv: [F32s; V] = std::array::from_fn(|v| load(b.add(v * LANES)));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai = F32s::splat(*a.add(i * rsa));
                for v in 0..V {
                    acc_i[v] = ai.mul_add(bv[v], acc_i[v]);
                }
            }
            a = a.add(csa);
            b = b.add(rsb);
        }
    }
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
