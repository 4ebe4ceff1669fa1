//! The recurrence's bf16 leaf: W_hh packed as bfloat16 pairs, and the recurrent product's
//! depth loops with `vdpbf16ps` (bf16 operands, fp32 sums). The only file of the recurrence
//! with intrinsics and raw pointers; compiled only when the build enables `avx512bf16` (see
//! `crate::precision`). Leaves out: the walk, the threads and the cell (`mod.rs`, `step.rs`), and
//! the rounding to pairs itself (`crate::bf16`).
//!
//! # Layouts and contract
//!
//! With `k2 = ceil(H / 2)` pairs along the depth and 16 lanes:
//!
//! ```text
//! forward panel u:  [q < k2][g < 4][l < 16] = pair(W_hh[g·H + 16u + l][2q], W_hh[…][2q + 1])
//! backward panel q: [p < k2][g < 4][l < 16] = pair(W_hh[g·H + 2p][16q + l], W_hh[g·H + 2p + 1][…])
//! forward:  acc[r][v][g] += Σ_{q < k2} pairdot(hprev_pairs[r][q], panel_v[q][g])       q ascending
//! backward: acc[r][v][g] += Σ_{p < k2} pairdot(dgates_pairs[r][g][p], panel_v[p][g])   p ascending
//! ```
//!
//! Missing elements (units or columns ≥ H, the element 2q + 1 = H of an odd H) are zero
//! halves, which add exactly 0. A product of two bf16 is exact in fp32, so an element differs
//! from the fp32 sum of the same rounded products only by the order and rounding of the fp32
//! additions, which is fixed: results do not depend on blocking or threads.

// A leaf built only with AVX512_BF16: its intrinsics take raw pointers (see lib.rs).
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{Acc, G, Operand, Product, for_each_panel};
use crate::bf16::{bits_bh, pairs_of_row, pairs_of_two_rows};
use crate::simd::LANES;
use std::ops::Range;

const _: () = assert!(LANES == 16, "a bf16 build has AVX-512: 16 fp32 lanes");

/// The bf16 product: W_hh and the operand rounded to bf16 pairs, sums in fp32.
pub(super) struct Bf16;

/// Packs W_hh for the forward walk (layout in the module docs); `data` holds
/// `ceil(H / 16)` panels of `k2·4·16` pairs.
pub(super) fn pack_forward(data: &mut [u32], w_hh: &[f32], h: usize) {
    let k2 = h.div_ceil(2);
    for_each_panel(data, k2, |u, q0, rows| {
        // This task's pairs q0.. of each row: columns 2·q0.. of W_hh.
        let n = rows.len() / (G * LANES);
        let mut row = vec![0u32; n];
        for g in 0..G {
            for l in 0..LANES {
                let j = u * LANES + l;
                if j < h {
                    let cols = &w_hh[(g * h + j) * h..][..h];
                    pairs_of_row(&mut row, &cols[(2 * q0).min(h)..h.min(2 * (q0 + n))]);
                } else {
                    row.fill(0);
                }
                let dst = rows[g * LANES + l..].iter_mut().step_by(G * LANES);
                dst.zip(&row).for_each(|(d, &pair)| *d = pair);
            }
        }
    });
}

/// Packs W_hh for the backward walk (layout in the module docs).
pub(super) fn pack_backward(data: &mut [u32], w_hh: &[f32], h: usize) {
    let k2 = h.div_ceil(2);
    for_each_panel(data, k2, |q, p0, rows| {
        let k0 = q * LANES;
        let n = LANES.min(h - k0);
        for (p, depth) in (p0..).zip(rows.chunks_exact_mut(G * LANES)) {
            for (g, dst) in depth.chunks_exact_mut(LANES).enumerate() {
                let r0 = &w_hh[(g * h + 2 * p) * h + k0..][..n];
                let r1 = if 2 * p + 1 < h {
                    &w_hh[(g * h + 2 * p + 1) * h + k0..][..n]
                } else {
                    &[]
                };
                pairs_of_two_rows(&mut dst[..n], r0, r1);
                dst[n..].fill(0);
            }
        }
    });
}

/// The accumulators as `__m512` (the same 64 bytes as `F32s` on this build).
#[inline(always)]
fn to_m512<const R: usize, const U: usize>(acc: &Acc<R, U>) -> [[[__m512; G]; U]; R] {
    acc.map(|v| v.map(|g| g.map(bytemuck::cast)))
}

#[inline(always)]
fn from_m512<const R: usize, const U: usize>(a: [[[__m512; G]; U]; R]) -> Acc<R, U> {
    a.map(|v| v.map(|g| g.map(bytemuck::cast)))
}

/// Row `q` of each of U consecutive panels of `panel` pairs: 4 gates × 16 pairs.
///
/// # Safety
/// `w[v·panel + q·64 .. + 64]` must be readable for `v < U`.
#[inline(always)]
unsafe fn panel_rows<const U: usize>(w: *const u32, panel: usize, q: usize) -> [[__m512bh; G]; U] {
    std::array::from_fn(|v| {
        std::array::from_fn(|g| {
            // SAFETY: in bounds per the caller's promise (g < 4, 16 pairs each).
            let p = unsafe { w.add(v * panel + (q * G + g) * LANES) };
            // SAFETY: as above; an unaligned 64-byte load.
            bits_bh(unsafe { _mm512_loadu_si512(p.cast()) })
        })
    })
}

impl Product for Bf16 {
    type Elem = u32;

    fn depth(n: usize) -> usize {
        n.div_ceil(2)
    }

    fn operand<'s>(
        buf: &'s mut Operand<u32>,
        x: &'s [f32],
        n: usize,
        rows: Range<usize>,
    ) -> &'s [u32] {
        let (k2, all) = (n.div_ceil(2), x.len() / n);
        buf.elems.resize(all * k2, 0);
        buf.ready.resize(all, false);
        for r in rows {
            if !buf.ready[r] {
                pairs_of_row(&mut buf.elems[r * k2..][..k2], &x[r * n..][..n]);
                buf.ready[r] = true;
            }
        }
        &buf.elems
    }

    #[inline(always)]
    fn forward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        x: [&[u32]; R],
        panels: &[u32],
        h: usize,
    ) {
        let k2 = h.div_ceil(2);
        let panel = k2 * G * LANES;
        assert!(panels.len() >= U * panel, "bf16 forward: panels too short");
        assert!(
            x.iter().all(|x| x.len() >= k2),
            "bf16 forward: hprev too short"
        );
        let mut a = to_m512(acc);
        let (w, x) = (panels.as_ptr(), x.map(<[u32]>::as_ptr));
        for q in 0..k2 {
            // SAFETY: q < k2: pair q of every hprev row and row q of each of the U panels
            // (4 × 16 pairs at (v·panel + q·64)) are in bounds (asserted above).
            unsafe {
                let wq = panel_rows::<U>(w, panel, q);
                for (a_r, x_r) in a.iter_mut().zip(x) {
                    let xq = bits_bh(_mm512_set1_epi32(*x_r.add(q) as i32));
                    for (a_v, w_v) in a_r.iter_mut().zip(&wq) {
                        for (a_g, &w_g) in a_v.iter_mut().zip(w_v) {
                            *a_g = _mm512_dpbf16_ps(*a_g, xq, w_g);
                        }
                    }
                }
            }
        }
        *acc = from_m512(a);
    }

    #[inline(always)]
    fn backward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        dg: [&[u32]; R],
        panels: &[u32],
        h: usize,
    ) {
        let k2 = h.div_ceil(2);
        let panel = k2 * G * LANES;
        assert!(panels.len() >= U * panel, "bf16 backward: panels too short");
        assert!(
            dg.iter().all(|d| d.len() >= G * k2),
            "bf16 backward: dgates too short"
        );
        let mut a = to_m512(acc);
        let (w, dg) = (panels.as_ptr(), dg.map(<[u32]>::as_ptr));
        for p in 0..k2 {
            // SAFETY: p < k2: pair p of each gate's row of every dgates operand (at g·k2 + p)
            // and row p of each of the U panels are in bounds (asserted above).
            unsafe {
                let wp = panel_rows::<U>(w, panel, p);
                for (a_r, d_r) in a.iter_mut().zip(dg) {
                    for g in 0..G {
                        let x = bits_bh(_mm512_set1_epi32(*d_r.add(g * k2 + p) as i32));
                        for (a_v, w_v) in a_r.iter_mut().zip(&wp) {
                            a_v[g] = _mm512_dpbf16_ps(a_v[g], x, w_v[g]);
                        }
                    }
                }
            }
        }
        *acc = from_m512(a);
    }
}
