//! Mixed precision, for both models: bf16 products with fp32 master weights must compute the
//! same gradients as fp32 up to bf16 rounding, learn the same (a tiny model's held-out loss
//! within 1% of fp32's after a few hundred steps on data with structure), stay bitwise
//! independent of the thread count, and notice when the weights change under a packed cache.
//!
//! On a build without AVX512_BF16 `set_precision(Bf16)` returns `F32`; the tests that compare
//! the two precisions then check that fp32 is what runs.

use kernels::precision::HAS_BF16;
use kernels::testutil::TestRng;
use model::{
    AdamWConfig, Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, Optimizer, OptimizerConfig,
    Precision,
};

const V: usize = 257;

type Factory = fn() -> Box<dyn LanguageModel>;

fn models() -> Vec<(&'static str, Factory)> {
    vec![
        ("gpt", || {
            Box::new(Gpt::new(GptConfig::preset("tiny").unwrap(), 7).unwrap())
        }),
        ("lstm", || Box::new(Lstm::new(LstmConfig::tiny(V), 7))),
    ]
}

/// A stream from a fixed random first-order Markov chain over 24 byte values (each state
/// has 4 likely successors): learnable structure, with a loss floor far above zero, so "within
/// 1%" compares two models that are still learning rather than two memorized batches.
fn markov_stream(len: usize, seed: u64) -> Vec<u32> {
    let mut chain = TestRng::new(42);
    let next: Vec<[u32; 4]> = (0..24)
        .map(|_| std::array::from_fn(|_| 97 + chain.below(24) as u32))
        .collect();
    let mut rng = TestRng::new(seed);
    let mut s = vec![97u32];
    while s.len() < len {
        let prev = (*s.last().unwrap() - 97) as usize;
        let r = rng.below(8);
        s.push(if r < 4 { next[prev][r] } else { next[prev][0] });
    }
    s
}

/// Batch `step`: B windows of T + 1 tokens at pseudo-random offsets of `stream`.
fn batch(stream: &[u32], step: u64, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = TestRng::new(500 + step);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..b {
        let at = rng.below(stream.len() - t - 1);
        x.extend_from_slice(&stream[at..at + t]);
        y.extend_from_slice(&stream[at + 1..at + t + 1]);
    }
    (x, y)
}

fn train(m: &mut dyn LanguageModel, stream: &[u32], steps: u64, b: usize, t: usize) -> Vec<f32> {
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = Optimizer::new(OptimizerConfig::AdamW(cfg), m.layout());
    (0..steps)
        .map(|step| {
            let (x, y) = batch(stream, step, b, t);
            let loss = m.forward(&x, &y, b, t);
            m.zero_grad();
            m.backward();
            let (params, grads) = m.params_and_grads();
            opt.step_clipped(params, grads, 3e-3, 1.0);
            loss
        })
        .collect()
}

/// Mean loss over fixed held-out batches (drawn from a stream the model never trained on).
fn held_out(m: &mut dyn LanguageModel, stream: &[u32], b: usize, t: usize) -> f64 {
    let n = 8;
    (0..n)
        .map(|i| {
            let (x, y) = batch(stream, 10_000 + i, b, t);
            m.forward(&x, &y, b, t) as f64
        })
        .sum::<f64>()
        / n as f64
}

#[test]
fn set_precision_reports_what_the_build_runs() {
    for (name, make) in models() {
        let mut m = make();
        assert_eq!(m.precision(), Precision::F32, "{name}: default");
        let got = m.set_precision(Precision::Bf16);
        assert_eq!(got, Precision::Bf16.effective(), "{name}");
        assert_eq!(m.precision(), got, "{name}");
        assert_eq!(m.set_precision(Precision::F32), Precision::F32, "{name}");
    }
}

/// The bf16 gradient of every tensor against the fp32 one (itself checked against finite
/// differences in gpt.rs / lstm.rs), on the same weights and batch.
///
/// Tolerance: every product operand is rounded to bf16, a relative error of at most
/// u = 2⁻⁸ ≈ 0.4% each, so a product of two carries up to 2u; through the two layers of
/// each tiny model, forward and backward, these compound and partly cancel. Measured worst
/// per-tensor relative error (‖g_bf16 − g_fp32‖ / ‖g_fp32‖): about 0.5% (printed), i.e. ~u;
/// the bound 2% is four times that, and far below what a wrong product gives (~100%: an
/// operand missed, transposed or not refreshed changes the gradient entirely).
#[test]
fn bf16_gradients_match_fp32_to_bf16_rounding() {
    if !HAS_BF16 {
        return;
    }
    for (name, make) in models() {
        let stream = markov_stream(4000, 1);
        let (b, t) = (4, 32);
        let (x, y) = batch(&stream, 0, b, t);
        let grads = |p: Precision| {
            let mut m = make();
            m.set_precision(p);
            let loss = m.forward(&x, &y, b, t);
            m.zero_grad();
            m.backward();
            (loss, m.grads().to_vec(), m.layout().clone())
        };
        let (l32, g32, layout) = grads(Precision::F32);
        let (l16, g16, _) = grads(Precision::Bf16);
        assert!(
            (l16 - l32).abs() < 0.01 * l32,
            "{name}: loss {l16} vs {l32}"
        );
        let mut worst = (0.0f64, String::new());
        let mut any_differs = false;
        for spec in layout.tensors() {
            let (a, b) = (&g16[spec.range()], &g32[spec.range()]);
            let diff: f64 = a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let norm: f64 = b.iter().map(|q| (*q as f64).powi(2)).sum();
            any_differs |= diff > 0.0;
            if norm == 0.0 {
                continue;
            }
            let rel = (diff / norm).sqrt();
            if rel > worst.0 {
                worst = (rel, spec.name.clone());
            }
            assert!(rel < 0.02, "{name} {}: relative error {rel:.3e}", spec.name);
        }
        assert!(
            any_differs,
            "{name}: bf16 gave the fp32 gradients bit for bit"
        );
        println!(
            "{name}: worst relative gradient error {:.2e} ({})",
            worst.0, worst.1
        );
    }
}

/// The CI guard: a tiny model trained a few hundred steps in bf16 ends within 1% of
/// the same run in fp32 (same seed, same batches), on held-out data.
#[test]
fn bf16_learns_as_well_as_fp32() {
    let train_stream = markov_stream(20_000, 1);
    let val_stream = markov_stream(4_000, 2);
    let (b, t, steps) = (8, 32, 300);
    for (name, make) in models() {
        let run = |p: Precision| {
            let mut m = make();
            let got = m.set_precision(p);
            let losses = train(m.as_mut(), &train_stream, steps, b, t);
            (got, losses[0], held_out(m.as_mut(), &val_stream, b, t))
        };
        let (p32, start, v32) = run(Precision::F32);
        let (p16, _, v16) = run(Precision::Bf16);
        assert_eq!(p32, Precision::F32);
        assert_eq!(p16, Precision::Bf16.effective());
        println!("{name}: held-out loss fp32 {v32:.4}, bf16 {v16:.4} (start {start:.3})");
        assert!(
            v32 < 0.6 * start as f64,
            "{name}: fp32 did not learn: {v32}"
        );
        assert!(
            (v16 - v32).abs() <= 0.01 * v32,
            "{name}: bf16 held-out loss {v16:.4} vs fp32 {v32:.4}"
        );
    }
}

#[test]
fn bf16_training_is_bitwise_identical_on_1_and_2_threads() {
    let stream = markov_stream(4000, 3);
    for (name, make) in models() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = make();
                m.set_precision(Precision::Bf16);
                let losses = train(m.as_mut(), &stream, 4, 4, 32);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                (bits(&losses), bits(m.params()))
            })
        };
        assert!(run(1) == run(2), "{name}: 1 and 2 threads differ in bf16");
    }
}

/// Weights changed through `params_mut` after the bf16 packing must be what the next forward
/// uses (a stale packed copy would give the old model's loss).
#[test]
fn changed_weights_are_repacked() {
    let stream = markov_stream(4000, 4);
    let (x, y) = batch(&stream, 0, 2, 16);
    for (name, make) in models() {
        let mut m = make();
        m.set_precision(Precision::Bf16);
        let before = m.forward(&x, &y, 2, 16);
        m.params_mut().iter_mut().for_each(|p| *p *= 0.5);
        let after = m.forward(&x, &y, 2, 16);
        let mut fresh = make();
        fresh.params_mut().iter_mut().for_each(|p| *p *= 0.5);
        fresh.set_precision(Precision::Bf16);
        let want = fresh.forward(&x, &y, 2, 16);
        assert_ne!(before, after, "{name}");
        assert_eq!(
            after.to_bits(),
            want.to_bits(),
            "{name}: stale packed weights"
        );
    }
}

/// The LSTM's walk through time runs in the model's precision: it fails if a bf16 model
/// walks in fp32. One unit (H = 1), two tokens, W_ih = 0 and the embedding 0, so the gates
/// are the biases: c_1 = σ(b_i)·tanh(b_g), h_1 = σ(b_o)·tanh(c_1), the same fp32 values in
/// both precisions (b_g is large: tanh(b_g) = 1). Step 2 adds h_1·W_hh to the g gate, with
/// W_hh = −256 there (0 elsewhere, exact in bf16) and b_g = 256·h_1 + 0.1, so that the g gate
/// sits at 0.1 in fp32, where tanh is steep. A bf16 walk rounds h_1 first, which moves the
/// gate by 256·|h_1 − bf16(h_1)|: b_i is picked so that h_1 lies 0.2–0.45 of a bf16 ulp off
/// the grid (≈ 0.1 on the gate, clear of any rounding boundary). The head (weight 1, exact)
/// rounds h_t to bf16 in both. The test computes both walks' losses in f64; the model's must
/// be the bf16 walk's, within a tenth of the distance between the two.
#[test]
fn lstm_walk_runs_in_the_model_precision() {
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let round = |x: f64| kernels::precision::round_bf16(x as f32) as f64;
    let (b_f, b_o, w) = (0.25, 1.0, -256.0);
    let h1_of = |b_i: f64| sig(b_o) * sig(b_i).tanh();
    // Where h lies within its bf16 ulp: 0 on the grid, 0.5 halfway to the next value.
    let off_grid = |h: f64| ((h - round(h)) / (h.abs() * 2f64.powi(-8))).abs();
    let b_i = (0..1000)
        .map(|i| 0.5 + i as f64 * 1e-3)
        .find(|&b| (0.2..0.45).contains(&off_grid(h1_of(b))))
        .expect("a b_i that puts h_1 off the bf16 grid");
    let h1 = h1_of(b_i) as f32 as f64;
    let b_g = (-w * h1 + 0.1) as f32 as f64;
    // Both steps' loss (targets 0, logits [bf16(h_t), 0]) when the walk sees h_1 as `h1_walk`.
    let loss = |h1_walk: f64| {
        let c1 = sig(b_i); // σ(b_i)·tanh(b_g), tanh(b_g) = 1
        let c2 = sig(b_f) * c1 + sig(b_i) * (b_g + w * h1_walk).tanh();
        let h2 = sig(b_o) * c2.tanh();
        let ce = |z: f64| (z.exp() + 1.0).ln() - z;
        (ce(round(h1)) + ce(round(h2))) / 2.0
    };
    let (bf16_walk, fp32_walk) = (loss(round(h1)), loss(h1));
    let apart = (bf16_walk - fp32_walk).abs();
    assert!(
        apart > 1e-3,
        "the two walks' losses are only {apart:e} apart"
    );

    let mut m = Lstm::new(LstmConfig::new(2, 1, 1), 0);
    let layout = m.layout().clone();
    let params = m.params_mut();
    params.fill(0.0);
    let mut set = |name: &str, values: &[f64]| {
        let t = layout
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        for (p, &v) in params[t.range()].iter_mut().zip(values) {
            *p = v as f32;
        }
    };
    set("lstm.bias_ih_l0", &[b_i, b_f, b_g, b_o]); // gates i, f, g, o
    set("lstm.weight_hh_l0", &[0.0, 0.0, w, 0.0]); // (4H, H) = (4, 1)
    set("head.weight", &[1.0, 0.0]); // (V, H) = (2, 1)
    let got = m.set_precision(Precision::Bf16);
    let loss = m.forward(&[0, 0], &[0, 0], 1, 2) as f64;
    let want = if HAS_BF16 { bf16_walk } else { fp32_walk };
    assert_eq!(got, Precision::Bf16.effective());
    assert!(
        (loss - want).abs() < apart / 10.0,
        "loss {loss} is not the {got} walk's {want} (bf16 walk {bf16_walk}, fp32 walk {fp32_walk})"
    );
}
