//! The cache-blocked GEMM (GotoBLAS/BLIS loop nest) for large shapes, and its rayon
//! parallelism. Leaves out: the micro-kernel and packing themselves (`kernel.rs`, `pack.rs`),
//! and the few-row shapes that skip packing (`small.rs`).
//!
//! ```text
//! for jc in 0..n step NC                        column block of B and C
//!   for pc in 0..k step kc (≈ KC)               depth block: beta on the first, then 1
//!     pack op(B)[pc.., jc..] → Bp (kc × NC)      in parallel, NR-wide panels; read from L2/L3
//!     in parallel over C blocks (MC × cols):
//!       for ir step MR:                         A micro-panel (MR × kc, in place) hot in L1
//!         for jr step NR: micro-kernel          B micro-panel streams from L2
//! ```
//!
//! Sizes for AMD Zen 5 (48 KiB L1d, 1 MiB L2 per core, 32 MiB L3); measured flat within a few
//! percent for KC 128–512 and NC 384–2048, so they are round numbers in the middle.
//!
//! Thread-count independence: the depth split depends only on `k`, and tasks only partition
//! `C`; every element is reduced by the same FMA chain on any pool size.

use std::cell::Cell;

use rayon::prelude::*;

use super::kernel::{ASrc, MR, MatMut, NR, Tile, Update, row_panels};
use super::pack::{pack_b, packed_b_len, panel_width};
use super::{Product, Transpose};
use crate::simd::LANES;

/// Nominal depth of a block: the A micro-panel (MR × KC, 12 KiB) sits in L1 beside the
/// B stream. Depths up to `KC_ONE_BLOCK` are not split.
const KC: usize = 256;
const KC_ONE_BLOCK: usize = 384;
/// Rows of C per task: enough tasks to balance two threads on the model's 4096 rows.
const MC: usize = 192;
/// Tasks per parallel phase at least (when the shape allows): enough for work stealing to
/// even out two threads.
const MIN_TASKS: usize = 8;
/// Columns of a packed B block (KC × NC = 1 MiB, shared by all threads from L3).
const NC: usize = 1024;

thread_local! {
    /// The packed B block of the blocked path.
    static PACKED_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Small copies on the few-row paths: a ragged B strip, a transposed A.
    pub(crate) static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a 64-byte-aligned scratch slice of `len` floats taken from this thread's
/// buffer `key` (grown, never shrunk, so steady-state calls do not allocate). The buffer is
/// taken out of the cell for the duration, so a nested call on the same thread (rayon runs
/// other tasks while it waits) gets a fresh one instead of aliasing this one.
pub(crate) fn with_scratch<R>(
    key: &'static std::thread::LocalKey<Cell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut v = key.take();
    if v.len() < len + 16 {
        v = vec![0.0; len + 16];
    }
    let off = v.as_ptr().align_offset(64).min(16);
    let r = f(&mut v[off..off + len]);
    key.set(v);
    r
}

/// Depth of the K blocks: `k` in one block up to `KC_ONE_BLOCK`, else split evenly into
/// blocks of at most `KC` (1024 → 4 × 256, 600 → 3 × 200).
fn depth_block(k: usize) -> usize {
    if k <= KC_ONE_BLOCK {
        k
    } else {
        k.div_ceil(k.div_ceil(KC))
    }
}

/// `C = alpha·op(A)·op(B) + beta·C` through packed B blocks; arguments already checked,
/// `m, n, k > 0`.
pub(crate) fn gemm_blocked(p: &Product<'_>, mut c: MatMut<'_>) {
    let Product {
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
    } = *p;
    let kc_max = depth_block(k);
    let parallel = p.parallel();
    // Tasks: equal heights of at most MC rows (whole MR panels), the columns cut too (whole
    // NR panels) until there are MIN_TASKS or 4 per planned worker (`task_grid`). Equal tasks
    // matter: rayon hands out halves of the task range, so 5 × 192 + 64 rows on two threads
    // runs at 1.7×.
    let grid_of = |nc: usize| {
        if parallel {
            super::task_grid(m, nc, (MR, NR, MC), MIN_TASKS)
        } else {
            (m, nc)
        }
    };
    with_scratch(&PACKED_B, packed_b_len(kc_max, NC.min(n)), |bbuf| {
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            let (task_rows, task_cols) = grid_of(nc);
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                let up = Update {
                    alpha,
                    beta: if pc == 0 { beta } else { 1.0 },
                };
                let bp = &mut bbuf[..packed_b_len(kc, nc)];
                // Up to four panels per packing task (all panels but the last are NR wide),
                // fewer where that leaves under 4 tasks per planned worker.
                let per_task = nc
                    .div_ceil(NR)
                    .div_ceil(crate::parallel::target_tasks())
                    .clamp(1, 4);
                let group = per_task * kc * NR;
                if parallel {
                    crate::launch::ways(bp.len().div_ceil(group));
                    bp.par_chunks_mut(group).enumerate().for_each(|(g, dst)| {
                        let _task = crate::launch::task(g);
                        pack_b(dst, b, ldb, transb, pc, kc, jc, nc, per_task * g);
                    });
                } else {
                    pack_b(bp, b, ldb, transb, pc, kc, jc, nc, 0);
                }
                let bp = &*bp;
                let grid = c.sub(0, jc, m, nc).blocks(task_rows, task_cols);
                grid.for_each(parallel, |i0, j0, view| {
                    macro_block(transa, a, lda, pc, kc, bp, nc, i0, j0, view, up);
                });
            }
        }
    });
}

/// One task: the C block `view`, at (`i0`, `j0`) of the current column block (`nc` wide,
/// packed in `bp`), over the depth block `pc..pc+kc`.
#[allow(clippy::too_many_arguments)]
fn macro_block(
    transa: Transpose,
    a: &[f32],
    lda: usize,
    pc: usize,
    kc: usize,
    bp: &[f32],
    nc: usize,
    i0: usize,
    j0: usize,
    mut view: MatMut<'_>,
    up: Update,
) {
    let cols = view.cols();
    for (ir, h) in row_panels(view.rows()) {
        let asrc = ASrc::at(a, lda, transa, i0 + ir, pc);
        for jr in (0..cols).step_by(NR) {
            let q = (j0 + jr) / NR;
            let w = panel_width(nc, q);
            let panel = &bp[q * NR * kc..];
            let n_eff = w.min(cols - jr);
            Tile::run(
                h,
                w / LANES,
                kc,
                asrc,
                panel,
                w,
                &mut view,
                ir,
                jr,
                n_eff,
                up,
            );
        }
    }
}
