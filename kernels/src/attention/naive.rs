//! The materialized attention of llm.c's `train_gpt2.c`: the full (B, NH, T, T) score and
//! probability matrices are written to memory, one query row at a time. Kept as the baseline
//! that shows what the fused kernels save — time, and O(T²) memory — so it is written the way a
//! straightforward implementation would be: llm.c's loops and buffers, with lanes over the head
//! dimension for the dot products and the weighted sums (so the comparison measures the
//! algorithm, not missing SIMD).
//!
//! Departures from llm.c: the softmax backward uses the O(T) per row identity
//! dpreatt = att ∘ (datt − Σ att∘datt) instead of llm.c's O(T²) Jacobian loop, and `dqkv` is
//! overwritten rather than accumulated (the crate's convention for activation gradients).
//! Leaves out: threads (llm.c's CPU backward is serial; the benches compare single-threaded).

use super::{AttnDims, axpy, dot, exp_shift_sum};

/// Materialized causal attention forward, llm.c's `attention_forward`:
///
/// ```text
/// preatt[b,h,t,j] = q_t·k_j / √HS   (j ≤ t)
/// att[b,h,t,j]    = softmax_j(preatt[b,h,t,·])   (j ≤ t; 0 for j > t)
/// out[b,t,h]      = Σ_j att[b,h,t,j] v_j
/// ```
///
/// `preatt` and `att` are (B, NH, T, T); entries above the diagonal of `preatt` are not written.
pub fn attention_forward_naive(
    out: &mut [f32],
    preatt: &mut [f32],
    att: &mut [f32],
    qkv: &[f32],
    dims: AttnDims,
) {
    let _launch = crate::launch::start(1);
    dims.validate();
    let (sh, AttnDims { b, t, c, nh }) = (dims, dims);
    sh.check("qkv", qkv, 3 * c);
    sh.check("out", out, c);
    check_square("preatt", preatt, b, nh, t);
    check_square("att", att, b, nh, t);
    let hs = sh.hs();
    let scale = 1.0 / (hs as f32).sqrt();
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                let q = &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
                let row = ((bi * nh + h) * t + ti) * t;
                let preatt_row = &mut preatt[row..][..=ti];
                for (j, p) in preatt_row.iter_mut().enumerate() {
                    *p = dot(q, &qkv[(bi * t + j) * 3 * c + c + h * hs..][..hs]) * scale;
                }
                let maxval = preatt_row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let att_row = &mut att[row..][..t];
                att_row[..=ti].copy_from_slice(preatt_row);
                let inv = 1.0 / exp_shift_sum(&mut att_row[..=ti], maxval);
                for a in &mut att_row[..=ti] {
                    *a *= inv;
                }
                att_row[ti + 1..].fill(0.0);
                let o = &mut out[(bi * t + ti) * c + h * hs..][..hs];
                o.fill(0.0);
                for (j, &a) in att_row[..=ti].iter().enumerate() {
                    axpy(o, a, &qkv[(bi * t + j) * 3 * c + 2 * c + h * hs..][..hs]);
                }
            }
        }
    }
}

/// Materialized backward, llm.c's `attention_backward`: from `dout` (B, T, C), `qkv` and the
/// forward's `att`, overwrites `dqkv` (B, T, 3C) and the scratch `dpreatt`, `datt`
/// (B, NH, T, T) with
///
/// ```text
/// datt[t,j]    = dout_t·v_j,                         dv_j += att[t,j] dout_t
/// dpreatt[t,j] = att[t,j] (datt[t,j] − Σ_i att[t,i] datt[t,i])
/// dq_t += dpreatt[t,j] k_j / √HS,                    dk_j += dpreatt[t,j] q_t / √HS
/// ```
pub fn attention_backward_naive(
    dqkv: &mut [f32],
    dpreatt: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dims: AttnDims,
) {
    let _launch = crate::launch::start(1);
    dims.validate();
    let (sh, AttnDims { b, t, c, nh }) = (dims, dims);
    sh.check("dqkv", dqkv, 3 * c);
    sh.check("dout", dout, c);
    sh.check("qkv", qkv, 3 * c);
    check_square("dpreatt", dpreatt, b, nh, t);
    check_square("datt", datt, b, nh, t);
    check_square("att", att, b, nh, t);
    let hs = sh.hs();
    let scale = 1.0 / (hs as f32).sqrt();
    dqkv.fill(0.0);
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                let row = ((bi * nh + h) * t + ti) * t;
                let att_row = &att[row..][..=ti];
                let datt_row = &mut datt[row..][..=ti];
                let d_o = &dout[(bi * t + ti) * c + h * hs..][..hs];
                for (j, (da, &a)) in datt_row.iter_mut().zip(att_row).enumerate() {
                    let vo = (bi * t + j) * 3 * c + 2 * c + h * hs;
                    *da = dot(&qkv[vo..][..hs], d_o);
                    axpy(&mut dqkv[vo..][..hs], a, d_o);
                }
                let s: f32 = att_row
                    .iter()
                    .zip(datt_row.iter())
                    .map(|(a, d)| a * d)
                    .sum();
                let dpre_row = &mut dpreatt[row..][..=ti];
                for ((dp, &a), &da) in dpre_row.iter_mut().zip(att_row).zip(datt_row.iter()) {
                    *dp = a * (da - s);
                }
                let qo = (bi * t + ti) * 3 * c + h * hs;
                for (j, &dp) in dpre_row.iter().enumerate() {
                    let ko = (bi * t + j) * 3 * c + c + h * hs;
                    axpy(&mut dqkv[qo..][..hs], dp * scale, &qkv[ko..][..hs]);
                    axpy(&mut dqkv[ko..][..hs], dp * scale, &qkv[qo..][..hs]);
                }
            }
        }
    }
}

/// Panics unless `buf` is (B, NH, T, T).
#[track_caller]
fn check_square(name: &str, buf: &[f32], b: usize, nh: usize, t: usize) {
    assert_eq!(
        buf.len(),
        b * nh * t * t,
        "attention: {name} has {} floats, (B, NH, T, T) = ({b}, {nh}, {t}, {t}) needs {}",
        buf.len(),
        b * nh * t * t
    );
}
