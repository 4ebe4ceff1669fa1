//! The flash backward: one task per (batch, head, group of key tiles), P recomputed from q,
//! k and the log-sum-exp, dK and dV per tile, dQ as partial sums added in a fixed order.
//! Leaves out: the workspace and packing (`mod.rs`), the forward (`forward.rs`).

use super::{
    Dims, F32, Packing, Part, SCATTER_ROWS, ScoreTile, Scratch, Source, TILE, carve, carve_as,
    exp_shifted, mask_above, product,
};
use crate::precision::Precision;
use crate::raw::tile::{Operand, Strided};
use crate::simd::{F32s, LANES, load, store};
use rayon::prelude::*;

/// Group and slot of key tile `j` in the snake order over `g` groups: tiles
/// 0, 1, …, g−1 go to groups 0…g−1, tiles g…2g−1 to groups g−1…0, and so on.
pub(super) fn group_of(j: usize, g: usize) -> (usize, usize) {
    let (p, r) = (j / (2 * g), j % (2 * g));
    if r < g {
        (r, 2 * p)
    } else {
        (2 * g - 1 - r, 2 * p + 1)
    }
}

/// The key tiles of group `gi` (of `g`), ascending; their positions are their slots.
pub(super) fn group_tiles(gi: usize, g: usize, nt: usize) -> impl Iterator<Item = usize> {
    (0..)
        .flat_map(move |p| [p * 2 * g + gi, p * 2 * g + 2 * g - 1 - gi])
        .take_while(move |&j| j < nt)
}

/// One head's packed operands for the backward, in `E` ([`Packing`](super::Packing)'s forms).
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
pub(in crate::attention) fn backward(
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
        Precision::Bf16 => backward_in::<crate::attention::bf16::Bf16>,
        _ => backward_in::<F32>,
    };
    let mut ws = Scratch::take(d.workspace_floats(p).1);
    run(ws.floats(), dqkv, dout, qkv, out, lse, d);
}

/// [`backward`] with `M`'s operands in the scratch `ws` (vector-aligned, at least
/// `backward_workspace_floats` long, any contents).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_in<M: Packing>(
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
                let _task = crate::launch::task(idx);
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
            let _task = crate::launch::task(idx);
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
    // One row of dqkv: dQ summed over the groups, dK, dV.
    let scatter_row = |dst: &mut [f32], row: usize| {
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
    };
    crate::launch::ways(dqkv.len().div_ceil(SCATTER_ROWS * 3 * d.c));
    dqkv.par_chunks_mut(SCATTER_ROWS * 3 * d.c)
        .enumerate()
        .for_each(|(k, rows)| {
            let _task = crate::launch::task(k);
            for (r, dst) in rows.chunks_exact_mut(3 * d.c).enumerate() {
                scatter_row(dst, k * SCATTER_ROWS + r);
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
