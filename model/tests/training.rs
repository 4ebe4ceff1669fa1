//! Training-loop properties every model must have, written once over `dyn LanguageModel`:
//! it can overfit a single small batch, a run is bitwise identical on 1 and 2 threads, and a
//! run resumed from a checkpoint reproduces the uninterrupted run's losses exactly.
//!
//! Each property runs for every model (`models()`): the transformer and the LSTM.

use kernels::testutil::TestRng;
use model::{
    AdamWConfig, Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, Optimizer, OptimizerConfig,
    Schedule, load_checkpoint, load_resume, save_checkpoint,
};

/// Makes a fresh model; each call gives the same initial weights.
type Factory = fn() -> Box<dyn LanguageModel>;

/// A tiny instance of every model, by name (byte vocabulary).
fn models() -> Vec<(&'static str, Factory)> {
    vec![
        ("gpt", || {
            Box::new(Gpt::new(GptConfig::preset("tiny").unwrap(), 7).unwrap())
        }),
        ("lstm", || Box::new(Lstm::new(LstmConfig::tiny(V), 7))),
    ]
}

const V: usize = 257;

/// Batch `step` of a fixed synthetic stream: (B, T) inputs and next-token targets, a pure
/// function of the step (as the real loader is of seed and step).
fn batch(step: u64, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = TestRng::new(1000 + step);
    let stream: Vec<u32> = (0..b * (t + 1)).map(|_| rng.below(V) as u32).collect();
    let rows = stream.chunks_exact(t + 1);
    let inputs = rows.clone().flat_map(|r| r[..t].to_vec()).collect();
    let targets = rows.flat_map(|r| r[1..].to_vec()).collect();
    (inputs, targets)
}

/// One training step (forward, backward, clip to norm 1, AdamW): returns the loss.
fn train_step(
    m: &mut dyn LanguageModel,
    opt: &mut Optimizer,
    lr: f32,
    inputs: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> f32 {
    let loss = m.forward(inputs, targets, b, t);
    m.zero_grad();
    m.backward();
    let (params, grads) = m.params_and_grads();
    opt.step_clipped(params, grads, lr, 1.0);
    loss
}

fn adamw(m: &dyn LanguageModel) -> Optimizer {
    Optimizer::new(OptimizerConfig::AdamW(AdamWConfig::default()), m.layout())
}

#[test]
fn every_model_overfits_a_single_batch() {
    for (name, make) in models() {
        let mut m = make();
        let mut opt = adamw(&*m);
        let (b, t) = (2, 16);
        let (inputs, targets) = batch(0, b, t);
        let mut loss = f32::INFINITY;
        for _ in 0..400 {
            loss = train_step(&mut *m, &mut opt, 1e-2, &inputs, &targets, b, t);
            if loss < 0.05 {
                break;
            }
        }
        assert!(
            loss < 0.05,
            "{name}: loss {loss} after {} steps",
            opt.steps()
        );
    }
}

#[test]
fn every_model_trains_bitwise_identically_on_one_and_two_threads() {
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for (name, make) in models() {
        let run = |threads: usize| {
            pool(threads).install(|| {
                let mut m = make();
                let mut opt = adamw(&*m);
                let schedule = Schedule {
                    lr: 3e-3,
                    min_lr: 3e-4,
                    warmup: 2,
                    total: 6,
                };
                let (b, t) = (3, 24);
                let losses: Vec<f32> = (0..6)
                    .map(|s| {
                        let (inputs, targets) = batch(s, b, t);
                        train_step(&mut *m, &mut opt, schedule.at(s), &inputs, &targets, b, t)
                    })
                    .collect();
                (losses, m.params().to_vec())
            })
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(
            one.0, two.0,
            "{name}: losses differ between 1 and 2 threads"
        );
        assert!(
            one.1 == two.1,
            "{name}: parameters differ between 1 and 2 threads"
        );
    }
}

#[test]
fn every_model_resumes_from_a_checkpoint_exactly() {
    let (b, t, steps, k) = (2, 12, 6, 3);
    let schedule = Schedule {
        lr: 5e-3,
        min_lr: 5e-4,
        warmup: 1,
        total: steps,
    };
    for (name, make) in models() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("step");
        let mut m = make();
        let mut opt = adamw(&*m);
        let mut straight = Vec::new();
        for s in 0..steps {
            if s == k {
                let trainer = serde_json::json!({ "step": s });
                save_checkpoint(&ckpt, &*m, Some((&opt, &trainer))).unwrap();
            }
            let (inputs, targets) = batch(s, b, t);
            straight.push(train_step(
                &mut *m,
                &mut opt,
                schedule.at(s),
                &inputs,
                &targets,
                b,
                t,
            ));
        }

        let mut m2 = load_checkpoint(&ckpt).unwrap();
        let (mut opt2, trainer) = load_resume(&ckpt, m2.layout()).unwrap().unwrap();
        let start = trainer["step"].as_u64().unwrap();
        assert_eq!((start, opt2.steps()), (k, k), "{name}");
        let resumed: Vec<f32> = (start..steps)
            .map(|s| {
                let (inputs, targets) = batch(s, b, t);
                train_step(&mut *m2, &mut opt2, schedule.at(s), &inputs, &targets, b, t)
            })
            .collect();
        assert_eq!(
            resumed,
            straight[k as usize..],
            "{name}: resumed losses differ"
        );
        assert!(
            m2.params() == m.params(),
            "{name}: resumed parameters differ"
        );
    }
}

/// Evaluating (a forward with no backward) never destroys the logits, in either model: each
/// position's logits read after the forward equal a forward-only run of the model's decoder
/// over the row's prefix, and give the forward's per-token losses. A backward turns them
/// into their gradient, after which reading them panics instead of returning the gradient.
#[test]
fn evaluation_keeps_the_logits() {
    let (b, t) = (2, 5);
    for (name, make) in models() {
        let mut m = make();
        let (inputs, targets) = batch(3, b, t);
        m.forward(&inputs, &targets, b, t);
        let losses = m.token_losses().to_vec();
        for row in 0..b {
            let mut dec = m.decoder();
            for pos in 0..t {
                let want = dec.feed(inputs[row * t + pos]).unwrap().to_vec();
                let got = m.position_logits(row, pos);
                let what = format!("{name}: logits[{row}, {pos}]");
                kernels::testutil::assert_close(got, &want, 1e-4, 1e-5, &what);
                let max = got.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let lse = max + got.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
                let nll = lse - got[targets[row * t + pos] as usize];
                let loss = losses[row * t + pos];
                assert!(
                    (nll - loss).abs() < 1e-5,
                    "{what}: −ln p {nll} vs loss {loss}"
                );
            }
        }
        m.backward();
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.position_logits(0, 0).to_vec()
        }));
        assert!(read.is_err(), "{name}: logits read after backward");
    }
}
