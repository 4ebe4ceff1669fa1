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
    let mut off = 0;
    let mut q = first_panel;
    while off < dst.len() && q * NR < nc {
        let w = panel_width(nc, q);
        let cols = w.min(nc - q * NR);
        let panel = &mut dst[off..off + kc * w];
        let j = j0 + q * NR;
        match transb {
            // op(B)[p, j] = b[p·ldb + j]: rows of the panel are contiguous.
            Transpose::No => {
                for (p, out) in panel.chunks_exact_mut(w).enumerate() {
                    let src = (p0 + p) * ldb + j;
                    out[..cols].copy_from_slice(&b[src..src + cols]);
                    out[cols..].fill(0.0);
                }
            }
            // op(B)[p, j] = b[j·ldb + p]: walk each stored row once, scatter down the panel.
            Transpose::Yes => {
                for jj in 0..cols {
                    let row = &b[(j + jj) * ldb + p0..][..kc];
                    for (out, &x) in panel.chunks_exact_mut(w).zip(row) {
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
        off += kc * w;
        q += 1;
    }
}
