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

    /// A build meant for AVX-512 must not silently run a narrower path: `.cargo/config.toml`
    /// builds for the native CPU, so on a CPU with AVX-512 the lanes must be 16 wide.
    #[test]
    fn native_build_uses_the_widest_path_this_cpu_has() {
        #[cfg(target_arch = "x86_64")]
        {
            let want = if std::is_x86_feature_detected!("avx512f") {
                16
            } else if std::is_x86_feature_detected!("avx2") {
                8
            } else {
                4
            };
            assert_eq!(
                LANES, want,
                "this CPU offers {want} lanes but the build uses {PATH}"
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
