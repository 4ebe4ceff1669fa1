//! Tests of every attention path against the f64 reference: the fused forward and backward
//! over awkward sequence lengths and head sizes, finite differences, thread-count invariance,
//! the naive materialized baseline, decoding with a KV cache, and the plotting probabilities.

use super::*;
use crate::precision::Precision::{self, Bf16, F32};
use crate::testutil::{TestRng, assert_close};

/// The sequence lengths the issue asks for: 1, 2, a prime, tile − 1, tile, tile + 1, and a
/// length spanning several tiles with a ragged end.
const LENGTHS: [usize; 7] = [1, 2, 17, 63, 64, 65, 300];

struct Case {
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
    qkv: Vec<f32>,  // (B, T, 3C)
    dout: Vec<f32>, // (B, T, C)
}

impl Case {
    /// Random q, k, v of magnitude `mag` (scores then have spread ≈ mag²·√HS / 3).
    fn new(b: usize, t: usize, nh: usize, hs: usize, mag: f32, seed: u64) -> Self {
        let c = nh * hs;
        let mut rng = TestRng::new(seed);
        Case {
            b,
            t,
            c,
            nh,
            qkv: rng.vec(b * t * 3 * c, mag),
            dout: rng.vec(b * t * c, 1.0),
        }
    }

    fn dims(&self) -> AttnDims {
        AttnDims::new(self.b, self.t, self.c, self.nh)
    }

    fn name(&self) -> String {
        format!(
            "B={} T={} NH={} HS={}",
            self.b,
            self.t,
            self.nh,
            self.c / self.nh
        )
    }

    /// (out, lse) of the f64 reference.
    fn forward_ref(&self) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![0.0; self.b * self.t * self.c];
        let mut lse = vec![0.0; self.b * self.nh * self.t];
        attention_forward_ref(&mut out, &mut lse, &self.qkv, self.dims());
        (out, lse)
    }

    /// (out, lse) of the fused kernel; outputs start poisoned with NaN.
    fn forward(&self, p: Precision) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![f32::NAN; self.b * self.t * self.c];
        let mut lse = vec![f32::NAN; self.b * self.nh * self.t];
        attention_forward(&mut out, &mut lse, &self.qkv, self.dims(), p);
        (out, lse)
    }

    fn backward_ref(&self, out: &[f32], lse: &[f32]) -> Vec<f32> {
        let mut dqkv = vec![0.0; self.qkv.len()];
        attention_backward_ref(&mut dqkv, &self.dout, &self.qkv, out, lse, self.dims());
        dqkv
    }

    fn backward(&self, out: &[f32], lse: &[f32], p: Precision) -> Vec<f32> {
        let mut dqkv = vec![f32::NAN; self.qkv.len()];
        attention_backward(&mut dqkv, &self.dout, &self.qkv, out, lse, self.dims(), p);
        dqkv
    }

    /// Splits a (B, T, 3C) gradient into its dq, dk, dv parts, each (B, T, C).
    fn parts(&self, g: &[f32]) -> [Vec<f32>; 3] {
        std::array::from_fn(|p| {
            g.chunks_exact(3 * self.c)
                .flat_map(|row| row[p * self.c..][..self.c].to_vec())
                .collect()
        })
    }
}

/// Every shape the tests sweep: the lengths × HS ∈ {16, 64}, with varying B and NH,
/// plus head sizes that are not a multiple of the lane width.
fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (n, &t) in LENGTHS.iter().enumerate() {
        for hs in [16, 64] {
            let (b, nh) = [(1, 1), (2, 3), (1, 4), (3, 2)][n % 4];
            v.push(Case::new(b, t, nh, hs, 1.0, 100 + n as u64 * 7 + hs as u64));
        }
    }
    v.push(Case::new(2, 70, 2, 8, 1.0, 1));
    v.push(Case::new(1, 130, 3, 24, 1.0, 2));
    v.push(Case::new(1, 129, 1, 80, 1.0, 3));
    v
}

#[test]
fn forward_matches_reference() {
    for cs in cases() {
        let (out_ref, lse_ref) = cs.forward_ref();
        let (out, lse) = cs.forward(F32);
        assert_close(&out, &out_ref, 1e-4, 2e-6, &format!("out {}", cs.name()));
        assert_close(&lse, &lse_ref, 1e-5, 1e-5, &format!("lse {}", cs.name()));
    }
}

#[test]
fn backward_matches_reference() {
    for cs in cases() {
        // Same saved activations for both, so only the backward is compared.
        let (out, lse) = cs.forward_ref();
        let want = cs.parts(&cs.backward_ref(&out, &lse));
        let got = cs.parts(&cs.backward(&out, &lse, F32));
        for (p, name) in ["dq", "dk", "dv"].iter().enumerate() {
            assert_close(
                &got[p],
                &want[p],
                1e-3,
                2e-5,
                &format!("{name} {}", cs.name()),
            );
        }
    }
}

/// Sharp attention (scores spread over tens of units) exercises the online max: a row's max
/// changes between tiles and e^(s − m) spans the whole float range.
#[test]
fn sharp_scores_stay_accurate() {
    for (t, hs) in [(300, 64), (200, 16)] {
        let cs = Case::new(1, t, 2, hs, 4.0, 9);
        let (out_ref, lse_ref) = cs.forward_ref();
        let (out, lse) = cs.forward(F32);
        assert_close(&out, &out_ref, 1e-3, 2e-5, &format!("out {}", cs.name()));
        assert_close(&lse, &lse_ref, 1e-5, 1e-4, &format!("lse {}", cs.name()));
        let want = cs.parts(&cs.backward_ref(&out_ref, &lse_ref));
        let got = cs.parts(&cs.backward(&out, &lse, F32));
        for (p, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let scale = want[p].iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert_close(
                &got[p],
                &want[p],
                2e-3,
                1e-4 * scale,
                &format!("{name} {}", cs.name()),
            );
        }
    }
}

/// The fused gradient against central differences of the fused forward, in f64 sums of f32
/// runs: L = Σ dout ∘ out.
#[test]
fn backward_matches_finite_differences() {
    let cs = Case::new(2, 5, 2, 8, 1.0, 42);
    let loss = |qkv: &[f32]| -> f64 {
        let mut out = vec![0.0; cs.b * cs.t * cs.c];
        let mut lse = vec![0.0; cs.b * cs.nh * cs.t];
        attention_forward(&mut out, &mut lse, qkv, cs.dims(), Precision::F32);
        out.iter()
            .zip(&cs.dout)
            .map(|(&o, &g)| o as f64 * g as f64)
            .sum()
    };
    let (out, lse) = cs.forward(F32);
    let grad = cs.backward(&out, &lse, F32);
    let eps = 1e-2f32;
    let mut fd = vec![0.0f32; grad.len()];
    let mut x = cs.qkv.clone();
    for i in 0..x.len() {
        let x0 = x[i];
        x[i] = x0 + eps;
        let lp = loss(&x);
        x[i] = x0 - eps;
        let lm = loss(&x);
        x[i] = x0;
        fd[i] = ((lp - lm) / (2.0 * eps as f64)) as f32;
    }
    assert_close(&grad, &fd, 1e-2, 1e-3, "dqkv vs finite differences");
}

/// The whole training path, fused forward then fused backward, against the reference's.
#[test]
fn forward_then_backward_matches_reference() {
    let cs = Case::new(2, 150, 4, 16, 1.5, 77);
    let (out_ref, lse_ref) = cs.forward_ref();
    let (out, lse) = cs.forward(F32);
    let want = cs.backward_ref(&out_ref, &lse_ref);
    let got = cs.backward(&out, &lse, F32);
    assert_close(&got, &want, 1e-3, 5e-5, "dqkv");
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Results must not depend on the pool size: the splits and reduction orders are fixed by
/// the shapes alone.
#[test]
fn results_do_not_depend_on_thread_count() {
    for cs in [
        Case::new(1, 300, 2, 64, 1.0, 5),
        Case::new(2, 600, 1, 16, 1.0, 6),
    ] {
        for p in [F32, Bf16] {
            let run = || {
                let (out, lse) = cs.forward(p);
                let dqkv = cs.backward(&out, &lse, p);
                (bits(&out), bits(&lse), bits(&dqkv))
            };
            let one = in_pool(1, run);
            for threads in [2, 3] {
                assert!(
                    one == in_pool(threads, run),
                    "{} {p}: {threads} threads differ from 1",
                    cs.name()
                );
            }
        }
    }
}

/// Results must not depend on the pool a kernel plans for either: the forward chooses
/// between pairs of query tiles and single tiles by `workers()`, which must change no bit, and
/// the backward's groups (which fix the dQ summation order) must depend on the shape alone. At
/// B = 16, T = 256, NH = 4 the forward splits into pairs at 16 workers and into single tiles at
/// 64; fp32 is also checked against the reference.
#[test]
fn results_do_not_depend_on_the_planned_pool() {
    use crate::parallel::{Plan, plan};
    for cs in [
        Case::new(16, 256, 4, 16, 1.0, 7),
        Case::new(3, 300, 2, 24, 1.0, 8),
    ] {
        let (out_ref, lse_ref) = cs.forward_ref();
        let dqkv_ref = cs.backward_ref(&out_ref, &lse_ref);
        for p in [F32, Bf16] {
            let run = |workers: usize| {
                in_pool(2, || {
                    plan(Plan::workers(workers), || {
                        let (out, lse) = cs.forward(p);
                        let dqkv = cs.backward(&out, &lse, p);
                        (out, lse, dqkv)
                    })
                })
            };
            let (out, lse, dqkv) = run(1);
            if p == F32 {
                let name = cs.name();
                assert_close(&out, &out_ref, 1e-4, 2e-6, &format!("out {name}"));
                assert_close(&lse, &lse_ref, 1e-5, 1e-5, &format!("lse {name}"));
                assert_close(&dqkv, &dqkv_ref, 1e-3, 5e-5, &format!("dqkv {name}"));
            }
            let one = (bits(&out), bits(&lse), bits(&dqkv));
            for workers in [2, 16, 64] {
                let (out, lse, dqkv) = run(workers);
                assert!(
                    one == (bits(&out), bits(&lse), bits(&dqkv)),
                    "{} {p}: planned for {workers} workers differs from 1",
                    cs.name()
                );
            }
        }
    }
}

/// A training shape (B = 16, C = 256, NH = 4) traced on one thread as a pool of P would split
/// it: each launch's tile phase has at least 4·P tasks at P = 16 and 64, every task is
/// recorded, and the tile tasks cost the same (the largest at most twice the median). T = 512
/// (8 tiles) rather than 1024 keeps the test fast and shows the same split: the forward's
/// 64 heads × 4 pairs of query tiles and the backward's 64 heads × 4 groups (one snake pair
/// each) are 256 tasks of 9 key·query tiles each (at T = 1024: 512 forward pairs and 256
/// groups of two pairs). Timing is noisy on a shared machine, so the balance has three tries.
#[cfg(feature = "trace")]
#[test]
fn a_traced_step_has_balanced_tasks_for_64_workers() {
    use crate::launch::trace;
    use crate::parallel::{Plan, plan};
    let cs = Case::new(16, 512, 4, 64, 1.0, 9);
    let bytes = std::mem::size_of::<f32>();
    let (qkv, bt_c, lse) = (cs.qkv.len(), cs.dout.len(), 16 * 4 * 512);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let step = |workers: usize| {
        pool.install(|| {
            plan(Plan::workers(workers), || {
                trace(|| {
                    let (out, lse) = cs.forward(F32);
                    cs.backward(&out, &lse, F32);
                })
                .1
            })
        })
    };
    // Each task's least time over the runs: a task preempted by another process in one run
    // is not counted against the split.
    let mut least = [vec![f64::INFINITY; 256], vec![f64::INFINITY; 256]];
    for run in 0..5 {
        for workers in [16, 64] {
            let tr = step(workers);
            let [fwd, bwd] = &tr.launches[..] else {
                panic!("two launches expected: {tr:?}")
            };
            assert_eq!(fwd.bytes as usize, bytes * (qkv + bt_c + lse));
            assert_eq!(bwd.bytes as usize, bytes * (bt_c + qkv + bt_c + lse + qkv));
            for (l, least) in [fwd, bwd].into_iter().zip(&mut least) {
                let name = l.kernel;
                assert_eq!(l.phases.len(), 3, "{name}: pack, tiles, scatter");
                for ph in &l.phases {
                    assert_eq!(ph.tasks.len() as u64, ph.parts, "{name}: every task traced");
                }
                let largest = l.phases.iter().map(|ph| ph.parts).max().unwrap();
                let tiles = &l.phases[1];
                assert!(
                    largest >= 4 * workers as u64 && tiles.parts >= 4 * workers as u64,
                    "{name} at P = {workers}: phases of {:?} tasks",
                    l.phases.iter().map(|ph| ph.parts).collect::<Vec<_>>()
                );
                if workers == 64 {
                    assert_eq!(tiles.parts, 256, "{name}");
                    for t in &tiles.tasks {
                        let x = &mut least[t.part as usize];
                        *x = x.min(t.seconds);
                    }
                }
            }
        }
        let ratio = |t: &[f64]| {
            let mut t = t.to_vec();
            t.sort_by(f64::total_cmp);
            t[t.len() - 1] / t[t.len() / 2]
        };
        let ratios = least.each_ref().map(|t| ratio(t));
        if run >= 2 && ratios.iter().all(|&r| r <= 2.0) {
            return;
        }
        if run == 4 {
            panic!("tile tasks unbalanced: max / median of (forward, backward) = {ratios:?}");
        }
    }
}

/// B = 0 or T = 0: every buffer is empty, so "no-op" means each call still checks its
/// arguments, returns after one launch, and sizes no workspace (the size is what it would
/// allocate).
#[test]
fn empty_batch_and_sequence_are_no_ops() {
    for (b, t) in [(0, 5), (2, 0)] {
        let (c, nh) = (32, 2);
        let dims = AttnDims { b, t, c, nh };
        let mut out = vec![0.0; b * t * c];
        let mut lse = vec![0.0; b * nh * t];
        let qkv = vec![0.0; b * t * 3 * c];
        for p in [Precision::F32, Precision::Bf16] {
            let mut dqkv = vec![0.0; b * t * 3 * c];
            let ((), launches) = crate::launch::count(|| {
                attention_forward(&mut out, &mut lse, &qkv, dims, p);
                attention_backward(&mut dqkv, &out, &qkv, &out, &lse, dims, p);
            });
            assert_eq!(launches, 2, "B={b} T={t} {p}");
            let ws = attention_workspace(dims, p);
            assert_eq!(
                (ws.forward_bytes, ws.backward_bytes),
                (0, 0),
                "B={b} T={t} {p}"
            );
            // The arguments are still checked: one stray float in `out` is refused.
            let refused = std::panic::catch_unwind(|| {
                attention_forward(&mut [0.0], &mut [], &[], dims, p);
            });
            let msg = refused.expect_err("a 1-float out for an empty batch must panic");
            let msg = msg
                .downcast_ref::<String>()
                .expect("a formatted panic message");
            assert!(msg.contains("attention: out has 1 floats"), "{msg}");
        }
    }
}

#[test]
#[should_panic(expected = "attention: qkv has")]
fn wrong_qkv_length_panics_with_its_name() {
    let mut out = vec![0.0; 2 * 8];
    let mut lse = vec![0.0; 2];
    let dims = AttnDims::new(1, 2, 8, 1);
    attention_forward(&mut out, &mut lse, &[0.0; 10], dims, Precision::F32);
}

#[test]
#[should_panic(expected = "multiple of NH")]
fn head_count_must_divide_channels() {
    // Built field by field, unchecked: the entry point checks.
    let dims = AttnDims {
        b: 1,
        t: 0,
        c: 10,
        nh: 3,
    };
    attention_forward(&mut [], &mut [], &[], dims, Precision::F32);
}

#[test]
#[should_panic(expected = "attention: C = 8 must be a positive multiple of NH = 0")]
fn checked_dims_refuse_zero_heads() {
    AttnDims::new(1, 4, 8, 0);
}

#[test]
fn workspace_grows_linearly_in_t() {
    let w1 = attention_workspace(AttnDims::new(1, 1024, 256, 4), Precision::F32);
    let w2 = attention_workspace(AttnDims::new(1, 2048, 256, 4), Precision::F32);
    assert_eq!(w2.forward_bytes, 2 * w1.forward_bytes);
    // The backward's group count saturates at T = 8 tiles, after which it is linear too.
    assert_eq!(w2.backward_bytes, 2 * w1.backward_bytes);
    assert_eq!(w1.per_thread_bytes, w2.per_thread_bytes);
    // Under half of one materialized (B, NH, T, T) matrix at T = 2048.
    let matrix_bytes = 4 * 2048 * 2048 * std::mem::size_of::<f32>();
    assert!(2 * w2.backward_bytes < matrix_bytes, "{w2:?}");
}

#[test]
fn naive_matches_reference() {
    for cs in [
        Case::new(2, 65, 3, 16, 1.0, 21),
        Case::new(1, 17, 2, 64, 2.0, 22),
        Case::new(1, 9, 2, 12, 1.0, 23),
    ] {
        let (b, t, c, nh) = (cs.b, cs.t, cs.c, cs.nh);
        let (out_ref, lse_ref) = cs.forward_ref();
        let mut out = vec![f32::NAN; b * t * c];
        let mut preatt = vec![f32::NAN; b * nh * t * t];
        let mut att = vec![f32::NAN; b * nh * t * t];
        attention_forward_naive(&mut out, &mut preatt, &mut att, &cs.qkv, cs.dims());
        assert_close(
            &out,
            &out_ref,
            1e-4,
            2e-6,
            &format!("naive out {}", cs.name()),
        );
        let mut dqkv = vec![f32::NAN; b * t * 3 * c];
        let mut dpreatt = vec![0.0; b * nh * t * t];
        let mut datt = vec![0.0; b * nh * t * t];
        attention_backward_naive(
            &mut dqkv,
            &mut dpreatt,
            &mut datt,
            &cs.dout,
            &cs.qkv,
            &att,
            cs.dims(),
        );
        let want = cs.backward_ref(&out_ref, &lse_ref);
        assert_close(
            &dqkv,
            &want,
            1e-3,
            2e-5,
            &format!("naive dqkv {}", cs.name()),
        );
        // att holds the probabilities the plotting path reports.
        let mut probs = vec![f32::NAN; t * t];
        attention_probs(&mut probs, &cs.qkv, cs.dims(), b - 1, nh - 1);
        let head = ((b - 1) * nh + nh - 1) * t * t;
        assert_close(
            &probs,
            &att[head..][..t * t],
            1e-5,
            1e-6,
            "probs vs naive att",
        );
    }
}

#[test]
fn probs_are_causal_rows_that_sum_to_one() {
    let cs = Case::new(2, 40, 2, 16, 2.0, 31);
    let mut p = vec![f32::NAN; 40 * 40];
    attention_probs(&mut p, &cs.qkv, cs.dims(), 1, 0);
    for (i, row) in p.chunks_exact(40).enumerate() {
        assert!(
            row[i + 1..].iter().all(|&x| x == 0.0),
            "row {i} attends to the future"
        );
        assert!(
            row[..=i].iter().all(|&x| x > 0.0),
            "row {i} has a zero probability"
        );
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "row {i} sums to {s}");
    }
}

/// Feeding a sequence one token at a time through the cache gives the forward's rows; so does
/// a prompt written with `kv_cache_write` followed by decode steps.
#[test]
fn decode_matches_forward_rows() {
    for (b, t, nh, hs) in [(2, 70, 2, 16), (1, 33, 4, 64), (3, 5, 3, 8), (1, 20, 1, 20)] {
        let cs = Case::new(b, t, nh, hs, 1.5, 50 + t as u64);
        let c = cs.c;
        let (out_ref, _) = cs.forward_ref();
        let t_max = t + 3;
        let mut kc = vec![f32::NAN; b * t_max * c];
        let mut vc = vec![f32::NAN; b * t_max * c];
        let prompt = t / 3;
        // The prompt's rows of qkv, (B, prompt, 3C).
        let head: Vec<f32> = (0..b)
            .flat_map(|bi| cs.qkv[bi * t * 3 * c..][..prompt * 3 * c].to_vec())
            .collect();
        let cache = AttnDims {
            t: t_max,
            ..cs.dims()
        };
        kv_cache_write(&mut kc, &mut vc, &head, cache, 0..prompt);
        for pos in prompt..t {
            let x: Vec<f32> = (0..b)
                .flat_map(|bi| cs.qkv[(bi * t + pos) * 3 * c..][..3 * c].to_vec())
                .collect();
            let mut out = vec![f32::NAN; b * c];
            attention_decode(&mut out, &mut kc, &mut vc, &x, cache, pos);
            let want: Vec<f32> = (0..b)
                .flat_map(|bi| out_ref[(bi * t + pos) * c..][..c].to_vec())
                .collect();
            assert_close(
                &out,
                &want,
                1e-4,
                2e-6,
                &format!("decode pos {pos} of {}", cs.name()),
            );
        }
    }
}

#[test]
#[should_panic(expected = "do not fit a cache")]
fn decode_past_the_cache_panics() {
    let (b, c, t_max) = (1, 16, 4);
    let mut kc = vec![0.0; b * t_max * c];
    let mut vc = vec![0.0; b * t_max * c];
    let mut out = vec![0.0; b * c];
    let cache = AttnDims::new(b, t_max, c, 1);
    attention_decode(&mut out, &mut kc, &mut vc, &[0.0; 48], cache, 4);
}

// bf16. The kernel rounds q, k, v and dout to bf16 (nearest even) once, as it packs them, and
// rounds the score tiles P and dS to bf16 right before the products that take them (P·V,
// Pᵀ·dO; dSᵀ·Q, dS·K); every product sums in fp32 and the softmax is fp32. So against the f64
// reference run on the rounded q, k, v, dout, the only errors beyond fp32's come from P and
// dS, each term off by at most half a bf16 ulp, u = 2⁻⁸ of itself:
//
//   |Δout_tc| ≤ u·Σ_j P_tj·|v_jc|                  (P normalized; l is summed from fp32 P)
//   |Δdv_jc|  ≤ u·Σ_t P_tj·|dout_tc|
//   |Δdk_jc|  ≤ u·Σ_t |dS_tj|·|q_tc| / √HS,   |Δdq_tc| ≤ u·Σ_j |dS_tj|·|k_jc| / √HS
//
// The tests allow that bound (from the reference's P and dS) plus the fp32 tests' tolerance.

/// Half an ulp of bf16 (8 significant bits), relative.
const BF16_U: f64 = 1.0 / 256.0;

/// `x` with every element rounded to bf16.
fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| crate::precision::round_bf16(v)).collect()
}

impl Case {
    /// The same case with q, k, v and dout rounded to bf16.
    fn rounded(&self) -> Case {
        Case {
            qkv: rounded(&self.qkv),
            dout: rounded(&self.dout),
            ..*self
        }
    }

    /// Element (b, t, part, h, c) of qkv.
    fn x(&self, b: usize, t: usize, part: usize, h: usize, c: usize) -> f64 {
        let hs = self.c / self.nh;
        self.qkv[(b * self.t + t) * 3 * self.c + part * self.c + h * hs + c] as f64
    }

    /// The per-element bounds above, [out, dq, dk, dv], each (B, T, C), from f64 P and dS of
    /// this case's (already rounded) values.
    fn bf16_bounds(&self) -> [Vec<f64>; 4] {
        let (b_n, t_n, c_n, nh) = (self.b, self.t, self.c, self.nh);
        let hs = c_n / nh;
        let scale = 1.0 / (hs as f64).sqrt();
        let mut bounds: [Vec<f64>; 4] = std::array::from_fn(|_| vec![0.0; b_n * t_n * c_n]);
        let at = |b: usize, t: usize, h: usize, c: usize| (b * t_n + t) * c_n + h * hs + c;
        for b in 0..b_n {
            for h in 0..nh {
                // P and dS of this head, (T, T), causal.
                let mut p = vec![0.0f64; t_n * t_n];
                let mut ds = vec![0.0f64; t_n * t_n];
                for t in 0..t_n {
                    let s: Vec<f64> = (0..=t)
                        .map(|j| {
                            (0..hs)
                                .map(|c| self.x(b, t, 0, h, c) * self.x(b, j, 1, h, c))
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                    let dout = |c: usize| self.dout[at(b, t, h, c)] as f64;
                    let dp: Vec<f64> = (0..=t)
                        .map(|j| (0..hs).map(|c| dout(c) * self.x(b, j, 2, h, c)).sum())
                        .collect();
                    let pr: Vec<f64> = s.iter().map(|x| (x - mx).exp() / z).collect();
                    let dd: f64 = pr.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..=t {
                        p[t * t_n + j] = pr[j];
                        ds[t * t_n + j] = pr[j] * (dp[j] - dd);
                    }
                }
                for t in 0..t_n {
                    for c in 0..hs {
                        let (mut o, mut dq, mut dk, mut dv) = (0.0, 0.0, 0.0, 0.0);
                        for j in 0..=t {
                            o += p[t * t_n + j] * self.x(b, j, 2, h, c).abs();
                            dq += ds[t * t_n + j].abs() * self.x(b, j, 1, h, c).abs();
                        }
                        // Column t as the key: every query s ≥ t.
                        for s in t..t_n {
                            dk += ds[s * t_n + t].abs() * self.x(b, s, 0, h, c).abs();
                            dv += p[s * t_n + t] * (self.dout[at(b, s, h, c)] as f64).abs();
                        }
                        let i = at(b, t, h, c);
                        bounds[0][i] = BF16_U * o;
                        bounds[1][i] = BF16_U * scale * dq;
                        bounds[2][i] = BF16_U * scale * dk;
                        bounds[3][i] = BF16_U * dv;
                    }
                }
            }
        }
        bounds
    }
}

/// |got − want| ≤ bound + rtol·|want| + atol, element by element.
fn assert_within(got: &[f32], want: &[f32], bound: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (g as f64 - w as f64).abs();
        let tol = b + rtol * (w as f64).abs() + atol;
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w}: error {err:e} over {tol:e} (bf16 bound {b:e})"
        );
    }
}

/// The cases of the fp32 tests, plus sharp attention (scores spread over tens of units).
fn bf16_cases() -> Vec<Case> {
    let mut v = cases();
    v.push(Case::new(1, 300, 2, 64, 4.0, 9));
    v.push(Case::new(1, 200, 2, 16, 4.0, 10));
    v
}

#[test]
fn bf16_forward_within_the_rounding_bound() {
    for cs in bf16_cases() {
        let (out, lse) = cs.forward(Bf16);
        let what = |x: &str| format!("bf16 {x} {}", cs.name());
        if !crate::precision::HAS_BF16 {
            // The fallback runs fp32, bit for bit.
            let (out32, lse32) = cs.forward(F32);
            assert!(
                bits(&out) == bits(&out32) && bits(&lse) == bits(&lse32),
                "{}",
                what("fallback")
            );
            continue;
        }
        // The kernel is given the unrounded values; the reference the rounded ones.
        let r = cs.rounded();
        let (out_ref, lse_ref) = r.forward_ref();
        let [bound, ..] = r.bf16_bounds();
        assert_within(&out, &out_ref, &bound, 1e-4, 2e-6, &what("out"));
        // lse depends on the rounded q, k only: fp32 error.
        assert_close(&lse, &lse_ref, 1e-5, 1e-4, &what("lse"));
    }
}

#[test]
fn bf16_backward_within_the_rounding_bound() {
    for cs in bf16_cases() {
        let r = cs.rounded();
        // The same saved activations (the reference's, on the rounded values) for both.
        let (out, lse) = r.forward_ref();
        let got = cs.parts(&cs.backward(&out, &lse, Bf16));
        if !crate::precision::HAS_BF16 {
            let want = cs.parts(&cs.backward(&out, &lse, F32));
            assert!(got == want, "bf16 fallback {}", cs.name());
            continue;
        }
        let want = r.parts(&r.backward_ref(&out, &lse));
        let [_, bq, bk, bv] = r.bf16_bounds();
        for (p, (name, bound)) in [("dq", bq), ("dk", bk), ("dv", bv)].iter().enumerate() {
            // Sharp cases' gradients are larger: the fp32 tests' atol scales with them.
            let scale = want[p].iter().fold(1.0f32, |m, x| m.max(x.abs())) as f64;
            let what = format!("bf16 {name} {}", cs.name());
            assert_within(&got[p], &want[p], bound, 2e-3, 1e-4 * scale, &what);
        }
    }
}

/// The kernel rounds its inputs itself, exactly once: given values already rounded to bf16 it
/// computes the same bits. (An fp32 kernel would see different inputs and differ.)
#[test]
fn bf16_rounds_q_k_v_and_dout_on_entry() {
    for cs in [
        Case::new(2, 130, 2, 64, 1.0, 61),
        Case::new(1, 70, 3, 24, 1.0, 62),
    ] {
        let r = cs.rounded();
        let (out, lse) = cs.forward(Bf16);
        let (out_r, lse_r) = r.forward(Bf16);
        let dqkv = cs.backward(&out, &lse, Bf16);
        let dqkv_r = r.backward(&out, &lse, Bf16);
        let same = bits(&out) == bits(&out_r)
            && bits(&lse) == bits(&lse_r)
            && bits(&dqkv) == bits(&dqkv_r);
        assert_eq!(same, crate::precision::HAS_BF16, "{}", cs.name());
    }
}

/// bf16 is really bf16: on unrounded inputs it differs from the fp32 kernel by the rounding
/// (about 2⁻⁸ relative), far beyond the fp32 kernel's own error. (A bf16 request that silently
/// ran fp32 would fail here.)
#[test]
fn bf16_differs_from_fp32_by_the_rounding() {
    if !crate::precision::HAS_BF16 {
        return;
    }
    let cs = Case::new(1, 200, 2, 64, 1.0, 63);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let (out, lse) = cs.forward(Bf16);
    let (out32, lse32) = cs.forward(F32);
    let d_out = max_diff(&out, &out32);
    let d_lse = max_diff(&lse, &lse32);
    let g = cs.backward(&out32, &lse32, Bf16);
    let g32 = cs.backward(&out32, &lse32, F32);
    let d_g = max_diff(&g, &g32);
    // fp32 agrees with the reference to about 1e-5 here (the fp32 tests' tolerances).
    assert!(
        d_out > 2e-4 && d_lse > 2e-4 && d_g > 2e-4,
        "bf16 vs fp32: out {d_out:e}, lse {d_lse:e}, dqkv {d_g:e}: the operands were not rounded"
    );
}

#[test]
fn bf16_workspace_is_smaller() {
    let dims = AttnDims::new(1, 1024, 256, 4);
    let w32 = attention_workspace(dims, F32);
    let w16 = attention_workspace(dims, Bf16);
    if crate::precision::HAS_BF16 {
        assert!(w16.forward_bytes < w32.forward_bytes, "{w16:?} vs {w32:?}");
        assert!(
            w16.backward_bytes < w32.backward_bytes,
            "{w16:?} vs {w32:?}"
        );
        assert!(w16.per_thread_bytes > w32.per_thread_bytes);
    } else {
        assert_eq!(w16, w32);
    }
}
