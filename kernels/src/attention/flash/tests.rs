//! Unit tests of the flash kernels' internals (packing, transposes, task groups).

use super::backward::{backward_in, group_of, group_tiles};
use super::forward::forward_in;
use super::*;

#[test]
fn transpose_matches_scalar() {
    let rows: [F32s; LANES] = std::array::from_fn(|r| {
        F32s::from(std::array::from_fn::<f32, LANES, _>(|c| {
            (r * LANES + c) as f32
        }))
    });
    let t = transpose(rows);
    for (c, col) in t.iter().enumerate() {
        for (r, &x) in col.to_array().iter().enumerate() {
            assert_eq!(x, (r * LANES + c) as f32, "transpose[{c}][{r}]");
        }
    }
}

/// (out, lse, dqkv) of `M`'s kernels run in a workspace filled with `fill`.
fn run_in<M: Packing>(
    fill: f32,
    qkv: &[f32],
    dout: &[f32],
    d: Dims,
    b: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let filled = |n: usize| vec![F32s::splat(fill); n.div_ceil(LANES)];
    let mut ws = filled(d.forward_workspace_floats::<M>());
    let (mut out, mut lse) = (vec![0.0; b * d.t * d.c], vec![0.0; b * d.nh * d.t]);
    let ws_f = bytemuck::cast_slice_mut(&mut ws);
    forward_in::<M>(ws_f, &mut out, &mut lse, qkv, d);
    let mut ws = filled(d.backward_workspace_floats::<M>());
    let mut dqkv = vec![0.0; b * d.t * 3 * d.c];
    let ws_f = bytemuck::cast_slice_mut(&mut ws);
    backward_in::<M>(ws_f, &mut dqkv, dout, qkv, &out, &lse, d);
    (out, lse, dqkv)
}

/// The workspace is reused between calls with whatever the last call left in it: a NaN in
/// any float that is read before it is written would show in the results, which must be
/// those of a zeroed workspace bit for bit (and, in fp32, the reference's).
#[test]
fn stale_workspace_is_never_read() {
    use crate::attention::{attention_backward_ref, attention_forward_ref};
    use crate::testutil::{TestRng, assert_close};
    for (b, t, nh, hs) in [(2, 130, 2, 16), (1, 300, 3, 24)] {
        let c = nh * hs;
        let dims = AttnDims { b, t, c, nh };
        let d = Dims::new(dims);
        let mut rng = TestRng::new(t as u64);
        let qkv = rng.vec(b * t * 3 * c, 1.0);
        let dout = rng.vec(b * t * c, 1.0);
        let (mut out_ref, mut lse_ref) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
        attention_forward_ref(&mut out_ref, &mut lse_ref, &qkv, dims);
        let mut dqkv_ref = vec![0.0; b * t * 3 * c];
        attention_backward_ref(&mut dqkv_ref, &dout, &qkv, &out_ref, &lse_ref, dims);

        let (out, _, dqkv) = run_in::<F32>(f32::NAN, &qkv, &dout, d, b);
        assert_close(&out, &out_ref, 1e-4, 2e-6, "out");
        assert_close(&dqkv, &dqkv_ref, 1e-3, 2e-5, "dqkv");
        let bits = |r: (Vec<f32>, Vec<f32>, Vec<f32>)| {
            [r.0, r.1, r.2].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        };
        assert!(
            bits(run_in::<F32>(f32::NAN, &qkv, &dout, d, b))
                == bits(run_in::<F32>(0.0, &qkv, &dout, d, b)),
            "fp32: a poisoned workspace changes the results"
        );
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        {
            use crate::attention::bf16::Bf16;
            assert!(
                bits(run_in::<Bf16>(f32::NAN, &qkv, &dout, d, b))
                    == bits(run_in::<Bf16>(0.0, &qkv, &dout, d, b)),
                "bf16: a poisoned workspace changes the results"
            );
        }
    }
}

#[test]
fn snake_groups_partition_the_tiles_and_balance_work() {
    for nt in 1..40 {
        let d = Dims::new(AttnDims::new(1, nt * TILE, 64, 1));
        let g = d.groups();
        let mut seen = vec![false; nt];
        let mut work = vec![0usize; g];
        for (gi, w) in work.iter_mut().enumerate() {
            for (slot, j) in group_tiles(gi, g, nt).enumerate() {
                assert!(!seen[j], "tile {j} in two groups");
                seen[j] = true;
                assert_eq!(group_of(j, g), (gi, slot));
                assert!(slot < d.slots());
                *w += nt - j;
            }
            assert_eq!(
                group_tiles(gi, g, nt).next(),
                Some(gi),
                "first tile of group {gi}"
            );
        }
        assert!(seen.iter().all(|&s| s), "nt = {nt}: a tile has no group");
        let (lo, hi) = (work.iter().min().unwrap(), work.iter().max().unwrap());
        // Equal up to one unpaired tile per group.
        assert!(hi - lo <= nt, "nt = {nt}: work {work:?}");
    }
}
