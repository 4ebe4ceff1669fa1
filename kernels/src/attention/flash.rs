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
//! 3. **Scatter** (parallel over rows): results go back into the (B, T, C) / (B, T, 3C) layout.
//!
//! Forward, one task per (batch, head, query tile i): for key tiles j = 0..=i (tiles above the
//! diagonal are fully masked and skipped), S = Q_i·K_jᵀ, mask the diagonal tile, update each
//! row's running max m and sum l, rescale O by e^(m_old − m_new), O += P·V_j. At the end
//! O /= l and lse = m + ln l is saved for the backward.
//!
//! Backward, one task per (batch, head, group of key tiles): for each key tile j of the group
//! and each query tile i ≥ j, recompute P = e^(S − lse), then dP = dO_i·V_jᵀ,
//! dS = P∘(dP − D) with D = rowsum(dO∘O), and dV_j += Pᵀ·dO_i, dK_j += dSᵀ·Q_i, dQ_i += dS·K_j.
//! dK_j and dV_j are owned by their task. dQ_i gets contributions from every key tile, so each
//! group sums into its own dQ buffer and the scatter adds the groups in a fixed order. Groups
//! take key tiles in a snake order (g, 2G−1−g, 2G+g, …) so that early tiles (long query runs)
//! pair with late ones (short runs) and the groups carry equal work.
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
//! Leaves out: non-causal attention, dropout, attention masks other than causal, bf16 in memory
//! (inputs and outputs are fp32).

use std::sync::Mutex;

use rayon::prelude::*;

use super::exp::exp_nonpositive;
use super::tile::{MR, Operand, Strided, gemm_tile};
use super::{AttnDims, dot};
use crate::precision::Precision;
use crate::simd::{F32s, LANES, U32s, load, store};
use wide::ShuffleExt;

/// Rows of a query tile and of a key/value tile (Br = Bc, so only diagonal tiles need a mask).
pub(super) const TILE: usize = 64;
/// Backward tasks to aim for when B·NH is small (see [`Dims::groups`]).
const TARGET_TASKS: usize = 16;

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
    /// (Tp, HSp) buffer): enough for `TARGET_TASKS` tasks in all when B·NH is small, one when
    /// the heads alone give every core work, and never fewer than two tiles (one snake pair)
    /// per group. A function of the shapes only, never of the thread count.
    pub fn groups(&self) -> usize {
        // bh = 0 (an empty batch) has no tasks to share out; 1 group, of 0 slots.
        TARGET_TASKS
            .div_ceil(self.bh.max(1))
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

/// Largest lane of `v`, by log2(LANES) rounds of max with a rotated copy.
#[inline(always)]
fn hmax(mut v: F32s) -> f32 {
    let mut h = LANES / 2;
    while h > 0 {
        let rot = U32s::from(std::array::from_fn::<u32, LANES, _>(|l| {
            ((l + h) % LANES) as u32
        }));
        v = v.fast_max(v.shuffle(rot));
        h /= 2;
    }
    v.to_array()[0]
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

/// Forward in precision `p` (as this build runs it): see the module doc. Shapes are checked
/// by the caller.
pub(super) fn forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], d: Dims, p: Precision) {
    type Run = fn(&mut [f32], &mut [f32], &mut [f32], &[f32], Dims);
    let run: Run = match p.effective() {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => forward_in::<super::bf16::Bf16>,
        _ => forward_in::<F32>,
    };
    let mut ws = Scratch::take(d.workspace_floats(p).0);
    run(ws.floats(), out, lse, qkv, d);
}

/// [`forward`] with `M`'s operands in the scratch `ws` (vector-aligned, at least
/// `forward_workspace_floats` long, any contents).
fn forward_in<M: Packing>(ws: &mut [f32], out: &mut [f32], lse: &mut [f32], qkv: &[f32], d: Dims) {
    let te = d.tile_len() / M::E::DEPTH; // operand elements in a packed tile
    let src = |part| Source {
        data: qkv,
        width: 3 * d.c,
        part,
    };
    let mut rest = ws;
    let qs = carve_as::<M::E>(&mut rest, d.packed_elems::<M>()); // (B·NH, Tp, HSp/DEPTH)
    let kt = carve_as::<M::E>(&mut rest, d.packed_elems::<M>()); // (B·NH, NT, HSp/DEPTH, TILE)
    let vs = carve_as::<M::E>(&mut rest, d.packed_elems::<M>()); // (B·NH, Tp/DEPTH, HSp)
    let o = carve(&mut rest, d.packed_len()); // (B·NH, Tp, HSp)
    let lp = carve(&mut rest, d.bh * d.tp); // (B·NH, Tp)
    crate::launch::ways(d.bh * d.nt);
    qs.par_chunks_mut(te)
        .zip(kt.par_chunks_mut(te))
        .zip(vs.par_chunks_mut(te))
        .enumerate()
        .for_each(|(idx, ((q, k), v))| {
            let (bh, i) = (idx / d.nt, idx % d.nt);
            M::pack_a(q, src(0), &d, bh, i);
            M::pack_bt(k, src(1), &d, bh, i);
            M::pack_b(v, src(2), &d, bh, i);
        });

    let (qs, kt, vs) = (&*qs, &*kt, &*vs);
    let head = d.nt * te;
    crate::launch::ways(d.bh * d.nt);
    o.par_chunks_mut(d.tile_len())
        .zip(lp.par_chunks_mut(TILE))
        .enumerate()
        .for_each(|(idx, (o_i, lse_i))| {
            let (bh, i) = (idx / d.nt, idx % d.nt);
            let q_i = &qs[bh * head + i * te..][..te];
            let kt_h = &kt[bh * head..][..head];
            let v_h = &vs[bh * head..][..head];
            forward_tile::<M>(o_i, lse_i, q_i, kt_h, v_h, i, &d);
        });

    let o = &*o;
    crate::launch::ways(out.len().div_ceil(16 * d.c));
    out.par_chunks_mut(d.c)
        .with_min_len(16)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (b, t) = (row / d.t, row % d.t);
            for (h, dst) in out_row.chunks_exact_mut(d.hs).enumerate() {
                dst.copy_from_slice(&o[((b * d.nh + h) * d.tp + t) * d.hsp..][..d.hs]);
            }
        });
    for (bh, dst) in lse.chunks_exact_mut(d.t).enumerate() {
        dst.copy_from_slice(&lp[bh * d.tp..][..d.t]);
    }
}

/// One query tile `i` of one head: `o_i` (TILE, HSp) and `lse_i` (TILE) from the packed
/// queries `q_i`, the head's key tiles `kt_h` (NT tiles of Kᵀ) and values `v_h`, in `M`'s
/// forms ([`Packing::pack_a`], [`Packing::pack_bt`], [`Packing::pack_b`]).
fn forward_tile<M: Packing>(
    o_i: &mut [f32],
    lse_i: &mut [f32],
    q_i: &[M::E],
    kt_h: &[M::E],
    v_h: &[M::E],
    i: usize,
    d: &Dims,
) {
    let hsp = d.hsp;
    let te = TILE * hsp / M::E::DEPTH;
    let scale = 1.0 / (d.hs as f32).sqrt();
    let mut s = ScoreTile::new(); // (TILE, TILE): scores, then probabilities
    let mut conv = M::Conv::default(); // the probabilities as operands
    let mut m = [f32::NEG_INFINITY; TILE]; // running row max of the scaled scores
    let mut m_new = [0.0f32; TILE];
    let mut l = [0.0f32; TILE]; // running row sum of e^(s − m)
    let mut alpha = [0.0f32; TILE]; // e^(m_old − m_new), the rescale of O and l
    for j in 0..=i {
        // S = Q_i · K_jᵀ (unscaled).
        let kt_j = &kt_h[j * te..][..te];
        let diag = j == i;
        product(
            if diag { Part::LowerC } else { Part::Full },
            false,
            TILE,
            TILE,
            hsp,
            Strided::rows(q_i, hsp / M::E::DEPTH),
            kt_j,
            TILE,
            &mut s.0,
            TILE,
        );
        for (r, m_new_r) in m_new.iter_mut().enumerate() {
            let row = s.row_mut(r);
            if diag {
                mask_above(row, r);
            }
            // fl(scale·x) is monotonic in x, so this is the max of the scaled row.
            *m_new_r = m[r].max(scale * row_max(row));
        }
        for ((a, mo), mn) in alpha
            .chunks_exact_mut(LANES)
            .zip(m.chunks_exact(LANES))
            .zip(m_new.chunks_exact(LANES))
        {
            store(a, exp_nonpositive(load(mo) - load(mn)));
        }
        for r in 0..TILE {
            let sum = exp_shifted(s.row_mut(r), scale, m_new[r]);
            l[r] = l[r] * alpha[r] + sum;
            // Scaling by 1 is exact, and once a row's max has settled it is the common case.
            if j > 0 && alpha[r] != 1.0 {
                scale_row(&mut o_i[r * hsp..][..hsp], alpha[r]);
            }
        }
        m = m_new;
        // O (+)= P · V_j
        let v_j = &v_h[j * te..][..te];
        product(
            if diag { Part::LowerA } else { Part::Full },
            j > 0,
            TILE,
            hsp,
            TILE,
            M::a_rows(&s.0, conv.as_mut()),
            v_j,
            hsp,
            o_i,
            hsp,
        );
    }
    for r in 0..TILE {
        scale_row(&mut o_i[r * hsp..][..hsp], 1.0 / l[r]);
        lse_i[r] = m[r] + l[r].ln();
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

/// Largest entry of a row (a multiple of the lane width long).
fn row_max(row: &[f32]) -> f32 {
    let mut mx = F32s::splat(f32::NEG_INFINITY);
    for chunk in row.chunks_exact(LANES) {
        mx = mx.fast_max(load(chunk));
    }
    hmax(mx)
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

/// row *= alpha (a multiple of the lane width long).
fn scale_row(row: &mut [f32], alpha: f32) {
    let a = F32s::splat(alpha);
    for chunk in row.chunks_exact_mut(LANES) {
        store(chunk, load(chunk) * a);
    }
}

/// Group and slot of key tile `j` in the snake order over `g` groups: tiles
/// 0, 1, …, g−1 go to groups 0…g−1, tiles g…2g−1 to groups g−1…0, and so on.
fn group_of(j: usize, g: usize) -> (usize, usize) {
    let (p, r) = (j / (2 * g), j % (2 * g));
    if r < g {
        (r, 2 * p)
    } else {
        (2 * g - 1 - r, 2 * p + 1)
    }
}

/// The key tiles of group `gi` (of `g`), ascending; their positions are their slots.
fn group_tiles(gi: usize, g: usize, nt: usize) -> impl Iterator<Item = usize> {
    (0..)
        .flat_map(move |p| [p * 2 * g + gi, p * 2 * g + 2 * g - 1 - gi])
        .take_while(move |&j| j < nt)
}

/// One head's packed operands for the backward, in `E` ([`Packing`]'s forms).
struct BackwardHead<'a, E> {
    /// (NT tiles) queries as `A` (`pack_a`).
    qa: &'a [E],
    /// Queries as `B` over positions (`pack_b`; the same as `qa` where the forms agree).
    qb: &'a [E],
    /// Keys transposed per tile (`pack_bt`).
    kt: &'a [E],
    /// Keys as `B` over positions (`pack_b`).
    kb: &'a [E],
    /// Values transposed per tile (`pack_bt`).
    vt: &'a [E],
    /// Output gradient as `A` (`pack_a`).
    doa: &'a [E],
    /// Output gradient as `B` over positions (`pack_b`).
    dob: &'a [E],
    /// (Tp) D = rowsum(dO∘O), 0 on padding rows.
    dd: &'a [f32],
    /// (Tp) saved lse, +∞ on padding rows (so their probabilities are 0).
    lp: &'a [f32],
}

/// Backward in precision `p` (as this build runs it): see the module doc. Shapes are checked
/// by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d: Dims,
    p: Precision,
) {
    type Run = fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32], &[f32], Dims);
    let run: Run = match p.effective() {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => backward_in::<super::bf16::Bf16>,
        _ => backward_in::<F32>,
    };
    let mut ws = Scratch::take(d.workspace_floats(p).1);
    run(ws.floats(), dqkv, dout, qkv, out, lse, d);
}

/// [`backward`] with `M`'s operands in the scratch `ws` (vector-aligned, at least
/// `backward_workspace_floats` long, any contents).
#[allow(clippy::too_many_arguments)]
fn backward_in<M: Packing>(
    ws: &mut [f32],
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    d: Dims,
) {
    let tl = d.tile_len();
    let te = tl / M::E::DEPTH;
    let scale = 1.0 / (d.hs as f32).sqrt();
    let src = |part| Source {
        data: qkv,
        width: 3 * d.c,
        part,
    };
    let dout_src = Source {
        data: dout,
        width: d.c,
        part: 0,
    };
    let out_src = Source {
        data: out,
        width: d.c,
        part: 0,
    };
    let g = d.groups();
    let slots = d.slots();
    let pe = d.packed_elems::<M>();
    let mut rest = ws;
    let qa = carve_as::<M::E>(&mut rest, pe); // (B·NH, NT, TILE, HSp/DEPTH)
    let kt = carve_as::<M::E>(&mut rest, pe); // (B·NH, NT, HSp/DEPTH, TILE)
    let kb = carve_as::<M::E>(&mut rest, pe); // (B·NH, NT, TILE/DEPTH, HSp)
    let vt = carve_as::<M::E>(&mut rest, pe); // (B·NH, NT, HSp/DEPTH, TILE)
    let doa = carve_as::<M::E>(&mut rest, pe); // (B·NH, NT, TILE, HSp/DEPTH)
    let dd = carve(&mut rest, d.bh * d.tp); // (B·NH, Tp)
    let lp = carve(&mut rest, d.bh * d.tp); // (B·NH, Tp)
    let dk = carve(&mut rest, d.bh * g * slots * tl); // (B·NH, G, slots, TILE, HSp)
    let dv = carve(&mut rest, d.bh * g * slots * tl); // (B·NH, G, slots, TILE, HSp)
    let dq = carve(&mut rest, g * d.packed_len()); // (B·NH, G, Tp, HSp)
    // q and dO as `B` over positions, where that form is not the `A` one (else empty).
    let b_forms = if M::SHARED_ROWS { 0 } else { pe };
    let qb = carve_as::<M::E>(&mut rest, b_forms); // (B·NH, NT, TILE/DEPTH, HSp)
    let dob = carve_as::<M::E>(&mut rest, b_forms); // (B·NH, NT, TILE/DEPTH, HSp)
    let tiles_of = |x| tiles_or_empty(x, te, d.bh * d.nt);
    crate::launch::ways(d.bh * d.nt);
    qa.par_chunks_mut(te)
        .zip(kt.par_chunks_mut(te))
        .zip(kb.par_chunks_mut(te))
        .zip(vt.par_chunks_mut(te))
        .zip(doa.par_chunks_mut(te))
        .zip(tiles_of(qb).into_par_iter().zip(tiles_of(dob)))
        .zip(dd.par_chunks_mut(TILE))
        .zip(lp.par_chunks_mut(TILE))
        .enumerate()
        .for_each(
            |(idx, (((((((q, k), kr), v), dov), (qbt, dobt)), ddv), lpv))| {
                let (bh, i) = (idx / d.nt, idx % d.nt);
                M::pack_a(q, src(0), &d, bh, i);
                M::pack_bt(k, src(1), &d, bh, i);
                M::pack_b(kr, src(1), &d, bh, i);
                M::pack_bt(v, src(2), &d, bh, i);
                M::pack_a(dov, dout_src, &d, bh, i);
                if !M::SHARED_ROWS {
                    M::pack_b(qbt, src(0), &d, bh, i);
                    M::pack_b(dobt, dout_src, &d, bh, i);
                }
                for r in 0..TILE {
                    let row = i * TILE + r;
                    if row < d.t {
                        let (go, o) = (dout_src.row(&d, bh, row), out_src.row(&d, bh, row));
                        ddv[r] = M::d_row(go, o);
                        lpv[r] = lse[bh * d.t + row];
                    } else {
                        ddv[r] = 0.0;
                        lpv[r] = f32::INFINITY;
                    }
                }
            },
        );
    let head = d.nt * te;
    let (qa, kt, kb, vt, doa, dd, lp) = (&*qa, &*kt, &*kb, &*vt, &*doa, &*dd, &*lp);
    let (qb, dob) = if M::SHARED_ROWS {
        (qa, doa)
    } else {
        (&*qb, &*dob)
    };
    crate::launch::ways(d.bh * g);
    dk.par_chunks_mut(slots * tl)
        .zip(dv.par_chunks_mut(slots * tl))
        .zip(dq.par_chunks_mut(d.tp * d.hsp))
        .enumerate()
        .for_each(|(idx, ((dk_g, dv_g), dq_g))| {
            let (bh, gi) = (idx / g, idx % g);
            let part = |x| head_of(x, bh, head);
            let h = BackwardHead {
                qa: part(qa),
                qb: part(qb),
                kt: part(kt),
                kb: part(kb),
                vt: part(vt),
                doa: part(doa),
                dob: part(dob),
                dd: &dd[bh * d.tp..][..d.tp],
                lp: &lp[bh * d.tp..][..d.tp],
            };
            backward_group::<M>(dk_g, dv_g, dq_g, &h, gi, g, &d);
        });

    let head = d.tp * d.hsp;
    let (dk, dv, dq) = (&*dk, &*dv, &*dq);
    crate::launch::ways(dqkv.len().div_ceil(16 * 3 * d.c));
    dqkv.par_chunks_mut(3 * d.c)
        .with_min_len(16)
        .enumerate()
        .for_each(|(row, dst)| {
            let (b, t) = (row / d.t, row % d.t);
            let (i, r) = (t / TILE, t % TILE);
            let (gj, slot) = group_of(i, g);
            for h in 0..d.nh {
                let bh = b * d.nh + h;
                // dQ = (1/√HS) Σ_groups dS·K, summed in group order; group gi wrote rows of
                // query tiles ≥ gi only.
                let dq_row = &mut dst[h * d.hs..][..d.hs];
                let part = |gi: usize| &dq[(bh * g + gi) * head + t * d.hsp..][..d.hsp];
                for c0 in (0..d.hs).step_by(LANES) {
                    let mut acc = load(&part(0)[c0..]);
                    for gi in 1..g.min(i + 1) {
                        acc += load(&part(gi)[c0..]);
                    }
                    let n = LANES.min(d.hs - c0);
                    dq_row[c0..][..n].copy_from_slice(&(acc * F32s::splat(scale)).to_array()[..n]);
                }
                // dK = (1/√HS) dSᵀ·Q; dV as summed.
                let kv = ((bh * g + gj) * slots + slot) * tl + r * d.hsp;
                let dk_row = &mut dst[d.c + h * d.hs..][..d.hs];
                for c0 in (0..d.hs).step_by(LANES) {
                    let n = LANES.min(d.hs - c0);
                    let x = load(&dk[kv + c0..]) * F32s::splat(scale);
                    dk_row[c0..][..n].copy_from_slice(&x.to_array()[..n]);
                }
                dst[2 * d.c + h * d.hs..][..d.hs].copy_from_slice(&dv[kv..][..d.hs]);
            }
        });
}

/// The `n` tiles of `len` elements of `x`, or `n` empty slices where `x` is empty.
fn tiles_or_empty<E>(x: &mut [E], len: usize, n: usize) -> Vec<&mut [E]> {
    let mut v: Vec<&mut [E]> = x.chunks_mut(len).collect();
    v.resize_with(n, Default::default);
    v
}

/// Head `bh`'s `head` elements of a buffer holding every head.
fn head_of<E>(x: &[E], bh: usize, head: usize) -> &[E] {
    &x[bh * head..][..head]
}

/// The backward of key-tile group `gi` (of `g`) of one head: writes the group's dK and dV
/// tiles, `dk_g`/`dv_g` (slots, TILE, HSp; dK without its 1/√HS), and its dQ partial sum
/// `dq_g` (Tp, HSp; rows of query tiles < gi are left untouched).
#[allow(clippy::too_many_arguments)]
fn backward_group<M: Packing>(
    dk_g: &mut [f32],
    dv_g: &mut [f32],
    dq_g: &mut [f32],
    h: &BackwardHead<M::E>,
    gi: usize,
    g: usize,
    d: &Dims,
) {
    let (nt, hsp) = (d.nt, d.hsp);
    let tl = TILE * hsp;
    let te = tl / M::E::DEPTH;
    let scale = 1.0 / (d.hs as f32).sqrt();
    let mut p = ScoreTile::new(); // (TILE, TILE): S, then P
    let mut ds = ScoreTile::new(); // (TILE, TILE): dP, then dS
    let mut conv = M::Conv::default(); // P or dS (or their transposes) as operands
    for (slot, j) in group_tiles(gi, g, nt).enumerate() {
        let kt_j = &h.kt[j * te..][..te];
        let vt_j = &h.vt[j * te..][..te];
        let k_j = &h.kb[j * te..][..te];
        let dk_j = &mut dk_g[slot * tl..][..tl];
        let dv_j = &mut dv_g[slot * tl..][..tl];
        for i in j..nt {
            let qa_i = &h.qa[i * te..][..te];
            let qb_i = &h.qb[i * te..][..te];
            let doa_i = &h.doa[i * te..][..te];
            let dob_i = &h.dob[i * te..][..te];
            let lse_i = &h.lp[i * TILE..][..TILE];
            let d_i = &h.dd[i * TILE..][..TILE];
            let diag = i == j;
            let (lower_c, lower_a, upper_a) = if diag {
                (Part::LowerC, Part::LowerA, Part::UpperA)
            } else {
                (Part::Full, Part::Full, Part::Full)
            };
            // P = e^(Q_i·K_jᵀ/√HS − lse), causal entries only.
            product(
                lower_c,
                false,
                TILE,
                TILE,
                hsp,
                Strided::rows(qa_i, hsp / M::E::DEPTH),
                kt_j,
                TILE,
                &mut p.0,
                TILE,
            );
            for (r, &lse_r) in lse_i.iter().enumerate() {
                let row = p.row_mut(r);
                if diag {
                    mask_above(row, r);
                }
                exp_shifted(row, scale, lse_r);
            }
            // dS = P ∘ (dO_i·V_jᵀ − D); where P = 0 (masked, or not computed on the
            // diagonal) so is dS, whatever stale dP the tile holds there.
            product(
                lower_c,
                false,
                TILE,
                TILE,
                hsp,
                Strided::rows(doa_i, hsp / M::E::DEPTH),
                vt_j,
                TILE,
                &mut ds.0,
                TILE,
            );
            for (r, &d_r) in d_i.iter().enumerate() {
                let dv = F32s::splat(d_r);
                let prow = &p.0[r * TILE..][..TILE];
                for (x, pc) in ds
                    .row_mut(r)
                    .chunks_exact_mut(LANES)
                    .zip(prow.chunks_exact(LANES))
                {
                    store(x, load(pc) * (load(x) - dv));
                }
            }
            // dV_j += Pᵀ·dO_i, dK_j += dSᵀ·Q_i (the 1/√HS comes at the scatter); the
            // diagonal tile comes first and overwrites.
            product(
                upper_a,
                !diag,
                TILE,
                hsp,
                TILE,
                M::a_cols(&p.0, conv.as_mut()),
                dob_i,
                hsp,
                dv_j,
                hsp,
            );
            product(
                upper_a,
                !diag,
                TILE,
                hsp,
                TILE,
                M::a_cols(&ds.0, conv.as_mut()),
                qb_i,
                hsp,
                dk_j,
                hsp,
            );
            // dQ_i += dS·K_j (scaled by 1/√HS when the groups are summed). The group's first
            // tile (j = gi) covers every query tile it will touch, so it overwrites.
            let dq_i = &mut dq_g[i * tl..][..tl];
            product(
                lower_a,
                j != gi,
                TILE,
                hsp,
                TILE,
                M::a_rows(&ds.0, conv.as_mut()),
                k_j,
                hsp,
                dq_i,
                hsp,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_hmax_match_scalar() {
        let rows: [F32s; LANES] = std::array::from_fn(|r| {
            F32s::from(std::array::from_fn::<f32, LANES, _>(|c| {
                (r * LANES + c) as f32
            }))
        });
        let t = transpose(rows);
        for (c, col) in t.iter().enumerate() {
            for (r, &x) in col.to_array().iter().enumerate() {
                assert_eq!(x, (r * LANES + c) as f32, "transpose[{c}][{r}]");
            }
        }
        for peak in 0..LANES {
            let v = F32s::from(std::array::from_fn::<f32, LANES, _>(|l| {
                if l == peak { 5.0 } else { -(l as f32) }
            }));
            assert_eq!(hmax(v), 5.0, "peak in lane {peak}");
        }
    }

    /// (out, lse, dqkv) of `M`'s kernels run in a workspace filled with `fill`.
    fn run_in<M: Packing>(
        fill: f32,
        qkv: &[f32],
        dout: &[f32],
        d: Dims,
        b: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let filled = |n: usize| vec![F32s::splat(fill); n.div_ceil(LANES)];
        let mut ws = filled(d.forward_workspace_floats::<M>());
        let (mut out, mut lse) = (vec![0.0; b * d.t * d.c], vec![0.0; b * d.nh * d.t]);
        let ws_f = bytemuck::cast_slice_mut(&mut ws);
        forward_in::<M>(ws_f, &mut out, &mut lse, qkv, d);
        let mut ws = filled(d.backward_workspace_floats::<M>());
        let mut dqkv = vec![0.0; b * d.t * 3 * d.c];
        let ws_f = bytemuck::cast_slice_mut(&mut ws);
        backward_in::<M>(ws_f, &mut dqkv, dout, qkv, &out, &lse, d);
        (out, lse, dqkv)
    }

    /// The workspace is reused between calls with whatever the last call left in it: a NaN in
    /// any float that is read before it is written would show in the results, which must be
    /// those of a zeroed workspace bit for bit (and, in fp32, the reference's).
    #[test]
    fn stale_workspace_is_never_read() {
        use crate::attention::{attention_backward_ref, attention_forward_ref};
        use crate::testutil::{TestRng, assert_close};
        for (b, t, nh, hs) in [(2, 130, 2, 16), (1, 300, 3, 24)] {
            let c = nh * hs;
            let dims = AttnDims { b, t, c, nh };
            let d = Dims::new(dims);
            let mut rng = TestRng::new(t as u64);
            let qkv = rng.vec(b * t * 3 * c, 1.0);
            let dout = rng.vec(b * t * c, 1.0);
            let (mut out_ref, mut lse_ref) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
            attention_forward_ref(&mut out_ref, &mut lse_ref, &qkv, dims);
            let mut dqkv_ref = vec![0.0; b * t * 3 * c];
            attention_backward_ref(&mut dqkv_ref, &dout, &qkv, &out_ref, &lse_ref, dims);

            let (out, _, dqkv) = run_in::<F32>(f32::NAN, &qkv, &dout, d, b);
            assert_close(&out, &out_ref, 1e-4, 2e-6, "out");
            assert_close(&dqkv, &dqkv_ref, 1e-3, 2e-5, "dqkv");
            let bits = |r: (Vec<f32>, Vec<f32>, Vec<f32>)| {
                [r.0, r.1, r.2].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            };
            assert!(
                bits(run_in::<F32>(f32::NAN, &qkv, &dout, d, b))
                    == bits(run_in::<F32>(0.0, &qkv, &dout, d, b)),
                "fp32: a poisoned workspace changes the results"
            );
            #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
            {
                use crate::attention::bf16::Bf16;
                assert!(
                    bits(run_in::<Bf16>(f32::NAN, &qkv, &dout, d, b))
                        == bits(run_in::<Bf16>(0.0, &qkv, &dout, d, b)),
                    "bf16: a poisoned workspace changes the results"
                );
            }
        }
    }

    #[test]
    fn snake_groups_partition_the_tiles_and_balance_work() {
        for nt in 1..40 {
            let d = Dims::new(AttnDims::new(1, nt * TILE, 64, 1));
            let g = d.groups();
            let mut seen = vec![false; nt];
            let mut work = vec![0usize; g];
            for (gi, w) in work.iter_mut().enumerate() {
                for (slot, j) in group_tiles(gi, g, nt).enumerate() {
                    assert!(!seen[j], "tile {j} in two groups");
                    seen[j] = true;
                    assert_eq!(group_of(j, g), (gi, slot));
                    assert!(slot < d.slots());
                    *w += nt - j;
                }
                assert_eq!(
                    group_tiles(gi, g, nt).next(),
                    Some(gi),
                    "first tile of group {gi}"
                );
            }
            assert!(seen.iter().all(|&s| s), "nt = {nt}: a tile has no group");
            let (lo, hi) = (work.iter().min().unwrap(), work.iter().max().unwrap());
            // Equal up to one unpaired tile per group.
            assert!(hi - lo <= nt, "nt = {nt}: work {work:?}");
        }
    }
}
