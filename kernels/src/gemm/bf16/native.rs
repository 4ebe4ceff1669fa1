//! The bf16 GEMM's blocking and threads (see the loop nest in `mod.rs`), in safe code over
//! the leaf `kernel.rs`. Leaves out: the micro-kernel and the pair conversions themselves.

use std::cell::Cell;

use rayon::prelude::*;

use super::PackedB;
use super::kernel::{APairs, MRB, NRB, Update, run_tile};
use crate::bf16::{pairs_of_row, pairs_of_two_rows};
use crate::gemm::kernel::{MR, MatMut, row_panels};
use crate::gemm::{PAR_MIN_FLOPS, Transpose, scale};

/// Nominal depth of a block, even: a B micro-panel (KC × 32 bf16, 16 KiB) and an A
/// micro-panel (12 × KC bf16, 6 KiB) fit Zen 4's 32 KiB L1d together. Depths up to
/// `KC_ONE_BLOCK` are not split.
const KC: usize = 256;
const KC_ONE_BLOCK: usize = 384;
/// Rows of C per task (whole 12-row panels): the A block (MC × KC bf16 = 96 KiB) stays in L2.
const MC: usize = 192;
/// Panels packed per task: rows of B are read 1 KiB at a time, not 128 bytes a page apart.
const PACK_GROUP: usize = 8;
/// Below this many elements of B, packing runs on the calling thread.
const PACK_PAR_MIN: usize = 1 << 16;

const _: () = assert!(
    MR == MRB,
    "the bf16 tile height is the fp32 one (row_panels)"
);
const _: () = assert!(MC.is_multiple_of(MRB) && KC.is_multiple_of(2));

thread_local! {
    /// Pairs of the current A block.
    static A_PAIRS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    /// `op(B)` of an unpacked call.
    static B_PACKED: Cell<PackedB> = Cell::new(PackedB::default());
    /// A task's own panels of B, one depth block (products with one row of tasks).
    static B_BLOCK: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    /// Rows of pairs of a transposed B, before they are turned into columns.
    static B_ROWS: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's buffer `key` (grown, never shrunk). The buffer
/// is taken out of the cell meanwhile, so a nested call on this thread (rayon runs other tasks
/// while it waits) gets its own.
fn with_buf<T: Default + Clone, R>(
    key: &'static std::thread::LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = key.take();
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    key.set(v);
    r
}

/// Depth of the K blocks: all of `k` up to `KC_ONE_BLOCK`, else even blocks of at most `KC`
/// (every block but the last starts at an even depth, so pairs never straddle two blocks).
fn depth_block(k: usize) -> usize {
    if k <= KC_ONE_BLOCK {
        k.next_multiple_of(2)
    } else {
        k.div_ceil(k.div_ceil(KC)).next_multiple_of(2)
    }
}

/// Packs `op(B)` (k × n) into `data`: `⌈n/32⌉` panels, panel `q` at `q·⌈k/2⌉·32` holding
/// row `r` of pairs at `r·32 + j` = pair(op(B)[2r, 32q + j], op(B)[2r + 1, 32q + j]), zero past
/// the edges.
pub(super) fn pack_b(
    data: &mut Vec<u32>,
    transb: Transpose,
    k: usize,
    n: usize,
    b: &[f32],
    ldb: usize,
) {
    let k2 = k.div_ceil(2);
    let panel = k2 * NRB;
    data.clear();
    data.resize(n.div_ceil(NRB) * panel, 0);
    if panel == 0 {
        return;
    }
    // Panels per task: up to PACK_GROUP, fewer where that leaves under 4 tasks per planned
    // worker (the packing only copies, so the split never changes a result).
    let npanels = n.div_ceil(NRB);
    let per_task = npanels
        .div_ceil(crate::parallel::target_tasks())
        .clamp(1, PACK_GROUP);
    let group = |(g, dst): (usize, &mut [u32])| {
        let _task = crate::launch::task(g);
        let j0 = g * per_task * NRB;
        let cols = (n - j0).min(per_task * NRB);
        pack_panels(dst, transb, b, ldb, 0, k, j0, cols);
    };
    let chunks = data.chunks_mut(per_task * panel).enumerate();
    if k * n >= PACK_PAR_MIN {
        crate::launch::ways(data.len().div_ceil(per_task * panel));
        data.par_chunks_mut(per_task * panel)
            .enumerate()
            .for_each(group);
    } else {
        chunks.for_each(group);
    }
}

/// Packs `op(B)[p0..p0+kc, j0..j0+cols]` into `⌈cols/32⌉` consecutive panels of `⌈kc/2⌉`
/// rows of 32 pairs in `dst` (lanes past `cols` in the last panel are left as they are: the
/// micro-kernel computes them but never stores them).
#[allow(clippy::too_many_arguments)]
fn pack_panels(
    dst: &mut [u32],
    transb: Transpose,
    b: &[f32],
    ldb: usize,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
) {
    let k2 = kc.div_ceil(2);
    let npanels = cols.div_ceil(NRB);
    match transb {
        // op(B)[p, j] = b[p·ldb + j]: two stored rows at a time, read along the whole group
        // of panels, become a row of pairs in each panel.
        Transpose::No => {
            for r in 0..k2 {
                let p = p0 + 2 * r;
                let r0 = &b[p * ldb + j0..][..cols];
                let r1: &[f32] = if 2 * r + 1 < kc {
                    &b[(p + 1) * ldb + j0..][..cols]
                } else {
                    &[]
                };
                for t in 0..npanels {
                    let (c0, w) = (t * NRB, (cols - t * NRB).min(NRB));
                    let r1t = if r1.is_empty() { r1 } else { &r1[c0..][..w] };
                    let row = &mut dst[(t * k2 + r) * NRB..][..w];
                    pairs_of_two_rows(row, &r0[c0..][..w], r1t);
                }
            }
        }
        // op(B)[p, j] = b[j·ldb + p]: each stored row becomes a row of pairs, which is then
        // written down its panel column.
        Transpose::Yes => {
            for (t, panel) in dst.chunks_mut(k2 * NRB).take(npanels).enumerate() {
                let jp = j0 + t * NRB;
                let w = (cols - t * NRB).min(NRB);
                with_buf(&B_ROWS, w * k2, |rows| {
                    for (jj, row) in rows.chunks_exact_mut(k2).enumerate() {
                        pairs_of_row(row, &b[(jp + jj) * ldb + p0..][..kc]);
                    }
                    // Transpose in blocks of 16 pair rows: each stored row gives one cache
                    // line, and the 16 × 32 block written (2 KiB) stays in L1.
                    for (rb, block) in panel.chunks_mut(16 * NRB).enumerate() {
                        let r0 = rb * 16;
                        let rn = block.len() / NRB;
                        for (jj, row) in rows.chunks_exact(k2).enumerate() {
                            for (rr, &x) in row[r0..r0 + rn].iter().enumerate() {
                                block[rr * NRB + jj] = x;
                            }
                        }
                    }
                });
            }
        }
    }
}

/// Where the micro-kernels read `op(B)` from.
#[derive(Clone, Copy)]
enum BSource<'a> {
    /// Packed whole, before the tasks start.
    Packed(&'a PackedB),
    /// In place: each task packs the columns it computes, one depth block at a time, into
    /// its own buffer (hot in L2 for the micro-kernels that follow).
    Raw {
        transb: Transpose,
        b: &'a [f32],
        ldb: usize,
    },
}

/// [`super::gemm_packed`] after its checks.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_packed(
    transa: Transpose,
    m: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    pb: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let src = BSource::Packed(pb);
    run(transa, m, pb.n, pb.k, alpha, a, lda, src, beta, c, ldc);
}

/// The task grid over `C` (m × n, depth k): blocks of whole 12-row and 32-column panels.
#[allow(clippy::too_many_arguments)]
fn run(
    transa: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    src: BSource<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let mut cv = MatMut::new(c, m, n, ldc);
    if k == 0 || alpha == 0.0 {
        scale(&mut cv, beta);
        return;
    }
    let flops = (2 * m).saturating_mul(n).saturating_mul(k);
    let parallel = flops >= PAR_MIN_FLOPS;
    // Tasks: equal heights of at most MC rows; with fewer blocks than 4 per planned worker
    // (`task_grid`), the columns are cut too (whole 32-column panels), then shorter rows.
    // Each task packs its rows of A once per depth block, so on one worker the columns stay
    // whole. (The split never changes a result: every element is reduced the same way in
    // any task.)
    let (task_rows, task_cols) = if parallel {
        crate::gemm::task_grid(m, n, (MRB, NRB, MC), 1)
    } else {
        (m.next_multiple_of(MRB), n.next_multiple_of(NRB))
    };
    let kc_max = depth_block(k);
    let up = Update { alpha, beta };
    cv.blocks(task_rows, task_cols)
        .for_each(parallel, |i0, j0, view| {
            macro_block(transa, a, lda, src, k, kc_max, i0, j0, view, up);
        });
}

/// One task: the C block `view` at (`i0`, `j0`), over every depth block in order.
#[allow(clippy::too_many_arguments)]
fn macro_block(
    transa: Transpose,
    a: &[f32],
    lda: usize,
    src: BSource<'_>,
    k: usize,
    kc_max: usize,
    i0: usize,
    j0: usize,
    mut view: MatMut<'_>,
    up: Update,
) {
    let (rows, cols) = (view.rows(), view.cols());
    let kc2_max = kc_max.div_ceil(2);
    let b_len = match src {
        BSource::Packed(_) => 0,
        BSource::Raw { .. } => cols.div_ceil(NRB) * kc2_max * NRB,
    };
    with_buf(&B_BLOCK, b_len, |bbuf| {
        with_buf(&A_PAIRS, rows * kc2_max, |abuf| {
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                let k2 = kc.div_ceil(2);
                let (rsa, csa) = pack_a(abuf, transa, a, lda, i0, rows, pc, kc);
                // Panel of the columns jr.. of this task, depth block pc.
                let (bdata, panel_len, first, offset) = match src {
                    BSource::Packed(pb) => {
                        (&pb.data[..], pb.k.div_ceil(2) * NRB, j0 / NRB, pc / 2 * NRB)
                    }
                    BSource::Raw { transb, b, ldb } => {
                        pack_panels(bbuf, transb, b, ldb, pc, kc, j0, cols);
                        (&bbuf[..], k2 * NRB, 0, 0)
                    }
                };
                let up = Update {
                    alpha: up.alpha,
                    beta: if pc == 0 { up.beta } else { 1.0 },
                };
                for jr in (0..cols).step_by(NRB) {
                    let q = first + jr / NRB;
                    let panel = &bdata[q * panel_len + offset..][..k2 * NRB];
                    let n_eff = (cols - jr).min(NRB);
                    let nv = n_eff.div_ceil(16);
                    for (ir, h) in row_panels(rows) {
                        let ap = APairs {
                            data: &abuf[ir * rsa..],
                            rsa,
                            csa,
                        };
                        run_tile(h, nv, k2, ap, panel, &mut view, ir, jr, n_eff, up);
                    }
                }
            }
        })
    });
}

/// Packs `op(A)[i0..i0+rows, pc..pc+kc]` into pairs; returns the strides `(rsa, csa)` of
/// pair `(i, q)`: rows of pairs for A stored row-major, columns for A stored transposed.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    abuf: &mut [u32],
    transa: Transpose,
    a: &[f32],
    lda: usize,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
) -> (usize, usize) {
    let k2 = kc.div_ceil(2);
    match transa {
        Transpose::No => {
            for (i, dst) in abuf.chunks_exact_mut(k2).take(rows).enumerate() {
                pairs_of_row(dst, &a[(i0 + i) * lda + pc..][..kc]);
            }
            (k2, 1)
        }
        Transpose::Yes => {
            for (q, dst) in abuf.chunks_exact_mut(rows).take(k2).enumerate() {
                let p = pc + 2 * q;
                let r0 = &a[p * lda + i0..][..rows];
                let r1: &[f32] = if 2 * q + 1 < kc {
                    &a[(p + 1) * lda + i0..][..rows]
                } else {
                    &[]
                };
                pairs_of_two_rows(dst, r0, r1);
            }
            (1, rows)
        }
    }
}

/// [`super::gemm()`]'s bf16 product after its checks: packs `op(B)` into this thread's
/// buffer, then runs [`gemm_packed`].
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_unpacked(
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
    if m.div_ceil(MC) == 1 {
        // One row of tasks: no two tasks share columns of B, so each packs its own, one
        // depth block at a time, and the micro-kernels read it from L2.
        let src = BSource::Raw { transb, b, ldb };
        return run(transa, m, n, k, alpha, a, lda, src, beta, c, ldc);
    }
    let mut pb = B_PACKED.take();
    if k == 0 || alpha == 0.0 || m == 0 || n == 0 {
        pb.data.clear();
    } else {
        pack_b(&mut pb.data, transb, k, n, b, ldb);
    }
    pb.k = if alpha == 0.0 { 0 } else { k };
    pb.n = n;
    gemm_packed(transa, m, alpha, a, lda, &pb, beta, c, ldc);
    B_PACKED.set(pb);
}
