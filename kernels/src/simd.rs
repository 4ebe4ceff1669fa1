//! The one place that names the SIMD lane type.
//!
//! `wide` picks its implementation at compile time from the enabled target features, so the
//! instruction set is fixed when the crate is built (`.cargo/config.toml` builds for the native
//! CPU). Every kernel uses [`F32s`] and [`LANES`] from here, never a concrete `wide` type, so a
//! build for another CPU changes the width everywhere at once. Leaves out: run-time dispatch
//! (a build runs one path; [`crate::cpu::check`] refuses a CPU that lacks it).

#[cfg(target_feature = "avx512f")]
mod path {
    /// The lane type every kernel computes with.
    pub type F32s = wide::f32x16;
    /// Matching unsigned 32-bit lanes (bit tricks on the float exponent, as in `exp`).
    pub type U32s = wide::u32x16;
    /// Lanes per vector.
    pub const LANES: usize = 16;
    /// Human-readable name of the path this build uses.
    pub const PATH: &str = "AVX-512 (wide::f32x16, 16 lanes)";
}

#[cfg(all(target_feature = "avx2", not(target_feature = "avx512f")))]
mod path {
    pub type F32s = wide::f32x8;
    pub type U32s = wide::u32x8;
    pub const LANES: usize = 8;
    pub const PATH: &str = "AVX2 (wide::f32x8, 8 lanes)";
}

#[cfg(not(any(target_feature = "avx2", target_feature = "avx512f")))]
mod path {
    pub type F32s = wide::f32x4;
    pub type U32s = wide::u32x4;
    pub const LANES: usize = 4;
    pub const PATH: &str = "portable 128-bit (wide::f32x4, 4 lanes)";
}

pub use path::{F32s, LANES, PATH, U32s};

/// Whether this build fuses multiply-add into one instruction (`mul_add` is an FMA).
pub const HAS_FMA: bool = cfg!(target_feature = "fma");

/// Loads `LANES` floats from the start of `s` (unaligned). Panics if `s` is shorter.
#[inline(always)]
pub fn load(s: &[f32]) -> F32s {
    let a: [f32; LANES] = s[..LANES].try_into().unwrap();
    F32s::from(a)
}

/// Stores `v` into the first `LANES` floats of `s` (unaligned). Panics if `s` is shorter.
#[inline(always)]
pub fn store(s: &mut [f32], v: F32s) {
    s[..LANES].copy_from_slice(&v.to_array());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane width the build's target features call for: the widest `wide` type those
    /// features make native. Read from the build (`cfg!`), not from the host, so a build for
    /// `x86-64-v2` or `-v3` on an AVX-512 machine passes, while one whose features include
    /// AVX-512F but whose [`PATH`] selection or `wide`'s type fell back to narrower lanes fails.
    fn lanes_the_build_asks_for() -> usize {
        if cfg!(target_feature = "avx512f") {
            16
        } else if cfg!(target_feature = "avx2") {
            8
        } else {
            4
        }
    }

    #[test]
    fn the_build_uses_the_widest_path_its_features_allow() {
        let want = lanes_the_build_asks_for();
        assert_eq!(
            LANES, want,
            "the build's target features call for {want} lanes but it uses {PATH}"
        );
        // The lane type really is that wide (not, say, a narrower `wide` type renamed).
        assert_eq!(std::mem::size_of::<F32s>(), LANES * 4, "{PATH}");
        assert_eq!(F32s::splat(1.0).to_array().len(), LANES, "{PATH}");
    }

    /// CI builds the kernels for several instruction sets (`.ci/run`) with `RUSTFLAGS`, which
    /// must replace `.cargo/config.toml`'s `target-cpu=native`. Each build states the width it
    /// meant in `KERNELS_EXPECT_LANES` (and `KERNELS_EXPECT_BF16` = 0 or 1): if the flags did
    /// not reach the build, it ran some other path and this fails. Unset: nothing to check.
    #[test]
    fn the_build_is_the_one_ci_asked_for() {
        if let Ok(want) = std::env::var("KERNELS_EXPECT_LANES") {
            let want: usize = want.parse().expect("KERNELS_EXPECT_LANES: a lane count");
            assert_eq!(
                LANES, want,
                "CI asked for {want} lanes; this build runs {PATH}"
            );
        }
        if let Ok(want) = std::env::var("KERNELS_EXPECT_BF16") {
            let want = match want.as_str() {
                "1" => true,
                "0" => false,
                other => panic!("KERNELS_EXPECT_BF16: 0 or 1, not {other:?}"),
            };
            assert_eq!(
                crate::precision::HAS_BF16,
                want,
                "CI asked for bf16 = {want}; this build has {}",
                crate::precision::BF16_PATH
            );
        }
    }

    #[test]
    fn load_store_round_trip() {
        let src: Vec<f32> = (0..LANES as i32 + 3).map(|i| i as f32).collect();
        let mut dst = [0.0; LANES + 3];
        store(&mut dst[3..], load(&src[1..]));
        assert_eq!(&dst[3..], &src[1..LANES + 1]);
    }
}
