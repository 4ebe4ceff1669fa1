//! Single-precision GEMM, BLAS-style and row-major: `C = alpha·op(A)·op(B) + beta·C`.
//!
//! [`sgemm`] is the entry point every matrix product of the models goes through (forward
//! NN/NT, backward TN/NT); [`sgemm_ref`] is the plain scalar reference it is tested against.
//! Leaves out: other precisions, complex numbers, batched products, column-major layouts
//! (pass the transposed problem: `Cᵀ = op(B)ᵀ·op(A)ᵀ`).
//!
//! # How a product is computed
//!
//! The shape alone picks one of four paths (never the thread count):
//!
//! | shape                              | path                                                       |
//! |------------------------------------|------------------------------------------------------------|
//! | `m = 1`, B row-major               | GEMV sweeping B row by row (`raw/gemv.rs`)                 |
//! | `m ≤ 64`, B row-major              | register tiles reading B in place (`small.rs`)             |
//! | `m ≤ 24`, B transposed, `k ≥ LANES`| dot products along the rows of A and B (`raw/dot.rs`)      |
//! | everything else                    | GotoBLAS/BLIS blocking, B packed (`blocked.rs`)            |
//!
//! A tiny depth (`k` of 1–16) needs no path of its own: packing costs `O(k·n)` against the
//! `O(m·n)` of writing C, and writing C bounds the product (4096 × 1 × 1024 writes 16 MiB at
//! ~55 GB/s).
//!
//! All but the dot path run the same register-tiled micro-kernel (`raw/micro.rs`, wrapped in
//! `raw/gemm_tile.rs`; contract in `kernel.rs`, shared with attention): an [`MR`] × [`NR`]
//! tile of C in registers (12 × 32 with AVX-512: 24 accumulators), fed by `NR`-wide rows of B
//! and broadcasts of A read in place. Only B is packed (`pack.rs`), and only when enough rows
//! of A reuse it.
//!
//! # Threads
//!
//! Products of more than about 2 MFLOP split C into fixed blocks that rayon's pool (the
//! caller's, so `ThreadPool::install` picks the thread count) runs in parallel; smaller ones
//! run on the calling thread. Every element of C is computed by the same operations in the same
//! order however the blocks are scheduled, so results are bitwise identical on any number of
//! threads. Packing buffers are thread-local and reused: steady-state calls do not allocate.

mod bf16;
mod blocked;
use crate::raw::{dot, gemv};
pub(crate) mod kernel;
mod pack;
mod reference;
mod small;
#[cfg(test)]
mod tests;

pub use bf16::{PackedB, gemm, gemm_bf16_ref, gemm_packed};
pub use kernel::{MR, NR};
pub use reference::sgemm_ref;

use crate::simd::LANES;
use kernel::MatMut;

/// Whether an operand is used as stored (`No`) or transposed (`Yes`), as in BLAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transpose {
    No,
    Yes,
}

/// Below this many flops (2·m·n·k) a product runs on the calling thread: a rayon fork-join
/// costs a few microseconds, the time of ~1 MFLOP.
pub(crate) const PAR_MIN_FLOPS: usize = 2 << 20;

/// The operands of one checked product `C = alpha·op(A)·op(B) + beta·C` (`op(A)` m×k,
/// `op(B)` k×n), as the internal paths take them; `C` travels apart, as a [`MatMut`].
#[derive(Clone, Copy)]
pub(crate) struct Product<'a> {
    pub transa: Transpose,
    pub transb: Transpose,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'a [f32],
    pub lda: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub beta: f32,
}

impl Product<'_> {
    /// Whether the product is worth splitting over the rayon pool (a function of the shape
    /// only; the split never changes the result).
    pub(crate) fn parallel(&self) -> bool {
        let flops = (2 * self.m).saturating_mul(self.n).saturating_mul(self.k);
        flops >= PAR_MIN_FLOPS
    }
}

/// The task grid of a product over `C` (m × n): `(task_rows, task_cols)`, whole `mr`-row and
/// `nr`-column panels, sized for [`crate::parallel::workers`] threads (never the live pool
/// alone, so a trace can ask for any pool's split). Rows are cut first into equal blocks of at
/// most `mc` (an A block that stays in L2); with fewer blocks than the target
/// (`min_tasks` or [`crate::parallel::target_tasks`], whichever is more) the columns are cut
/// too, then shorter row blocks. Never more tasks than [`crate::parallel::max_tasks`]. The
/// grid only partitions `C`, so it never changes a result.
pub(crate) fn task_grid(
    m: usize,
    n: usize,
    (mr, nr, mc): (usize, usize, usize),
    min_tasks: usize,
) -> (usize, usize) {
    let cap = crate::parallel::max_tasks();
    let target = min_tasks.max(crate::parallel::target_tasks()).min(cap);
    let (row_panels, col_panels) = (m.div_ceil(mr).max(1), n.div_ceil(nr).max(1));
    let mut rows = m.div_ceil(mc).clamp(1, row_panels);
    let mut cols = 1;
    if rows < target {
        cols = target.div_ceil(rows).min(col_panels);
    }
    if rows * cols < target {
        rows = target.div_ceil(cols).min(row_panels);
    }
    if rows * cols > cap {
        rows = rows.min(cap);
        cols = (cap / rows).max(1);
    }
    // Tasks are whole panels, so rounding can leave fewer than asked for (16 column panels
    // cut 11 ways are 8 tasks of 2): narrow the tasks, columns first, until the target is met,
    // without passing the cap.
    let (mut row_per, mut col_per) = (row_panels.div_ceil(rows), col_panels.div_ceil(cols));
    let count = |rp: usize, cp: usize| row_panels.div_ceil(rp) * col_panels.div_ceil(cp);
    while count(row_per, col_per) < target {
        let (rp, cp) = if col_per > 1 {
            (row_per, col_per - 1)
        } else if row_per > 1 {
            (row_per - 1, col_per)
        } else {
            break;
        };
        if count(rp, cp) > cap {
            break;
        }
        (row_per, col_per) = (rp, cp);
    }
    (row_per * mr, col_per * nr)
}

/// The bytes a product moves at least: op(A), op(B) read once, C written (and read when
/// `beta ≠ 0`) once.
pub(crate) fn product_bytes(m: usize, n: usize, k: usize, beta: f32) -> usize {
    let c = if beta == 0.0 { m * n } else { 2 * m * n };
    4 * (m * k + k * n + c)
}

/// Panics unless `len` holds a `rows × cols` row-major matrix with leading dimension `ld`.
#[track_caller]
pub(crate) fn check_operand(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    assert!(
        ld >= cols.max(1),
        "sgemm: ld{name} = {ld} < {cols} columns of {name}"
    );
    if rows > 0 && cols > 0 {
        let need = (rows - 1) * ld + cols;
        assert!(
            len >= need,
            "sgemm: {name} has {len} elements, needs {need} ({rows}×{cols}, ld {ld})"
        );
    }
}

/// Checks every shape and length precondition of [`sgemm`]; shared with the reference.
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_args(
    transa: Transpose,
    transb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &[f32],
    ldc: usize,
) {
    let (ar, ac) = if transa == Transpose::No {
        (m, k)
    } else {
        (k, m)
    };
    let (br, bc) = if transb == Transpose::No {
        (k, n)
    } else {
        (n, k)
    };
    check_operand("a", a.len(), ar, ac, lda);
    check_operand("b", b.len(), br, bc, ldb);
    check_operand("c", c.len(), m, n, ldc);
}

/// `C = alpha·op(A)·op(B) + beta·C`, row-major, single precision (cblas_sgemm's arguments in
/// its order, without the layout).
///
/// `op(A)` is m×k and `op(B)` is k×n; `A` is stored m×k (`transa = No`) or k×m (`Yes`) with
/// leading dimension `lda` (elements between rows), likewise `B` and `C` (m×n, `ldc`). With
/// `beta = 0`, `C` is never read, so it may hold garbage or NaN; with `alpha = 0` or `k = 0`,
/// `A` and `B` are not read (`C = beta·C`), as in BLAS. Panics if a slice is too short or a
/// leading dimension is smaller than its row length.
///
/// Runs on the current rayon pool and gives the same bits on any number of threads (see the
/// [module docs](self)).
///
/// ```
/// use kernels::{sgemm, Transpose};
/// // (2×3) · (3×2)
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// let mut c = [0.0; 4];
/// sgemm(Transpose::No, Transpose::No, 2, 2, 3, 1.0, &a, 3, &b, 2, 0.0, &mut c, 2);
/// assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    transa: Transpose,
    transb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let _launch = crate::launch::start(1);
    check_args(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    crate::launch::bytes(product_bytes(m, n, k, beta));
    if m == 0 || n == 0 {
        return;
    }
    let mut cv = MatMut::new(c, m, n, ldc);
    if k == 0 || alpha == 0.0 {
        scale(&mut cv, beta);
        return;
    }
    let p = Product {
        transa,
        transb,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb,
        beta,
    };
    if transb == Transpose::No && m == 1 {
        small::gemv_row(&p, cv);
    } else if transb == Transpose::No && m <= small::B_IN_PLACE_MAX_M {
        small::gemm_b_in_place(&p, cv);
    } else if transb == Transpose::Yes && m <= small::DOT_MAX_M && k >= LANES {
        small::gemm_dot(&p, cv);
    } else {
        blocked::gemm_blocked(&p, cv);
    }
}

/// `C = beta·C` (`beta = 0` writes zeros without reading): the whole product when it is empty.
pub(crate) fn scale(c: &mut MatMut<'_>, beta: f32) {
    for i in 0..c.rows() {
        let row = c.row(i);
        if beta == 0.0 {
            row.fill(0.0);
        } else {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
}
