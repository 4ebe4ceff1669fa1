//! Attention pooling, the lecture's first form of attention (Bahdanau-style scoring against a
//! learned vector): a weighted average of n vectors whose weights are a softmax of their
//! scores. Forward and backward, batched, beside an f64 reference.
//!
//! For each of B sets of vectors X (n, d) and one learned w (d,):
//!
//! ```text
//! s_i = X_i · w      a = softmax(s)      out = Σ_i a_i X_i
//! ```
//!
//! Backward, from dout (d,): with `g_i = dout · X_i` and `ḡ = Σ_i a_i g_i`,
//! `ds_i = a_i (g_i − ḡ)`, `dX_i = a_i dout + ds_i w`, `dw = Σ_i ds_i X_i`.
//!
//! Sets run in parallel; dw sums over all sets in fixed groups added in group order, so it is
//! the same on any number of threads. Leaves out: masking (pad sets to the same n with -inf
//! scores by other means), multiple heads, and query-dependent scoring (that is self-attention,
//! in `attention`).

use crate::lanes::{self, add_partials, rows_per_task};
use crate::simd::F32s;
use crate::softmax::softmax_row;
use rayon::prelude::*;

/// The shapes of an attention pooling: B sets of n vectors, each d wide (its own struct, not
/// [`AttnDims`](crate::AttnDims): one learned query, no heads, and empty sets or vectors are
/// allowed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDims {
    /// Number of sets B.
    pub b: usize,
    /// Vectors per set n.
    pub n: usize,
    /// Width d of each vector (and of `w`).
    pub d: usize,
}

#[track_caller]
fn check(kernel: &str, x: usize, w: usize, weights: usize, out: usize, dims: PoolDims) {
    let PoolDims { b, n, d } = dims;
    lanes::check_len(
        kernel,
        "x",
        x,
        b * n * d,
        format_args!("(B, n, d) = ({b}, {n}, {d})"),
    );
    lanes::check_len(kernel, "w", w, d, format_args!("(d,) = ({d},)"));
    lanes::check_len(
        kernel,
        "weights",
        weights,
        b * n,
        format_args!("(B, n) = ({b}, {n})"),
    );
    lanes::check_len(
        kernel,
        "out/dout",
        out,
        b * d,
        format_args!("(B, d) = ({b}, {d})"),
    );
}

/// `out[b] = Σ_i weights[b, i] · x[b, i]` with `weights[b] = softmax_i(x[b, i] · w)` (saved
/// for backward). x (B, n, d), w (d,), out (B, d), weights (B, n). An empty set (n = 0) pools
/// to zeros.
pub fn attention_pool_forward(
    out: &mut [f32],
    weights: &mut [f32],
    x: &[f32],
    w: &[f32],
    dims: PoolDims,
) {
    let PoolDims { n, d, .. } = dims;
    let _launch = crate::launch::start(1);
    check(
        "attention_pool_forward",
        x.len(),
        w.len(),
        weights.len(),
        out.len(),
        dims,
    );
    if n == 0 || d == 0 {
        out.fill(0.0);
        weights.fill(1.0 / n as f32); // scores of empty vectors are all 0: uniform
        return;
    }
    let rpt = rows_per_task(n * d);
    crate::launch::ways(out.len().div_ceil(rpt * d));
    out.par_chunks_mut(rpt * d)
        .zip(weights.par_chunks_mut(rpt * n))
        .enumerate()
        .for_each(|(task, (out, weights))| {
            let _task = crate::launch::task(0);
            let mut scores = vec![0.0f32; n];
            for (j, o) in out.chunks_exact_mut(d).enumerate() {
                let set = &x[(task * rpt + j) * n * d..][..n * d];
                for (s, xi) in scores.iter_mut().zip(set.chunks_exact(d)) {
                    *s = lanes::dot(xi, w);
                }
                let a = &mut weights[j * n..][..n];
                softmax_row(a, &scores, 1.0);
                o.fill(0.0);
                for (&ai, xi) in a.iter().zip(set.chunks_exact(d)) {
                    let av = F32s::splat(ai);
                    lanes::map2_inplace(o, xi, |o, x| x.mul_add(av, o));
                }
            }
        });
}

/// Gradient of [`attention_pool_forward`] from the saved `weights`: overwrites `dx` (B, n, d)
/// and accumulates `dw` (d,) (+=). See the module doc for the formulas.
pub fn attention_pool_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    weights: &[f32],
    dims: PoolDims,
) {
    let PoolDims { b, n, d } = dims;
    let _launch = crate::launch::start(1);
    let k = "attention_pool_backward";
    check(k, x.len(), w.len(), weights.len(), dout.len(), dims);
    lanes::check_len(
        k,
        "dx",
        dx.len(),
        b * n * d,
        format_args!("(B, n, d) = ({b}, {n}, {d})"),
    );
    lanes::check_len(k, "dw", dw.len(), d, format_args!("(d,) = ({d},)"));
    if d == 0 || n == 0 {
        return;
    }
    let rpt = rows_per_task(n * d);
    let mut partials = vec![0.0f32; b.div_ceil(rpt) * d];
    crate::launch::ways(b.div_ceil(rpt));
    dx.par_chunks_mut(rpt * n * d)
        .zip(partials.par_chunks_mut(d))
        .enumerate()
        .for_each(|(task, (dx, dw_part))| {
            let _task = crate::launch::task(0);
            let mut ds = vec![0.0f32; n];
            for (j, dxs) in dx.chunks_exact_mut(n * d).enumerate() {
                let set_idx = task * rpt + j;
                let set = &x[set_idx * n * d..][..n * d];
                let a = &weights[set_idx * n..][..n];
                let dy = &dout[set_idx * d..][..d];
                // g_i = dout · X_i, ḡ = Σ a_i g_i, ds_i = a_i (g_i − ḡ)
                for (g, xi) in ds.iter_mut().zip(set.chunks_exact(d)) {
                    *g = lanes::dot(dy, xi);
                }
                let gbar: f32 = a.iter().zip(&ds).map(|(a, g)| a * g).sum();
                for (g, &ai) in ds.iter_mut().zip(a) {
                    *g = ai * (*g - gbar);
                }
                for ((dxi, xi), (&ai, &dsi)) in dxs
                    .chunks_exact_mut(d)
                    .zip(set.chunks_exact(d))
                    .zip(a.iter().zip(&ds))
                {
                    let (av, sv) = (F32s::splat(ai), F32s::splat(dsi));
                    // dX_i = a_i dout + ds_i w
                    lanes::map2(dxi, dy, w, |dy, w| w.mul_add(sv, dy * av));
                    // dw += ds_i X_i
                    lanes::map2_inplace(dw_part, xi, |acc, x| x.mul_add(sv, acc));
                }
            }
        });
    add_partials(&mut [dw], &partials);
}

/// Scalar reference for [`attention_pool_forward`] (f64 inside).
pub fn attention_pool_forward_ref(
    out: &mut [f32],
    weights: &mut [f32],
    x: &[f32],
    w: &[f32],
    dims: PoolDims,
) {
    let PoolDims { b, n, d } = dims;
    for bi in 0..b {
        let set = &x[bi * n * d..][..n * d];
        let s: Vec<f64> = set
            .chunks_exact(d.max(1))
            .take(n)
            .map(|xi| xi.iter().zip(w).map(|(&x, &w)| x as f64 * w as f64).sum())
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
        for i in 0..n {
            weights[bi * n + i] = ((s[i] - m).exp() / z) as f32;
        }
        for j in 0..d {
            let v: f64 = (0..n)
                .map(|i| (s[i] - m).exp() / z * set[i * d + j] as f64)
                .sum();
            out[bi * d + j] = v as f32;
        }
    }
}

/// Scalar reference for [`attention_pool_backward`] (f64 inside).
pub fn attention_pool_backward_ref(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    weights: &[f32],
    dims: PoolDims,
) {
    let PoolDims { b, n, d } = dims;
    let mut dw64 = vec![0.0f64; d];
    for bi in 0..b {
        let set = &x[bi * n * d..][..n * d];
        let dy = &dout[bi * d..][..d];
        let a: Vec<f64> = weights[bi * n..][..n].iter().map(|&a| a as f64).collect();
        let g: Vec<f64> = (0..n)
            .map(|i| (0..d).map(|j| dy[j] as f64 * set[i * d + j] as f64).sum())
            .collect();
        let gbar: f64 = a.iter().zip(&g).map(|(a, g)| a * g).sum();
        for i in 0..n {
            let ds = a[i] * (g[i] - gbar);
            for j in 0..d {
                dx[(bi * n + i) * d + j] = (a[i] * dy[j] as f64 + ds * w[j] as f64) as f32;
                dw64[j] += ds * set[i * d + j] as f64;
            }
        }
    }
    for (dw, v) in dw.iter_mut().zip(dw64) {
        *dw += v as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::{dot64, numeric_grad};
    use crate::testutil::{TestRng, assert_close, awkward_lengths, sum_tolerance_scale};

    #[test]
    fn forward_and_backward_match_references() {
        let mut rng = TestRng::new(91);
        for d in awkward_lengths().into_iter().filter(|&d| d > 0) {
            for n in [1, 7, 257] {
                let b = 3;
                let (x, w) = (rng.vec(b * n * d, 1.0), rng.vec(d, 1.0));
                let (mut y, mut a) = (vec![f32::NAN; b * d], vec![f32::NAN; b * n]);
                let (mut y2, mut a2) = (vec![0.0; b * d], vec![0.0; b * n]);
                attention_pool_forward(&mut y, &mut a, &x, &w, PoolDims { b, n, d });
                attention_pool_forward_ref(&mut y2, &mut a2, &x, &w, PoolDims { b, n, d });
                let what = format!("attention_pool d={d} n={n}");
                assert_close(&a, &a2, 1e-5, 1e-9, &format!("{what} weights"));
                assert_close(&y, &y2, 1e-5, 1e-6, &format!("{what} out"));
                let dy = rng.vec(b * d, 1.0);
                let (mut dx, mut dw) = (vec![f32::NAN; b * n * d], vec![0.5; d]);
                let (mut dx2, mut dw2) = (vec![0.0; b * n * d], vec![0.5; d]);
                attention_pool_backward(&mut dx, &mut dw, &dy, &x, &w, &a, PoolDims { b, n, d });
                attention_pool_backward_ref(
                    &mut dx2,
                    &mut dw2,
                    &dy,
                    &x,
                    &w,
                    &a,
                    PoolDims { b, n, d },
                );
                // dx carries the error of the dot products dout·X_i (d terms each).
                let atol = 1e-6 * sum_tolerance_scale();
                assert_close(&dx, &dx2, 1e-4, atol, &format!("{what} dx"));
                assert_close(&dw, &dw2, 1e-4, 1e-5, &format!("{what} dw"));
            }
        }
    }

    /// L = Σ dout · pool(X; w) in f64.
    fn loss64(x: &[f64], w: &[f64], dy: &[f32], b: usize, n: usize, d: usize) -> f64 {
        let mut total = 0.0;
        for bi in 0..b {
            let set = &x[bi * n * d..][..n * d];
            let s: Vec<f64> = set
                .chunks(d)
                .map(|xi| xi.iter().zip(w).map(|(x, w)| x * w).sum())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
            let out: Vec<f64> = (0..d)
                .map(|j| (0..n).map(|i| (s[i] - m).exp() / z * set[i * d + j]).sum())
                .collect();
            total += dot64(&out, &dy[bi * d..][..d]);
        }
        total
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = TestRng::new(92);
        let (b, n, d) = (2, 5, crate::simd::LANES + 1);
        let (x, w) = (rng.vec(b * n * d, 1.0), rng.vec(d, 1.0));
        let dy = rng.vec(b * d, 1.0);
        let (mut y, mut a) = (vec![0.0; b * d], vec![0.0; b * n]);
        attention_pool_forward(&mut y, &mut a, &x, &w, PoolDims { b, n, d });
        let (mut dx, mut dw) = (vec![0.0; b * n * d], vec![0.0; d]);
        attention_pool_backward(&mut dx, &mut dw, &dy, &x, &w, &a, PoolDims { b, n, d });
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
        let (x64, w64) = (f64s(&x), f64s(&w));
        let nx = numeric_grad(&x, |x| loss64(x, &w64, &dy, b, n, d));
        let nw = numeric_grad(&w, |w| loss64(&x64, w, &dy, b, n, d));
        assert_close(&dx, &nx, 1e-4, 1e-6, "dX vs finite differences");
        assert_close(&dw, &nw, 1e-4, 1e-6, "dw vs finite differences");
    }

    #[test]
    fn dw_does_not_depend_on_the_thread_count() {
        let mut rng = TestRng::new(93);
        let (b, n, d) = (200, 30, 64);
        let (x, w, dy) = (
            rng.vec(b * n * d, 1.0),
            rng.vec(d, 1.0),
            rng.vec(b * d, 1.0),
        );
        let (mut y, mut a) = (vec![0.0; b * d], vec![0.0; b * n]);
        attention_pool_forward(&mut y, &mut a, &x, &w, PoolDims { b, n, d });
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut dx, mut dw) = (vec![0.0; b * n * d], vec![0.0; d]);
            pool.install(|| {
                attention_pool_backward(&mut dx, &mut dw, &dy, &x, &w, &a, PoolDims { b, n, d })
            });
            (dx, dw)
        };
        assert_eq!(run(1), run(3));
    }
}
