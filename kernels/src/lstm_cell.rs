//! The LSTM cell's pointwise step, forward and backward, beside its f64 reference.
//!
//! The matrix products that make the gate pre-activations (`x·W_ihᵀ + h_prev·W_hhᵀ + b_ih +
//! b_hh`, (B, 4H) in PyTorch's gate order i, f, g, o) are GEMMs done by the caller; this is the
//! rest of one time step, fused so the gates are read once:
//!
//! ```text
//! i = σ(ĩ)   f = σ(f̃)   g = tanh(g̃)   o = σ(õ)
//! c = f ⊙ c_prev + i ⊙ g      h = o ⊙ tanh(c)
//! ```
//!
//! The forward activates the gates in place (the pre-activations are not needed again) and
//! saves `tanh(c)`; with `c_prev`, those are all the backward needs. The shapes come as a
//! [`LstmDims`]: the kernels treat the T·B rows of their buffers as independent cells (one
//! time step of B sequences is T = 1). Rows run in parallel; every element's result is
//! independent of the split. Leaves out: peepholes,
//! projections (`proj_size`), and the time loop itself, which the model runs.

use crate::lanes::{self, Block, for_blocks, rows_per_task};
use crate::math::{sigmoid, tanh};
use crate::recurrence::LstmDims;
use crate::simd::F32s;
use rayon::prelude::*;

#[track_caller]
fn check(kernel: &str, arg: &str, len: usize, b: usize, width: usize, what: &str) {
    lanes::check_len(
        kernel,
        arg,
        len,
        b * width,
        format_args!("({what}) = ({b}, {width})"),
    );
}

/// One LSTM step of T·B rows (`dims`). `gates` (T·B, 4H) holds the pre-activations [ĩ | f̃ | g̃ | õ] of each row on
/// entry and the activated [i | f | g | o] on return (saved for backward). Writes
/// `c_t = f ⊙ c_prev + i ⊙ g`, `tanh_c = tanh(c_t)` (saved) and `h_t = o ⊙ tanh_c`, all (T·B, H).
pub fn lstm_cell_forward(
    c_t: &mut [f32],
    h_t: &mut [f32],
    tanh_c: &mut [f32],
    gates: &mut [f32],
    c_prev: &[f32],
    dims: LstmDims,
) {
    dims.validate();
    let (b, h) = (dims.t * dims.b, dims.h);
    let _launch = crate::launch::start(1);
    let k = "lstm_cell_forward";
    check(k, "gates", gates.len(), b, 4 * h, "T·B, 4H");
    for (name, len) in [
        ("c_t", c_t.len()),
        ("h_t", h_t.len()),
        ("tanh_c", tanh_c.len()),
        ("c_prev", c_prev.len()),
    ] {
        check(k, name, len, b, h, "T·B, H");
    }
    if h == 0 {
        return;
    }
    let rpt = rows_per_task(4 * h);
    crate::launch::ways(gates.len().div_ceil(rpt * 4 * h));
    gates
        .par_chunks_mut(rpt * 4 * h)
        .zip(c_t.par_chunks_mut(rpt * h))
        .zip(h_t.par_chunks_mut(rpt * h))
        .zip(tanh_c.par_chunks_mut(rpt * h))
        .enumerate()
        .for_each(|(task, (((gates, c_t), h_t), tanh_c))| {
            let _task = crate::launch::task(0);
            let rows = gates.chunks_exact_mut(4 * h).zip(c_t.chunks_exact_mut(h));
            for (j, ((g4, c), (hh, tc))) in rows
                .zip(h_t.chunks_exact_mut(h).zip(tanh_c.chunks_exact_mut(h)))
                .enumerate()
            {
                let cp = &c_prev[(task * rpt + j) * h..][..h];
                let (gi, rest) = g4.split_at_mut(h);
                let (gf, rest) = rest.split_at_mut(h);
                let (gg, go) = rest.split_at_mut(h);
                for_blocks(h, |k: Block| {
                    let pre = [k.load(gi), k.load(gf), k.load(gg), k.load(go)];
                    let ([i, f, g, o], cv, tcv) = cell_forward(pre, k.load(cp));
                    k.store(gi, i);
                    k.store(gf, f);
                    k.store(gg, g);
                    k.store(go, o);
                    k.store(c, cv);
                    k.store(tc, tcv);
                    k.store(hh, o * tcv);
                });
            }
        });
}

/// One lane block of the cell forward from the pre-activations `[i, f, g, o]` and `c_prev`:
/// the activated gates, `c` and `tanh(c)`. The one copy of the cell's forward arithmetic, used
/// here and by the recurrence's fused step, so the two agree bit for bit.
#[inline(always)]
pub(crate) fn cell_forward(pre: [F32s; 4], c_prev: F32s) -> ([F32s; 4], F32s, F32s) {
    let [ai, af, ag, ao] = pre;
    let (i, f, g, o) = (sigmoid(ai), sigmoid(af), tanh(ag), sigmoid(ao));
    let c = f.mul_add(c_prev, i * g);
    ([i, f, g, o], c, tanh(c))
}

/// One lane block of the cell backward from the activated `[i, f, g, o]`, the gradients `dh`
/// and `dc` reaching h and c, `c_prev` and `tanh_c`: the pre-activation gradients and
/// `dc_prev`. The one copy of the cell's backward arithmetic (see [`cell_forward`]).
#[inline(always)]
pub(crate) fn cell_backward(
    gates: [F32s; 4],
    dh: F32s,
    dc: F32s,
    c_prev: F32s,
    tanh_c: F32s,
) -> ([F32s; 4], F32s) {
    let [i, f, g, o] = gates;
    let one = F32s::ONE;
    // dĉ = dc + dh·o·(1 − tanh_c²)
    let dct = (dh * o).mul_add(tanh_c.mul_neg_add(tanh_c, one), dc);
    let dgates = [
        dct * g * i * (one - i),
        dct * c_prev * f * (one - f),
        dct * i * g.mul_neg_add(g, one),
        dh * tanh_c * o * (one - o),
    ];
    (dgates, dct * f)
}

/// Gradient of [`lstm_cell_forward`] from the saved activated `gates`, `c_prev` and `tanh_c`.
/// `dh` is dL/dh_t (from the output and the next step's recurrence), `dc` is dL/dc_t from the
/// next step (zeros at the last step). With `dĉ = dc + dh ⊙ o ⊙ (1 − tanh_c²)`, overwrites
/// `dc_prev = dĉ ⊙ f` and the pre-activation gradients
/// `dgates = [dĉ⊙g⊙i(1−i) | dĉ⊙c_prev⊙f(1−f) | dĉ⊙i⊙(1−g²) | dh⊙tanh_c⊙o(1−o)]`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_backward(
    dgates: &mut [f32],
    dc_prev: &mut [f32],
    dh: &[f32],
    dc: &[f32],
    gates: &[f32],
    c_prev: &[f32],
    tanh_c: &[f32],
    dims: LstmDims,
) {
    dims.validate();
    let (b, h) = (dims.t * dims.b, dims.h);
    let _launch = crate::launch::start(1);
    let k = "lstm_cell_backward";
    check(k, "dgates", dgates.len(), b, 4 * h, "T·B, 4H");
    check(k, "gates", gates.len(), b, 4 * h, "T·B, 4H");
    for (name, len) in [
        ("dc_prev", dc_prev.len()),
        ("dh", dh.len()),
        ("dc", dc.len()),
        ("c_prev", c_prev.len()),
        ("tanh_c", tanh_c.len()),
    ] {
        check(k, name, len, b, h, "T·B, H");
    }
    if h == 0 {
        return;
    }
    let rpt = rows_per_task(4 * h);
    crate::launch::ways(dgates.len().div_ceil(rpt * 4 * h));
    dgates
        .par_chunks_mut(rpt * 4 * h)
        .zip(dc_prev.par_chunks_mut(rpt * h))
        .enumerate()
        .for_each(|(task, (dgates, dc_prev))| {
            let _task = crate::launch::task(0);
            for (j, (dg4, dcp)) in dgates
                .chunks_exact_mut(4 * h)
                .zip(dc_prev.chunks_exact_mut(h))
                .enumerate()
            {
                let r = task * rpt + j;
                let g4 = &gates[r * 4 * h..][..4 * h];
                let (gi, gf, gg, go) = (&g4[..h], &g4[h..2 * h], &g4[2 * h..3 * h], &g4[3 * h..]);
                let (dhr, dcr) = (&dh[r * h..][..h], &dc[r * h..][..h]);
                let (cp, tc) = (&c_prev[r * h..][..h], &tanh_c[r * h..][..h]);
                let (dgi, rest) = dg4.split_at_mut(h);
                let (dgf, rest) = rest.split_at_mut(h);
                let (dgg, dgo) = rest.split_at_mut(h);
                for_blocks(h, |k: Block| {
                    let gates = [k.load(gi), k.load(gf), k.load(gg), k.load(go)];
                    let (d, dcv) =
                        cell_backward(gates, k.load(dhr), k.load(dcr), k.load(cp), k.load(tc));
                    k.store(dgi, d[0]);
                    k.store(dgf, d[1]);
                    k.store(dgg, d[2]);
                    k.store(dgo, d[3]);
                    k.store(dcp, dcv);
                });
            }
        });
}

/// Scalar reference for [`lstm_cell_forward`] (f64 inside), same in-place convention.
pub fn lstm_cell_forward_ref(
    c_t: &mut [f32],
    h_t: &mut [f32],
    tanh_c: &mut [f32],
    gates: &mut [f32],
    c_prev: &[f32],
    dims: LstmDims,
) {
    let (b, h) = (dims.t * dims.b, dims.h);
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for r in 0..b {
        for j in 0..h {
            let at = |q: usize| gates[r * 4 * h + q * h + j] as f64;
            let (i, f, g, o) = (sig(at(0)), sig(at(1)), at(2).tanh(), sig(at(3)));
            let c = f * c_prev[r * h + j] as f64 + i * g;
            for (q, v) in [i, f, g, o].into_iter().enumerate() {
                gates[r * 4 * h + q * h + j] = v as f32;
            }
            c_t[r * h + j] = c as f32;
            tanh_c[r * h + j] = c.tanh() as f32;
            h_t[r * h + j] = (o * c.tanh()) as f32;
        }
    }
}

/// Scalar reference for [`lstm_cell_backward`] (f64 inside).
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_backward_ref(
    dgates: &mut [f32],
    dc_prev: &mut [f32],
    dh: &[f32],
    dc: &[f32],
    gates: &[f32],
    c_prev: &[f32],
    tanh_c: &[f32],
    dims: LstmDims,
) {
    let (b, h) = (dims.t * dims.b, dims.h);
    for r in 0..b {
        for j in 0..h {
            let at = |q: usize| gates[r * 4 * h + q * h + j] as f64;
            let (i, f, g, o) = (at(0), at(1), at(2), at(3));
            let x = r * h + j;
            let (dhv, tc) = (dh[x] as f64, tanh_c[x] as f64);
            let dct = dc[x] as f64 + dhv * o * (1.0 - tc * tc);
            let d = [
                dct * g * i * (1.0 - i),
                dct * c_prev[x] as f64 * f * (1.0 - f),
                dct * i * (1.0 - g * g),
                dhv * tc * o * (1.0 - o),
            ];
            for (q, v) in d.into_iter().enumerate() {
                dgates[r * 4 * h + q * h + j] = v as f32;
            }
            dc_prev[x] = (dct * f) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::{dot64, numeric_grad};
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    /// The signature shared by the kernel and its reference.
    type ForwardFn = fn(&mut [f32], &mut [f32], &mut [f32], &mut [f32], &[f32], LstmDims);

    struct Step {
        c: Vec<f32>,
        h: Vec<f32>,
        tc: Vec<f32>,
        gates: Vec<f32>,
    }

    fn forward(f: ForwardFn, pre: &[f32], cp: &[f32], b: usize, h: usize) -> Step {
        let mut s = Step {
            c: vec![f32::NAN; b * h],
            h: vec![f32::NAN; b * h],
            tc: vec![f32::NAN; b * h],
            gates: pre.to_vec(),
        };
        f(
            &mut s.c,
            &mut s.h,
            &mut s.tc,
            &mut s.gates,
            cp,
            LstmDims::new(b, 1, h),
        );
        s
    }

    #[test]
    fn forward_and_backward_match_references() {
        let mut rng = TestRng::new(71);
        for h in awkward_lengths().into_iter().chain([512]) {
            for scale in [1.0, 10.0, 100.0] {
                let b = 5;
                let (pre, cp) = (rng.vec(b * 4 * h, scale), rng.vec(b * h, scale));
                let got = forward(lstm_cell_forward, &pre, &cp, b, h);
                let want = forward(lstm_cell_forward_ref, &pre, &cp, b, h);
                let what = format!("lstm h={h} scale={scale}");
                assert_close(
                    &got.gates,
                    &want.gates,
                    4e-7,
                    1e-37,
                    &format!("{what} gates"),
                );
                assert_close(&got.c, &want.c, 1e-6, 1e-6 * scale, &format!("{what} c"));
                assert_close(&got.tc, &want.tc, 1e-6, 1e-6, &format!("{what} tanh_c"));
                assert_close(&got.h, &want.h, 1e-6, 1e-6, &format!("{what} h"));

                let (dh, dc) = (rng.vec(b * h, 1.0), rng.vec(b * h, 1.0));
                let (mut dg, mut dcp) = (vec![f32::NAN; b * 4 * h], vec![f32::NAN; b * h]);
                let (mut dg2, mut dcp2) = (vec![0.0; b * 4 * h], vec![0.0; b * h]);
                let dims = LstmDims::new(b, 1, h);
                lstm_cell_backward(&mut dg, &mut dcp, &dh, &dc, &got.gates, &cp, &got.tc, dims);
                lstm_cell_backward_ref(
                    &mut dg2, &mut dcp2, &dh, &dc, &got.gates, &cp, &got.tc, dims,
                );
                assert_close(&dg, &dg2, 1e-5, 1e-7, &format!("{what} dgates"));
                assert_close(&dcp, &dcp2, 1e-6, 1e-7, &format!("{what} dc_prev"));
            }
        }
    }

    /// L = Σ dh·h_t + Σ dc·c_t from the pre-activations and c_prev, all in f64.
    fn loss64(pre: &[f64], cp: &[f64], dh: &[f32], dc: &[f32], b: usize, h: usize) -> f64 {
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (mut hs, mut cs) = (vec![0.0; b * h], vec![0.0; b * h]);
        for r in 0..b {
            for j in 0..h {
                let at = |q: usize| pre[r * 4 * h + q * h + j];
                let c = sig(at(1)) * cp[r * h + j] + sig(at(0)) * at(2).tanh();
                cs[r * h + j] = c;
                hs[r * h + j] = sig(at(3)) * c.tanh();
            }
        }
        dot64(&hs, dh) + dot64(&cs, dc)
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng::new(72);
        let (b, h) = (2, crate::simd::LANES + 3);
        let (pre, cp) = (rng.vec(b * 4 * h, 2.0), rng.vec(b * h, 1.0));
        let (dh, dc) = (rng.vec(b * h, 1.0), rng.vec(b * h, 1.0));
        let s = forward(lstm_cell_forward, &pre, &cp, b, h);
        let (mut dg, mut dcp) = (vec![0.0; b * 4 * h], vec![0.0; b * h]);
        let dims = LstmDims { b, t: 1, h };
        lstm_cell_backward(&mut dg, &mut dcp, &dh, &dc, &s.gates, &cp, &s.tc, dims);
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (pre64, cp64) = (f64s(&pre), f64s(&cp));
        let ng = numeric_grad(&pre, |p| loss64(p, &cp64, &dh, &dc, b, h));
        let nc = numeric_grad(&cp, |c| loss64(&pre64, c, &dh, &dc, b, h));
        assert_close(&dg, &ng, 1e-4, 1e-6, "dgates vs finite differences");
        assert_close(&dcp, &nc, 1e-4, 1e-6, "dc_prev vs finite differences");
    }
}
