//! The bf16 leaf: rounding fp32 operands to bfloat16 pairs and the `vdpbf16ps` micro-kernel.
//! The only file of the bf16 GEMM with intrinsics and raw pointers; compiled only when the
//! build enables `avx512bf16` (see `crate::precision`). Leaves out: blocking and threads
//! (`mod.rs`).
//!
//! # Pairs
//!
//! `vdpbf16ps acc, a, b` adds, in each of the 16 fp32 lanes `j`,
//! `a.bf16[2j]·b.bf16[2j] + a.bf16[2j+1]·b.bf16[2j+1]` to `acc[j]`: it consumes the depth
//! `p` two at a time. So both operands are stored as *pairs*: a `u32` whose low half is the
//! bf16 of element `2q` and whose high half that of `2q + 1` along the depth (a zero bf16 pads
//! an odd depth, which adds exactly 0). Rounding is to nearest even (`vcvtne2ps2bf16`).
//!
//! # Micro-kernel contract
//!
//! A tile computes an `R × 16V` block of `C` (`R ≤ MR`, `V ∈ {1, 2}`) over `k2` pairs:
//!
//! ```text
//! acc[i][j] = Σ_{q < k2} pairdot(a[i·rsa + q·csa], b[q·NRB + j])      (i < R, j < 16V; q ascending)
//! C[i][j]   = alpha·acc[i][j] + beta·C[i][j]                          (j < n_eff; beta = 0: C not read)
//! ```
//!
//! - `a` holds pairs of `op(A)`: `(rsa, csa) = (k2, 1)` for rows of pairs (A stored row-major,
//!   packed by [`pairs_of_row`]) or `(1, mc)` for columns (A stored transposed, packed by
//!   [`pairs_of_two_rows`]). Each pair is broadcast to all 16 lanes.
//! - `b` is a packed B micro-panel: `k2` rows of [`NRB`] = 32 pairs (one per column of `C`),
//!   zero past the matrix edge; the `V = 1` kernel reads the first 16 of each row.
//! - `R·V` accumulators stay in registers (24 of the 32 with `R = 12, V = 2`): per pair,
//!   `V` loads of `b`, `R` broadcasts and `R·V` `vdpbf16ps`, each 32 flops.
//! - Columns past `n_eff` are computed but neither read nor written (masked loads and stores),
//!   so every element's arithmetic is the same wherever the edge of `C` falls.

use std::arch::x86_64::*;

use crate::gemm::kernel::MatMut;

/// Pairs per row of a packed B micro-panel: the widest tile's columns.
pub(crate) const NRB: usize = 32;
/// Rows of the widest tile (12 × 2 vectors = 24 accumulators, as in the fp32 kernel).
pub(crate) const MRB: usize = 12;

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
fn mask16(n: usize) -> __mmask16 {
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
fn zero() -> __m512 {
    // SAFETY: this file is compiled only when the build enables avx512f (implied by
    // avx512bf16), so the instruction exists.
    unsafe { _mm512_setzero_ps() }
}

/// `x` in all 16 lanes.
#[inline(always)]
fn splat(x: f32) -> __m512 {
    // SAFETY: as in `zero`.
    unsafe { _mm512_set1_ps(x) }
}

#[inline(always)]
fn bh_bits(v: __m512bh) -> __m512i {
    // SAFETY: both are 64 bytes of plain lanes; every bit pattern is valid for either.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(v) }
}

#[inline(always)]
fn bits_bh(v: __m512i) -> __m512bh {
    // SAFETY: as in `bh_bits`.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// How a tile combines its product with the `C` it overwrites.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    pub alpha: f32,
    /// `0` means: do not read `C`.
    pub beta: f32,
}

/// Where a tile reads its pairs of `op(A)`: element `(i, q)` at `data[i·rsa + q·csa]`.
#[derive(Clone, Copy)]
pub(crate) struct APairs<'s> {
    pub data: &'s [u32],
    pub rsa: usize,
    pub csa: usize,
}

/// One `rows × 16·nv` tile over `k2` pairs into the block of `c` at (`i0`, `j0`) (`n_eff`
/// valid columns), per the module contract.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn run_tile(
    rows: usize,
    nv: usize,
    k2: usize,
    a: APairs<'_>,
    b: &[u32],
    c: &mut MatMut<'_>,
    i0: usize,
    j0: usize,
    n_eff: usize,
    up: Update,
) {
    assert!(
        (1..=MRB).contains(&rows) && (1..=2).contains(&nv),
        "tile {rows}×{nv}"
    );
    assert!(n_eff >= 1 && n_eff <= 16 * nv, "tile columns");
    if k2 > 0 {
        let need = (rows - 1) * a.rsa + (k2 - 1) * a.csa + 1;
        assert!(a.data.len() >= need, "tile: A pairs too short");
        assert!(
            b.len() >= (k2 - 1) * NRB + 16 * nv,
            "tile: B panel too short"
        );
    }
    let (cp, ldc) = c.block_ptr(i0, j0, rows, n_eff);
    let f = TABLE[nv - 1][rows - 1];
    // SAFETY: the asserts above and `block_ptr`'s establish the contract of `tile`: the
    // rows × k2 pairs of A, k2 rows of b (16·nv pairs each, NRB apart), and the rows × n_eff
    // block of C, inside the window `c` borrows uniquely.
    unsafe {
        f(
            k2,
            a.data.as_ptr(),
            a.rsa,
            a.csa,
            b.as_ptr(),
            cp,
            ldc,
            n_eff,
            up,
        )
    }
}

type TileFn =
    unsafe fn(usize, *const u32, usize, usize, *const u32, *mut f32, usize, usize, Update);

/// `TABLE[V-1][R-1]` is the kernel for an `R × 16V` tile.
static TABLE: [[TileFn; MRB]; 2] = [tiles::<1>(), tiles::<2>()];

const fn tiles<const V: usize>() -> [TileFn; MRB] {
    let mut t: [TileFn; MRB] = [tile::<1, V>; MRB];
    macro_rules! fill {
        ($($r:literal)*) => { $( t[$r - 1] = tile::<$r, V>; )* };
    }
    fill!(1 2 3 4 5 6 7 8 9 10 11 12);
    t
}

/// The `R × 16V` micro-kernel (see the module contract). Named in the style of the fp32
/// kernels: type bf16→fp32, ISA AVX512_BF16, tile up to 12 × 32.
///
/// # Safety
/// `a` holds the `R × k2` pairs at `a[i·rsa + q·csa]`; `b` holds `k2` rows of `16V` pairs
/// `NRB` apart; the `R × n_eff` block at `c` (leading dimension `ldc`) is writable and,
/// unless `beta = 0`, readable; `1 ≤ n_eff ≤ 16V`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn tile<const R: usize, const V: usize>(
    k2: usize,
    a: *const u32,
    rsa: usize,
    csa: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    n_eff: usize,
    up: Update,
) {
    let mut acc = [[zero(); V]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..k2 {
        // SAFETY: q < k2, so row q of the B panel (16V pairs) and pair column q of A
        // (a + i·rsa for i < R) are in bounds.
        unsafe {
            let bv: [__m512bh; V] =
                std::array::from_fn(|v| bits_bh(_mm512_loadu_si512(b.add(16 * v).cast())));
            for (i, acc_i) in acc.iter_mut().enumerate() {
                let ai = bits_bh(_mm512_set1_epi32(*a.add(i * rsa) as i32));
                for v in 0..V {
                    acc_i[v] = _mm512_dpbf16_ps(acc_i[v], ai, bv[v]);
                }
            }
            a = a.add(csa);
            b = b.add(NRB);
        }
    }
    let alpha = splat(up.alpha);
    let beta = splat(up.beta);
    for (i, acc_i) in acc.iter().enumerate() {
        for (v, &x) in acc_i.iter().enumerate() {
            let cols = n_eff.saturating_sub(16 * v).min(16);
            if cols == 0 {
                continue;
            }
            let m = mask16(cols);
            // SAFETY: row i, columns 16v..16v+cols of the block are in bounds (cols ≤ n_eff
            // − 16v); masked lanes are not touched.
            unsafe {
                let p = c.add(i * ldc + 16 * v);
                let out = if up.beta == 0.0 {
                    _mm512_mul_ps(x, alpha)
                } else {
                    _mm512_fmadd_ps(x, alpha, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p), beta))
                };
                _mm512_mask_storeu_ps(p, m, out);
            }
        }
    }
}
