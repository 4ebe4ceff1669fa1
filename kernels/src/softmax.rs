//! Row-wise softmax and log-softmax over (N, V) matrices, forward and backward, each beside its
//! scalar f64 reference.
//!
//! Numerically stable for any row length (1, 257, 50257, …): every exponent is taken after
//! subtracting the row maximum, so no term overflows and the largest is exactly 1.
//!
//! - [`softmax_forward`] makes three passes over a row that sits in L1/L2: the maximum, then
//!   e^(x−m) stored into `out` while summing it, then one multiply by 1/Σ — one `exp` per
//!   element; short rows go two at a time, interleaved, so that one row's chain of dependent
//!   steps (maximum → exponentials → sum → 1/Σ) overlaps the other's.
//! - Rows longer than `SHORT_ROW` (4096) do not stay in L1 between passes; for them the online
//!   softmax of Milakov & Gimelshein (2018), `Online`, gets the maximum and the sum in a
//!   single read: per-lane running maxima and sums, the sums rescaled once per block of eight
//!   vectors. `online_exp` also stores each e^(x − running max), so that the write pass is
//!   one multiply per element (the cross-entropy's path for V = 50257).
//!
//! Rows run in parallel in fixed groups of whole rows, so results do not depend on the thread
//! count. A row whose elements are all -inf has no distribution and comes out NaN, as in
//! PyTorch; a NaN anywhere in a row makes the whole row NaN. Leaves out: masking and
//! temperature (scale the logits first), and the fused classifier loss (`cross_entropy`).

use crate::lanes::{self, Block, for_blocks, map1_inplace, map1_sum, par_row_groups, par_rows};
use crate::math::exp;
use crate::simd::{F32s, LANES, load, store};

/// Rows up to this many floats (16 KB) stay in L1 between passes, where an extra pass costs
/// less than the online softmax's bookkeeping (measured: 3.9 vs 2.5 Gelem/s on 257-wide rows);
/// longer rows use the online softmax to read memory once.
pub(crate) const SHORT_ROW: usize = 4096;

/// Vectors per rescaling step of [`max_and_sum_exp`]: enough that the extra `exp` for the
/// rescale is cheap (1 in 9), few enough that one block stays in registers.
const ONLINE_BLOCK: usize = 8;

#[track_caller]
fn check_rows(kernel: &str, arg: &str, len: usize, n: usize, v: usize) {
    lanes::check_len(kernel, arg, len, n * v, format_args!("(N, V) = ({n}, {v})"));
}

/// `out[r, :] = softmax(inp[r, :])`, i.e. `out[r, i] = e^(inp[r, i] − m_r) / Σ_j e^(inp[r, j] − m_r)`
/// with `m_r = max_j inp[r, j]`, for each of the `n` rows of length `v`.
pub fn softmax_forward(out: &mut [f32], inp: &[f32], n: usize, v: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(8 * n * v);
    check_rows("softmax_forward", "out", out.len(), n, v);
    check_rows("softmax_forward", "inp", inp.len(), n, v);
    if v > SHORT_ROW {
        par_rows(out, v, |r, out| {
            softmax_row(out, &inp[r * v..][..v], 1.0);
        });
        return;
    }
    // Short rows ROWS at a time: one row is a chain of dependent steps (maximum, then the
    // exponentials, then their sum, then 1/Σ), too short for the CPU to overlap with the next
    // row on its own; interleaving independent rows gives it that parallelism.
    par_row_groups(out, v, ROWS, |r, out| {
        if out.len() == ROWS * v {
            softmax_rows::<ROWS>(out, &inp[r * v..][..ROWS * v], v);
        } else {
            for (j, o) in out.chunks_exact_mut(v).enumerate() {
                softmax_row(o, &inp[(r + j) * v..][..v], 1.0);
            }
        }
    });
}

/// Rows [`softmax_forward`] interleaves.
const ROWS: usize = 2;

/// [`softmax_row`] (scale 1) on `R` rows of length `v` at once, `out` and `x` holding them
/// all; each row's arithmetic is exactly [`softmax_row`]'s, in the same order, so a row's
/// result does not depend on the rows beside it.
#[inline]
fn softmax_rows<const R: usize>(out: &mut [f32], x: &[f32], v: usize) {
    let mut rows = out.chunks_exact_mut(v);
    let mut o: [&mut [f32]; R] = std::array::from_fn(|_| rows.next().unwrap());
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[i * v..][..v]);
    let m: [F32s; R] = std::array::from_fn(|i| F32s::splat(lanes::max(xs[i])));
    let mut s = [F32s::ZERO; R];
    for_blocks(v, |b: Block| {
        for i in 0..R {
            let y = exp(b.load_or(xs[i], f32::NEG_INFINITY) - m[i]);
            b.store(o[i], y);
            s[i] += y;
        }
    });
    let r: [F32s; R] = std::array::from_fn(|i| F32s::splat(1.0 / s[i].reduce_add()));
    for_blocks(v, |b: Block| {
        for i in 0..R {
            b.store(o[i], b.load_or(o[i], 0.0) * r[i]);
        }
    });
}

/// One row of [`softmax_forward`] times `scale`: `out = scale · e^(x − m) / Σ e^(x − m)`, in
/// three passes over a row that sits in L1 (maximum; e^(x − m) stored and summed; one
/// multiply). Returns the row's maximum and Σ e^(x − max).
#[inline]
pub(crate) fn softmax_row(out: &mut [f32], x: &[f32], scale: f32) -> (f32, f32) {
    let m = lanes::max(x);
    let mv = F32s::splat(m);
    let s = map1_sum(out, x, f32::NEG_INFINITY, |x| exp(x - mv)).reduce_add();
    lanes::scale_inplace(out, scale / s);
    (m, s)
}

/// [`softmax_row`] in place: `row` holds logits on entry.
#[inline]
pub(crate) fn softmax_row_inplace(row: &mut [f32], scale: f32) -> (f32, f32) {
    let m = lanes::max(row);
    let mv = F32s::splat(m);
    let s = lanes::map1_sum_inplace(row, f32::NEG_INFINITY, |x| exp(x - mv)).reduce_add();
    lanes::scale_inplace(row, scale / s);
    (m, s)
}

/// Gradient of [`softmax_forward`]: `dinp[r, i] = out[r, i] · (dout[r, i] − Σ_j dout[r, j] · out[r, j])`
/// (overwritten), from the forward's `out`.
pub fn softmax_backward(dinp: &mut [f32], dout: &[f32], out: &[f32], n: usize, v: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(12 * n * v);
    check_rows("softmax_backward", "dinp", dinp.len(), n, v);
    check_rows("softmax_backward", "dout", dout.len(), n, v);
    check_rows("softmax_backward", "out", out.len(), n, v);
    par_rows(dinp, v, |r, dinp| {
        let (dy, y) = (&dout[r * v..][..v], &out[r * v..][..v]);
        let dot = F32s::splat(lanes::dot(dy, y));
        lanes::map2(dinp, dy, y, |dy, y| (dy - dot) * y);
    });
}

/// `out[r, i] = inp[r, i] − m_r − ln Σ_j e^(inp[r, j] − m_r)`: log-probabilities, computed as
/// (x − m) − ln Σ so that large logits (|x| ~ 1e4) keep their small differences.
pub fn log_softmax_forward(out: &mut [f32], inp: &[f32], n: usize, v: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(8 * n * v);
    check_rows("log_softmax_forward", "out", out.len(), n, v);
    check_rows("log_softmax_forward", "inp", inp.len(), n, v);
    par_rows(out, v, |r, out| {
        let x = &inp[r * v..][..v];
        let (m, s) = max_and_sum_exp(x);
        let (mv, ls) = (F32s::splat(m), F32s::splat(s.ln()));
        lanes::map1(out, x, |x| (x - mv) - ls);
    });
}

/// Gradient of [`log_softmax_forward`]: `dinp[r, i] = dout[r, i] − e^(out[r, i]) · Σ_j dout[r, j]`
/// (overwritten), from the forward's `out` (the log-probabilities).
pub fn log_softmax_backward(dinp: &mut [f32], dout: &[f32], out: &[f32], n: usize, v: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(12 * n * v);
    check_rows("log_softmax_backward", "dinp", dinp.len(), n, v);
    check_rows("log_softmax_backward", "dout", dout.len(), n, v);
    check_rows("log_softmax_backward", "out", out.len(), n, v);
    par_rows(dinp, v, |r, dinp| {
        let (dy, y) = (&dout[r * v..][..v], &out[r * v..][..v]);
        let sum = F32s::splat(lanes::fold1(dy, 0.0, F32s::ZERO, |a, d| a + d).reduce_add());
        lanes::map2(dinp, dy, y, |dy, y| exp(y).mul_neg_add(sum, dy));
    });
}

/// Running state of the online softmax (Milakov & Gimelshein 2018) over one row: each lane
/// keeps its own maximum `m` and `s = Σ e^(x − m)` of the elements it has seen. The row is fed
/// in blocks of up to [`ONLINE_BLOCK`] vectors: the block's maximum is found first (the block
/// is in registers), the lane sums are rescaled once by e^(m_old − m_new), then the block's
/// terms are added — one extra `exp` per block rather than one per element.
#[derive(Clone, Copy)]
pub(crate) struct Online {
    m: F32s,
    s: F32s,
}

/// Floats per block of [`Online`].
pub(crate) const BLOCK_LEN: usize = ONLINE_BLOCK * LANES;

impl Online {
    /// Starts from the lowest finite float rather than -inf, so that m_old − m_new is never
    /// -inf − (-inf) (a lane that only ever sees -inf keeps s = 0).
    pub(crate) fn new() -> Self {
        Online {
            m: F32s::splat(f32::MIN),
            s: F32s::ZERO,
        }
    }

    /// Feeds one block `xs` (-inf in lanes past the row's end); writes `es[k] = e^(xs[k] − shift)`
    /// and returns the shift, the lanes' running maximum after this block.
    #[inline(always)]
    pub(crate) fn block(&mut self, xs: &[F32s], es: &mut [F32s]) -> F32s {
        let bm = xs.iter().fold(self.m, |a, &x| a.fast_max(x));
        let mut bs = F32s::ZERO;
        for (e, &x) in es.iter_mut().zip(xs) {
            *e = exp(x - bm);
            bs += *e;
        }
        self.s = self.s.mul_add(exp(self.m - bm), bs);
        self.m = bm;
        bm
    }

    /// The row's maximum and Σ e^(x − max), combining the lanes. An empty row, or a row of
    /// -inf, gives (-inf, 0); a NaN anywhere gives a NaN sum.
    pub(crate) fn finish(self) -> (f32, f32) {
        let mx = lanes::reduce_max(self.m);
        let total = (self.s * exp(self.m - F32s::splat(mx))).reduce_add();
        if total == 0.0 {
            return (f32::NEG_INFINITY, 0.0);
        }
        (mx, total)
    }
}

/// Loads the last, partial block of a row: its vectors (the final one padded with -inf) and
/// how many there are.
#[inline(always)]
fn load_partial_block(rest: &[f32]) -> ([F32s; ONLINE_BLOCK], usize) {
    let mut xs = [F32s::ZERO; ONLINE_BLOCK];
    let mut k = 0;
    for_blocks(rest.len(), |b: Block| {
        xs[k] = b.load_or(rest, f32::NEG_INFINITY);
        k += 1;
    });
    (xs, k)
}

/// The row's maximum `m` and `Σ e^(x − m)`. Rows up to [`SHORT_ROW`] floats sit in L1 and
/// take two passes (maximum, then the sum), one `exp` per element; longer rows are read once
/// with [`Online`], which saves a pass over memory for 1/8 more `exp`s.
pub(crate) fn max_and_sum_exp(x: &[f32]) -> (f32, f32) {
    if x.len() <= SHORT_ROW {
        let m = lanes::max(x);
        let mv = F32s::splat(m);
        let s = lanes::fold1(x, f32::NEG_INFINITY, F32s::ZERO, |a, x| a + exp(x - mv));
        return (m, s.reduce_add());
    }
    online_max_and_sum_exp(x)
}

/// [`max_and_sum_exp`] for long rows: one read with [`Online`].
fn online_max_and_sum_exp(x: &[f32]) -> (f32, f32) {
    let mut st = Online::new();
    let mut es = [F32s::ZERO; ONLINE_BLOCK];
    let mut blocks = x.chunks_exact(BLOCK_LEN);
    for b in &mut blocks {
        let xs: [F32s; ONLINE_BLOCK] = std::array::from_fn(|k| load(&b[k * LANES..]));
        st.block(&xs, &mut es);
    }
    if !blocks.remainder().is_empty() {
        let (xs, k) = load_partial_block(blocks.remainder());
        st.block(&xs[..k], &mut es[..k]);
    }
    st.finish()
}

/// First pass of a softmax that stores its exponentials: `out[i] = e^(x[i] − shift_b)` with
/// `shift_b` (pushed onto `shifts`, one vector per block of [`BLOCK_LEN`]) the running maximum
/// when block b was read. Returns the row's maximum and Σ e^(x − max). [`rescale_blocks`] then
/// turns `out` into probabilities with one `exp` per block instead of one per element.
pub(crate) fn online_exp(out: &mut [f32], x: &[f32], shifts: &mut Vec<F32s>) -> (f32, f32) {
    debug_assert_eq!(out.len(), x.len());
    shifts.clear();
    let mut st = Online::new();
    let mut es = [F32s::ZERO; ONLINE_BLOCK];
    let mut ob = out.chunks_exact_mut(BLOCK_LEN);
    let mut xb = x.chunks_exact(BLOCK_LEN);
    for (o, b) in (&mut ob).zip(&mut xb) {
        let xs: [F32s; ONLINE_BLOCK] = std::array::from_fn(|k| load(&b[k * LANES..]));
        shifts.push(st.block(&xs, &mut es));
        for (k, &e) in es.iter().enumerate() {
            store(&mut o[k * LANES..], e);
        }
    }
    let (o, rest) = (ob.into_remainder(), xb.remainder());
    if !rest.is_empty() {
        let (xs, k) = load_partial_block(rest);
        shifts.push(st.block(&xs[..k], &mut es[..k]));
        let mut k = 0;
        for_blocks(o.len(), |b: Block| {
            b.store(o, es[k]);
            k += 1;
        });
    }
    st.finish()
}

/// [`online_exp`] in place: `row` holds logits on entry and e^(x − shift_b) on return.
pub(crate) fn online_exp_inplace(row: &mut [f32], shifts: &mut Vec<F32s>) -> (f32, f32) {
    shifts.clear();
    let mut st = Online::new();
    let mut es = [F32s::ZERO; ONLINE_BLOCK];
    let mut blocks = row.chunks_exact_mut(BLOCK_LEN);
    for b in &mut blocks {
        let xs: [F32s; ONLINE_BLOCK] = std::array::from_fn(|k| load(&b[k * LANES..]));
        shifts.push(st.block(&xs, &mut es));
        for (k, &e) in es.iter().enumerate() {
            store(&mut b[k * LANES..], e);
        }
    }
    let rest = blocks.into_remainder();
    if !rest.is_empty() {
        let (xs, k) = load_partial_block(rest);
        shifts.push(st.block(&xs[..k], &mut es[..k]));
        let mut k = 0;
        for_blocks(rest.len(), |b: Block| {
            b.store(rest, es[k]);
            k += 1;
        });
    }
    st.finish()
}

/// Second pass after [`online_exp`]: `row[i] *= e^(shift_b − m) · scale` for the blocks that
/// `shifts` (starting at the row's first block) covers, so that with scale = 1/Σ the row holds softmax probabilities (times any extra factor in `scale`).
#[inline]
pub(crate) fn rescale_blocks(row: &mut [f32], shifts: &[F32s], m: f32, scale: f32) {
    let (mv, sv) = (F32s::splat(m), F32s::splat(scale));
    for (o, &shift) in row.chunks_mut(BLOCK_LEN).zip(shifts) {
        let f = exp(shift - mv) * sv;
        map1_inplace(o, |e| e * f);
    }
}

/// Scalar reference for [`softmax_forward`] (f64 inside).
pub fn softmax_ref(out: &mut [f32], inp: &[f32], n: usize, v: usize) {
    check_rows("softmax_ref", "out", out.len(), n, v);
    check_rows("softmax_ref", "inp", inp.len(), n, v);
    for (o, x) in out
        .chunks_exact_mut(v.max(1))
        .zip(inp.chunks_exact(v.max(1)))
    {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let s: f64 = x.iter().map(|&x| (x as f64 - m).exp()).sum();
        for (o, &x) in o.iter_mut().zip(x) {
            *o = ((x as f64 - m).exp() / s) as f32;
        }
    }
}

/// Scalar reference for [`log_softmax_forward`] (f64 inside).
pub fn log_softmax_ref(out: &mut [f32], inp: &[f32], n: usize, v: usize) {
    check_rows("log_softmax_ref", "out", out.len(), n, v);
    check_rows("log_softmax_ref", "inp", inp.len(), n, v);
    for (o, x) in out
        .chunks_exact_mut(v.max(1))
        .zip(inp.chunks_exact(v.max(1)))
    {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let ls = x.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        for (o, &x) in o.iter_mut().zip(x) {
            *o = (x as f64 - m - ls) as f32;
        }
    }
}

/// Scalar reference for [`softmax_backward`] (f64 inside).
pub fn softmax_backward_ref(dinp: &mut [f32], dout: &[f32], out: &[f32], n: usize, v: usize) {
    check_rows("softmax_backward_ref", "dinp", dinp.len(), n, v);
    check_rows("softmax_backward_ref", "dout", dout.len(), n, v);
    check_rows("softmax_backward_ref", "out", out.len(), n, v);
    let w = v.max(1);
    for ((dx, dy), y) in dinp
        .chunks_exact_mut(w)
        .zip(dout.chunks_exact(w))
        .zip(out.chunks_exact(w))
    {
        let dot: f64 = dy.iter().zip(y).map(|(&d, &y)| d as f64 * y as f64).sum();
        for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
            *dx = (y as f64 * (dy as f64 - dot)) as f32;
        }
    }
}

/// Scalar reference for [`log_softmax_backward`] (f64 inside).
pub fn log_softmax_backward_ref(dinp: &mut [f32], dout: &[f32], out: &[f32], n: usize, v: usize) {
    check_rows("log_softmax_backward_ref", "dinp", dinp.len(), n, v);
    check_rows("log_softmax_backward_ref", "dout", dout.len(), n, v);
    check_rows("log_softmax_backward_ref", "out", out.len(), n, v);
    let w = v.max(1);
    for ((dx, dy), y) in dinp
        .chunks_exact_mut(w)
        .zip(dout.chunks_exact(w))
        .zip(out.chunks_exact(w))
    {
        let sum: f64 = dy.iter().map(|&d| d as f64).sum();
        for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
            *dx = (dy as f64 - (y as f64).exp() * sum) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, assert_close, awkward_lengths, sum_tolerance_scale};

    /// Row lengths every test sweeps: the awkward list plus GPT-2's vocabulary.
    fn lengths() -> Vec<usize> {
        let mut v = awkward_lengths();
        v.push(50257);
        v
    }

    /// Logits at several magnitudes, including ones whose e^x would overflow unshifted.
    fn logits(rng: &mut TestRng, n: usize, scale: f32) -> Vec<f32> {
        rng.vec(n, scale)
    }

    #[test]
    fn softmax_matches_reference_and_rows_sum_to_one() {
        let mut rng = TestRng::new(11);
        for v in lengths() {
            for scale in [1.0, 30.0, 88.0, 1e4] {
                let n = if v > 1000 { 2 } else { 5 };
                let x = logits(&mut rng, n * v, scale);
                let mut got = vec![f32::NAN; n * v];
                let mut want = vec![0.0; n * v];
                softmax_forward(&mut got, &x, n, v);
                softmax_ref(&mut want, &x, n, v);
                // The row's normalizer is a sum of v terms in LANES running sums.
                assert_close(
                    &got,
                    &want,
                    4e-6 * sum_tolerance_scale(),
                    1e-30,
                    &format!("softmax v={v} scale={scale}"),
                );
                for row in got.chunks(v.max(1)).filter(|_| v > 0) {
                    let s: f64 = row.iter().map(|&p| p as f64).sum();
                    assert!((s - 1.0).abs() < 1e-5, "row sums to {s} (v={v})");
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_beside_others() {
        // Short rows run ROWS at a time; a row's result must not depend on its neighbours,
        // including neighbours that are NaN or all -inf.
        let mut rng = TestRng::new(12);
        for v in [1, 17, 257, 1000] {
            let n = 2 * ROWS + 1;
            let mut x = logits(&mut rng, n * v, 30.0);
            x[v..2 * v].fill(f32::NEG_INFINITY);
            x[2 * v] = f32::NAN;
            let mut all = vec![0.0; n * v];
            softmax_forward(&mut all, &x, n, v);
            for r in 0..n {
                let mut one = vec![0.0; v];
                softmax_forward(&mut one, &x[r * v..][..v], 1, v);
                let same = one
                    .iter()
                    .zip(&all[r * v..][..v])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {r} of {n} (v={v}) differs from the row alone");
            }
            assert!(all[v..3 * v].iter().all(|p| p.is_nan()));
            assert!(all[3 * v..].iter().all(|p| p.is_finite()));
        }
    }

    #[test]
    fn softmax_edge_rows() {
        let mut out = [0.0; 3];
        softmax_forward(&mut out, &[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], 1, 3);
        assert_eq!(out, [0.0, 1.0, 0.0]);
        softmax_forward(&mut out, &[1e4, -1e4, 1e4], 1, 3);
        assert_eq!(out, [0.5, 0.0, 0.5]);
        softmax_forward(&mut out, &[0.0, f32::NAN, 0.0], 1, 3);
        assert!(out.iter().all(|p| p.is_nan()));
        softmax_forward(&mut out, &[f32::NEG_INFINITY; 3], 1, 3);
        assert!(
            out.iter().all(|p| p.is_nan()),
            "no distribution over all -inf, as PyTorch"
        );
        softmax_forward(&mut out[..0], &[], 4, 0);
    }

    #[test]
    fn log_softmax_matches_reference_and_large_logits_keep_their_differences() {
        let mut rng = TestRng::new(12);
        for v in lengths() {
            for scale in [1.0, 88.0, 1e4] {
                let n = if v > 1000 { 2 } else { 5 };
                let x = logits(&mut rng, n * v, scale);
                let mut got = vec![f32::NAN; n * v];
                let mut want = vec![0.0; n * v];
                log_softmax_forward(&mut got, &x, n, v);
                log_softmax_ref(&mut want, &x, n, v);
                // Absolute: a log-probability is as exact as the difference x − m it starts from.
                let atol = 2e-6 * scale.max(10.0);
                assert_close(
                    &got,
                    &want,
                    1e-6,
                    atol,
                    &format!("log_softmax v={v} scale={scale}"),
                );
            }
        }
        let mut out = [0.0; 2];
        log_softmax_forward(&mut out, &[10000.0, 10001.0], 1, 2);
        assert_close(
            &out,
            &[-1.313_261_7, -0.313_261_7],
            1e-6,
            0.0,
            "log_softmax(1e4, 1e4+1)",
        );
    }

    #[test]
    fn online_sum_matches_two_pass_at_every_block_boundary() {
        let mut rng = TestRng::new(13);
        for v in (0..3 * ONLINE_BLOCK * LANES + 2).chain([50257]) {
            // Increasing trend: the running maximum keeps moving, so every rescale is exercised.
            let x: Vec<f32> = (0..v)
                .map(|i| rng.uniform() * 5.0 + i as f32 * 0.05)
                .collect();
            let (m, s) = online_max_and_sum_exp(&x);
            if v == 0 {
                assert_eq!((m, s), (f32::NEG_INFINITY, 0.0));
                continue;
            }
            let wm = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let ws: f64 = x.iter().map(|&x| ((x - wm) as f64).exp()).sum();
            assert_eq!(m, wm, "max v={v}");
            assert!(
                ((s as f64) - ws).abs() <= 2e-6 * ws,
                "sum v={v}: {s} vs {ws}"
            );
        }
        assert!(online_max_and_sum_exp(&[1.0, f32::NAN, 2.0]).1.is_nan());
        assert!(max_and_sum_exp(&[1.0, f32::NAN, 2.0]).1.is_nan());
        let ninf = [f32::NEG_INFINITY; 300];
        assert_eq!(online_max_and_sum_exp(&ninf), (f32::NEG_INFINITY, 0.0));
    }

    /// softmax of one f64 row.
    fn softmax_f64(x: &[f64]) -> Vec<f64> {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        let e: Vec<f64> = x.iter().map(|&x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|&e| e / s).collect()
    }

    /// log-softmax of one f64 row.
    fn log_softmax_f64(x: &[f64]) -> Vec<f64> {
        softmax_f64(x).into_iter().map(f64::ln).collect()
    }

    /// The SIMD backward against central differences of L = Σ dy · f(x), all in f64.
    fn check_backward(
        f64_forward: fn(&[f64]) -> Vec<f64>,
        forward: fn(&mut [f32], &[f32], usize, usize),
        backward: fn(&mut [f32], &[f32], &[f32], usize, usize),
        what: &str,
    ) {
        let mut rng = TestRng::new(14);
        for v in [1, 2, LANES + 1, 37] {
            let n = 3;
            let x = rng.vec(n * v, 3.0);
            let dy = rng.vec(n * v, 1.0);
            let mut y = vec![0.0; n * v];
            forward(&mut y, &x, n, v);
            let mut dx = vec![f32::NAN; n * v];
            backward(&mut dx, &dy, &y, n, v);
            let loss = |x: &[f64]| -> f64 {
                x.chunks(v)
                    .zip(dy.chunks(v))
                    .map(|(x, dy)| {
                        f64_forward(x)
                            .iter()
                            .zip(dy)
                            .map(|(&y, &d)| y * d as f64)
                            .sum::<f64>()
                    })
                    .sum()
            };
            let x64: Vec<f64> = x.iter().map(|&x| x as f64).collect();
            let h = 1e-5;
            let numeric: Vec<f32> = (0..n * v)
                .map(|i| {
                    let (mut xp, mut xm) = (x64.clone(), x64.clone());
                    xp[i] += h;
                    xm[i] -= h;
                    ((loss(&xp) - loss(&xm)) / (2.0 * h)) as f32
                })
                .collect();
            assert_close(&dx, &numeric, 1e-4, 1e-6, &format!("{what} v={v}"));
        }
    }

    #[test]
    fn softmax_backward_matches_finite_differences() {
        check_backward(
            softmax_f64,
            softmax_forward,
            softmax_backward,
            "softmax_backward",
        );
    }

    #[test]
    fn log_softmax_backward_matches_finite_differences() {
        check_backward(
            log_softmax_f64,
            log_softmax_forward,
            log_softmax_backward,
            "log_softmax_backward",
        );
    }

    #[test]
    fn backwards_match_references_on_awkward_lengths() {
        let mut rng = TestRng::new(15);
        for v in lengths() {
            let n = 2;
            let x = rng.vec(n * v, 4.0);
            let dy = rng.vec(n * v, 1.0);
            let mut y = vec![0.0; n * v];
            let (mut got, mut want) = (vec![f32::NAN; n * v], vec![0.0; n * v]);
            softmax_forward(&mut y, &x, n, v);
            softmax_backward(&mut got, &dy, &y, n, v);
            softmax_backward_ref(&mut want, &dy, &y, n, v);
            assert_close(&got, &want, 1e-5, 1e-7, &format!("softmax_backward v={v}"));
            log_softmax_forward(&mut y, &x, n, v);
            log_softmax_backward(&mut got, &dy, &y, n, v);
            log_softmax_backward_ref(&mut want, &dy, &y, n, v);
            assert_close(
                &got,
                &want,
                1e-5,
                1e-5,
                &format!("log_softmax_backward v={v}"),
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, v) = (300, 257);
        let x = TestRng::new(16).vec(n * v, 20.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0.0; n * v];
            pool.install(|| softmax_forward(&mut out, &x, n, v));
            out
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    #[should_panic(expected = "softmax_forward: inp has 5 elements, expected 6")]
    fn wrong_length_panics_naming_the_argument() {
        softmax_forward(&mut [0.0; 6], &[0.0; 5], 2, 3);
    }
}
