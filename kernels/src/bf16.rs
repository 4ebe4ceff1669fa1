//! bfloat16 pairs: rounding fp32 values to the pairs `vdpbf16ps` consumes, shared by every
//! bf16 product (the GEMM in `gemm/bf16`, flash attention, the LSTM recurrence). A leaf with
//! intrinsics and raw pointers; compiled only when the build enables `avx512bf16` (see
//! `crate::precision`). Leaves out: the products themselves (their micro-kernels live beside
//! their blocking).
//!
//! A *pair* is a `u32` whose low half is the bf16 of element `2q` and whose high half that of
//! `2q + 1` along the depth of a product (a zero bf16 pads an odd depth, which adds exactly 0):
//! `vdpbf16ps acc, a, b` adds `a.bf16[2j]·b.bf16[2j] + a.bf16[2j+1]·b.bf16[2j+1]` to each fp32
//! lane `acc[j]`. Rounding is to nearest even (`vcvtne2ps2bf16`), the value
//! [`crate::precision::round_bf16`] gives.

// A leaf built only with AVX512_BF16: its intrinsics take raw pointers (see lib.rs).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::simd::{F32s, LANES};

const _: () = assert!(LANES == 16, "avx512bf16 implies AVX-512: 16 fp32 lanes");

/// `vpermw` indices that interleave the two bf16 halves of a `vcvtne2ps2bf16` result:
/// `[r0[0], r1[0], r0[1], r1[1], …]`.
static INTERLEAVE: [u16; 32] = {
    let mut idx = [0u16; 32];
    let mut j = 0;
    while j < 16 {
        idx[2 * j] = j as u16;
        idx[2 * j + 1] = (j + 16) as u16;
        j += 1;
    }
    idx
};

/// A mask of the low `n` of 16 lanes (`n ≤ 16`).
#[inline(always)]
pub(crate) fn mask16(n: usize) -> __mmask16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as __mmask16
}

/// Loads the first `n ≤ 16` floats of `p`, zero in the other lanes.
///
/// # Safety
/// `p..p+n` must be readable.
#[inline(always)]
unsafe fn load_low(p: *const f32, n: usize) -> __m512 {
    if n == 0 {
        return zero();
    }
    // SAFETY: a masked load touches only the n unmasked lanes, which the caller vouches for.
    unsafe { _mm512_maskz_loadu_ps(mask16(n), p) }
}

/// `dst[q] = pair(bf16(src[2q]), bf16(src[2q + 1]))` for `q < ⌈len/2⌉`, a zero high half
/// past the end of an odd-length `src`. Rows of A (stored row-major) become rows of pairs.
pub(crate) fn pairs_of_row(dst: &mut [u32], src: &[f32]) {
    let n = src.len();
    assert!(dst.len() >= n.div_ceil(2), "pairs_of_row: dst too short");
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut j = 0;
    while j < n {
        let left = n - j;
        // SAFETY: lanes past `left` are masked off; src[j..j+min(left,32)] is in bounds, and
        // dst holds ⌈n/2⌉ ≥ j/2 + ⌈min(left,32)/2⌉ pairs.
        unsafe {
            let lo = load_low(s.add(j), left.min(16));
            let hi = if left > 16 {
                load_low(s.add(j + 16), (left - 16).min(16))
            } else {
                zero()
            };
            let v = bh_bits(_mm512_cvtne2ps_pbh(hi, lo));
            let pairs = left.min(32).div_ceil(2);
            _mm512_mask_storeu_epi32(d.add(j / 2).cast(), mask16(pairs), v);
        }
        j += 32;
    }
}

/// `dst[j] = pair(bf16(r0[j]), bf16(r1[j]))` for `j < r0.len()`; an empty `r1` means zeros
/// (the padding of an odd depth). Two consecutive rows along the depth (B stored row-major,
/// or A stored transposed) become one row of pairs.
pub(crate) fn pairs_of_two_rows(dst: &mut [u32], r0: &[f32], r1: &[f32]) {
    let n = r0.len();
    assert!(
        r1.is_empty() || r1.len() == n,
        "pairs_of_two_rows: rows differ"
    );
    assert!(dst.len() >= n, "pairs_of_two_rows: dst too short");
    let (p0, p1, d) = (r0.as_ptr(), r1.as_ptr(), dst.as_mut_ptr());
    // SAFETY: INTERLEAVE is 32 u16 = 64 readable bytes.
    let idx = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
    let mut j = 0;
    while j < n {
        let w = (n - j).min(16);
        // SAFETY: r0[j..j+w], r1[j..j+w] (when r1 is not empty) and dst[j..j+w] are in
        // bounds; the other lanes are masked off.
        unsafe {
            let a = load_low(p0.add(j), w);
            let b = if r1.is_empty() {
                zero()
            } else {
                load_low(p1.add(j), w)
            };
            let v = bh_bits(_mm512_cvtne2ps_pbh(b, a));
            let v = _mm512_permutexvar_epi16(idx, v);
            _mm512_mask_storeu_epi32(d.add(j).cast(), mask16(w), v);
        }
        j += 16;
    }
}

/// An all-zero vector.
#[inline(always)]
pub(crate) fn zero() -> __m512 {
    // SAFETY: this file is compiled only when the build enables avx512f (implied by
    // avx512bf16), so the instruction exists.
    unsafe { _mm512_setzero_ps() }
}

/// `x` in all 16 lanes.
#[inline(always)]
pub(crate) fn splat(x: f32) -> __m512 {
    // SAFETY: as in `zero`.
    unsafe { _mm512_set1_ps(x) }
}

#[inline(always)]
pub(crate) fn bh_bits(v: __m512bh) -> __m512i {
    // SAFETY: both are 64 bytes of plain lanes; every bit pattern is valid for either.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

#[inline(always)]
pub(crate) fn bits_bh(v: __m512i) -> __m512bh {
    // SAFETY: as in `bh_bits`.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// `pair` (a bf16 pair) broadcast to all 16 lanes.
#[inline(always)]
pub(crate) fn broadcast_pair(pair: u32) -> __m512bh {
    // SAFETY: as in `zero`.
    bits_bh(unsafe { _mm512_set1_epi32(pair as i32) })
}

/// The 16 pairs at `p`.
///
/// # Safety
/// `p..p+16` must be readable.
#[inline(always)]
pub(crate) unsafe fn load_pairs(p: *const u32) -> __m512bh {
    // SAFETY: the caller vouches for the 64 bytes; an unaligned load accepts any address.
    bits_bh(unsafe { _mm512_loadu_si512(p.cast()) })
}

/// `acc[j] + a.bf16[2j]·b.bf16[2j] + a.bf16[2j+1]·b.bf16[2j+1]` in each lane (`vdpbf16ps`).
#[inline(always)]
pub(crate) fn dot_pairs(acc: F32s, a: __m512bh, b: __m512bh) -> F32s {
    let acc: __m512 = bytemuck::cast(acc);
    // SAFETY: as in `zero`: this file is compiled only with avx512bf16 enabled.
    bytemuck::cast(unsafe { _mm512_dpbf16_ps(acc, a, b) })
}
