//! Optimizers as kernels over flat parameter slices: AdamW and SGD with momentum with
//! PyTorch's semantics, the global gradient L2 norm over many slices, and clip-by-norm.
//!
//! Each update is one pass over (param, grad, state) in lanes, in parallel over chunks sized
//! for the planned pool (`lanes::map_chunk`: no element depends on the cut);
//! the arithmetic follows `torch.optim`'s single-tensor code step by step (listed in each
//! doc), so a PyTorch run and a Lanes run agree to rounding. The norm sums squares per fixed
//! chunk and adds the chunk sums in f64 in order, so it is bitwise the same on any number of
//! threads. Leaves out: parameter groups and schedules (the caller passes each slice with its
//! own settings and the current learning rate), AMSGrad, and fused multi-tensor launches.

use crate::lanes::{self, Block, ELEMS_PER_TASK, for_blocks};
use crate::simd::F32s;
use rayon::prelude::*;

/// AdamW hyper-parameters (`torch.optim.AdamW`); [`Default`] gives PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled: parameters shrink by `lr · weight_decay · p` each step.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// SGD hyper-parameters (`torch.optim.SGD`); [`Default`] gives momentum 0.9 and no decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    /// L2 penalty added to the gradient (coupled, unlike AdamW's).
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            lr: 1e-2,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// One AdamW step at step number `t` (1 for the first step), in place, as PyTorch does it:
///
/// ```text
/// p ← p · (1 − lr·wd)
/// m ← m + (1 − β1)·(g − m)                    (lerp)
/// v ← β2·v + (1 − β2)·g²
/// p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
/// ```
pub fn adamw_step(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    cfg: &AdamW,
    t: u64,
) {
    let _launch = crate::launch::start(1);
    let n = params.len();
    for (name, len) in [("grads", grads.len()), ("m", m.len()), ("v", v.len())] {
        lanes::check_len("adamw_step", name, len, n, format_args!("(same as params)"));
    }
    assert!(
        t >= 1,
        "adamw_step: step t = {t}, must count from 1 (bias correction divides by 1 − β^t)"
    );
    // Scalars in f64 as Python computes them, then rounded once.
    let bc1 = 1.0 - (cfg.beta1 as f64).powf(t as f64);
    let bc2 = 1.0 - (cfg.beta2 as f64).powf(t as f64);
    let decay = F32s::splat((1.0 - cfg.lr as f64 * cfg.weight_decay as f64) as f32);
    let step_size = F32s::splat((cfg.lr as f64 / bc1) as f32);
    let inv_bc2_sqrt = F32s::splat((1.0 / bc2.sqrt()) as f32);
    let (b1c, b2, b2c) = (
        F32s::splat(1.0 - cfg.beta1),
        F32s::splat(cfg.beta2),
        F32s::splat(1.0 - cfg.beta2),
    );
    let eps = F32s::splat(cfg.eps);
    // p, m, v read and written, g read.
    crate::launch::bytes(4 * 7 * n);
    let chunk = lanes::map_chunk(params.len());
    crate::launch::ways(params.len().div_ceil(chunk));
    params
        .par_chunks_mut(chunk)
        .zip(m.par_chunks_mut(chunk))
        .zip(v.par_chunks_mut(chunk))
        .zip(grads.par_chunks(chunk))
        .for_each(|(((p, m), v), g)| {
            let _task = crate::launch::task(0);
            for_blocks(p.len(), |k: Block| {
                let gv = k.load(g);
                let mv = (gv - k.load(m)).mul_add(b1c, k.load(m));
                let vv = (b2c * gv).mul_add(gv, b2 * k.load(v));
                let denom = vv.sqrt().mul_add(inv_bc2_sqrt, eps);
                let pv = k.load(p) * decay;
                k.store(p, (mv / denom).mul_neg_add(step_size, pv));
                k.store(m, mv);
                k.store(v, vv);
            });
        });
}

/// One SGD step at step number `t` (1 for the first), in place, as PyTorch does it:
///
/// ```text
/// d ← g + wd·p
/// b ← d                          at t = 1 (the buffer starts as a copy)
/// b ← μ·b + (1 − dampening)·d    after
/// d ← d + μ·b  (Nesterov)   or   d ← b
/// p ← p − lr·d
/// ```
///
/// With momentum 0 the buffer is not used and may be empty.
pub fn sgd_step(params: &mut [f32], momentum_buf: &mut [f32], grads: &[f32], cfg: &Sgd, t: u64) {
    let _launch = crate::launch::start(1);
    let n = params.len();
    lanes::check_len(
        "sgd_step",
        "grads",
        grads.len(),
        n,
        format_args!("(same as params)"),
    );
    assert!(t >= 1, "sgd_step: step t = {t}, must count from 1");
    let (lr, wd, mu) = (
        F32s::splat(cfg.lr),
        F32s::splat(cfg.weight_decay),
        F32s::splat(cfg.momentum),
    );
    let damp = F32s::splat(1.0 - cfg.dampening);
    let chunk = lanes::map_chunk(params.len());
    crate::launch::ways(params.len().div_ceil(chunk));
    if cfg.momentum == 0.0 {
        params
            .par_chunks_mut(chunk)
            .zip(grads.par_chunks(chunk))
            .for_each(|(p, g)| {
                let _task = crate::launch::task(0);
                lanes::map2_inplace(p, g, |p, g| lr.mul_neg_add(wd.mul_add(p, g), p));
            });
        return;
    }
    lanes::check_len(
        "sgd_step",
        "momentum_buf",
        momentum_buf.len(),
        n,
        format_args!("(same as params)"),
    );
    let (first, nesterov) = (t == 1, cfg.nesterov);
    params
        .par_chunks_mut(chunk)
        .zip(momentum_buf.par_chunks_mut(chunk))
        .zip(grads.par_chunks(chunk))
        .for_each(|((p, buf), g)| {
            let _task = crate::launch::task(0);
            for_blocks(p.len(), |k: Block| {
                let pv = k.load(p);
                let d = wd.mul_add(pv, k.load(g));
                let b = if first {
                    d
                } else {
                    damp.mul_add(d, mu * k.load(buf))
                };
                let d = if nesterov { mu.mul_add(b, d) } else { b };
                k.store(buf, b);
                k.store(p, lr.mul_neg_add(d, pv));
            });
        });
}

/// `√(Σ_s Σ_i s[i]²)` over all the slices: the global gradient norm. Deterministic: squares
/// are summed in lanes per fixed chunk of each slice, chunk sums added in f64 in order.
pub fn global_norm(slices: &[&[f32]]) -> f32 {
    let _launch = crate::launch::start(1);
    let chunks: Vec<&[f32]> = slices
        .iter()
        .flat_map(|s| s.chunks(ELEMS_PER_TASK))
        .collect();
    crate::launch::bytes(4 * chunks.iter().map(|c| c.len()).sum::<usize>());
    crate::launch::ways(chunks.len());
    let sums: Vec<f64> = chunks
        .par_iter()
        .map(|c| {
            let _task = crate::launch::task(0);
            lanes::fold1(c, 0.0, F32s::ZERO, |a, x| x.mul_add(x, a)).reduce_add() as f64
        })
        .collect();
    sums.iter().sum::<f64>().sqrt() as f32
}

/// Clip-by-norm as `torch.nn.utils.clip_grad_norm_`: with `norm` = [`global_norm`] of all the
/// slices, multiplies every element by `max_norm / (norm + 1e-6)` when that is below 1.
/// Returns the norm before clipping. A non-finite norm leaves the gradients as they are (they
/// already hold the inf or NaN) and is returned for the caller to act on.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let _launch = crate::launch::start(1);
    let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
    let coef = (max_norm as f64 / (norm as f64 + 1e-6)) as f32;
    if coef < 1.0 {
        for g in grads.iter_mut() {
            crate::launch::bytes(8 * g.len());
            let chunk = lanes::map_chunk(g.len());
            crate::launch::ways(g.len().div_ceil(chunk));
            g.par_chunks_mut(chunk).for_each(|c| {
                let _task = crate::launch::task(0);
                lanes::scale_inplace(c, coef)
            });
        }
    }
    norm
}

/// Scalar reference for [`adamw_step`], the formula of its doc in f64.
pub fn adamw_step_ref(
    params: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    grads: &[f32],
    cfg: &AdamW,
    t: u64,
) {
    let (b1, b2) = (cfg.beta1 as f64, cfg.beta2 as f64);
    let (bc1, bc2) = (1.0 - b1.powf(t as f64), 1.0 - b2.powf(t as f64));
    let (lr, wd, eps) = (cfg.lr as f64, cfg.weight_decay as f64, cfg.eps as f64);
    for i in 0..params.len() {
        let g = grads[i] as f64;
        let mut p = params[i] as f64 * (1.0 - lr * wd);
        let mi = m[i] as f64 + (1.0 - b1) * (g - m[i] as f64);
        let vi = b2 * v[i] as f64 + (1.0 - b2) * g * g;
        p -= lr / bc1 * mi / ((vi / bc2).sqrt() + eps);
        (params[i], m[i], v[i]) = (p as f32, mi as f32, vi as f32);
    }
}

/// Scalar reference for [`sgd_step`], the formula of its doc in f64.
pub fn sgd_step_ref(
    params: &mut [f32],
    momentum_buf: &mut [f32],
    grads: &[f32],
    cfg: &Sgd,
    t: u64,
) {
    let (lr, mu, wd) = (cfg.lr as f64, cfg.momentum as f64, cfg.weight_decay as f64);
    for i in 0..params.len() {
        let p = params[i] as f64;
        let mut d = grads[i] as f64 + wd * p;
        if mu != 0.0 {
            let b = if t == 1 {
                d
            } else {
                mu * momentum_buf[i] as f64 + (1.0 - cfg.dampening as f64) * d
            };
            momentum_buf[i] = b as f32;
            d = if cfg.nesterov { d + mu * b } else { b };
        }
        params[i] = (p - lr * d) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    #[test]
    fn adamw_follows_pytorch_formula_over_several_steps() {
        let mut rng = TestRng::new(81);
        let cfg = AdamW {
            lr: 3e-3,
            weight_decay: 0.1,
            ..AdamW::default()
        };
        for n in awkward_lengths().into_iter().chain([100_003]) {
            let p0 = rng.vec(n, 1.0);
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            let (mut p2, mut m2, mut v2) = (p0, vec![0.0; n], vec![0.0; n]);
            for t in 1..=5 {
                // Gradients from 0.01 to 100: the moments mix scales, and a moment that cancels
                // is only as exact as the larger terms it came from (hence atol ∝ scale).
                let gs = 10.0f32.powi(t as i32 - 3);
                let g = rng.vec(n, gs);
                adamw_step(&mut p, &mut m, &mut v, &g, &cfg, t);
                adamw_step_ref(&mut p2, &mut m2, &mut v2, &g, &cfg, t);
                let what = format!("adamw n={n} t={t}");
                assert_close(&m, &m2, 1e-6, 1e-7 * gs, &format!("{what} m"));
                assert_close(&v, &v2, 1e-6, 1e-7 * gs * gs, &format!("{what} v"));
                assert_close(&p, &p2, 1e-6, 1e-7, &format!("{what} p"));
            }
        }
    }

    /// The first step by hand: with m = v = 0, m̂ = g and v̂ = g², so the step is
    /// lr·g/(|g| + eps) ≈ lr·sign(g), after the decay p·(1 − lr·wd).
    #[test]
    fn adamw_first_step_by_hand() {
        let cfg = AdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let (mut p, mut m, mut v) = (vec![1.0, -2.0], vec![0.0; 2], vec![0.0; 2]);
        adamw_step(&mut p, &mut m, &mut v, &[0.5, -4.0], &cfg, 1);
        assert_close(&p, &[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1], 1e-6, 0.0, "p");
        assert_close(&m, &[0.05, -0.4], 1e-6, 0.0, "m = (1 − β1)·g");
        assert_close(&v, &[0.0025, 0.16], 1e-6, 0.0, "v = (1 − β2)·g²");
    }

    #[test]
    fn sgd_follows_pytorch_formula_over_several_steps() {
        let mut rng = TestRng::new(82);
        let cfgs = [
            Sgd::default(),
            Sgd {
                momentum: 0.0,
                weight_decay: 1e-2,
                ..Sgd::default()
            },
            Sgd {
                dampening: 0.3,
                weight_decay: 1e-3,
                ..Sgd::default()
            },
            Sgd {
                nesterov: true,
                ..Sgd::default()
            },
        ];
        for cfg in cfgs {
            for n in awkward_lengths().into_iter().chain([100_003]) {
                let p0 = rng.vec(n, 1.0);
                let (mut p, mut b) = (p0.clone(), vec![f32::NAN; n]);
                let (mut p2, mut b2) = (p0, vec![f32::NAN; n]);
                for t in 1..=4 {
                    let g = rng.vec(n, 1.0);
                    sgd_step(&mut p, &mut b, &g, &cfg, t);
                    sgd_step_ref(&mut p2, &mut b2, &g, &cfg, t);
                    assert_close(&p, &p2, 1e-6, 1e-7, &format!("sgd {cfg:?} n={n} t={t}"));
                }
            }
        }
        // By hand: p = 1, g = 1, μ = 0.9, lr = 0.1: steps of 0.1, then 0.1·1.9.
        let cfg = Sgd {
            lr: 0.1,
            ..Sgd::default()
        };
        let (mut p, mut b) = ([1.0f32], [0.0f32]);
        sgd_step(&mut p, &mut b, &[1.0], &cfg, 1);
        sgd_step(&mut p, &mut b, &[1.0], &cfg, 2);
        assert_close(&p, &[1.0 - 0.1 - 0.19], 1e-6, 0.0, "sgd by hand");
    }

    #[test]
    fn norm_and_clip() {
        let mut rng = TestRng::new(83);
        let (mut a, mut b) = (rng.vec(100_003, 1.0), rng.vec(17, 3.0));
        let want = a
            .iter()
            .chain(&b)
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt();
        let norm = global_norm(&[&a, &b]);
        assert_close(&[norm], &[want as f32], 1e-6, 0.0, "global_norm");
        assert_eq!(global_norm(&[]), 0.0);
        let (a0, b0) = (a.clone(), b.clone());
        let got = clip_grad_norm(&mut [&mut a, &mut b], 1e6);
        assert_eq!(
            (got, &a, &b),
            (norm, &a0, &b0),
            "below the limit: untouched"
        );
        clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_close(
            &[global_norm(&[&a, &b])],
            &[1.0],
            1e-5,
            0.0,
            "clipped to max_norm",
        );
        let coef = 1.0 / (norm as f64 + 1e-6);
        assert_close(
            &b,
            &b0.iter()
                .map(|&x| (x as f64 * coef) as f32)
                .collect::<Vec<_>>(),
            1e-6,
            0.0,
            "scaled",
        );
    }

    #[test]
    fn norm_does_not_depend_on_the_thread_count() {
        let a = TestRng::new(84).vec(300_001, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| global_norm(&[&a, &a[5..]]))
        };
        assert_eq!(run(1).to_bits(), run(3).to_bits());
    }
}
