//! Tests of every attention path against the f64 reference: the fused forward and backward
//! over awkward sequence lengths and head sizes, finite differences, thread-count invariance,
//! the naive materialized baseline, decoding with a KV cache, and the plotting probabilities.

use super::*;
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
        attention_forward_ref(
            &mut out, &mut lse, &self.qkv, self.b, self.t, self.c, self.nh,
        );
        (out, lse)
    }

    /// (out, lse) of the fused kernel; outputs start poisoned with NaN.
    fn forward(&self) -> (Vec<f32>, Vec<f32>) {
        let mut out = vec![f32::NAN; self.b * self.t * self.c];
        let mut lse = vec![f32::NAN; self.b * self.nh * self.t];
        attention_forward(
            &mut out, &mut lse, &self.qkv, self.b, self.t, self.c, self.nh,
        );
        (out, lse)
    }

    fn backward_ref(&self, out: &[f32], lse: &[f32]) -> Vec<f32> {
        let mut dqkv = vec![0.0; self.qkv.len()];
        attention_backward_ref(
            &mut dqkv, &self.dout, &self.qkv, out, lse, self.b, self.t, self.c, self.nh,
        );
        dqkv
    }

    fn backward(&self, out: &[f32], lse: &[f32]) -> Vec<f32> {
        let mut dqkv = vec![f32::NAN; self.qkv.len()];
        attention_backward(
            &mut dqkv, &self.dout, &self.qkv, out, lse, self.b, self.t, self.c, self.nh,
        );
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
        let (out, lse) = cs.forward();
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
        let got = cs.parts(&cs.backward(&out, &lse));
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
        let (out, lse) = cs.forward();
        assert_close(&out, &out_ref, 1e-3, 2e-5, &format!("out {}", cs.name()));
        assert_close(&lse, &lse_ref, 1e-5, 1e-4, &format!("lse {}", cs.name()));
        let want = cs.parts(&cs.backward_ref(&out_ref, &lse_ref));
        let got = cs.parts(&cs.backward(&out, &lse));
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
        attention_forward(&mut out, &mut lse, qkv, cs.b, cs.t, cs.c, cs.nh);
        out.iter()
            .zip(&cs.dout)
            .map(|(&o, &g)| o as f64 * g as f64)
            .sum()
    };
    let (out, lse) = cs.forward();
    let grad = cs.backward(&out, &lse);
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
    let (out, lse) = cs.forward();
    let want = cs.backward_ref(&out_ref, &lse_ref);
    let got = cs.backward(&out, &lse);
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
        let run = || {
            let (out, lse) = cs.forward();
            let dqkv = cs.backward(&out, &lse);
            (bits(&out), bits(&lse), bits(&dqkv))
        };
        let one = in_pool(1, run);
        for threads in [2, 3] {
            assert!(
                one == in_pool(threads, run),
                "{}: {threads} threads differ from 1",
                cs.name()
            );
        }
    }
}

#[test]
fn empty_batch_and_sequence_are_no_ops() {
    for (b, t) in [(0, 5), (2, 0)] {
        let c = 32;
        let mut out = vec![0.0; b * t * c];
        let mut lse = vec![0.0; b * 2 * t];
        let qkv = vec![0.0; b * t * 3 * c];
        attention_forward(&mut out, &mut lse, &qkv, b, t, c, 2);
        let mut dqkv = vec![0.0; b * t * 3 * c];
        attention_backward(&mut dqkv, &out, &qkv, &out, &lse, b, t, c, 2);
    }
}

#[test]
#[should_panic(expected = "attention: qkv has")]
fn wrong_qkv_length_panics_with_its_name() {
    let mut out = vec![0.0; 2 * 8];
    let mut lse = vec![0.0; 2];
    attention_forward(&mut out, &mut lse, &[0.0; 10], 1, 2, 8, 1);
}

#[test]
#[should_panic(expected = "multiple of NH")]
fn head_count_must_divide_channels() {
    attention_forward(&mut [], &mut [], &[], 1, 0, 10, 3);
}

#[test]
fn workspace_grows_linearly_in_t() {
    let w1 = attention_workspace(1, 1024, 256, 4);
    let w2 = attention_workspace(1, 2048, 256, 4);
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
        attention_forward_naive(&mut out, &mut preatt, &mut att, &cs.qkv, b, t, c, nh);
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
            b,
            t,
            c,
            nh,
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
        attention_probs(&mut probs, &cs.qkv, b - 1, nh - 1, b, t, c, nh);
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
    attention_probs(&mut p, &cs.qkv, 1, 0, cs.b, cs.t, cs.c, cs.nh);
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
        kv_cache_write(&mut kc, &mut vc, &head, 0, b, prompt, t_max, c);
        for pos in prompt..t {
            let x: Vec<f32> = (0..b)
                .flat_map(|bi| cs.qkv[(bi * t + pos) * 3 * c..][..3 * c].to_vec())
                .collect();
            let mut out = vec![f32::NAN; b * c];
            attention_decode(&mut out, &mut kc, &mut vc, &x, pos, b, t_max, c, nh);
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
    attention_decode(&mut out, &mut kc, &mut vc, &[0.0; 48], 4, b, t_max, c, 1);
}
