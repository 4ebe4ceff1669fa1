//! Attention for token-by-token generation: one new query position per sequence against a
//! key/value cache, so each generated token costs O(position · C) instead of a full forward.
//!
//! Cache layout: `k_cache` and `v_cache` are each (B, T_max, C), row `j` of sequence `b` holding
//! the keys (values) of all NH heads at position `j`, heads in the same column order as `qkv`.
//! Rows `0..pos` are filled by earlier calls (or by [`kv_cache_write`] from a prompt's `qkv`);
//! [`attention_decode`] writes row `pos` itself, then attends over rows `0..=pos`.
//!
//! Leaves out: batched prompts of different lengths (all sequences share `pos`), sliding
//! windows, cache eviction.

use std::ops::Range;

use rayon::prelude::*;

use super::{AttnDims, axpy, dot, exp_shift_sum};

/// Panics unless the caches are (B, T_max, C) and `rows` positions from `start` fit.
#[track_caller]
fn check_cache(
    k_cache: &[f32],
    v_cache: &[f32],
    b: usize,
    t_max: usize,
    c: usize,
    start: usize,
    rows: usize,
) {
    for (name, cache) in [("k_cache", k_cache), ("v_cache", v_cache)] {
        assert_eq!(
            cache.len(),
            b * t_max * c,
            "attention: {name} has {} floats, (B, T_max, C) = ({b}, {t_max}, {c}) needs {}",
            cache.len(),
            b * t_max * c
        );
    }
    assert!(
        start + rows <= t_max,
        "attention: positions {start}..{} do not fit a cache of T_max = {t_max}",
        start + rows
    );
}

/// Copies the keys and values of the positions of `qkv` (B, T, 3C), T = `rows.len()`, into
/// rows `rows` of `k_cache` and `v_cache` (B, T_max, C), `cache.t` = T_max — e.g. a prompt run
/// through [`attention_forward`](super::attention_forward), before generation continues with
/// [`attention_decode`] at `pos = rows.end`.
pub fn kv_cache_write(
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qkv: &[f32],
    cache: AttnDims,
    rows: Range<usize>,
) {
    let _launch = crate::launch::start(1);
    cache.validate();
    let AttnDims { b, t: t_max, c, .. } = cache;
    let (start, t) = (rows.start, rows.len());
    AttnDims { t, ..cache }.check("qkv", qkv, 3 * c);
    check_cache(k_cache, v_cache, b, t_max, c, start, t);
    for bi in 0..b {
        for ti in 0..t {
            let src = &qkv[(bi * t + ti) * 3 * c..][..3 * c];
            let row = (bi * t_max + start + ti) * c;
            k_cache[row..][..c].copy_from_slice(&src[c..2 * c]);
            v_cache[row..][..c].copy_from_slice(&src[2 * c..]);
        }
    }
}

/// One decoding step at position `pos` for each of the B sequences:
///
/// ```text
/// k_cache[b, pos] = k,  v_cache[b, pos] = v          (from qkv (B, 3C), the new position)
/// out[b] = Σ_{j≤pos} softmax_j(q·k_cache[b, j] / √HS) · v_cache[b, j]      (per head)
/// ```
///
/// `out` is (B, C), `cache.t` is T_max. Equals row `pos` of [`attention_forward`](super::attention_forward) on the
/// whole sequence, up to rounding. Parallel over the batch; the result does not depend on
/// the thread count.
pub fn attention_decode(
    out: &mut [f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    qkv: &[f32],
    cache: AttnDims,
    pos: usize,
) {
    let _launch = crate::launch::start(1);
    cache.validate();
    let AttnDims { b, t: t_max, c, nh } = cache;
    let one = AttnDims { t: 1, ..cache };
    one.check("qkv", qkv, 3 * c);
    one.check("out", out, c);
    check_cache(k_cache, v_cache, b, t_max, c, pos, 1);
    let hs = cache.hs();
    let scale = 1.0 / (hs as f32).sqrt();
    if b == 0 {
        return;
    }
    out.par_chunks_mut(c)
        .zip(k_cache.par_chunks_mut(t_max * c))
        .zip(v_cache.par_chunks_mut(t_max * c))
        .zip(qkv.par_chunks(3 * c))
        .for_each(|(((o, kc), vc), x)| {
            kc[pos * c..][..c].copy_from_slice(&x[c..2 * c]);
            vc[pos * c..][..c].copy_from_slice(&x[2 * c..]);
            let mut s = vec![0.0f32; pos + 1]; // scores of this head over positions 0..=pos
            for h in 0..nh {
                let q = &x[h * hs..][..hs];
                for (j, sj) in s.iter_mut().enumerate() {
                    *sj = dot(q, &kc[j * c + h * hs..][..hs]) * scale;
                }
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let inv = 1.0 / exp_shift_sum(&mut s, m);
                let o_h = &mut o[h * hs..][..hs];
                o_h.fill(0.0);
                for (j, &p) in s.iter().enumerate() {
                    axpy(o_h, p * inv, &vc[j * c + h * hs..][..hs]);
                }
            }
        });
}
