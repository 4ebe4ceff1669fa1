//! Vectorized transcendental functions on [`F32s`] lanes, each with its scalar reference.
//!
//! `exp` uses Cody–Waite range reduction (x = n·ln2 + r, |r| ≤ ln2/2, ln2 split in a high part
//! exact in f32 and a low correction), a degree-6 polynomial for e^r, and scales by 2^n in two
//! halves so that results in the subnormal range round once. Leaves out: `-ffast-math` style
//! shortcuts that break at the ends of the float range.

use crate::simd::{F32s, U32s};

const LOG2_E: f32 = std::f32::consts::LOG2_E;
#[allow(clippy::excessive_precision)] // exactly representable; the digits are the point
const LN2_HI: f32 = 0.693_359_375; // ln 2 rounded to 9 significant bits: n·LN2_HI is exact
const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 − LN2_HI
/// Below this e^x rounds to 0 (half the smallest subnormal is e^-103.972…).
const EXP_MIN_X: f32 = -104.0;
/// Above this e^x overflows to +inf (ln f32::MAX = 88.7228…); clamping here keeps 2^n finite
/// in the arithmetic while still overflowing in the final product.
const EXP_MAX_X: f32 = 89.0;

/// 2^n for integral `n` in [-126, 127], built directly in the exponent field.
#[inline(always)]
fn pow2i(n: F32s) -> F32s {
    // n + (127 + 2^23) puts n + 127 in the low mantissa bits; shifting by 23 moves it into the
    // exponent field and drops the rest.
    let biased: U32s = bytemuck::cast(n + F32s::splat(127.0 + 8_388_608.0));
    bytemuck::cast(biased << 23)
}

/// e^x in every lane: ≤ 2 ulp over the whole float range; e^-inf = 0, e^inf = inf,
/// e^NaN = NaN, overflow to inf above ln(f32::MAX), gradual underflow to 0.
#[inline(always)]
pub fn exp(x: F32s) -> F32s {
    let xc = x
        .fast_max(F32s::splat(EXP_MIN_X))
        .fast_min(F32s::splat(EXP_MAX_X));
    let n = (xc * F32s::splat(LOG2_E)).round();
    let r = n.mul_neg_add(F32s::splat(LN2_HI), xc);
    let r = n.mul_neg_add(F32s::splat(LN2_LO), r);
    // e^r = 1 + r + r²·P(r), P the Cephes minimax polynomial on |r| ≤ ln2/2.
    let mut p = F32s::splat(1.987_569_1e-4);
    p = p.mul_add(r, F32s::splat(1.398_199_9e-3));
    p = p.mul_add(r, F32s::splat(8.333_452e-3));
    p = p.mul_add(r, F32s::splat(4.166_579_6e-2));
    p = p.mul_add(r, F32s::splat(1.666_666_5e-1));
    p = p.mul_add(r, F32s::splat(0.5));
    let er = p.mul_add(r * r, r) + F32s::ONE;
    // 2^n = 2^n1 · 2^n2 with both halves normal, even for n down to -150.
    let n1 = (n * F32s::splat(0.5)).floor();
    let y = er * pow2i(n1) * pow2i(n - n1);
    x.is_nan().select(x, y)
}

/// Scalar reference for [`exp`].
pub fn exp_ref(x: f32) -> f32 {
    x.exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::LANES;

    fn exp_lanes(x: f32) -> f32 {
        exp(F32s::splat(x)).to_array()[LANES - 1]
    }

    #[test]
    fn exp_special_values() {
        assert_eq!(exp_lanes(0.0), 1.0);
        assert_eq!(exp_lanes(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_lanes(-1000.0), 0.0);
        assert_eq!(exp_lanes(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_lanes(89.0), f32::INFINITY);
        assert!(exp_lanes(f32::NAN).is_nan());
        assert!(exp_lanes(88.7).is_finite());
        let sub = exp_lanes(-100.0);
        assert!(
            sub > 0.0 && sub < f32::MIN_POSITIVE,
            "e^-100 = {sub} should be subnormal"
        );
    }

    #[test]
    fn exp_is_within_2_ulp_on_a_sweep() {
        let mut x = -87.0f32;
        while x < 88.7 {
            let got = exp_lanes(x);
            let want = (x as f64).exp();
            let ulp = ((want as f32).to_bits() as i64 - got.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, want {want} ({ulp} ulp)");
            x += 0.0137;
        }
    }
}
