//! GELU with GPT-2's tanh approximation, forward and backward, beside its f64 reference.
//!
//! `gelu(x) = ½·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)` — PyTorch's
//! `gelu(approximate="tanh")`. Since ½(1 + tanh u) = σ(2u), both directions are computed from
//! one `e = e^(−2u)`: `gelu = x / (1 + e)` and, with `s = σ(2u) = 1/(1 + e)`,
//! `gelu'(x) = s + x·s·(1 − s)·2·du/dx`, where `1 − s = e·s` has no cancellation. That is one
//! `exp` and one division per element instead of a `tanh` (two branches) plus a product.
//!
//! Elementwise and memory-bound at model sizes: parallel in fixed chunks, each element's result
//! independent of the split. Leaves out: the exact erf GELU (GPT-2 does not use it).

use crate::lanes::{self, par_map1, par_map2};
use crate::math::exp;
use crate::simd::F32s;

/// √(2/π).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_CUBIC: f32 = 0.044_715;

/// `out[i] = ½·inp[i]·(1 + tanh(√(2/π)·(inp[i] + 0.044715·inp[i]³)))`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    let _launch = crate::launch::start(1);
    lanes::check_len(
        "gelu_forward",
        "out",
        out.len(),
        inp.len(),
        format_args!("(same as inp)"),
    );
    par_map1(out, inp, |x| x / (F32s::ONE + exp_neg_2u(x)));
}

/// `dinp[i] = gelu'(inp[i]) · dout[i]` (overwritten).
pub fn gelu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    let _launch = crate::launch::start(1);
    lanes::check_len(
        "gelu_backward",
        "dinp",
        dinp.len(),
        inp.len(),
        format_args!("(same as inp)"),
    );
    lanes::check_len(
        "gelu_backward",
        "dout",
        dout.len(),
        inp.len(),
        format_args!("(same as inp)"),
    );
    par_map2(dinp, inp, dout, |x, dy| {
        // e is capped at f32::MAX so that e·s stays finite (→ 1) when e^(−2u) overflows.
        let e = F32s::splat(f32::MAX).fast_min(exp_neg_2u(x));
        let s = F32s::ONE / (F32s::ONE + e);
        let x2 = x * x;
        // 2·du/dx = 2√(2/π)·(1 + 3·0.044715·x²)
        let du2 = F32s::splat(2.0 * SQRT_2_OVER_PI)
            * F32s::splat(3.0 * GELU_CUBIC).mul_add(x2, F32s::ONE);
        let grad = (x * (e * s) * s).mul_add(du2, s);
        grad * dy
    });
}

/// e^(−2u), u = √(2/π)·(x + 0.044715·x³).
#[inline(always)]
fn exp_neg_2u(x: F32s) -> F32s {
    let inner = F32s::splat(GELU_CUBIC).mul_add(x * x, F32s::ONE) * x;
    exp(inner * F32s::splat(-2.0 * SQRT_2_OVER_PI))
}

/// Scalar reference for [`gelu_forward`] (f64, the tanh form as PyTorch writes it).
pub fn gelu_forward_ref(out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len(), "gelu_forward_ref: lengths");
    for (o, &x) in out.iter_mut().zip(inp) {
        let x = x as f64;
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        *o = (0.5 * x * (1.0 + u.tanh())) as f32;
    }
}

/// Scalar reference for [`gelu_backward`] (f64, differentiating the tanh form).
pub fn gelu_backward_ref(dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    assert!(
        dinp.len() == inp.len() && dout.len() == inp.len(),
        "gelu_backward_ref: lengths"
    );
    let k = (2.0 / std::f64::consts::PI).sqrt();
    for ((d, &x), &dy) in dinp.iter_mut().zip(inp).zip(dout) {
        let x = x as f64;
        let t = (k * (x + 0.044715 * x * x * x)).tanh();
        let grad = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
        *d = (grad * dy as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::numeric_grad;
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    #[test]
    fn forward_and_backward_match_references() {
        let mut rng = TestRng::new(41);
        for n in awkward_lengths().into_iter().chain([50257]) {
            for scale in [1.0, 6.0, 100.0, 1e4] {
                let x = rng.vec(n, scale);
                let dy = rng.vec(n, 1.0);
                let (mut y, mut y2) = (vec![f32::NAN; n], vec![0.0; n]);
                gelu_forward(&mut y, &x);
                gelu_forward_ref(&mut y2, &x);
                let what = format!("gelu n={n} scale={scale}");
                // atol: for x < −9 the reference's 1 + tanh(u) cancels to 0 in f64 while
                // x/(1 + e^(−2u)) keeps the tiny true value (~1e-21).
                assert_close(&y, &y2, 4e-6, 1e-12, &what);
                let (mut d, mut d2) = (vec![f32::NAN; n], vec![0.0; n]);
                gelu_backward(&mut d, &dy, &x);
                gelu_backward_ref(&mut d2, &dy, &x);
                assert_close(&d, &d2, 2e-5, 1e-7, &format!("{what} backward"));
            }
        }
    }

    #[test]
    fn special_values() {
        let x = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -20.0,
            20.0,
        ];
        let mut y = [1.0; 7];
        gelu_forward(&mut y, &x);
        assert_eq!((y[0], y[1], y[2]), (0.0, 0.0, f32::INFINITY));
        assert!(y[3].is_nan(), "gelu(-inf) = -inf·0, NaN as in PyTorch");
        assert!(y[4].is_nan());
        assert_eq!((y[5], y[6]), (0.0, 20.0));
        // Far tails: e^(−2u) overflows (x = −20) or vanishes (x = 20) without NaN.
        let mut d = [1.0; 3];
        gelu_backward(&mut d, &[1.0; 3], &[0.0, -20.0, 20.0]);
        assert_eq!((d[0], d[2]), (0.5, 1.0));
        assert!(d[1].abs() < 1e-30, "gelu'(-20) = {}", d[1]);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let x = TestRng::new(42).vec(67, 4.0);
        let dy = TestRng::new(43).vec(67, 1.0);
        let mut d = vec![0.0; 67];
        gelu_backward(&mut d, &dy, &x);
        let loss = |x: &[f64]| -> f64 {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            x.iter()
                .zip(&dy)
                .map(|(&x, &dy)| {
                    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh()) * dy as f64
                })
                .sum()
        };
        assert_close(
            &d,
            &numeric_grad(&x, loss),
            1e-4,
            1e-6,
            "gelu_backward vs finite differences",
        );
    }
}
