//! bf16 operands for the flash kernels ([`Bf16`]): q, k, v and dO packed as bf16 pairs
//! (`crate::bf16`), rounded once to nearest even while packing, and the score tiles P and dS
//! rounded to pairs right before the products that take them. Compiled only when the build
//! enables `avx512bf16`. Safe code over the conversions of `crate::bf16`.
//!
//! The forms (DEPTH = 2 elements of the depth per pair), for a tile of TILE positions:
//!
//! ```text
//! pack_a   (TILE, HSp/2)   row r: pairs of position r along HS         A of S = Q·Kᵀ, dP = dO·Vᵀ
//! pack_bt  (HSp/2, TILE)   row p: (x[r][2p], x[r][2p+1]) for every r   B of S, dP
//! pack_b   (TILE/2, HSp)   row q: (x[2q][c], x[2q+1][c]) for every c   B of P·V, Pᵀ·dO, dSᵀ·Q, dS·K
//! a_rows   (TILE, TILE/2)  row r of a score tile as pairs              A of P·V, dS·K
//! a_cols   (TILE/2, TILE)  rows 2q, 2q+1 of a score tile as pairs,     A of Pᵀ·dO, dSᵀ·Q (read
//!                          read with strides (1, TILE)                   transposed)
//! ```
//!
//! Leaves out: bf16 in memory (the tiles are converted from fp32 and the results are fp32).

use super::flash::{Dims, Packing, Source, TILE, pack_cols};
use super::tile::Strided;
use crate::bf16::{pairs_of_row, pairs_of_two_rows};
use crate::simd::{F32s, LANES, U32s, load};

thread_local! {
    /// An fp32 transposed tile (HSp, TILE) on its way to pairs ([`Bf16::pack_bt`]).
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// bf16 pairs with fp32 accumulation (see the module doc).
pub(super) struct Bf16;

/// A TILE × TILE score tile as bf16 pairs, cache-line aligned.
#[repr(C, align(64))]
pub(super) struct PairTile([u32; TILE * TILE / 2]);

impl Default for PairTile {
    fn default() -> Self {
        PairTile([0; TILE * TILE / 2])
    }
}

impl AsMut<[u32]> for PairTile {
    fn as_mut(&mut self) -> &mut [u32] {
        &mut self.0
    }
}

impl Packing for Bf16 {
    type E = u32;
    type Conv = PairTile;
    const SHARED_ROWS: bool = false;

    fn pack_a(dst: &mut [u32], src: Source, d: &Dims, bh: usize, i: usize) {
        let used = d.hs.div_ceil(2);
        for (r, row) in dst.chunks_exact_mut(d.hsp / 2).enumerate() {
            let t = i * TILE + r;
            if t >= d.t {
                row.fill(0);
                continue;
            }
            pairs_of_row(row, src.row(d, bh, t));
            row[used..].fill(0);
        }
    }

    fn pack_bt(dst: &mut [u32], src: Source, d: &Dims, bh: usize, i: usize) {
        // The fp32 transposed tile (HSp, TILE) in this thread's buffer, then its rows two by
        // two.
        COLS.with_borrow_mut(|cols| {
            cols.resize(TILE * d.hsp, 0.0);
            pack_cols(cols, src, d, bh, i);
            for (row, two) in dst.chunks_exact_mut(TILE).zip(cols.chunks_exact(2 * TILE)) {
                let (r0, r1) = two.split_at(TILE);
                pairs_of_two_rows(row, r0, r1);
            }
        });
    }

    fn pack_b(dst: &mut [u32], src: Source, d: &Dims, bh: usize, i: usize) {
        for (q, row) in dst.chunks_exact_mut(d.hsp).enumerate() {
            let t = i * TILE + 2 * q;
            if t >= d.t {
                row.fill(0);
                continue;
            }
            let next: &[f32] = if t + 1 < d.t {
                src.row(d, bh, t + 1)
            } else {
                &[]
            };
            let (head, pad) = row.split_at_mut(d.hs);
            pairs_of_two_rows(head, src.row(d, bh, t), next);
            pad.fill(0);
        }
    }

    fn d_row(dout: &[f32], out: &[f32]) -> f32 {
        let mut acc = F32s::ZERO;
        let (gc, oc) = (dout.chunks_exact(LANES), out.chunks_exact(LANES));
        let (gr, or) = (gc.remainder(), oc.remainder());
        for (g, o) in gc.zip(oc) {
            acc = round_bf16s(load(g)).mul_add(load(o), acc);
        }
        let tail: f32 = gr
            .iter()
            .zip(or)
            .map(|(&g, &o)| crate::precision::round_bf16(g) * o)
            .sum();
        acc.reduce_add() + tail
    }

    fn a_rows<'a>(x: &'a [f32], conv: &'a mut [u32]) -> Strided<'a, u32> {
        for (dst, row) in conv.chunks_exact_mut(TILE / 2).zip(x.chunks_exact(TILE)) {
            pairs_of_row(dst, row);
        }
        Strided::rows(conv, TILE / 2)
    }

    fn a_cols<'a>(x: &'a [f32], conv: &'a mut [u32]) -> Strided<'a, u32> {
        for (dst, two) in conv.chunks_exact_mut(TILE).zip(x.chunks_exact(2 * TILE)) {
            let (r0, r1) = two.split_at(TILE);
            pairs_of_two_rows(dst, r0, r1);
        }
        Strided::transposed(conv, TILE)
    }
}

/// [`crate::precision::round_bf16`] in every lane: nearest even on the 16 dropped bits, NaN
/// kept NaN.
fn round_bf16s(x: F32s) -> F32s {
    let bits: U32s = bytemuck::cast(x);
    let odd = (bits >> 16) & U32s::splat(1);
    let rounded: F32s =
        bytemuck::cast((bits + U32s::splat(0x7FFF) + odd) & U32s::splat(0xFFFF_0000));
    x.is_nan().select(x, rounded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::round_bf16;

    #[test]
    fn vector_rounding_is_the_scalar_one() {
        let specials = [
            0.0,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut rng = crate::testutil::TestRng::new(3);
        let xs: Vec<f32> = specials
            .iter()
            .copied()
            .chain(rng.vec(1000, 100.0))
            .collect();
        for chunk in xs.chunks(LANES) {
            let mut buf = [0.0f32; LANES];
            buf[..chunk.len()].copy_from_slice(chunk);
            let got = round_bf16s(F32s::from(buf)).to_array();
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = round_bf16(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "round({x:e}) = {g:e}, want {want:e}"
                );
            }
        }
    }
}
