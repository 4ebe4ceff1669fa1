//! The arithmetic a matrix product runs in: fp32, or bf16 operands with fp32 accumulation.
//!
//! [`Precision`] is an argument of the products that have a bf16 path ([`crate::gemm()`],
//! flash attention, the LSTM recurrence), never a global switch, so a call site says what it
//! computes. Whether bf16 exists is decided when the crate is built, like the lane width
//! (`simd.rs`): the `vdpbf16ps` kernels are compiled in when the build enables the
//! `avx512bf16` target feature (`-C target-cpu=native` on Sapphire Rapids, Zen 4, Zen 5).
//! Elsewhere a bf16 request runs the fp32 kernels; [`Precision::effective`] says which one a
//! call will get, and [`BF16_PATH`] names the path for `runner info`. Leaves out: fp16,
//! int8, AMX tiles.

use std::fmt;
use std::str::FromStr;

/// Whether this build has the bf16 dot-product kernels (`vdpbf16ps`, AVX512_BF16).
pub const HAS_BF16: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx512bf16"));

/// Human-readable name of the bf16 path of this build.
pub const BF16_PATH: &str = if HAS_BF16 {
    "AVX512_BF16 (vdpbf16ps: bf16 operands, fp32 accumulation)"
} else {
    "none: this build lacks AVX512_BF16, bf16 requests run the fp32 kernels"
};

/// The operand precision of a matrix product. Accumulation is fp32 in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp32 operands, fp32 products and sums.
    #[default]
    F32,
    /// Operands rounded to bfloat16 (round to nearest even) as they are packed; products
    /// and sums in fp32 (`vdpbf16ps`). Twice the multiply-adds per instruction of an fp32
    /// FMA, at about 3 significant decimal digits per operand.
    Bf16,
}

impl Precision {
    /// The fastest precision this build offers: `Bf16` where it has the bf16 kernels.
    pub const fn fastest() -> Precision {
        if HAS_BF16 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    /// The precision a request actually runs in on this build: `Bf16` becomes `F32` where
    /// the bf16 kernels are not compiled in.
    pub const fn effective(self) -> Precision {
        match self {
            Precision::Bf16 if !HAS_BF16 => Precision::F32,
            p => p,
        }
    }

    /// `"fp32"` or `"bf16"`, as the command line and `state.json` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision name that is neither `fp32` nor `bf16`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPrecision(pub String);

impl fmt::Display for UnknownPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown precision {:?}: expected fp32 or bf16 (also accepted: f32, float32, bfloat16)",
            self.0
        )
    }
}

impl std::error::Error for UnknownPrecision {}

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Precision, UnknownPrecision> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(UnknownPrecision(s.to_string())),
        }
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: the value `vcvtne2ps2bf16`
/// gives, for finite and infinite inputs (NaN stays NaN). The scalar reference of the packing.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return f32::from_bits((x.to_bits() | 0x0040_0000) & 0xFFFF_0000);
    }
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xFFFF_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        let err = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("\"fp16\"") && err.contains("bf16"), "{err}");
    }

    #[test]
    fn effective_precision_follows_the_build() {
        assert_eq!(Precision::F32.effective(), Precision::F32);
        let want = if HAS_BF16 {
            Precision::Bf16
        } else {
            Precision::F32
        };
        assert_eq!(Precision::Bf16.effective(), want);
        assert_eq!(Precision::fastest(), want);
    }

    #[test]
    fn rounding_is_to_nearest_even_on_the_16_dropped_bits() {
        // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        // Just above halfway rounds up.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round_bf16(-2.5), -2.5);
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        // The largest finite f32 rounds up to infinity, as the hardware does.
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        // Relative error at most half an ulp, 2^-8, for normal numbers.
        for i in 1..2000 {
            let x = i as f32 * 0.37 - 300.0;
            assert!((round_bf16(x) - x).abs() <= x.abs() / 256.0, "{x}");
        }
    }
}
