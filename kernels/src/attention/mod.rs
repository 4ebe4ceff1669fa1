//! Causal multi-head self-attention over the layout the model produces.
//!
//! Layout: `qkv` is (B, T, 3C) — for each position the query, key and value vectors of all NH
//! heads, head `h` occupying columns `h·HS .. (h+1)·HS` of each C-wide part (HS = C / NH).
//! `out` is (B, T, C) in the same head order; `lse` is (B, NH, T), the natural-log sum of
//! exponentials of each query row's scaled scores, all that backward needs to recompute the
//! probabilities.
//!
//! What is here:
//! - [`attention_forward`] / [`attention_backward`]: the fused, tiled (flash) kernels used for
//!   training, O(T) extra memory, parallel over heads and tiles (`flash/`, on the
//!   micro-kernel in `raw/tile.rs`).
//! - [`attention_decode`] and [`kv_cache_write`]: one new position per sequence against a
//!   key/value cache, for token-by-token generation.
//! - [`attention_probs`]: one head's T×T probabilities, for plots.
//! - [`attention_forward_naive`] / [`attention_backward_naive`]: llm.c's materialized
//!   algorithm with (B, NH, T, T) buffers, the baseline the benches compare against.
//! - [`attention_forward_ref`] / [`attention_backward_ref`]: the f64 scalar definition every
//!   path is tested against.
//!
//! Leaves out: non-causal and padded-batch masks, dropout, grouped-query heads.

#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod bf16;
mod decode;
mod exp;
mod flash;
mod naive;
mod reference;
use crate::raw::tile;

#[cfg(test)]
mod tests;

pub use decode::{attention_decode, kv_cache_write};
pub use naive::{attention_backward_naive, attention_forward_naive};
pub use reference::{attention_backward_ref, attention_forward_ref};

use crate::precision::Precision;
use crate::simd::{F32s, LANES, load, store};
use exp::exp_nonpositive;

/// The shapes of one attention call: B sequences of T positions, C channels split into NH
/// heads of HS = C / NH. Every attention entry point takes one, so the four sizes cannot be
/// passed in the wrong order:
///
/// ```
/// use kernels::AttnDims;
/// let dims = AttnDims { b: 2, t: 64, c: 768, nh: 12 };
/// assert_eq!(dims.hs(), 64);
/// assert_eq!(AttnDims::new(2, 64, 768, 12), dims);
/// ```
///
/// For [`attention_decode`] and [`kv_cache_write`], `t` is the capacity T_max of the key/value
/// cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch size B.
    pub b: usize,
    /// Sequence length T (positions per batch row).
    pub t: usize,
    /// Channels C = NH · HS.
    pub c: usize,
    /// Number of heads NH.
    pub nh: usize,
}

impl AttnDims {
    /// The dimensions, checked as every entry point checks them ([`AttnDims::validate`]).
    #[track_caller]
    pub fn new(b: usize, t: usize, c: usize, nh: usize) -> Self {
        let dims = AttnDims { b, t, c, nh };
        dims.validate();
        dims
    }

    /// Panics unless C is a positive multiple of NH (a bug in the caller).
    #[track_caller]
    pub fn validate(&self) {
        let AttnDims { c, nh, .. } = *self;
        assert!(
            nh > 0 && c > 0 && c.is_multiple_of(nh),
            "attention: C = {c} must be a positive multiple of NH = {nh}"
        );
    }

    /// Head size HS = C / NH.
    pub fn hs(&self) -> usize {
        self.c / self.nh
    }

    /// Panics unless `buf` is (B, T, width).
    #[track_caller]
    fn check(&self, name: &str, buf: &[f32], width: usize) {
        let AttnDims { b, t, .. } = *self;
        assert_eq!(
            buf.len(),
            b * t * width,
            "attention: {name} has {} floats, (B, T, {width}) = ({b}, {t}, {width}) needs {}",
            buf.len(),
            b * t * width
        );
    }

    /// Panics unless `lse` is (B, NH, T).
    #[track_caller]
    fn check_lse(&self, lse: &[f32]) {
        let AttnDims { b, t, nh, .. } = *self;
        assert_eq!(
            lse.len(),
            b * nh * t,
            "attention: lse has {} floats, (B, NH, T) = ({b}, {nh}, {t}) needs {}",
            lse.len(),
            b * nh * t
        );
    }
}

/// Checks the arguments of a forward (fused or reference): qkv (B, T, 3C), out (B, T, C),
/// lse (B, NH, T).
#[track_caller]
fn check_forward(out: &[f32], lse: &[f32], qkv: &[f32], dims: AttnDims) {
    dims.validate();
    dims.check("qkv", qkv, 3 * dims.c);
    dims.check("out", out, dims.c);
    dims.check_lse(lse);
}

/// Checks the arguments of a backward (fused or reference): the forward's, plus dqkv
/// (B, T, 3C) and dout (B, T, C).
#[track_caller]
fn check_backward(
    dqkv: &[f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dims: AttnDims,
) {
    check_forward(out, lse, qkv, dims);
    dims.check("dqkv", dqkv, 3 * dims.c);
    dims.check("dout", dout, dims.c);
}

/// Causal self-attention forward, fused (FlashAttention-2 tiling, online softmax):
///
/// ```text
/// s_tj   = q_t·k_j / √HS                        (per head, j ≤ t)
/// out_t  = Σ_{j≤t} softmax_j(s_tj) · v_j
/// lse_t  = ln Σ_{j≤t} e^(s_tj)                  (saved for the backward)
/// ```
///
/// `out` (B, T, C) and `lse` (B, NH, T) are overwritten from `qkv` (B, T, 3C). Never stores a
/// T×T matrix: the extra memory is a few packed copies of q, k, v (see
/// [`attention_workspace`]). Parallel over (batch, head, query tile) in the current rayon pool;
/// results are bitwise identical on any number of threads. Any T ≥ 0 and any HS.
///
/// `precision` is that of the two products (Q·Kᵀ and P·V), which accumulate in fp32 either
/// way. With [`Precision::Bf16`] (where the build has it, see [`Precision::effective`]) q, k
/// and v are rounded to bf16 once, and P is rounded to bf16 before P·V; the softmax (scores,
/// running max and sum, lse, the normalization) is fp32.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    dims: AttnDims,
    precision: Precision,
) {
    let _launch = crate::launch::start(1);
    check_forward(out, lse, qkv, dims);
    // qkv read, out and lse written, once each.
    crate::launch::bytes(std::mem::size_of::<f32>() * (qkv.len() + out.len() + lse.len()));
    if dims.b * dims.t > 0 {
        flash::forward(out, lse, qkv, flash::Dims::new(dims), precision);
    }
}

/// Gradient of [`attention_forward`], fused (FlashAttention-2 backward): given `dout`
/// (B, T, C) and the forward's `qkv`, `out`, `lse`, overwrites `dqkv` (B, T, 3C) with
///
/// ```text
/// P_tj  = e^(s_tj − lse_t),   D_t = Σ_d dout_td · out_td
/// dS_tj = P_tj · (dout_t·v_j − D_t)
/// dq_t  = Σ_{j≤t} dS_tj k_j / √HS,   dk_j = Σ_{t≥j} dS_tj q_t / √HS,   dv_j = Σ_{t≥j} P_tj dout_t
/// ```
///
/// recomputing P tile by tile from q, k and lse (no T×T buffer). Parallel over (batch, head,
/// group of key tiles); bitwise identical on any number of threads.
///
/// `precision` is that of the five products (S = Q·Kᵀ, dO·Vᵀ, Pᵀ·dO, dSᵀ·Q, dS·K), which
/// accumulate in fp32 either way. With [`Precision::Bf16`] (where the build has it) q, k, v
/// and dout are rounded to bf16 once (D uses the rounded dout, so that D = Σ_j P_tj·dP_tj holds
/// for the dP computed), and P and dS are rounded to bf16 before the products that take them;
/// P, dP, D, dS and lse themselves are fp32. `out` and `lse` are used as given.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dims: AttnDims,
    precision: Precision,
) {
    let _launch = crate::launch::start(1);
    check_backward(dqkv, dout, qkv, out, lse, dims);
    // dout, qkv, out and lse read, dqkv written, once each.
    crate::launch::bytes(
        std::mem::size_of::<f32>() * (dout.len() + qkv.len() + out.len() + lse.len() + dqkv.len()),
    );
    if dims.b * dims.t > 0 {
        flash::backward(dqkv, dout, qkv, out, lse, flash::Dims::new(dims), precision);
    }
}

/// Scratch memory the fused kernels allocate for one call, beyond their arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceBytes {
    /// Heap bytes [`attention_forward`] allocates (packed Q, Kᵀ, V, O and lse): O(B·T·C).
    pub forward_bytes: usize,
    /// Heap bytes [`attention_backward`] allocates (packed operands, dK/dV tiles, dQ partial
    /// sums): O(B·T·C).
    pub backward_bytes: usize,
    /// Stack bytes of tile scratch per worker thread (two 64×64 score tiles, and in bf16 one
    /// converted to bf16 pairs), independent of T.
    pub per_thread_bytes: usize,
}

/// The memory [`attention_forward`] and [`attention_backward`] allocate for these shapes in
/// `precision` (bf16 packs its operands in half the bytes), computed by the same code that
/// sizes their buffers. Grows linearly in T, where a
/// materialized attention needs B·NH·T² floats per matrix. One buffer of the largest size
/// used so far is kept between calls (a training step calls attention with the same shapes in
/// every layer, and re-faulting fresh pages each time cost a quarter of the backward).
pub fn attention_workspace(dims: AttnDims, precision: Precision) -> WorkspaceBytes {
    dims.validate();
    let d = flash::Dims::new(dims);
    let (fwd, bwd, per_thread) = d.workspace_floats(precision);
    let f = std::mem::size_of::<f32>();
    WorkspaceBytes {
        forward_bytes: fwd * f,
        backward_bytes: bwd * f,
        per_thread_bytes: per_thread * f,
    }
}

/// Writes the (T, T) causal attention probabilities of head `head` of batch row `row` into
/// `probs`, row-major: `probs[i·T + j]` = softmax_j(q_i·k_j/√HS) for j ≤ i, 0 for j > i. For
/// plotting (`runner score --plot-attention`); computed by the f64 reference, O(T²·HS).
pub fn attention_probs(probs: &mut [f32], qkv: &[f32], dims: AttnDims, row: usize, head: usize) {
    let _launch = crate::launch::start(1);
    dims.validate();
    let AttnDims { b, t, c, nh } = dims;
    dims.check("qkv", qkv, 3 * c);
    assert!(
        row < b && head < nh,
        "attention_probs: batch row {row} / head {head} out of range (B = {b}, NH = {nh})"
    );
    assert_eq!(
        probs.len(),
        t * t,
        "attention_probs: probs must be (T, T) = ({t}, {t})"
    );
    reference::probs(probs, qkv, &dims, row, head);
}

// Row helpers shared by the decode and naive paths: any length, lanes plus a masked tail.

/// Σ x_i·y_i over equal-length rows.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = F32s::ZERO;
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        acc = load(a).mul_add(load(b), acc);
    }
    acc.reduce_add() + xr.iter().zip(yr).map(|(a, b)| a * b).sum::<f32>()
}

/// y += a·x over equal-length rows.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let av = F32s::splat(a);
    let mut yc = y.chunks_exact_mut(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (yv, xv) in (&mut yc).zip(&mut xc) {
        store(yv, av.mul_add(load(xv), load(yv)));
    }
    for (yv, &xv) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
        *yv += a * xv;
    }
}

/// Replaces each x by e^(x − shift) and returns the sum, any length (the tail goes through the
/// same vector `exp`, padded with −∞).
fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
    let sv = F32s::splat(shift);
    let mut sum = F32s::ZERO;
    let mut chunks = row.chunks_exact_mut(LANES);
    for x in &mut chunks {
        let p = exp_nonpositive(load(x) - sv);
        store(x, p);
        sum += p;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut buf = [f32::NEG_INFINITY; LANES];
        buf[..tail.len()].copy_from_slice(tail);
        let p = exp_nonpositive(F32s::from(buf) - sv);
        tail.copy_from_slice(&p.to_array()[..tail.len()]);
        sum += p;
    }
    sum.reduce_add()
}
