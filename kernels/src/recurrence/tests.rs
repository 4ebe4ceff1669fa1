//! Tests of the recurrence: packing, both walks against the scalar references in fp32 and
//! bf16, thread-count independence, concurrency, and the references' own gradient check.

use super::*;
use crate::precision::HAS_BF16;
use crate::simd::LANES;
use crate::testutil::{TestRng, assert_close};

/// Random inputs for a walk: initial state, input projections, W_hh, output gradients.
struct Case {
    b: usize,
    t: usize,
    h: usize,
    hs: Vec<f32>,
    cs: Vec<f32>,
    gates: Vec<f32>,
    w_hh: Vec<f32>,
    dhs: Vec<f32>,
}

impl Case {
    fn dims(&self) -> LstmDims {
        LstmDims::new(self.b, self.t, self.h)
    }
}

fn case(b: usize, t: usize, h: usize, seed: u64) -> Case {
    let mut rng = TestRng::new(seed);
    let mut hs = vec![f32::NAN; (t + 1) * b * h];
    let mut cs = hs.clone();
    hs[..b * h].copy_from_slice(&rng.vec(b * h, 0.5));
    cs[..b * h].copy_from_slice(&rng.vec(b * h, 1.0));
    let scale = 1.0 / (h.max(1) as f32).sqrt();
    Case {
        b,
        t,
        h,
        hs,
        cs,
        gates: rng.vec(t * b * G * h, 2.0),
        w_hh: rng.vec(G * h * h, 2.0 * scale),
        dhs: rng.vec(t * b * h, 1.0),
    }
}

fn packed_forward(w_hh: &[f32], h: usize, p: Precision) -> PackedWhh<Forward> {
    let mut packed = PackedWhh::new();
    lstm_pack_forward(&mut packed, w_hh, h, p);
    packed
}

fn packed_backward(w_hh: &[f32], h: usize, p: Precision) -> PackedWhh<Backward> {
    let mut packed = PackedWhh::new();
    lstm_pack_backward(&mut packed, w_hh, h, p);
    packed
}

/// The walk in `p`; also returns the precision it ran in.
fn forward(c: &Case, p: Precision) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), c.gates.clone());
    let packed = packed_forward(&c.w_hh, c.h, p);
    lstm_forward(&mut hs, &mut cs, &mut gates, &packed, c.dims());
    (hs, cs, gates)
}

fn forward_ref(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), c.gates.clone());
    lstm_forward_ref(
        &mut hs,
        &mut cs,
        &mut gates,
        &c.w_hh,
        c.dims(),
        Precision::F32,
    );
    (hs, cs, gates)
}

/// The backward walk over steps `from..T` (all of them for `from = 0`): dgates of those steps,
/// and dh, dc carried out of step `from` (∂L/∂h_from, ∂L/∂c_from).
fn backward_from(c: &Case, gates: &[f32], cs: &[f32], p: Precision, from: usize) -> [Vec<f32>; 3] {
    let (b, h, t) = (c.b, c.h, c.t - from);
    let mut out = [
        vec![f32::NAN; t * b * G * h],
        vec![f32::NAN; b * h],
        vec![f32::NAN; b * h],
    ];
    let packed = packed_backward(&c.w_hh, h, p);
    let [dg, dh0, dc0] = &mut out;
    let (dhs, gates, cs) = (
        &c.dhs[from * b * h..],
        &gates[from * b * G * h..],
        &cs[from * b * h..],
    );
    lstm_backward(dg, dh0, dc0, dhs, gates, cs, &packed, LstmDims { b, t, h });
    out
}

fn backward(c: &Case, gates: &[f32], cs: &[f32], p: Precision) -> [Vec<f32>; 3] {
    backward_from(c, gates, cs, p, 0)
}

fn backward_ref(c: &Case, gates: &[f32], cs: &[f32]) -> [Vec<f32>; 3] {
    let (b, h) = (c.b, c.h);
    let mut out = [
        vec![f32::NAN; gates.len()],
        vec![f32::NAN; b * h],
        vec![f32::NAN; b * h],
    ];
    let [dg, dh0, dc0] = &mut out;
    let f32 = Precision::F32;
    lstm_backward_ref(dg, dh0, dc0, &c.dhs, gates, cs, &c.w_hh, c.dims(), f32);
    out
}

/// `dh_rec` of every row of `dg` (B, 4H): the reference product in `p`.
fn dh_rec_of(dg: &[f32], w_hh: &[f32], h: usize, p: Precision) -> Vec<f32> {
    let rows = dg.chunks_exact((G * h).max(1));
    let mut out = vec![f32::NAN; rows.len() * h];
    for (out, dg) in out.chunks_exact_mut(h.max(1)).zip(rows) {
        dh_rec_ref(out, dg, w_hh, h, p);
    }
    out
}

fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = Vec::new();
    for h in [1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + 1, 37] {
        for b in [1, 2, 3, 4, 5, 9] {
            for t in [0, 1, 4] {
                v.push((b, t, h));
            }
        }
    }
    v.extend([(0, 3, 8), (2, 3, 0)]);
    v
}

#[test]
fn packing_places_every_weight() {
    for h in [1, LANES - 1, LANES + 1, 2 * LANES + 3] {
        let w: Vec<f32> = (0..G * h * h).map(|i| i as f32).collect();
        let pf = packed_forward(&w, h, Precision::F32);
        let pb = packed_backward(&w, h, Precision::F32);
        assert_eq!((pf.precision(), pf.hidden_size()), (Precision::F32, h));
        let (pf, pb) = (pf.fp32(), pb.fp32());
        for g in 0..G {
            for j in 0..h {
                for k in 0..h {
                    let want = w[(g * h + j) * h + k];
                    let (u, l) = (j / LANES, j % LANES);
                    assert_eq!(pf[((u * h + k) * G + g) * LANES + l], want);
                    let (q, l) = (k / LANES, k % LANES);
                    assert_eq!(pb[((q * h + j) * G + g) * LANES + l], want);
                }
            }
        }
        let padding = pf.len() - G * h * h;
        assert_eq!(pf.iter().filter(|&&x| x == 0.0).count(), padding + 1);
        assert_eq!(pb.iter().filter(|&&x| x == 0.0).count(), padding + 1);
    }
}

/// The bf16 layouts of the `bf16` leaf's docs, read back half by half. The weights are
/// integers 1..=251, exact in bf16 (8 significant bits), so every half must hold its weight
/// exactly, and every other half (padding) must be zero.
#[test]
fn bf16_packing_places_every_weight_as_pairs() {
    for h in [1, 2, 3, LANES - 1, LANES + 1, 2 * LANES + 3] {
        let w: Vec<f32> = (0..G * h * h).map(|i| (i % 251 + 1) as f32).collect();
        let pf = packed_forward(&w, h, Precision::Bf16);
        let pb = packed_backward(&w, h, Precision::Bf16);
        if !HAS_BF16 {
            // This build has no bf16: the packing says so and holds fp32.
            assert_eq!(
                (pf.precision(), pb.precision()),
                (Precision::F32, Precision::F32)
            );
            assert_eq!(pf.fp32(), packed_forward(&w, h, Precision::F32).fp32());
            continue;
        }
        assert_eq!(
            (pf.precision(), pb.precision()),
            (Precision::Bf16, Precision::Bf16)
        );
        let k2 = h.div_ceil(2);
        let half = |data: &[u32], i: usize, hi: usize| f32::from_bits((data[i] >> (16 * hi)) << 16);
        for g in 0..G {
            for j in 0..h {
                for k in 0..h {
                    let want = w[(g * h + j) * h + k];
                    let (u, l) = (j / LANES, j % LANES);
                    let at = ((u * k2 + k / 2) * G + g) * LANES + l;
                    assert_eq!(half(&pf.data, at, k % 2), want, "forward g={g} j={j} k={k}");
                    let (q, l) = (k / LANES, k % LANES);
                    let at = ((q * k2 + j / 2) * G + g) * LANES + l;
                    assert_eq!(
                        half(&pb.data, at, j % 2),
                        want,
                        "backward g={g} j={j} k={k}"
                    );
                }
            }
        }
        for data in [&pf.data, &pb.data] {
            assert_eq!(data.len(), h.div_ceil(LANES) * k2 * G * LANES);
            let zeros = (0..2 * data.len()).filter(|&i| half(data, i / 2, i % 2) == 0.0);
            assert_eq!(zeros.count(), 2 * data.len() - G * h * h);
        }
    }
}

#[test]
fn forward_matches_reference() {
    for (b, t, h) in shapes() {
        let c = case(b, t, h, (b * 1000 + t * 100 + h) as u64);
        let (hs, cs, gates) = forward(&c, Precision::F32);
        let (hr, cr, gr) = forward_ref(&c);
        let what = format!("B={b} T={t} H={h}");
        assert_close(&hs, &hr, 1e-5, 1e-5, &format!("hs {what}"));
        assert_close(&cs, &cr, 1e-5, 1e-5, &format!("cs {what}"));
        assert_close(&gates, &gr, 1e-5, 1e-5, &format!("gates {what}"));
    }
}

#[test]
fn backward_matches_reference() {
    for (b, t, h) in shapes() {
        let c = case(b, t, h, (b * 1000 + t * 100 + h + 7) as u64);
        let (_, cs, gates) = forward_ref(&c);
        let got = backward(&c, &gates, &cs, Precision::F32);
        let want = backward_ref(&c, &gates, &cs);
        for (name, g, w) in [("dgates", 0, 0), ("dh0", 1, 1), ("dc0", 2, 2)] {
            let what = format!("{name} B={b} T={t} H={h}");
            assert_close(&got[g], &want[w], 1e-4, 1e-5, &what);
        }
    }
}

// The bf16 walks against the references in bf16 (`lstm_*_ref(…, Bf16)`): W_hh and the
// product's other operand — h_{t-1} forward, dgates_t backward — rounded to bf16 with
// `round_bf16`, everything else fp32. A product of two bf16 (8 significant bits each) is
// exact in fp32, so kernel and reference sum the same exact products and differ only in
// the order and rounding of the fp32 additions: at most (n − 1)·2^-24·Σ|terms| over n terms
// (n = H + 1 forward, 4H backward), the same error the fp32 walks have against their
// references; hence the fp32 tests' tolerances. H ≤ 37 and |W_hh| ≤ 2/√H keep Σ|terms| of
// a row below about 2√H + 2 ≈ 14 forward, i.e. under 4e-5 in the worst case and ~1e-6 in
// practice (errors of random sign grow like √n).
//
// Each step is checked from the kernel's own state (teacher forcing). A free-running
// comparison would let an ulp of fp32 difference in h_t (the kernel's σ and tanh are not
// libm's) move h_t across a bf16 rounding boundary, and one operand 2^-8 apart is a
// legitimate difference far above the summation error.

/// Forward, step by step: from the kernel's h_t and c_t, one reference step (in the
/// precision the packing recorded) gives the kernel's h_{t+1}, c_{t+1} and gates_t.
#[test]
fn bf16_forward_matches_reference_on_rounded_operands() {
    for (b, t, h) in shapes() {
        let c = case(b, t, h, (b * 1000 + t * 100 + h + 3) as u64);
        let p = packed_forward(&c.w_hh, h, Precision::Bf16).precision();
        assert_eq!(p, Precision::Bf16.effective());
        let (hs, cs, gates) = forward(&c, Precision::Bf16);
        let (state, gate) = (b * h, b * G * h);
        for s in 0..t {
            let mut hr = hs[s * state..][..2 * state].to_vec();
            let mut cr = cs[s * state..][..2 * state].to_vec();
            let mut gr = c.gates[s * gate..][..gate].to_vec();
            let step = LstmDims { b, t: 1, h };
            lstm_forward_ref(&mut hr, &mut cr, &mut gr, &c.w_hh, step, p);
            let what = format!("B={b} T={t} H={h} step {s}");
            let next = (s + 1) * state..(s + 2) * state;
            for (name, got, want) in [
                ("h", &hs[next.clone()], &hr[state..]),
                ("c", &cs[next], &cr[state..]),
                ("gates", &gates[s * gate..][..gate], &gr[..]),
            ] {
                assert_close(got, want, 1e-5, 1e-5, &format!("{name} {what}"));
            }
        }
    }
}

/// Backward, step by step: the walk over steps s..T is the walk over s+1..T followed by step
/// s, entered with what the former carries out. Per step, the cell backward (dgates_s, dc)
/// matches the reference step entered with the kernel's carry, and dh_rec the reference
/// product of the kernel's own dgates_s (so that a rounding boundary crossed by an ulp of
/// dgates cannot fail the test, as for h in the forward). The full walk's dgates are the
/// suffix walks' bit for bit, so this checks the whole walk.
#[test]
fn bf16_backward_matches_reference_on_rounded_operands() {
    for (b, t, h) in shapes() {
        let c = case(b, t, h, (b * 1000 + t * 100 + h + 11) as u64);
        let p = packed_backward(&c.w_hh, h, Precision::Bf16).precision();
        let (_, cs, gates) = forward_ref(&c);
        let whole = backward(&c, &gates, &cs, Precision::Bf16);
        let gate = b * G * h;
        for s in (0..t).rev() {
            let [dg, dh, dc] = backward_from(&c, &gates, &cs, Precision::Bf16, s);
            let what = format!("B={b} T={t} H={h} step {s}");
            assert!(
                dg == whole[0][s * gate..],
                "dgates of the suffix walk {what}"
            );
            let [mut dh_in, mut dc_in] = [vec![0.0; b * h], vec![0.0; b * h]];
            if s + 1 < t {
                [_, dh_in, dc_in] = backward_from(&c, &gates, &cs, Precision::Bf16, s + 1);
            }
            let mut dg_ref = vec![f32::NAN; gate];
            let saved = Saved {
                dhs: &c.dhs[s * b * h..][..b * h],
                gates: &gates[s * gate..][..gate],
                cs: &cs[s * b * h..][..2 * b * h],
            };
            let out = [&mut dg_ref[..], &mut dh_in, &mut dc_in];
            backward_ref_carried(out, saved, &c.w_hh, LstmDims { b, t: 1, h }, p);
            assert_close(&dg[..gate], &dg_ref, 1e-4, 1e-5, &format!("dgates {what}"));
            assert_close(&dc, &dc_in, 1e-4, 1e-5, &format!("dc {what}"));
            let want = dh_rec_of(&dg[..gate], &c.w_hh, h, p);
            assert_close(&dh, &want, 1e-4, 1e-5, &format!("dh {what}"));
        }
    }
}

/// A bf16 walk must round: it fails if a bf16 packing silently ran the fp32 product. Every
/// weight is 1 + 2^-9 and every h_0 0.5·(1 + 2^-9), which bf16 rounds to 1 and 0.5 (2^-9 is
/// under half of bf16's 2^-7 ulp at 1): the g gate's pre-activation `−H/2 + h_0·W_hhᵀ` is
/// then exactly 0 in bf16 (g = tanh 0 = 0), and H/2·(2^-8 + 2^-18) in fp32. Backward: the
/// kernel's dh_rec is the bf16 product of its dgates, far from their fp32 product.
#[test]
fn bf16_walks_round_their_operands() {
    let (b, h) = (2, 37);
    let w = vec![1.0 + 2f32.powi(-9); G * h * h];
    let (mut hs, mut cs) = (
        vec![0.5 * (1.0 + 2f32.powi(-9)); 2 * b * h],
        vec![0.0; 2 * b * h],
    );
    let mut gates = vec![-(h as f32) / 2.0; b * G * h];
    let packed = packed_forward(&w, h, Precision::Bf16);
    lstm_forward(
        &mut hs,
        &mut cs,
        &mut gates,
        &packed,
        LstmDims { b, t: 1, h },
    );
    let g_gate = gates.chunks_exact(h).skip(2).step_by(G).flatten();
    if HAS_BF16 {
        assert_eq!(packed.precision(), Precision::Bf16);
        assert!(
            g_gate.clone().all(|&g| g == 0.0),
            "bf16 forward did not round: {gates:?}"
        );
    } else {
        assert_eq!(packed.precision(), Precision::F32);
    }
    // In fp32 the same walk sees the 2^-9s: tanh(37/2 · (2^-8 + 2^-18)) ≈ 0.072.
    let fp32 = {
        let (mut hs, mut cs, mut gates) =
            (hs.clone(), cs.clone(), vec![-(h as f32) / 2.0; b * G * h]);
        hs[b * h..].fill(f32::NAN);
        cs[b * h..].fill(f32::NAN);
        lstm_forward(
            &mut hs,
            &mut cs,
            &mut gates,
            &packed_forward(&w, h, Precision::F32),
            LstmDims { b, t: 1, h },
        );
        gates
    };
    let fp32_g: Vec<f32> = fp32
        .chunks_exact(h)
        .skip(2)
        .step_by(G)
        .flatten()
        .copied()
        .collect();
    assert!(
        fp32_g.iter().all(|&g| (g - 0.072).abs() < 1e-3),
        "{fp32_g:?}"
    );
    if !HAS_BF16 {
        assert!(g_gate.copied().eq(fp32_g), "without bf16, Bf16 runs fp32");
    }

    let c = case(3, 1, h, 23);
    let (_, cs, gates) = forward_ref(&c);
    let [dg, dh, _] = backward(&c, &gates, &cs, Precision::Bf16);
    let dg = &dg[..c.b * G * h];
    let (bf16, fp32) = (
        dh_rec_of(dg, &c.w_hh, h, Precision::Bf16),
        dh_rec_of(dg, &c.w_hh, h, Precision::F32),
    );
    let far = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    if HAS_BF16 {
        assert_close(&dh, &bf16, 1e-4, 1e-5, "bf16 dh_rec");
        assert!(
            far(&dh, &fp32) > 1e-3,
            "bf16 backward within {} of fp32",
            far(&dh, &fp32)
        );
    } else {
        assert_close(&dh, &fp32, 1e-4, 1e-5, "fp32 dh_rec");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for p in [Precision::F32, Precision::Bf16] {
        for (b, t, h) in [(1, 7, 3 * LANES + 5), (5, 4, 2 * LANES + 1), (16, 3, 45)] {
            let c = case(b, t, h, 99);
            let run = |threads| {
                pool(threads).install(|| {
                    let (hs, cs, gates) = forward(&c, p);
                    let grads = backward(&c, &gates, &cs, p);
                    (hs, cs, gates, grads)
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let many = run(threads);
                assert!(
                    one == many,
                    "{p} B={b} T={t} H={h}: 1 vs {threads} threads differ"
                );
            }
        }
    }
}

/// The bits of every output of a forward + backward walk.
fn walk_bits(c: &Case, p: Precision) -> Vec<u32> {
    let (hs, cs, gates) = forward(c, p);
    let grads = backward(c, &gates, &cs, p);
    [hs, cs, gates]
        .iter()
        .chain(&grads)
        .flat_map(|v| v.iter().map(|x| x.to_bits()))
        .collect()
}

/// The split a walk plans for (row blocks × panel blocks, `parallel::plan`) changes no bit,
/// on pools of 1 and 2 threads.
#[test]
fn results_do_not_depend_on_the_planned_workers() {
    use crate::parallel::{Plan, plan};
    for p in [Precision::F32, Precision::Bf16] {
        for (b, t, h) in [(16, 4, 360), (2, 5, 3 * LANES + 5), (9, 3, 45), (1, 4, 100)] {
            let c = case(b, t, h, 7);
            let one = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let want = one.install(|| walk_bits(&c, p));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for workers in [1, 2, 16, 64] {
                    let got = pool.install(|| plan(Plan::workers(workers), || walk_bits(&c, p)));
                    assert!(
                        got == want,
                        "{p} B={b} T={t} H={h}: plan {workers} on {threads} threads differs"
                    );
                }
            }
        }
    }
}

/// Traced on one thread as 64 would split it, each team phase of both walks at the small
/// LSTM's shape (B = 16, H = 360) has at least 64 parts and one task per part, and the parts
/// are balanced: no part takes more than twice the median part, a part's time being its
/// median over the walk's phases (so that tasks slowed by other work on the machine do not
/// decide).
#[cfg(feature = "trace")]
#[test]
fn a_traced_walk_records_one_balanced_task_per_part_for_64_workers() {
    use crate::launch::{PhaseKind, trace};
    use crate::parallel::{Plan, plan};
    let (b, t, h) = (16, 32, 360);
    let c = case(b, t, h, 5);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let ((), tr) = pool.install(|| {
        plan(Plan::workers(64), || {
            trace(|| {
                let (_, cs, gates) = forward(&c, Precision::F32);
                backward(&c, &gates, &cs, Precision::F32);
            })
        })
    });
    let walks: Vec<_> = tr.launches.iter().filter(|l| l.steps == t as u64).collect();
    assert_eq!(walks.len(), 2, "{:?}", tr.launches);
    for walk in walks {
        let phases: Vec<_> = walk.phases.iter().filter(|p| !p.tasks.is_empty()).collect();
        // Forward: a phase per step; backward: one more (the first cell backward alone).
        assert!(phases.len() >= t, "{walk:?}");
        let parts = phases[0].parts as usize;
        assert!(parts >= 64, "{parts} parts");
        let mut per_part = vec![Vec::new(); parts];
        for phase in &phases {
            assert_eq!((phase.kind, phase.parts as usize), (PhaseKind::Team, parts));
            let mut seen: Vec<_> = phase.tasks.iter().map(|task| task.part as usize).collect();
            seen.sort_unstable();
            assert!(seen == (0..parts).collect::<Vec<_>>(), "{seen:?}");
            for task in &phase.tasks {
                per_part[task.part as usize].push(task.seconds);
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let per_part: Vec<f64> = per_part.into_iter().map(median).collect();
        let mut sorted = per_part.clone();
        sorted.sort_by(f64::total_cmp);
        let (median, max) = (sorted[parts / 2], sorted[parts - 1]);
        assert!(
            max <= 2.0 * median,
            "max {max} median {median}: {per_part:?}"
        );
    }
    // The packings fork one task per panel.
    let packs: Vec<_> = tr.launches.iter().filter(|l| l.steps == 1).collect();
    assert_eq!(packs.len(), 2);
    for pack in packs {
        let [fork] = &pack.phases[..] else {
            panic!("{pack:?}")
        };
        assert_eq!(fork.kind, PhaseKind::Fork);
        assert_eq!(fork.tasks.len() as u64, fork.parts);
        assert!(pack.bytes > 0);
    }
}

/// Walks started concurrently on one pool (parallel tests, a par_iter over models) must
/// not deadlock: rayon queues each broadcast's jobs on every worker under one lock, in
/// FIFO order, so all workers run the walks in the same order and never wait on each
/// other across two of them. (A deadlock hangs this test.)
#[test]
fn concurrent_walks_on_one_pool_finish_with_the_same_results() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let c = case(3, 5, 2 * LANES + 7, 17);
    let want = forward(&c, Precision::F32);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert!(pool.install(|| forward(&c, Precision::F32)) == want);
                }
            });
        }
    });
    // Nested: walks launched from inside the pool's own parallel loop.
    let all: Vec<_> = pool.install(|| {
        use rayon::prelude::*;
        (0..8)
            .into_par_iter()
            .map(|_| forward(&c, Precision::F32))
            .collect()
    });
    assert!(all.iter().all(|got| *got == want));
}

/// The reference backward is the gradient of the reference forward: finite differences in
/// f32 on L = Σ dhs ⊙ h_{1..T} (central, ε = 1e-2 on inputs of order 1, tolerances to
/// match). With the reference checked here and the fast kernels checked against the
/// references, the fast backward is the fast forward's gradient.
#[test]
fn reference_backward_is_the_gradient_of_reference_forward() {
    let (b, t, h) = (2, 3, 5);
    let c = case(b, t, h, 5);
    let loss = |hs0: &[f32], cs0: &[f32], pre: &[f32]| -> f64 {
        let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), pre.to_vec());
        hs[..b * h].copy_from_slice(hs0);
        cs[..b * h].copy_from_slice(cs0);
        lstm_forward_ref(
            &mut hs,
            &mut cs,
            &mut gates,
            &c.w_hh,
            LstmDims { b, t, h },
            Precision::F32,
        );
        hs[b * h..]
            .iter()
            .zip(&c.dhs)
            .map(|(&x, &d)| x as f64 * d as f64)
            .sum()
    };
    let (h0, c0) = (c.hs[..b * h].to_vec(), c.cs[..b * h].to_vec());
    let (_, cs, gates) = forward_ref(&c);
    let [dg, dh0, dc0] = backward_ref(&c, &gates, &cs);
    let eps = 1e-2;
    let numeric = |which: usize, i: usize| {
        let mut args = [h0.clone(), c0.clone(), c.gates.clone()];
        args[which][i] += eps;
        let up = loss(&args[0], &args[1], &args[2]);
        args[which][i] -= 2.0 * eps;
        let down = loss(&args[0], &args[1], &args[2]);
        ((up - down) / (2.0 * eps as f64)) as f32
    };
    for (which, analytic) in [(0, &dh0), (1, &dc0), (2, &dg)] {
        let fd: Vec<f32> = (0..analytic.len()).map(|i| numeric(which, i)).collect();
        assert_close(analytic, &fd, 2e-2, 2e-3, &format!("argument {which}"));
    }
}

#[test]
#[should_panic(expected = "lstm_forward: gates has 3 elements")]
fn wrong_lengths_panic_with_the_argument_name() {
    let (mut hs, mut cs) = (vec![0.0; 2], vec![0.0; 2]);
    let packed = packed_forward(&[0.0; 4], 1, Precision::F32);
    lstm_forward(
        &mut hs,
        &mut cs,
        &mut [0.0; 3],
        &packed,
        LstmDims::new(1, 1, 1),
    );
}

#[test]
#[should_panic(expected = "lstm: (T+1, B, 4H) = (18446744073709551615+1, 1, 4·1) overflows usize")]
fn dims_whose_buffers_overflow_panic() {
    let (mut hs, mut cs) = (vec![0.0; 2], vec![0.0; 2]);
    let packed = packed_forward(&[0.0; 4], 1, Precision::F32);
    // Unchecked (a literal): the walk checks.
    let dims = LstmDims {
        b: 1,
        t: usize::MAX,
        h: 1,
    };
    lstm_forward(&mut hs, &mut cs, &mut [0.0; 4], &packed, dims);
}

#[test]
#[should_panic(expected = "lstm_backward: w_hh_packed was packed for H = 2, the walk has H = 3")]
fn a_packing_for_another_hidden_size_panics() {
    let packed = packed_backward(&[0.0; 16], 2, Precision::Bf16);
    let (b, t, h) = (1, 1, 3);
    let (mut dg, mut dh0, mut dc0) = (vec![0.0; G * h], vec![0.0; h], vec![0.0; h]);
    let (dhs, gates, cs) = (vec![0.0; h], vec![0.0; G * h], vec![0.0; 2 * h]);
    lstm_backward(
        &mut dg,
        &mut dh0,
        &mut dc0,
        &dhs,
        &gates,
        &cs,
        &packed,
        LstmDims { b, t, h },
    );
}

/// The walk's fused cell and the standalone cell kernels are one arithmetic: with W_hh = 0 the
/// walk's pre-activations are the input projections alone and no gradient flows through W_hh,
/// so its h, c, gates and their gradients equal, bit for bit, the cell kernels applied one time
/// step after another (forward, then backward from the last step).
#[test]
fn the_walks_cell_is_the_cell_kernel_bit_for_bit() {
    use crate::lstm_cell::{lstm_cell_backward, lstm_cell_forward};
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (b, t, h) in [(3, 4, 37), (1, 5, 16)] {
        let mut c = case(b, t, h, 21);
        c.w_hh.fill(0.0);
        let (bh, bg) = (b * h, b * G * h);
        let one = LstmDims::new(b, 1, h);
        let (hs, cs, gates) = forward(&c, Precision::F32);
        let (mut c_prev, mut tanh_cs) = (c.cs[..bh].to_vec(), Vec::new());
        for s in 0..t {
            let mut g = c.gates[s * bg..][..bg].to_vec();
            let (mut c_t, mut h_t, mut tc) = (vec![0.0; bh], vec![0.0; bh], vec![0.0; bh]);
            lstm_cell_forward(&mut c_t, &mut h_t, &mut tc, &mut g, &c_prev, one);
            let at = (s + 1) * bh;
            assert_eq!(bits(&cs[at..][..bh]), bits(&c_t), "c, step {s}");
            assert_eq!(bits(&hs[at..][..bh]), bits(&h_t), "h, step {s}");
            assert_eq!(bits(&gates[s * bg..][..bg]), bits(&g), "gates, step {s}");
            tanh_cs.push(tc);
            c_prev = c_t;
        }
        let [dgates, _, dc0] = backward(&c, &gates, &cs, Precision::F32);
        let mut dc = vec![0.0; bh];
        for s in (0..t).rev() {
            let (mut dg, mut dc_prev) = (vec![0.0; bg], vec![0.0; bh]);
            let (dh, g) = (&c.dhs[s * bh..][..bh], &gates[s * bg..][..bg]);
            let cp = &cs[s * bh..][..bh];
            lstm_cell_backward(&mut dg, &mut dc_prev, dh, &dc, g, cp, &tanh_cs[s], one);
            assert_eq!(bits(&dgates[s * bg..][..bg]), bits(&dg), "dgates, step {s}");
            dc = dc_prev;
        }
        assert_eq!(bits(&dc0), bits(&dc), "dc0");
    }
}

/// Packing W_hh cuts its panels into runs of rows for the planned pool; every cut writes the
/// same packing, for both layouts and an H that ends in a part-filled panel.
#[test]
fn packings_do_not_depend_on_the_planned_workers() {
    use crate::parallel::{Plan, plan};
    let mut rng = TestRng::new(31);
    for h in [360, 2 * LANES + 3, 1] {
        let w_hh = rng.vec(G * h * h, 1.0);
        let pack = |workers| {
            plan(Plan::workers(workers), || {
                let mut f = PackedWhh::<Forward>::new();
                let mut b = PackedWhh::<Backward>::new();
                lstm_pack_forward(&mut f, &w_hh, h, Precision::F32);
                lstm_pack_backward(&mut b, &w_hh, h, Precision::F32);
                (f.fp32().to_vec(), b.fp32().to_vec())
            })
        };
        let want = pack(1);
        for workers in [2, 16, 64, 256] {
            assert!(
                pack(workers) == want,
                "H = {h}: plan {workers} packs differently"
            );
        }
    }
}
