//! e^x for softmax arguments, which are never positive: x = s − max(s) in the forward and
//! x = s − lse in the backward (≤ 0 up to rounding).
//!
//! [`crate::math::exp`] is correct over the whole float range (overflow, gradual underflow,
//! NaN), which costs about 37 instructions per vector with `wide`'s rounding; here the domain
//! lets most of that go, for about 17: round-to-nearest by the 1.5·2²³ shifter (whose low
//! mantissa bits then hold n + 127, so 2ⁿ is one shift away), one 2ⁿ scale, no overflow path. Same Cody–Waite reduction and Cephes polynomial as `math::exp`, so the same ≤ 2 ulp
//! where the result is normal. The exponential is a third of the forward's non-GEMM work.
//!
//! Leaves out: x > 88 (overflows to garbage, never a softmax argument), results below the
//! smallest normal float (x < −87.33) which flush to 0: such a weight is below 2⁻¹²⁶ of the
//! row's largest and cannot change a float32 sum. −∞ (a masked score) gives exactly 0.

use crate::math::{LN2_HI, LN2_LO, LOG2_E, exp_poly};
use crate::simd::{F32s, U32s};

/// ln of the smallest normal float: below it the result flushes to 0.
const MIN_X: f32 = -87.336_55;
/// 1.5·2²³ + 127: adding it rounds to an integer n and leaves n + 127 in the low mantissa bits.
const SHIFTER: f32 = 12_582_912.0 + 127.0;

/// e^x in every lane, for x ≤ 0 (see the module doc for the domain and accuracy).
#[inline(always)]
pub(super) fn exp_nonpositive(x: F32s) -> F32s {
    // Operand order: x86 max returns its second operand when either is NaN, so NaN propagates.
    let xc = F32s::splat(MIN_X).fast_max(x);
    let t = xc.mul_add(F32s::splat(LOG2_E), F32s::splat(SHIFTER));
    let n = t - F32s::splat(SHIFTER);
    let r = n.mul_neg_add(F32s::splat(LN2_HI), xc);
    let r = n.mul_neg_add(F32s::splat(LN2_LO), r);
    let er = exp_poly(r) + F32s::ONE;
    // n + 127 sits in the low bits of t; shifted into the exponent field it is 2ⁿ.
    let bits: U32s = bytemuck::cast(t);
    let pow2n: F32s = bytemuck::cast(bits << 23);
    x.simd_lt(F32s::splat(MIN_X)).select(F32s::ZERO, er * pow2n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::LANES;

    fn exp1(x: f32) -> f32 {
        exp_nonpositive(F32s::splat(x)).to_array()[LANES - 1]
    }

    #[test]
    fn within_2_ulp_over_the_normal_range() {
        let mut worst = 0u32;
        let mut x = 0.5f32;
        while x > MIN_X {
            let want = (x as f64).exp() as f32;
            let got = exp1(x);
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            assert!(ulp <= 2, "e^{x}: got {got}, want {want} ({ulp} ulp)");
            worst = worst.max(ulp);
            x -= 0.000_731; // not a multiple of ln 2: covers every reduction offset
        }
        assert!(worst <= 2);
    }

    #[test]
    fn masked_and_tiny_arguments_give_zero() {
        assert_eq!(exp1(0.0), 1.0);
        assert_eq!(exp1(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp1(-88.0), 0.0);
        assert_eq!(exp1(-1e30), 0.0);
        assert!(exp1(-87.3) >= f32::MIN_POSITIVE);
        assert!(
            exp1(f32::NAN).is_nan(),
            "a NaN score must not vanish from the softmax"
        );
    }
}
