//! Fused causal attention, FlashAttention-2 style: tiles of queries meet tiles of keys and
//! values, the softmax is computed online, and no T×T matrix is ever stored.
//!
//! Plan of a call (both directions):
//! 1. **Pack** (parallel over (batch, head, tile)): each head's q, k, v (and, backward, dO)
//!    are copied out of the strided (B, T, 3C) layout into contiguous, zero-padded tiles of
//!    `TILE` rows by HSp = HS rounded up to the lane width, in the forms the products take
//!    ([`Packing`]): as an `A` operand (depth along HS), as a `B` operand with depth along HS
//!    (transposed, HSp × TILE) or along positions (TILE × HSp); see `raw/tile.rs`: B's rows must
//!    be contiguous vectors.
//! 2. **Tiles** (parallel, see below): products of TILE × TILE × HSp on L1/L2-resident tiles
//!    through the one micro-kernel `gemm_tile`, with the softmax work between them. Tiles on
//!    the diagonal compute only their causal half ([`Part`]). The scores leave their product
//!    unscaled; 1/√HS is applied as the softmax reads them (and to dQ, dK when they are
//!    scattered), so the packed q is q itself.
//! 3. **Scatter** (parallel over blocks of rows): results go back into the (B, T, C) / (B, T, 3C) layout.
//!
//! Forward, one task per (batch, head, pair of query tiles i and NT−1−i), so that every task
//! covers NT + 1 key tiles of the causal triangle (on a pool too large for the pairs, one task
//! per query tile; no two tasks share a sum, so this choice changes no result). For each
//! query tile i and key tiles j = 0..=i (tiles above the diagonal are fully masked and skipped), S = Q_i·K_jᵀ, mask the diagonal tile, update each
//! row's running max m and sum l, rescale O by e^(m_old − m_new), O += P·V_j. At the end
//! O /= l and lse = m + ln l is saved for the backward.
//!
//! Backward, one task per (batch, head, group of key tiles): for each key tile j of the group
//! and each query tile i ≥ j, recompute P = e^(S − lse), then dP = dO_i·V_jᵀ,
//! dS = P∘(dP − D) with D = rowsum(dO∘O), and dV_j += Pᵀ·dO_i, dK_j += dSᵀ·Q_i, dQ_i += dS·K_j.
//! dK_j and dV_j are owned by their task. dQ_i gets contributions from every key tile, so each
//! group sums into its own dQ buffer and the scatter adds the groups in a fixed order. Groups
//! take key tiles in a snake order (g, 2G−1−g, 2G+g, …) so that early tiles (long query runs)
//! pair with late ones (short runs) and the groups carry equal work. The group count G is
//! fixed by the shapes ([`Dims::groups`]): up to 4 per head, for 256 tasks (64 threads)
//! where B·NH ≥ 64 and T ≥ 8 tiles.
//!
//! Every phase (pack, tiles, scatter) states its task count (`launch::ways`) and times each
//! task (`launch::task`); the scatter runs in tasks of [`SCATTER_ROWS`] rows.
//!
//! Every split depends only on the shapes, never on the thread count, and every sum runs in a
//! fixed order, so results are bitwise identical on any pool size.
//!
//! Precision ([`Packing`]): in fp32 ([`F32`]) every operand is packed as fp32. In bf16
//! (`bf16.rs`) the packed q, k, v and dO are bf16 pairs, rounded once (to nearest even) while
//! packing, and the score tiles P and dS are rounded to pairs right before the products that
//! take them as `A` (P·V; Pᵀ·dO, dSᵀ·Q, dS·K); every product accumulates in fp32. The scores
//! S and dP, the running max and sum, lse, D, P = e^(S − lse) and dS = P∘(dP − D) are fp32.
//!
//! Memory: the packed copies, the dK/dV tiles and the dQ partial sums live in one workspace
//! of O(B·T·C) floats ([`Dims::forward_workspace_floats`], [`Dims::backward_workspace_floats`]),
//! kept between calls ([`SPARE`]); each worker thread adds two 64×64 score tiles on its stack.
//!
//! Files: this one holds the workspace (shapes, packing, scratch tiles) and the tile math both
//! passes share; `forward.rs` and `backward.rs` the passes; `tests.rs` the unit tests.
//!
//! Leaves out: non-causal attention, dropout, attention masks other than causal, bf16 in memory
//! (inputs and outputs are fp32).

use std::sync::Mutex;

use super::exp::exp_nonpositive;
use super::tile::{MR, Operand, Strided, gemm_tile};
use super::{AttnDims, dot};
use crate::precision::Precision;
use crate::simd::{F32s, LANES, U32s, load, store};
use wide::ShuffleExt;

mod backward;
mod forward;
#[cfg(test)]
mod tests;

pub(super) use backward::backward;
pub(super) use forward::forward;

/// Rows of a query tile and of a key/value tile (Br = Bc, so only diagonal tiles need a mask).
pub(super) const TILE: usize = 64;

/// Backward tasks always aimed for, however few the heads (see [`Dims::groups`]).
const MIN_TASKS: usize = 16;

/// Backward tasks aimed for where the heads allow it with at most [`MAX_GROUPS`] groups
/// each: [`TASKS_PER_WORKER`](crate::parallel::TASKS_PER_WORKER) per thread of the largest
/// pool planned for (64). A constant, not `target_tasks()`: the groups fix the order of the dQ
/// sums, so they must not depend on the pool.
const POOL_TASKS: usize = 256;

/// Groups per head beyond which more tasks are not worth another dQ partial sum (a (Tp, HSp)
/// buffer written and read again) unless fewer than [`MIN_TASKS`] would run.
const MAX_GROUPS: usize = 4;

/// Rows of (B, T, ·) one scatter task writes.
const SCATTER_ROWS: usize = 16;

/// The shapes of one call and everything derived from them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    /// Head size C / NH.
    pub hs: usize,
    /// HS rounded up to a multiple of the lane width (packed row length).
    pub hsp: usize,
    /// Number of tiles covering T.
    pub nt: usize,
    /// T rounded up to whole tiles.
    pub tp: usize,
    /// B·NH, the number of independent heads.
    pub bh: usize,
}

impl Dims {
    /// Derives the tiling from checked dimensions ([`AttnDims::validate`]).
    pub fn new(dims: AttnDims) -> Self {
        let AttnDims { b, t, c, nh } = dims;
        let hs = dims.hs();
        let nt = t.div_ceil(TILE);
        Dims {
            t,
            c,
            nh,
            hs,
            hsp: hs.div_ceil(LANES) * LANES,
            nt,
            tp: nt * TILE,
            bh: b * nh,
        }
    }

    /// Floats in one packed tile (TILE × HSp, either orientation).
    fn tile_len(&self) -> usize {
        TILE * self.hsp
    }

    /// Floats in one packed buffer holding every head: (B·NH, Tp, HSp).
    fn packed_len(&self) -> usize {
        self.bh * self.tp * self.hsp
    }

    /// Groups of key tiles per head in the backward, each with its own dQ partial sum (a
    /// (Tp, HSp) buffer): enough for [`MIN_TASKS`] tasks in all, and for [`POOL_TASKS`] where
    /// that takes at most [`MAX_GROUPS`] per head; never fewer than two tiles (one snake pair)
    /// per group. A function of the shapes only, never of the thread count (nor of
    /// [`crate::parallel::workers`]): the groups fix the order in which dQ is summed.
    pub fn groups(&self) -> usize {
        // bh = 0 (an empty batch) has no tasks to share out; 1 group, of 0 slots.
        let bh = self.bh.max(1);
        MIN_TASKS
            .div_ceil(bh)
            .max(POOL_TASKS.div_ceil(bh).min(MAX_GROUPS))
            .min(self.nt / 2)
            .max(1)
    }

    /// Key tiles one group holds at most.
    fn slots(&self) -> usize {
        2 * self.nt.div_ceil(2 * self.groups())
    }

    /// Operand elements (4 bytes each, as a float) in one packed buffer of `M`'s operands.
    fn packed_elems<M: Packing>(&self) -> usize {
        self.packed_len() / M::E::DEPTH
    }

    /// Floats the forward allocates: packed Q, Kᵀ, V (in `M`'s operands), O, and the padded
    /// lse.
    pub fn forward_workspace_floats<M: Packing>(&self) -> usize {
        3 * self.packed_elems::<M>() + self.packed_len() + self.bh * self.tp
    }

    /// Floats the backward allocates: packed Q, Kᵀ, K, Vᵀ, dO (and Q and dO again in their `B`
    /// forms where these differ, see [`Packing::SHARED_ROWS`]); padded lse and D; per group
    /// the dK and dV tiles it owns and its dQ partial sum.
    pub fn backward_workspace_floats<M: Packing>(&self) -> usize {
        let g = self.groups();
        let operands = if M::SHARED_ROWS { 5 } else { 7 };
        operands * self.packed_elems::<M>()
            + 2 * self.bh * self.tp
            + 2 * self.bh * g * self.slots() * self.tile_len()
            + g * self.packed_len()
    }

    /// Floats of tile scratch a worker thread holds on its stack while a task runs: the
    /// backward's two score tiles and one tile converted to `M`'s operands (the forward's are
    /// fewer).
    pub fn per_thread_floats<M: Packing>() -> usize {
        2 * TILE * TILE + std::mem::size_of::<M::Conv>() / std::mem::size_of::<f32>()
    }

    /// (forward, backward, per-thread) floats of a call in precision `p` as this build runs it.
    pub fn workspace_floats(&self, p: Precision) -> (usize, usize, usize) {
        fn of<M: Packing>(d: &Dims) -> (usize, usize, usize) {
            (
                d.forward_workspace_floats::<M>(),
                d.backward_workspace_floats::<M>(),
                Dims::per_thread_floats::<M>(),
            )
        }
        match p.effective() {
            #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
            Precision::Bf16 => of::<super::bf16::Bf16>(self),
            _ => of::<F32>(self),
        }
    }
}

/// How the products of one precision take their operands: the element type the micro-kernel
/// multiplies ([`Operand`]) and how each tile is packed into it. Implemented by [`F32`] and,
/// where the build has AVX512_BF16, `bf16::Bf16`.
pub(super) trait Packing {
    /// fp32 values or bf16 pairs.
    type E: Operand;
    /// Per-thread scratch holding one score tile (P or dS) converted to `E`; empty for fp32,
    /// which reads the score tile itself.
    type Conv: Default + AsMut<[Self::E]>;
    /// Whether a tile packed as `A` ([`Packing::pack_a`]) is also its `B` form along the
    /// positions ([`Packing::pack_b`]), so the backward packs q and dO once, not twice.
    const SHARED_ROWS: bool;
    /// Positions `i·TILE ..` of head `bh` as the `A` of a product over HS: (TILE, HSp/DEPTH),
    /// zero-padded.
    fn pack_a(dst: &mut [Self::E], src: Source, d: &Dims, bh: usize, i: usize);
    /// The same positions as the `B` of a product over HS (transposed): (HSp/DEPTH, TILE).
    fn pack_bt(dst: &mut [Self::E], src: Source, d: &Dims, bh: usize, i: usize);
    /// The same positions as the `B` of a product over positions: (TILE/DEPTH, HSp).
    fn pack_b(dst: &mut [Self::E], src: Source, d: &Dims, bh: usize, i: usize);
    /// D = Σ dout·out over one row (`hs` long), with dout as the products see it.
    fn d_row(dout: &[f32], out: &[f32]) -> f32;
    /// The TILE × TILE score tile `x` as the `A` of a product over its columns.
    fn a_rows<'a>(x: &'a [f32], conv: &'a mut [Self::E]) -> Strided<'a, Self::E>;
    /// `xᵀ` as the `A` of a product over the rows of `x`.
    fn a_cols<'a>(x: &'a [f32], conv: &'a mut [Self::E]) -> Strided<'a, Self::E>;
}

/// fp32 operands throughout: tiles of floats, the score tiles read in place.
pub(super) struct F32;

impl Packing for F32 {
    type E = f32;
    type Conv = [f32; 0];
    const SHARED_ROWS: bool = true;

    fn pack_a(dst: &mut [f32], src: Source, d: &Dims, bh: usize, i: usize) {
        pack_rows(dst, src, d, bh, i);
    }

    fn pack_bt(dst: &mut [f32], src: Source, d: &Dims, bh: usize, i: usize) {
        pack_cols(dst, src, d, bh, i);
    }

    fn pack_b(dst: &mut [f32], src: Source, d: &Dims, bh: usize, i: usize) {
        pack_rows(dst, src, d, bh, i);
    }

    fn d_row(dout: &[f32], out: &[f32]) -> f32 {
        dot(dout, out)
    }

    fn a_rows<'a>(x: &'a [f32], _: &'a mut [f32]) -> Strided<'a, f32> {
        Strided::rows(x, TILE)
    }

    fn a_cols<'a>(x: &'a [f32], _: &'a mut [f32]) -> Strided<'a, f32> {
        Strided::transposed(x, TILE)
    }
}

/// A TILE × TILE score tile, cache-line aligned.
#[repr(C, align(64))]
struct ScoreTile([f32; TILE * TILE]);

impl ScoreTile {
    fn new() -> Self {
        ScoreTile([0.0; TILE * TILE])
    }

    fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.0[r * TILE..][..TILE]
    }
}

/// The one spare workspace buffer kept between calls. Tens of MiB allocated and freed per call
/// go back to the kernel each time, and faulting their pages in again cost a quarter of a
/// backward at T = 1024; a training step calls attention with the same shapes every layer, so
/// the buffer of the previous call is reused. A call that finds it taken (concurrent
/// attention calls) allocates its own.
static SPARE: Mutex<Vec<F32s>> = Mutex::new(Vec::new());

/// Scratch for one call, vector-aligned (packed rows, whose lengths are multiples of the lane
/// width, start on vector boundaries). Its contents are stale: every float is written before
/// it is read. Returned to [`SPARE`] on drop.
struct Scratch(Vec<F32s>);

impl Scratch {
    fn take(floats: usize) -> Self {
        let need = floats.div_ceil(LANES);
        let spare = SPARE.try_lock().map(|mut s| std::mem::take(&mut *s));
        match spare {
            Ok(buf) if buf.len() >= need => Scratch(buf),
            _ => Scratch(vec![F32s::ZERO; need]),
        }
    }

    fn floats(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut spare) = SPARE.try_lock()
            && spare.len() < self.0.len()
        {
            *spare = std::mem::take(&mut self.0);
        }
    }
}

/// Splits the first `n` floats off `rest`.
fn carve<'a>(rest: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (head, tail) = std::mem::take(rest).split_at_mut(n);
    *rest = tail;
    head
}

/// Splits the first `n` floats off `rest` as `n` operand elements (4 bytes each).
fn carve_as<'a, E: Operand>(rest: &mut &'a mut [f32], n: usize) -> &'a mut [E] {
    bytemuck::cast_slice_mut(carve(rest, n))
}

/// Transposes a LANES × LANES block held as LANES row vectors, in log2(LANES) rounds of
/// two-input lane shuffles: the round with block size h swaps, in every pair of rows
/// (i, i + h) with bit h of i clear, the lanes with bit h set in row i with the lanes with bit h
/// clear in row i + h (the off-diagonal h × h blocks), so after the round with h = 1 the block
/// is transposed.
#[inline(always)]
fn transpose(mut rows: [F32s; LANES]) -> [F32s; LANES] {
    let mut h = LANES / 2;
    while h > 0 {
        // Lanes 0..LANES index the first row of the pair, LANES..2·LANES the second.
        let lo = U32s::from(std::array::from_fn::<u32, LANES, _>(|l| {
            (if l & h == 0 { l } else { LANES + l - h }) as u32
        }));
        let hi = U32s::from(std::array::from_fn::<u32, LANES, _>(|l| {
            (if l & h == 0 { l + h } else { LANES + l }) as u32
        }));
        for i in (0..LANES).filter(|i| i & h == 0) {
            let pair = [rows[i], rows[i + h]];
            rows[i] = pair.shuffle(lo);
            rows[i + h] = pair.shuffle(hi);
        }
        h /= 2;
    }
    rows
}

/// Lane offsets 0, 1, …, LANES−1, for building masks by column index.
fn iota() -> F32s {
    F32s::from(std::array::from_fn::<f32, LANES, _>(|i| i as f32))
}

/// Where one head's vectors sit in a (B, T, width) buffer: row `t` of head `h` in batch `b`
/// starts at `(b·T + t)·width + part·C + h·HS`.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    data: &'a [f32],
    width: usize,
    part: usize,
}

impl Source<'_> {
    /// The `hs` floats of position `row` (0 ≤ row < T) of head `bh` (= b·NH + h).
    pub(super) fn row(&self, d: &Dims, bh: usize, row: usize) -> &[f32] {
        let (b, h) = (bh / d.nh, bh % d.nh);
        &self.data[(b * d.t + row) * self.width + self.part * d.c + h * d.hs..][..d.hs]
    }
}

/// Packs rows `i·TILE ..` of head `bh` into a (TILE, HSp) tile; padding (rows ≥ T, columns
/// ≥ HS) is zero.
fn pack_rows(dst: &mut [f32], src: Source, d: &Dims, bh: usize, i: usize) {
    for (r, dst_row) in dst.chunks_exact_mut(d.hsp).enumerate() {
        let row = i * TILE + r;
        if row >= d.t {
            dst_row.fill(0.0);
            continue;
        }
        let (head, pad) = dst_row.split_at_mut(d.hs);
        head.copy_from_slice(src.row(d, bh, row));
        pad.fill(0.0);
    }
}

/// Packs rows `i·TILE ..` of head `bh` transposed, into an (HSp, TILE) tile; padding is zero.
/// Full LANES × LANES blocks go through a register transpose; ragged edges element by element.
pub(super) fn pack_cols(dst: &mut [f32], src: Source, d: &Dims, bh: usize, i: usize) {
    let rows = TILE.min(d.t - i * TILE);
    let full_k = d.hs / LANES * LANES;
    if rows < TILE || d.hs < d.hsp {
        dst.fill(0.0); // padding; a full tile overwrites every float
    }
    for r0 in (0..rows).step_by(LANES) {
        if r0 + LANES <= rows {
            let block: [&[f32]; LANES] = std::array::from_fn(|l| src.row(d, bh, i * TILE + r0 + l));
            for k0 in (0..full_k).step_by(LANES) {
                let cols = transpose(std::array::from_fn(|l| load(&block[l][k0..])));
                for (kk, col) in cols.iter().enumerate() {
                    store(&mut dst[(k0 + kk) * TILE + r0..], *col);
                }
            }
            for (l, row) in block.iter().enumerate() {
                for k in full_k..d.hs {
                    dst[k * TILE + r0 + l] = row[k];
                }
            }
        } else {
            for r in r0..rows {
                for (k, &y) in src.row(d, bh, i * TILE + r).iter().enumerate() {
                    dst[k * TILE + r] = y;
                }
            }
        }
    }
}

/// The part of a TILE × TILE product that a tile needs. On the diagonal the causal mask
/// zeroes P[r, c] (and dS[r, c]) for c > r, so about half of each product is known zeros.
#[derive(Clone, Copy)]
enum Part {
    /// Off the diagonal: the whole product.
    Full,
    /// C[r, c] only for c ≤ r, up to the lane width: S and dP, masked right after.
    LowerC,
    /// A[r, p] = 0 for p > r, so k stops at r: O += P·V, dQ += dS·K.
    LowerA,
    /// A[r, p] = 0 for p < r (A = Pᵀ or dSᵀ), so k starts at r: dV += Pᵀ·dO, dK += dSᵀ·Q.
    UpperA,
}

/// [`gemm_tile`] restricted to `part`: on the diagonal it runs one register block of rows at
/// a time, each with only the columns (`LowerC`) or the k range (`LowerA`, `UpperA`) that can
/// be nonzero. Entries of C outside a `LowerC` part keep stale values. `k` counts elements
/// of the depth (a multiple of `T::DEPTH`: HSp and TILE are even); a bf16 range starts and
/// ends on whole pairs that cover it.
#[allow(clippy::too_many_arguments)]
fn product<T: Operand>(
    part: Part,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    a: Strided<T>,
    b: &[T],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    let kd = k / T::DEPTH;
    if let Part::Full = part {
        return gemm_tile(accumulate, m, n, kd, a, b, ldb, c, ldc);
    }
    for r0 in (0..m).step_by(MR) {
        let end = (r0 + MR).min(m);
        let (n_s, p0, p1) = match part {
            Part::LowerC => (end.next_multiple_of(LANES).min(n), 0, k),
            Part::LowerA => (n, 0, end.min(k)),
            Part::UpperA => (n, r0.min(k), k),
            Part::Full => unreachable!("handled above"),
        };
        let (p0, p1) = (p0 / T::DEPTH, p1.div_ceil(T::DEPTH));
        let c_s = &mut c[r0 * ldc..];
        if p1 == p0 {
            if !accumulate {
                for row in c_s.chunks_mut(ldc).take(end - r0) {
                    row[..n_s].fill(0.0);
                }
            }
            continue;
        }
        let a_s = a.at(r0, p0);
        gemm_tile(
            accumulate,
            end - r0,
            n_s,
            p1 - p0,
            a_s,
            &b[p0 * ldb..],
            ldb,
            c_s,
            ldc,
        );
    }
}

/// Sets the entries of diagonal-tile row `r` that lie after column `r` (future keys) to −∞.
fn mask_above(row: &mut [f32], r: usize) {
    let iota = iota();
    let rv = F32s::splat(r as f32);
    for (c0, chunk) in row.chunks_exact_mut(LANES).enumerate() {
        let col = iota + F32s::splat((c0 * LANES) as f32);
        let x = load(chunk);
        store(
            chunk,
            col.simd_gt(rv).select(F32s::splat(f32::NEG_INFINITY), x),
        );
    }
}

/// Replaces each entry x by e^(fl(scale·x) − shift) and returns their sum.
fn exp_shifted(row: &mut [f32], scale: f32, shift: f32) -> f32 {
    let (sc, sv) = (F32s::splat(scale), F32s::splat(shift));
    let mut sum = F32s::ZERO;
    for chunk in row.chunks_exact_mut(LANES) {
        let p = exp_nonpositive(load(chunk) * sc - sv);
        store(chunk, p);
        sum += p;
    }
    sum.reduce_add()
}
