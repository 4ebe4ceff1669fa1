//! Vectorized transcendental functions on [`F32s`] lanes, each with its scalar reference:
//! [`exp`], [`sigmoid`] and [`tanh`] — what softmax, cross-entropy, GELU and the LSTM cell need.
//!
//! `exp` uses Cody–Waite range reduction (x = n·ln2 + r, |r| ≤ ln2/2, ln2 split in a high part
//! exact in f32 and a low correction), a degree-6 polynomial for e^r, and scales by 2^n with one
//! rounding even when the result is subnormal: AVX-512's `vscalefps` does that in one
//! instruction; narrower builds scale in two normal halves. `sigmoid` and `tanh` are built on
//! `exp` with the forms that avoid cancellation (e^-|x| for sigmoid, a polynomial near 0 for
//! tanh).
//!
//! Accuracy, measured against f64 over all 2^32 floats (the ignored test
//! `exhaustive_ulp_report` prints these; the regular tests sweep every 97th float and hold the
//! same bounds): `exp` ≤ 1.01 ulp (at x = −5.878), `tanh` ≤ 1.33 ulp (at x = 0.6283, just past
//! the switch to the exp form), `sigmoid` ≤ 1.01 ulp (at x = −59.92; it carries e^-|x| in two
//! parts and corrects its quotient, because where e^x lies just above a power of two and σ(x)
//! just below one, e's rounding alone would count double: 2.40 ulp at x = −4.157 without).
//! The sweeps hold these bounds on every build CI tests, with and without FMA (without it,
//! sigmoid's exact residual takes Dekker's product; see `exact_residual`).
//! The IEEE special values hold: e^-inf = 0, e^inf = inf,
//! NaN → NaN, overflow → inf, gradual underflow through the subnormals.
//!
//! Leaves out: a vector `ln` (the kernels need one logarithm per row, taken in scalar f64) and
//! `-ffast-math` style shortcuts that break at the ends of the float range.

use crate::simd::F32s;

pub(crate) const LOG2_E: f32 = std::f32::consts::LOG2_E;
#[allow(clippy::excessive_precision)] // exactly representable; the digits are the point
pub(crate) const LN2_HI: f32 = 0.693_359_375; // ln 2 rounded to 9 significant bits: n·LN2_HI is exact
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
/// Below this e^x rounds to 0 (half the smallest subnormal is e^-103.972…).
const EXP_MIN_X: f32 = -104.0;
/// Above this e^x overflows to +inf (ln f32::MAX = 88.7228…); clamping here keeps n small
/// enough that n·LN2_HI stays exact while the final scaling still overflows.
const EXP_MAX_X: f32 = 89.0;

/// `x · 2^n` for integral `n` in [-150, 129], rounded once (also into the subnormal range).
#[inline(always)]
fn ldexp(x: F32s, n: F32s) -> F32s {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // vscalefps: x · 2^floor(n) with IEEE overflow, underflow and NaN handling.
        crate::raw::vector::scalef(x, n)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        use crate::simd::U32s;
        // 2^k for integral k in [-126, 127], built directly in the exponent field:
        // k + (127 + 2^23) puts k + 127 in the low mantissa bits; << 23 moves it up.
        let pow2i = |k: F32s| -> F32s {
            let biased: U32s = bytemuck::cast(k + F32s::splat(127.0 + 8_388_608.0));
            bytemuck::cast(biased << 23)
        };
        // Two normal halves, so 2^n itself never needs to be subnormal or infinite.
        let n1 = (n * F32s::splat(0.5)).floor();
        let y = x * pow2i(n1) * pow2i(n - n1);
        n.is_nan().select(n, y)
    }
}

/// e^x in every lane, ≤ 1.01 ulp over the whole float range; e^-inf = 0, e^inf = inf,
/// e^NaN = NaN, overflow to inf above ln(f32::MAX), gradual underflow to 0.
#[inline(always)]
pub fn exp(x: F32s) -> F32s {
    let (r, n) = exp_reduce(x);
    ldexp(exp_poly(r) + F32s::ONE, n)
}

/// Cody–Waite reduction for e^x: `x = n·ln2 + r`, |r| ≤ ln2/2, after clamping x to where e^x
/// is neither 0 nor inf.
#[inline(always)]
fn exp_reduce(x: F32s) -> (F32s, F32s) {
    // Operand order matters: MAXPS/MINPS return their second operand when one is NaN, so
    // writing the constant first lets a NaN x through the clamp.
    let xc = F32s::splat(EXP_MAX_X).fast_min(F32s::splat(EXP_MIN_X).fast_max(x));
    let n = (xc * F32s::splat(LOG2_E)).round_ties_even();
    let r = n.mul_neg_add(F32s::splat(LN2_HI), xc);
    let r = n.mul_neg_add(F32s::splat(LN2_LO), r);
    (r, n)
}

/// e^r − 1 = r + r²·P(r) for |r| ≤ ln2/2, P the Cephes minimax polynomial.
#[inline(always)]
pub(crate) fn exp_poly(r: F32s) -> F32s {
    let mut p = F32s::splat(1.987_569_1e-4);
    p = p.mul_add(r, F32s::splat(1.398_199_9e-3));
    p = p.mul_add(r, F32s::splat(8.333_452e-3));
    p = p.mul_add(r, F32s::splat(4.166_579_6e-2));
    p = p.mul_add(r, F32s::splat(1.666_666_5e-1));
    p = p.mul_add(r, F32s::splat(0.5));
    p.mul_add(r * r, r)
}

/// Scalar reference for [`exp`].
pub fn exp_ref(x: f32) -> f32 {
    x.exp()
}

/// σ(x) = 1 / (1 + e^-x) in every lane, ≤ 1.01 ulp. From e = e^-|x| (never overflows),
/// 1/(1+e) for x ≥ 0 and e/(1+e) for x < 0, so tiny results keep their precision; e is carried
/// as an unevaluated sum eh + el (el: the rounding of exp's last addition) and the quotient is
/// corrected by one step of its exact residual. Without that, e's own rounding, doubled where
/// e sits at the top of a binade and σ at the bottom of one, reaches 2.4 ulp.
#[inline(always)]
pub fn sigmoid(x: F32s) -> F32s {
    let (r, n) = exp_reduce(-x.abs());
    let t = exp_poly(r);
    let er = t + F32s::ONE;
    // Exact (Fast2Sum: 1 ≥ |t|, and er − 1 is exact by Sterbenz).
    let er_lo = (F32s::ONE - er) + t;
    let (eh, el) = (ldexp(er, n), ldexp(er_lo, n));
    let neg = x.simd_lt(F32s::ZERO);
    let (nh, nl) = (neg.select(eh, F32s::ONE), neg.select(el, F32s::ZERO));
    // d + dl = 1 + eh + el, with dl exact up to el's own rounding (eh ≤ 1).
    let d = F32s::ONE + eh;
    let dl = ((F32s::ONE - d) + eh) + el;
    let inv = F32s::ONE / d;
    let q = nh * inv;
    // (nh + nl) − q·(d + dl), with nh − q·d exact.
    let rem = exact_residual(nh, q, d) + nl - q * dl;
    rem.mul_add(inv, q)
}

/// `a − q·d` exactly, where `q·d` lies within a factor of two of `a` (q a rounded a/d). With
/// FMA that is one instruction; without (an `x86-64-v2` build) Dekker's product splits q·d
/// into its rounded value p and exact error e, and a − p is exact by Sterbenz. Rounding q·d
/// there instead costs sigmoid its correction: 1.50 ulp at x = −1.95.
#[inline(always)]
fn exact_residual(a: F32s, q: F32s, d: F32s) -> F32s {
    #[cfg(target_feature = "fma")]
    {
        q.mul_neg_add(d, a)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        // Veltkamp's split: hi holds the top 12 bits of x, lo the other 12 (both exact).
        let split = |x: F32s| {
            let t = x * F32s::splat(4097.0);
            let hi = t - (t - x);
            (hi, x - hi)
        };
        let p = q * d;
        let ((qh, ql), (dh, dl)) = (split(q), split(d));
        let e = ((qh * dh - p) + qh * dl + ql * dh) + ql * dl;
        (a - p) - e
    }
}

/// Scalar reference for [`sigmoid`] (f64 inside).
pub fn sigmoid_ref(x: f32) -> f32 {
    let x = x as f64;
    let s = if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    };
    s as f32
}

/// tanh(x) in every lane, ≤ 1.33 ulp. |x| < 0.625: x + x³·P(x²) (Cephes' minimax polynomial);
/// otherwise sign(x)·(1 − 2/(e^{2|x|} + 1)), which has no cancellation there.
#[inline(always)]
pub fn tanh(x: F32s) -> F32s {
    let ax = x.abs();
    let z = x * x;
    let mut p = F32s::splat(-5.704_988_7e-3);
    p = p.mul_add(z, F32s::splat(2.063_909e-2));
    p = p.mul_add(z, F32s::splat(-5.373_971_6e-2));
    p = p.mul_add(z, F32s::splat(1.333_144_2e-1));
    p = p.mul_add(z, F32s::splat(-3.333_328e-1));
    // Both branches on |x|, then tanh's odd symmetry (which also keeps tanh(-0) = -0).
    let small = (p * z).mul_add(ax, ax);
    // e^{2|x|} overflows to inf for |x| > 44, where 2/inf = 0 gives exactly 1.
    let big = F32s::ONE - F32s::splat(2.0) / (exp(ax + ax) + F32s::ONE);
    ax.simd_lt(F32s::splat(0.625))
        .select(small, big)
        .copysign(x)
}

/// Scalar reference for [`tanh`].
pub fn tanh_ref(x: f32) -> f32 {
    x.tanh()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::LANES;

    fn lanes(f: fn(F32s) -> F32s, x: f32) -> f32 {
        f(F32s::splat(x)).to_array()[LANES - 1]
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(lanes(exp, 0.0), 1.0);
        assert_eq!(lanes(exp, -0.0), 1.0);
        assert_eq!(lanes(exp, f32::NEG_INFINITY), 0.0);
        assert_eq!(lanes(exp, -1000.0), 0.0);
        assert_eq!(lanes(exp, f32::INFINITY), f32::INFINITY);
        assert_eq!(lanes(exp, 89.0), f32::INFINITY);
        assert_eq!(lanes(exp, 1e30), f32::INFINITY);
        assert!(lanes(exp, f32::NAN).is_nan());
        assert!(lanes(exp, 88.72).is_finite());
        let sub = lanes(exp, -100.0);
        assert!(
            sub > 0.0 && sub < f32::MIN_POSITIVE,
            "e^-100 = {sub} should be subnormal"
        );
        assert_eq!(lanes(exp, -103.9), f32::from_bits(1), "smallest subnormal");
    }

    #[test]
    fn sigmoid_and_tanh_special_values() {
        assert_eq!(lanes(sigmoid, 0.0), 0.5);
        assert_eq!(lanes(sigmoid, f32::INFINITY), 1.0);
        assert_eq!(lanes(sigmoid, f32::NEG_INFINITY), 0.0);
        assert_eq!(lanes(sigmoid, 200.0), 1.0);
        assert!(
            lanes(sigmoid, -90.0) > 0.0,
            "σ(-90) is a positive subnormal"
        );
        assert!(lanes(sigmoid, f32::NAN).is_nan());
        assert_eq!(lanes(tanh, 0.0), 0.0);
        assert!(lanes(tanh, -0.0).is_sign_negative());
        assert_eq!(lanes(tanh, f32::INFINITY), 1.0);
        assert_eq!(lanes(tanh, f32::NEG_INFINITY), -1.0);
        assert_eq!(lanes(tanh, 1e-30), 1e-30);
        assert_eq!(lanes(tanh, -50.0), -1.0);
        assert!(lanes(tanh, f32::NAN).is_nan());
    }

    /// Error of `got` against the exact `want` in units of the f32 spacing at `want` (a
    /// correctly rounded result is within 0.5). Infinities must match.
    fn ulp_error(got: f32, want: f64) -> f64 {
        let w = want as f32;
        if w.is_infinite() || got.is_infinite() {
            return if got == w { 0.0 } else { f64::INFINITY };
        }
        let e = ((w.abs().to_bits() >> 23) as i32).max(1); // subnormals share exponent 1
        let ulp = 2f64.powi(e - 127 - 23);
        (got as f64 - want).abs() / ulp
    }

    /// Largest ulp error of `f` against `reference` over the floats in [lo, hi] whose bit
    /// patterns are multiples of `stride` apart (both signs), and the input where it occurs.
    fn sweep(
        f: fn(F32s) -> F32s,
        reference: fn(f64) -> f64,
        lo: f32,
        hi: f32,
        stride: u32,
    ) -> (f64, f32) {
        let mut worst = (0.0f64, 0.0f32);
        let mut batch = [0.0f32; LANES];
        let mut fill = 0;
        let check = |batch: &[f32; LANES], n: usize, worst: &mut (f64, f32)| {
            let got = f(F32s::from(*batch)).to_array();
            for (&x, &g) in batch.iter().zip(&got).take(n) {
                let e = ulp_error(g, reference(x as f64));
                if e > worst.0 || e.is_nan() {
                    *worst = (e, x);
                }
            }
        };
        for sign in [0u32, 0x8000_0000] {
            let mut bits = 0u32;
            while bits < 0x7f80_0000 {
                let x = f32::from_bits(bits | sign);
                if (lo..=hi).contains(&x) {
                    batch[fill] = x;
                    fill += 1;
                    if fill == LANES {
                        check(&batch, LANES, &mut worst);
                        fill = 0;
                    }
                }
                bits += stride;
            }
        }
        check(&batch, fill, &mut worst);
        worst
    }

    fn sigmoid_f64(x: f64) -> f64 {
        if x >= 0.0 {
            1.0 / (1.0 + (-x).exp())
        } else {
            x.exp() / (1.0 + x.exp())
        }
    }

    /// Every 97th float (every 9973rd in debug builds, which run `wide` unoptimized).
    const STRIDE: u32 = if cfg!(debug_assertions) { 9973 } else { 97 };

    // The bounds are the exhaustive maxima from the header; the goal is ≤ 2 ulp.

    #[test]
    fn exp_is_within_1_01_ulp_on_a_dense_sweep() {
        let (e, x) = sweep(exp, f64::exp, -105.0, 90.0, STRIDE);
        assert!(e <= 1.01, "exp: {e} ulp at x = {x:e}");
    }

    #[test]
    fn sigmoid_is_within_1_01_ulp_on_a_dense_sweep() {
        let (e, x) = sweep(sigmoid, sigmoid_f64, f32::MIN, f32::MAX, STRIDE);
        assert!(e <= 1.01, "sigmoid: {e} ulp at x = {x:e}");
    }

    #[test]
    fn tanh_is_within_1_33_ulp_on_a_dense_sweep() {
        let (e, x) = sweep(tanh, f64::tanh, f32::MIN, f32::MAX, STRIDE);
        assert!(e <= 1.33, "tanh: {e} ulp at x = {x:e}");
    }

    /// Every float: `cargo test --release -p kernels exhaustive_ulp_report -- --ignored --nocapture`.
    #[test]
    #[ignore = "sweeps all 2^32 floats; run by hand to refresh the figures in the header"]
    fn exhaustive_ulp_report() {
        for (name, f, r) in [
            ("exp", exp as fn(F32s) -> F32s, f64::exp as fn(f64) -> f64),
            ("sigmoid", sigmoid, sigmoid_f64),
            ("tanh", tanh, f64::tanh),
        ] {
            let (e, x) = sweep(f, r, f32::MIN, f32::MAX, 1);
            println!("{name}: max {e:.3} ulp at x = {x:e}");
        }
    }
}
