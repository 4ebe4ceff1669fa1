//! The flash forward: one task per (batch, head, pair of query tiles i and NT−1−i), the online softmax over the
//! key tiles up to the diagonal, O and the log-sum-exp per row. Leaves out: the workspace and
//! packing (`mod.rs`), the backward (`backward.rs`).

use super::{
    Dims, F32, Packing, Part, SCATTER_ROWS, ScoreTile, Scratch, Source, TILE, carve, carve_as,
    exp_shifted, mask_above, product,
};
use crate::attention::exp::exp_nonpositive;
use crate::lanes;
use crate::precision::Precision;
use crate::raw::tile::{Operand, Strided};
use crate::simd::{LANES, load, store};
use rayon::prelude::*;

/// Forward in precision `p` (as this build runs it): see the module doc. Shapes are checked
/// by the caller.
pub(in crate::attention) fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    d: Dims,
    p: Precision,
) {
    type Run = fn(&mut [f32], &mut [f32], &mut [f32], &[f32], Dims);
    let run: Run = match p.effective() {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => forward_in::<crate::attention::bf16::Bf16>,
        _ => forward_in::<F32>,
    };
    let mut ws = Scratch::take(d.workspace_floats(p).0);
    run(ws.floats(), out, lse, qkv, d);
}

/// [`forward`] with `M`'s operands in the scratch `ws` (vector-aligned, at least
/// `forward_workspace_floats` long, any contents).
pub(super) fn forward_in<M: Packing>(
    ws: &mut [f32],
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    d: Dims,
) {
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
            let _task = crate::launch::task(idx);
            let (bh, i) = (idx / d.nt, idx % d.nt);
            M::pack_a(q, src(0), &d, bh, i);
            M::pack_bt(k, src(1), &d, bh, i);
            M::pack_b(v, src(2), &d, bh, i);
        });

    let (qs, kt, vs) = (&*qs, &*kt, &*vs);
    let head = d.nt * te;
    // Query tile i costs i + 1 key tiles: paired with tile NT−1−i, every task costs NT + 1
    // (one diagonal tile each). Where the pairs are too few for the pool, tiles alone (twice
    // as many tasks, of unequal cost). No task sums with another, so the split changes no
    // result.
    let mut tiles: Vec<_> = o
        .chunks_mut(d.tile_len())
        .zip(lp.chunks_mut(TILE))
        .enumerate()
        .map(Some)
        .collect();
    let per_head = if d.bh * d.nt.div_ceil(2) >= crate::parallel::target_tasks() {
        d.nt.div_ceil(2)
    } else {
        d.nt
    };
    let tasks: Vec<Vec<_>> = (0..d.bh * per_head)
        .map(|k| {
            let (bh, i) = (k / per_head, k % per_head);
            let mine = if per_head == d.nt {
                vec![i]
            } else {
                vec![i, d.nt - 1 - i]
            };
            mine.into_iter()
                .filter_map(|i| tiles[bh * d.nt + i].take())
                .collect()
        })
        .collect();
    crate::launch::ways(tasks.len());
    tasks.into_par_iter().enumerate().for_each(|(k, tiles)| {
        let _task = crate::launch::task(k);
        for (idx, (o_i, lse_i)) in tiles {
            let (bh, i) = (idx / d.nt, idx % d.nt);
            let q_i = &qs[bh * head + i * te..][..te];
            let kt_h = &kt[bh * head..][..head];
            let v_h = &vs[bh * head..][..head];
            forward_tile::<M>(o_i, lse_i, q_i, kt_h, v_h, i, &d);
        }
    });

    let o = &*o;
    crate::launch::ways(out.len().div_ceil(SCATTER_ROWS * d.c));
    out.par_chunks_mut(SCATTER_ROWS * d.c)
        .enumerate()
        .for_each(|(k, rows)| {
            let _task = crate::launch::task(k);
            for (r, out_row) in rows.chunks_exact_mut(d.c).enumerate() {
                let row = k * SCATTER_ROWS + r;
                let (b, t) = (row / d.t, row % d.t);
                for (h, dst) in out_row.chunks_exact_mut(d.hs).enumerate() {
                    dst.copy_from_slice(&o[((b * d.nh + h) * d.tp + t) * d.hsp..][..d.hs]);
                }
            }
        });
    for (bh, dst) in lse.chunks_exact_mut(d.t).enumerate() {
        dst.copy_from_slice(&lp[bh * d.tp..][..d.t]);
    }
}

/// One query tile `i` of one head: `o_i` (TILE, HSp) and `lse_i` (TILE) from the packed
/// queries `q_i`, the head's key tiles `kt_h` (NT tiles of Kᵀ) and values `v_h`, in `M`'s
/// forms ([`Packing::pack_a`](super::Packing::pack_a), [`Packing::pack_bt`](super::Packing::pack_bt), [`Packing::pack_b`](super::Packing::pack_b)).
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
            *m_new_r = m[r].max(scale * lanes::max(row));
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
                lanes::scale_inplace(&mut o_i[r * hsp..][..hsp], alpha[r]);
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
        lanes::scale_inplace(&mut o_i[r * hsp..][..hsp], 1.0 / l[r]);
        lse_i[r] = m[r] + l[r].ln();
    }
}
