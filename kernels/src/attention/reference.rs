//! The scalar reference: causal attention computed one query row at a time with f64
//! accumulation, straight from the formulas. It is the definition the fused kernels are tested
//! against, and the path behind [`attention_probs`](super::attention_probs). Leaves out: speed
//! (O(T²·HS) scalar work per head, no threads).

use super::{AttnDims, check_backward, check_forward};

fn dot(x: &[f32], y: &[f32]) -> f64 {
    x.iter().zip(y).map(|(&u, &v)| u as f64 * v as f64).sum()
}

/// Scaled scores `s[j] = q_ti·k_j/√HS` for j ≤ ti of head `h` in batch `bi`, written to
/// `s[..=ti]`; returns their log-sum-exp.
fn scores_row(s: &mut [f64], qkv: &[f32], sh: &AttnDims, bi: usize, h: usize, ti: usize) -> f64 {
    let AttnDims { t, c, .. } = *sh;
    let hs = sh.hs();
    let scale = 1.0 / (hs as f64).sqrt();
    let q = &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
    for (j, sj) in s[..=ti].iter_mut().enumerate() {
        *sj = dot(q, &qkv[(bi * t + j) * 3 * c + c + h * hs..][..hs]) * scale;
    }
    let m = s[..=ti].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + s[..=ti].iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// Scalar reference forward (f64 accumulation), one query row at a time; same contract as
/// [`attention_forward`](super::attention_forward).
pub fn attention_forward_ref(out: &mut [f32], lse: &mut [f32], qkv: &[f32], dims: AttnDims) {
    check_forward(out, lse, qkv, dims);
    let (sh, hs) = (dims, dims.hs());
    let AttnDims { b, t, c, nh } = dims;
    let mut s = vec![0.0f64; t];
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let l = scores_row(&mut s, qkv, &sh, bi, h, ti);
                lse[(bi * nh + h) * t + ti] = l as f32;
                let o = &mut out[(bi * t + ti) * c + h * hs..][..hs];
                for (d, od) in o.iter_mut().enumerate() {
                    let acc: f64 = s[..=ti]
                        .iter()
                        .enumerate()
                        .map(|(j, &sj)| {
                            (sj - l).exp() * qkv[(bi * t + j) * 3 * c + 2 * c + h * hs + d] as f64
                        })
                        .sum();
                    *od = acc as f32;
                }
            }
        }
    }
}

/// Scalar reference backward (f64 accumulation); same contract as
/// [`attention_backward`](super::attention_backward).
pub fn attention_backward_ref(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dims: AttnDims,
) {
    check_backward(dqkv, dout, qkv, out, lse, dims);
    let AttnDims { b, t, c, nh } = dims;
    let hs = dims.hs();
    let scale = 1.0 / (hs as f64).sqrt();
    let mut g = vec![0.0f64; dqkv.len()];
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let qo = (bi * t + ti) * 3 * c + h * hs;
                let oo = (bi * t + ti) * c + h * hs;
                let d_o = &dout[oo..oo + hs];
                let dd = dot(d_o, &out[oo..oo + hs]); // D = rowsum(dO ∘ O)
                let l = lse[(bi * nh + h) * t + ti] as f64;
                for j in 0..=ti {
                    let ko = (bi * t + j) * 3 * c + c + h * hs;
                    let vo = ko + c;
                    let p = (dot(&qkv[qo..qo + hs], &qkv[ko..ko + hs]) * scale - l).exp();
                    let dp = dot(d_o, &qkv[vo..vo + hs]);
                    let ds = p * (dp - dd) * scale;
                    for d in 0..hs {
                        g[vo + d] += p * d_o[d] as f64;
                        g[qo + d] += ds * qkv[ko + d] as f64;
                        g[ko + d] += ds * qkv[qo + d] as f64;
                    }
                }
            }
        }
    }
    for (d, gi) in dqkv.iter_mut().zip(g) {
        *d = gi as f32;
    }
}

/// Row-major (T, T) causal probabilities of head `h` in batch row `bi`: row i holds
/// softmax_j(q_i·k_j/√HS) for j ≤ i and 0 for j > i. See [`attention_probs`](super::attention_probs).
pub(super) fn probs(probs: &mut [f32], qkv: &[f32], sh: &AttnDims, bi: usize, h: usize) {
    let t = sh.t;
    let mut s = vec![0.0f64; t];
    for (ti, row) in probs.chunks_exact_mut(t).enumerate() {
        let l = scores_row(&mut s, qkv, sh, bi, h, ti);
        for (j, p) in row.iter_mut().enumerate() {
            *p = if j <= ti {
                (s[j] - l).exp() as f32
            } else {
                0.0
            };
        }
    }
}
