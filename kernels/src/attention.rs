//! Causal multi-head self-attention over the layout the model produces.
//!
//! Layout: `qkv` is (B, T, 3C) — for each position the query, key and value vectors of all NH
//! heads, head `h` occupying columns `h·HS .. (h+1)·HS` of each C-wide part (HS = C / NH).
//! `out` is (B, T, C) in the same head order; `lse` is (B, NH, T), the natural-log sum of
//! exponentials of each query row's scaled scores, all that backward needs to recompute the
//! probabilities.
//!
//! Placeholder: the public entry points run the scalar reference until the fused kernel lands.

/// Checks shapes shared by every attention entry point; returns HS.
#[track_caller]
fn check_dims(b: usize, t: usize, c: usize, nh: usize) -> usize {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "attention: C = {c} is not a multiple of NH = {nh}"
    );
    let _ = (b, t);
    c / nh
}

/// `out[b,t,h] = Σ_{j≤t} softmax_j(q_t·k_j/√HS) v_j`; writes `lse[b,h,t]`.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    attention_forward_ref(out, lse, qkv, b, t, c, nh);
}

/// Gradient of [`attention_forward`]: given `dout` (B, T, C) and the forward's `qkv`, `out`,
/// `lse`, overwrites `dqkv` (B, T, 3C) with the gradient w.r.t. the queries, keys and values.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    attention_backward_ref(dqkv, dout, qkv, out, lse, b, t, c, nh);
}

/// Scalar reference forward (f64 accumulation), one query row at a time.
pub fn attention_forward_ref(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = check_dims(b, t, c, nh);
    assert_eq!(
        qkv.len(),
        b * t * 3 * c,
        "attention: qkv must be (B, T, 3C)"
    );
    assert_eq!(out.len(), b * t * c, "attention: out must be (B, T, C)");
    assert_eq!(lse.len(), b * nh * t, "attention: lse must be (B, NH, T)");
    let scale = 1.0 / (hs as f64).sqrt();
    let mut s = vec![0.0f64; t];
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let q = &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
                let mut m = f64::NEG_INFINITY;
                for (j, sj) in s.iter_mut().enumerate().take(ti + 1) {
                    let k = &qkv[(bi * t + j) * 3 * c + c + h * hs..][..hs];
                    *sj = q
                        .iter()
                        .zip(k)
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum::<f64>()
                        * scale;
                    m = m.max(*sj);
                }
                let sum: f64 = s[..=ti].iter().map(|&x| (x - m).exp()).sum();
                lse[(bi * nh + h) * t + ti] = (m + sum.ln()) as f32;
                let o = &mut out[(bi * t + ti) * c + h * hs..][..hs];
                for (d, od) in o.iter_mut().enumerate() {
                    let mut acc = 0.0f64;
                    for (j, &sj) in s[..=ti].iter().enumerate() {
                        acc += (sj - m).exp() / sum
                            * qkv[(bi * t + j) * 3 * c + 2 * c + h * hs + d] as f64;
                    }
                    *od = acc as f32;
                }
            }
        }
    }
}

/// Scalar reference backward (f64 accumulation); same contract as [`attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_ref(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let hs = check_dims(b, t, c, nh);
    assert_eq!(
        dqkv.len(),
        b * t * 3 * c,
        "attention: dqkv must be (B, T, 3C)"
    );
    assert_eq!(dout.len(), b * t * c, "attention: dout must be (B, T, C)");
    assert_eq!(out.len(), b * t * c, "attention: out must be (B, T, C)");
    assert_eq!(lse.len(), b * nh * t, "attention: lse must be (B, NH, T)");
    let scale = 1.0 / (hs as f64).sqrt();
    let mut g = vec![0.0f64; dqkv.len()];
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(&u, &v)| u as f64 * v as f64)
            .sum::<f64>()
    };
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
