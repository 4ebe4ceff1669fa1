//! LayerNorm over the last dimension of (N, C) rows, forward and backward (as GPT-2 uses it,
//! N = B·T), beside its f64 reference.
//!
//! Forward: `out = (x − mean)·rstd·weight + bias` with `rstd = 1/√(var + eps)`, the variance
//! biased (divided by C) as in PyTorch; the mean and rstd of each row are saved for backward.
//! The variance is computed from the centred values in a second pass over the row (which
//! sits in L1), not as E(x²) − mean², which cancels badly when |mean| ≫ std.
//!
//! Backward overwrites `dinp` and accumulates `dweight`, `dbias`. Rows run in parallel in
//! fixed groups; each group sums its rows' contributions to dweight and dbias into its own
//! partial, and the partials are added in group order, so the parameter gradients are
//! bitwise the same on any number of threads. Leaves out: RMSNorm, and layouts other than
//! normalizing the contiguous last dimension.

use crate::lanes::{self, Block, add_partials, for_blocks, rows_per_task};
use crate::simd::F32s;
use rayon::prelude::*;

#[track_caller]
fn check_args(
    kernel: &str,
    inp: usize,
    weight: usize,
    mean: usize,
    rstd: usize,
    n: usize,
    c: usize,
) {
    lanes::check_len(
        kernel,
        "inp",
        inp,
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    lanes::check_len(kernel, "weight", weight, c, format_args!("(C,) = ({c},)"));
    lanes::check_len(kernel, "mean", mean, n, format_args!("(N,) = ({n},)"));
    lanes::check_len(kernel, "rstd", rstd, n, format_args!("(N,) = ({n},)"));
}

/// `out[r, i] = (inp[r, i] − mean[r]) · rstd[r] · weight[i] + bias[i]`, writing
/// `mean[r] = Σ_i inp[r, i] / C` and `rstd[r] = 1 / √(Σ_i (inp[r, i] − mean[r])² / C + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * n * c + 2 * n + 2 * c));
    let k = "layernorm_forward";
    check_args(k, inp.len(), weight.len(), mean.len(), rstd.len(), n, c);
    lanes::check_len(k, "bias", bias.len(), c, format_args!("(C,) = ({c},)"));
    lanes::check_len(
        k,
        "out",
        out.len(),
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    if c == 0 {
        // No elements: the mean of nothing is NaN, like PyTorch's.
        mean.fill(f32::NAN);
        rstd.fill(f32::NAN);
        return;
    }
    let rpt = rows_per_task(c);
    crate::launch::ways(out.len().div_ceil(rpt * c));
    out.par_chunks_mut(rpt * c)
        .zip(mean.par_chunks_mut(rpt))
        .zip(rstd.par_chunks_mut(rpt))
        .enumerate()
        .for_each(|(task, ((out, mean), rstd))| {
            let _task = crate::launch::task(0);
            for (j, ((y, m), rs)) in out.chunks_exact_mut(c).zip(mean).zip(rstd).enumerate() {
                let r = task * rpt + j;
                let x = &inp[r * c..][..c];
                (*m, *rs) = layernorm_row(y, x, weight, bias, eps);
            }
        });
}

/// One row of [`layernorm_forward`]; returns (mean, rstd).
#[inline]
fn layernorm_row(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) -> (f32, f32) {
    let inv_c = 1.0 / x.len() as f32;
    let m0 = lanes::fold1(x, 0.0, F32s::ZERO, |a, v| a + v).reduce_add() * inv_c;
    // Second pass over the deviations from m0 (the "corrected two-pass" algorithm): Σd
    // corrects the rounding of m0, which matters when |mean| ≫ std; padding lanes hold m0
    // itself and add nothing.
    let m0v = F32s::splat(m0);
    let (mut sd, mut sdd) = (F32s::ZERO, F32s::ZERO);
    lanes::for_blocks(x.len(), |k: Block| {
        let d = k.load_or(x, m0) - m0v;
        sd += d;
        sdd = d.mul_add(d, sdd);
    });
    let mean_d = sd.reduce_add() * inv_c;
    let m = m0 + mean_d;
    let var = (sdd.reduce_add() * inv_c - mean_d * mean_d).max(0.0);
    let mv = F32s::splat(m);
    let rs = 1.0 / (var + eps).sqrt();
    let rsv = F32s::splat(rs);
    for_blocks(x.len(), |k: Block| {
        let norm = (k.load(x) - mv) * rsv;
        k.store(y, norm.mul_add(k.load(w), k.load(b)));
    });
    (m, rs)
}

/// Gradient of [`layernorm_forward`] from the saved `mean` and `rstd`. With
/// `n̂ = (x − mean)·rstd` and `g = dout·weight`:
/// `dinp = rstd · (g − mean_i(g) − n̂ · mean_i(g·n̂))` (overwritten),
/// `dweight[i] += Σ_r dout[r, i]·n̂[r, i]`, `dbias[i] += Σ_r dout[r, i]` (accumulated).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (3 * n * c + 2 * n + 3 * c));
    let k = "layernorm_backward";
    check_args(k, inp.len(), weight.len(), mean.len(), rstd.len(), n, c);
    lanes::check_len(
        k,
        "dinp",
        dinp.len(),
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    lanes::check_len(
        k,
        "dout",
        dout.len(),
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    lanes::check_len(
        k,
        "dweight",
        dweight.len(),
        c,
        format_args!("(C,) = ({c},)"),
    );
    lanes::check_len(k, "dbias", dbias.len(), c, format_args!("(C,) = ({c},)"));
    if c == 0 || n == 0 {
        return;
    }
    let rpt = rows_per_task(c);
    // One partial (dweight ‖ dbias) per group of rows, summed in group order below.
    let mut partials = vec![0.0f32; n.div_ceil(rpt) * 2 * c];
    crate::launch::ways(n.div_ceil(rpt));
    dinp.par_chunks_mut(rpt * c)
        .zip(partials.par_chunks_mut(2 * c))
        .enumerate()
        .for_each(|(task, (dinp, part))| {
            let _task = crate::launch::task(0);
            let (dw, db) = part.split_at_mut(c);
            for (j, dx) in dinp.chunks_exact_mut(c).enumerate() {
                let r = task * rpt + j;
                let (x, dy) = (&inp[r * c..][..c], &dout[r * c..][..c]);
                layernorm_backward_row(dx, dw, db, dy, x, weight, mean[r], rstd[r]);
            }
        });
    add_partials(&mut [dweight, dbias], &partials);
}

/// One row of [`layernorm_backward`]; adds the row's terms into the group's `dw`, `db`.
#[inline]
#[allow(clippy::too_many_arguments)]
fn layernorm_backward_row(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    mean: f32,
    rstd: f32,
) {
    let (mv, rsv) = (F32s::splat(mean), F32s::splat(rstd));
    // Pass 1: Σ g and Σ g·n̂, and this row's share of the parameter gradients.
    let (mut sg, mut sgn) = (F32s::ZERO, F32s::ZERO);
    for_blocks(x.len(), |k: Block| {
        let d = k.load(dy);
        let norm = (k.load(x) - mv) * rsv;
        let g = d * k.load(w);
        sg += g;
        sgn = g.mul_add(norm, sgn);
        k.store(dw, d.mul_add(norm, k.load(dw)));
        k.store(db, k.load(db) + d);
    });
    let inv_c = 1.0 / x.len() as f32;
    let mg = F32s::splat(sg.reduce_add() * inv_c);
    let mgn = F32s::splat(sgn.reduce_add() * inv_c);
    // Pass 2: dinp = rstd · (g − mean(g) − n̂ · mean(g·n̂)).
    for_blocks(x.len(), |k: Block| {
        let norm = (k.load(x) - mv) * rsv;
        let g = k.load(dy) * k.load(w);
        k.store(dx, norm.mul_neg_add(mgn, g - mg) * rsv);
    });
}

/// Scalar reference for [`layernorm_forward`] (f64 inside).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward_ref(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    check_args(
        "layernorm_forward_ref",
        inp.len(),
        weight.len(),
        mean.len(),
        rstd.len(),
        n,
        c,
    );
    assert!(
        bias.len() == c && out.len() == n * c,
        "layernorm_forward_ref: bias or out length"
    );
    for r in 0..n {
        let x = &inp[r * c..][..c];
        let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            out[r * c + i] = ((x[i] as f64 - m) * rs * weight[i] as f64 + bias[i] as f64) as f32;
        }
        (mean[r], rstd[r]) = (m as f32, rs as f32);
    }
}

/// Scalar reference for [`layernorm_backward`] (f64 inside).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward_ref(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    check_args(
        "layernorm_backward_ref",
        inp.len(),
        weight.len(),
        mean.len(),
        rstd.len(),
        n,
        c,
    );
    assert!(
        dinp.len() == n * c && dout.len() == n * c && dweight.len() == c && dbias.len() == c,
        "layernorm_backward_ref: dinp, dout, dweight or dbias length"
    );
    let mut dw = vec![0.0f64; c];
    let mut db = vec![0.0f64; c];
    for r in 0..n {
        let (m, rs) = (mean[r] as f64, rstd[r] as f64);
        let norm: Vec<f64> = (0..c).map(|i| (inp[r * c + i] as f64 - m) * rs).collect();
        let dy: Vec<f64> = (0..c).map(|i| dout[r * c + i] as f64).collect();
        let g: Vec<f64> = (0..c).map(|i| dy[i] * weight[i] as f64).collect();
        let mg = g.iter().sum::<f64>() / c as f64;
        let mgn = g.iter().zip(&norm).map(|(g, n)| g * n).sum::<f64>() / c as f64;
        for i in 0..c {
            dinp[r * c + i] = ((g[i] - mg - norm[i] * mgn) * rs) as f32;
            dw[i] += dy[i] * norm[i];
            db[i] += dy[i];
        }
    }
    for i in 0..c {
        dweight[i] += dw[i] as f32;
        dbias[i] += db[i] as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::{dot64, numeric_grad};
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    const EPS: f32 = 1e-5;

    struct Case {
        n: usize,
        c: usize,
        x: Vec<f32>,
        w: Vec<f32>,
        b: Vec<f32>,
    }

    fn case(rng: &mut TestRng, n: usize, c: usize, offset: f32, scale: f32) -> Case {
        let x = rng.vec(n * c, scale).iter().map(|v| v + offset).collect();
        Case {
            n,
            c,
            x,
            w: rng.vec(c, 1.5),
            b: rng.vec(c, 0.5),
        }
    }

    #[test]
    fn forward_matches_reference_on_awkward_widths_and_large_offsets() {
        let mut rng = TestRng::new(31);
        for c in awkward_lengths()
            .into_iter()
            .filter(|&c| c > 0)
            .chain([768, 50257])
        {
            // A large common offset: E[x²] − mean² would lose every digit here.
            for (offset, scale) in [(0.0, 1.0), (1e4, 1.0), (0.0, 1e4)] {
                let Case { n, c, x, w, b } = case(&mut rng, 3, c, offset, scale);
                let (mut y, mut m, mut rs) = (vec![f32::NAN; n * c], vec![0.0; n], vec![0.0; n]);
                let (mut y2, mut m2, mut rs2) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                layernorm_forward(&mut y, &mut m, &mut rs, &x, &w, &b, n, c, EPS);
                layernorm_forward_ref(&mut y2, &mut m2, &mut rs2, &x, &w, &b, n, c, EPS);
                let what = format!("layernorm c={c} offset={offset} scale={scale}");
                assert_close(&m, &m2, 1e-6, 1e-6 * scale, &format!("{what} mean"));
                assert_close(&rs, &rs2, 1e-4, 0.0, &format!("{what} rstd"));
                // With |mean| ~ 1e4 the f32 mean itself is only good to half an ulp of 1e4
                // (4.9e-4), which (x − mean)·rstd·w carries into the output: bounded by the
                // case's largest rstd and |w| (a row of 3 can have a small spread).
                let half_ulp = |v: f32| (f32::from_bits(v.abs().to_bits() + 1) - v.abs()) / 2.0;
                let max =
                    |v: &[f32], f: &dyn Fn(f32) -> f32| v.iter().fold(0.0f32, |a, &x| a.max(f(x)));
                let atol = max(&m2, &half_ulp) * max(&rs2, &|r| r) * max(&w, &f32::abs) + 2e-5;
                assert_close(&y, &y2, 0.0, atol, &format!("{what} out"));
                if offset == 0.0 {
                    assert_close(&rs, &rs2, 2e-6, 0.0, &format!("{what} rstd"));
                    assert_close(&y, &y2, 0.0, 2e-5, &format!("{what} out"));
                }
            }
        }
    }

    #[test]
    fn backward_matches_reference_and_accumulates() {
        let mut rng = TestRng::new(32);
        for c in awkward_lengths().into_iter().chain([768]) {
            let Case { n, c, x, w, b } = case(&mut rng, 70, c, 0.3, 2.0);
            let (mut y, mut m, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut y, &mut m, &mut rs, &x, &w, &b, n, c, EPS);
            let dy = rng.vec(n * c, 1.0);
            let (mut dx, mut dw, mut db) = (vec![f32::NAN; n * c], vec![0.5; c], vec![-0.5; c]);
            let (mut dx2, mut dw2, mut db2) = (vec![0.0; n * c], vec![0.5; c], vec![-0.5; c]);
            layernorm_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &m, &rs, n, c);
            layernorm_backward_ref(&mut dx2, &mut dw2, &mut db2, &dy, &x, &w, &m, &rs, n, c);
            let what = format!("layernorm_backward c={c}");
            assert_close(&dx, &dx2, 1e-4, 1e-5, &format!("{what} dinp"));
            assert_close(&dw, &dw2, 1e-4, 1e-4, &format!("{what} dweight"));
            assert_close(&db, &db2, 1e-4, 1e-4, &format!("{what} dbias"));
        }
    }

    /// L = Σ dout · layernorm(x; w, b) in f64, the function the gradient check differentiates.
    fn loss64(x: &[f64], w: &[f64], b: &[f64], dy: &[f32], n: usize, c: usize) -> f64 {
        let mut total = 0.0;
        for r in 0..n {
            let row = &x[r * c..][..c];
            let m = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / c as f64;
            let rs = 1.0 / (var + EPS as f64).sqrt();
            let y: Vec<f64> = (0..c).map(|i| (row[i] - m) * rs * w[i] + b[i]).collect();
            total += dot64(&y, &dy[r * c..][..c]);
        }
        total
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng::new(33);
        for c in [1, 2, crate::simd::LANES + 1, 37] {
            let Case { n, c, x, w, b } = case(&mut rng, 3, c, 0.5, 1.0);
            let dy = rng.vec(n * c, 1.0);
            let (mut y, mut m, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            layernorm_forward(&mut y, &mut m, &mut rs, &x, &w, &b, n, c, EPS);
            let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
            layernorm_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &m, &rs, n, c);
            let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let (x64, w64, b64) = (f64s(&x), f64s(&w), f64s(&b));
            let what = format!("layernorm c={c}");
            let nx = numeric_grad(&x, |x| loss64(x, &w64, &b64, &dy, n, c));
            let nw = numeric_grad(&w, |w| loss64(&x64, w, &b64, &dy, n, c));
            let nb = numeric_grad(&b, |b| loss64(&x64, &w64, b, &dy, n, c));
            // c = 1 normalizes a single element to 0: its dinp is 0 up to eps effects.
            assert_close(&dx, &nx, 2e-3, 2e-4, &format!("{what} dinp"));
            assert_close(&dw, &nw, 1e-4, 1e-5, &format!("{what} dweight"));
            assert_close(&db, &nb, 1e-4, 1e-5, &format!("{what} dbias"));
        }
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_the_thread_count() {
        let mut rng = TestRng::new(34);
        let Case { n, c, x, w, b } = case(&mut rng, 500, 257, 0.0, 1.0);
        let dy = rng.vec(n * c, 1.0);
        let (mut y, mut m, mut rs) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        layernorm_forward(&mut y, &mut m, &mut rs, &x, &w, &b, n, c, EPS);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
            pool.install(|| {
                layernorm_backward(&mut dx, &mut dw, &mut db, &dy, &x, &w, &m, &rs, n, c)
            });
            (dx, dw, db)
        };
        assert_eq!(run(1), run(4));
    }
}
