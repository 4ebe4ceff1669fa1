//! Packing: copies a block of `op(B)` into the micro-panel layout the micro-kernel streams
//! (see the contract in `kernel.rs`), absorbing the transpose. Leaves out: the blocking
//! decisions (`blocked.rs`), and A, which the micro-kernel reads in place.
//!
//! A `kc × nc` block becomes panels of `NR` columns (the last one `LANES` or `NR` wide,
//! zero-padded past `nc`); panel `q` starts at `q·NR·kc` and holds
//! `panel[p·w + j] = op(B)[p, q·NR + j]`, so each `p` is `w` contiguous floats.

use super::Transpose;
use super::kernel::NR;
use crate::simd::LANES;

/// Floats a packed `kc × nc` B block occupies.
pub(crate) fn packed_b_len(kc: usize, nc: usize) -> usize {
    kc * nc.div_ceil(LANES) * LANES
}

/// Width of packed B panel `q` of a block `nc` wide: `NR`, or `LANES` when at most `LANES`
/// columns are left (a narrower kernel then wastes less on the ragged edge).
pub(crate) fn panel_width(nc: usize, q: usize) -> usize {
    let left = nc - q * NR;
    if left <= LANES && NR > LANES {
        LANES
    } else {
        NR
    }
}

/// Packs `op(B)[p0..p0+kc, j0..j0+nc]` into `dst` (at least [`packed_b_len`] floats),
/// panel by panel from `first_panel` on, as many panels as `dst` holds. Splitting `dst` at
/// panel boundaries lets threads pack disjoint panels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b(
    dst: &mut [f32],
    b: &[f32],
    ldb: usize,
    transb: Transpose,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    first_panel: usize,
) {
    // The panels that fit in dst; all but possibly the matrix's last one are full (NR wide).
    let (mut panels, mut len) = (0, 0);
    while (first_panel + panels) * NR < nc && len < dst.len() {
        len += kc * panel_width(nc, first_panel + panels);
        panels += 1;
    }
    let full = (0..panels)
        .take_while(|&t| (first_panel + t + 1) * NR <= nc)
        .count();
    let jf = j0 + first_panel * NR;
    match transb {
        // op(B)[p, j] = b[p·ldb + j]: read each row of B once, sequentially across all the
        // panels (a panel at a time would walk 128-byte pieces down a column, a new page per
        // row, which the prefetchers do not follow). Fixed-size rows compile to vector moves.
        Transpose::No => {
            for p in 0..kc {
                let row = &b[(p0 + p) * ldb + jf..][..full * NR];
                for (t, src) in row.chunks_exact(NR).enumerate() {
                    let src: &[f32; NR] = src.try_into().unwrap();
                    let out: &mut [f32; NR] =
                        (&mut dst[(t * kc + p) * NR..][..NR]).try_into().unwrap();
                    *out = *src;
                }
            }
        }
        Transpose::Yes => {
            for t in 0..full {
                let panel = &mut dst[t * kc * NR..][..kc * NR];
                pack_panel(panel, NR, NR, b, ldb, transb, p0, kc, jf + t * NR);
            }
        }
    }
    if full < panels {
        let j = jf + full * NR;
        let w = panel_width(nc, first_panel + full);
        let panel = &mut dst[full * kc * NR..][..kc * w];
        pack_panel(panel, w, j0 + nc - j, b, ldb, transb, p0, kc, j);
    }
}

/// Packs one `w`-wide panel of `op(B)[p0..p0+kc, j..j+cols]`, zero-padded past `cols`.
#[allow(clippy::too_many_arguments)]
fn pack_panel(
    panel: &mut [f32],
    w: usize,
    cols: usize,
    b: &[f32],
    ldb: usize,
    transb: Transpose,
    p0: usize,
    kc: usize,
    j: usize,
) {
    match transb {
        Transpose::No => {
            for (p, out) in panel.chunks_exact_mut(w).enumerate() {
                let src = (p0 + p) * ldb + j;
                out[..cols].copy_from_slice(&b[src..src + cols]);
                out[cols..].fill(0.0);
            }
        }
        // op(B)[p, j] = b[j·ldb + p]: 8 × 8 blocks through registers, the rest scalar:
        // walk each stored row once, scatter down the panel.
        Transpose::Yes => {
            let done = transpose_blocks(panel, w, cols, b, ldb, p0, kc, j);
            for jj in 0..cols {
                let row = &b[(j + jj) * ldb + p0..][..kc];
                let start = if jj < done.1 { done.0 } else { 0 };
                for (out, &x) in panel.chunks_exact_mut(w).zip(row).skip(start) {
                    out[jj] = x;
                }
            }
            if cols < w {
                for out in panel.chunks_exact_mut(w) {
                    out[cols..].fill(0.0);
                }
            }
        }
    }
}

/// Fills `panel[p·w + jj] = b[(j + jj)·ldb + p0 + p]` for whole 8 × 8 blocks (`p < kc`
/// rounded down to 8, `jj < cols` rounded down to 8) with register transposes, and returns
/// how far it got: `(rows, columns)`.
///
/// This is the one place outside `simd.rs` that names a concrete `wide` type: `f32x8` is the
/// width whose transpose `wide` implements with shuffles (AVX); the lanes the kernels compute
/// with do not matter here. It makes packing `Bᵀ` about 3× faster than the scalar scatter,
/// which decides the speed of `x · Wᵀ` with a few dozen rows (the LSTM's recurrent step).
#[cfg(target_feature = "avx")]
#[allow(clippy::too_many_arguments)]
fn transpose_blocks(
    panel: &mut [f32],
    w: usize,
    cols: usize,
    b: &[f32],
    ldb: usize,
    p0: usize,
    kc: usize,
    j: usize,
) -> (usize, usize) {
    use wide::f32x8;
    let (kb, cb) = (kc / 8 * 8, cols / 8 * 8);
    for jg in (0..cb).step_by(8) {
        for pb in (0..kb).step_by(8) {
            let rows: [f32x8; 8] = std::array::from_fn(|r| {
                let src: [f32; 8] = b[(j + jg + r) * ldb + p0 + pb..][..8].try_into().unwrap();
                f32x8::from(src)
            });
            for (pp, v) in f32x8::transpose(rows).iter().enumerate() {
                panel[(pb + pp) * w + jg..][..8].copy_from_slice(v.as_array());
            }
        }
    }
    (kb, cb)
}

/// Without AVX, `wide`'s transpose is element by element; the scalar scatter does it all.
#[cfg(not(target_feature = "avx"))]
#[allow(clippy::too_many_arguments)]
fn transpose_blocks(
    _: &mut [f32],
    _: usize,
    _: usize,
    _: &[f32],
    _: usize,
    _: usize,
    _: usize,
    _: usize,
) -> (usize, usize) {
    (0, 0)
}
