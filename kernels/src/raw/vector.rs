//! Vector loads and stores through pointers (full and masked), and the few AVX-512 intrinsics
//! the fp32 kernels call directly (`wide` has no masked tail, horizontal maximum or
//! `vscalefps`). Builds without AVX-512F take plain-array fallbacks with the same results.
//! Leaves out: slice-checked loads and stores (`crate::simd::load`/`store`) and bf16.

use crate::simd::{F32s, LANES};

/// Loads `LANES` floats from `p` (unaligned).
///
/// # Safety
/// `p .. p + LANES` must be readable.
#[inline(always)]
pub(crate) unsafe fn load(p: *const f32) -> F32s {
    // SAFETY: the caller guarantees LANES readable floats; F32s is plain f32 lanes, so any
    // bits are a valid value.
    unsafe { p.cast::<F32s>().read_unaligned() }
}

/// Stores `v` to `p .. p + LANES` (unaligned).
///
/// # Safety
/// `p .. p + LANES` must be writable.
#[inline(always)]
pub(crate) unsafe fn store(p: *mut f32, v: F32s) {
    // SAFETY: the caller guarantees LANES writable floats.
    unsafe { p.cast::<F32s>().write_unaligned(v) }
}

/// Loads `s` (shorter than `LANES`) into the low lanes; the other lanes hold `fill`.
#[inline(always)]
pub(crate) fn load_tail(s: &[f32], fill: f32) -> F32s {
    debug_assert!(s.len() < LANES);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        use std::arch::x86_64::{_mm512_mask_loadu_ps, _mm512_set1_ps};
        let mask = ((1u32 << s.len()) - 1) as u16;
        // SAFETY: only the first `s.len()` lanes are read (masked-off lanes neither load nor
        // fault), and those are in bounds of `s`.
        let v = unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, s.as_ptr()) };
        bytemuck::cast(v)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        let mut a = [fill; LANES];
        a[..s.len()].copy_from_slice(s);
        F32s::from(a)
    }
}

/// Stores the low `s.len()` (< `LANES`) lanes of `v` into `s`.
#[inline(always)]
pub(crate) fn store_tail(s: &mut [f32], v: F32s) {
    debug_assert!(s.len() < LANES);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        use std::arch::x86_64::_mm512_mask_storeu_ps;
        let mask = ((1u32 << s.len()) - 1) as u16;
        // SAFETY: only the first `s.len()` lanes are written (masked-off lanes neither store
        // nor fault), and those are in bounds of `s`.
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), mask, bytemuck::cast(v)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        let n = s.len();
        s.copy_from_slice(&v.to_array()[..n]);
    }
}

/// The largest lane of `v` (a NaN lane may be skipped), by a log-depth tree rather than a
/// chain of 16 scalar maxima — it runs once per row, where a 16-deep chain would be a
/// visible share of a 257-wide row's time.
#[inline(always)]
pub(crate) fn reduce_max(v: F32s) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: compiled only when the build enables AVX-512F (see `simd.rs`), which
        // `cpu::check` confirms at start-up; the intrinsic only computes on registers.
        unsafe { std::arch::x86_64::_mm512_reduce_max_ps(bytemuck::cast(v)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    v.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `vscalefps`: `x · 2^floor(n)` lane by lane, with IEEE overflow, underflow and NaN
/// handling (`math::exp`'s final scaling on AVX-512 builds).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
#[inline(always)]
pub(crate) fn scalef(x: F32s, n: F32s) -> F32s {
    use std::arch::x86_64::_mm512_scalef_ps;
    // SAFETY: compiled only when the whole build enables AVX-512F, and `cpu::check` refuses
    // to run such a build on a CPU without it; the intrinsic only computes on registers.
    bytemuck::cast(unsafe { _mm512_scalef_ps(bytemuck::cast(x), bytemuck::cast(n)) })
}
