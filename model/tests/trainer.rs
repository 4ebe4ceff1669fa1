//! `model::Trainer`, the training loop as a library: N data-parallel ranks (threads here, with
//! an in-process `Collective`; MPI ranks in runner's tests) train the model one process trains
//! with the same global batch; `backward_ready` reports the whole gradient back to front;
//! save and resume continue bit-exactly; bad settings are refused with the numbers. Tiny
//! models, a few dozen steps. Leaves out: MPI itself (runner/tests/mpi.rs).

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use model::train::{Collective, TrainConfig, TrainError, Trainer, write_example_shards};
use model::{
    AdamWConfig, Dataset, Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, Optimizer,
    OptimizerConfig, Schedule,
};

const T: usize = 32;

fn gpt() -> Box<dyn LanguageModel> {
    let mut c = GptConfig::preset("tiny").unwrap();
    (c.vocab_size, c.n_positions) = (257, T);
    Box::new(Gpt::new(c, 3).unwrap())
}

fn lstm() -> Box<dyn LanguageModel> {
    Box::new(Lstm::new(LstmConfig::tiny(257), 3))
}

fn trainer(dir: &Path, model: Box<dyn LanguageModel>, batch: usize) -> Trainer {
    let optimizer = Optimizer::new(
        OptimizerConfig::AdamW(AdamWConfig::default()),
        model.layout(),
    );
    let config = TrainConfig {
        seed: 5,
        batch,
        seq_len: T,
        schedule: Schedule {
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 3,
            total: 12,
        },
        grad_clip: 1.0,
    };
    Trainer::new(model, optimizer, config, Dataset::open(dir).unwrap()).unwrap()
}

fn shards() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_example_shards(dir.path()).unwrap();
    dir
}

/// Ranks as threads of one process: every collective call meets at a barrier, and sums add
/// the ranks' values in rank order.
struct Threads {
    rank: usize,
    ranks: usize,
    barrier: Arc<Barrier>,
    slots: Arc<Mutex<Vec<Vec<f64>>>>,
}

impl Threads {
    fn group(n: usize) -> Vec<Threads> {
        let barrier = Arc::new(Barrier::new(n));
        let slots = Arc::new(Mutex::new(vec![Vec::new(); n]));
        (0..n)
            .map(|rank| Threads {
                rank,
                ranks: n,
                barrier: barrier.clone(),
                slots: slots.clone(),
            })
            .collect()
    }

    /// Every rank's `values`, after all have posted theirs.
    fn exchange(&self, values: Vec<f64>) -> Vec<Vec<f64>> {
        self.slots.lock().unwrap()[self.rank] = values;
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn ranks(&self) -> usize {
        self.ranks
    }
    fn backward(&mut self, model: &mut dyn LanguageModel) {
        model.zero_grad();
        model.backward();
        let all = self.exchange(model.grads().iter().map(|&g| f64::from(g)).collect());
        for (i, g) in model.grads_mut().iter_mut().enumerate() {
            *g = all.iter().map(|r| r[i] as f32).sum::<f32>() / self.ranks as f32;
        }
    }
    fn sum(&mut self, values: &mut [f64]) {
        let all = self.exchange(values.to_vec());
        for (i, v) in values.iter_mut().enumerate() {
            *v = all.iter().map(|r| r[i]).sum();
        }
    }
    fn broadcast(&mut self, values: &mut [f64]) {
        let all = self.exchange(values.to_vec());
        values.copy_from_slice(&all[0]);
    }
}

#[test]
fn two_ranks_train_the_model_one_process_trains_with_the_same_batch() {
    let dir = shards();
    for (name, make) in [("gpt", gpt as fn() -> _), ("lstm", lstm)] {
        let mut one = trainer(dir.path(), make(), 8);
        let single: Vec<(f32, f64)> = (0..12)
            .map(|_| {
                let loss = one.step().unwrap().loss;
                (loss, one.evaluate(2).unwrap().loss)
            })
            .collect();
        let ranks: Vec<Vec<(f32, f64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = Threads::group(2)
                .into_iter()
                .map(|c| {
                    let path = dir.path();
                    s.spawn(move || {
                        let mut t = trainer(path, make(), 8).with_collective(c).unwrap();
                        assert_eq!(t.rows().len(), 4);
                        (0..12)
                            .map(|_| {
                                let loss = t.step().unwrap().loss;
                                (loss, t.evaluate(2).unwrap().loss)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            ranks[0], ranks[1],
            "{name}: every rank sees the same figures"
        );
        println!("{name}: step | 1 process | 2 ranks | relative difference");
        for (i, (a, b)) in single.iter().zip(&ranks[0]).enumerate() {
            let rel = ((a.0 - b.0) / a.0).abs();
            println!("{name}: {:>4} | {:.7} | {:.7} | {rel:.1e}", i + 1, a.0, b.0);
            assert!(rel < 1e-5, "{name} step {}: loss {} vs {}", i + 1, a.0, b.0);
            let rel = ((a.1 - b.1) / a.1).abs();
            assert!(rel < 1e-5, "{name} step {}: val {} vs {}", i + 1, a.1, b.1);
        }
        // The ranks really split the batch: rank 1 alone would see other windows.
        assert_ne!(
            single[0].0,
            trainer(dir.path(), make(), 4).step().unwrap().loss
        );
    }
}

#[test]
fn backward_ready_reports_the_whole_gradient_back_to_front() {
    let dir = shards();
    let data = Dataset::open(dir.path()).unwrap();
    for mut model in [gpt(), lstm()] {
        let (mut inputs, mut targets) = (vec![0; 2 * T], vec![0; 2 * T]);
        data.train()
            .train_batch(1, 0, 2, T, &mut inputs, &mut targets)
            .unwrap();
        model.forward(&inputs, &targets, 2, T);
        model.zero_grad();
        model.backward();
        let whole = model.grads().to_vec();
        model.forward(&inputs, &targets, 2, T);
        model.zero_grad();
        let mut seen = vec![f32::NAN; whole.len()];
        let mut next_end = whole.len();
        let mut chunks = 0;
        model.backward_ready(&mut |offset, chunk| {
            assert_eq!(offset + chunk.len(), next_end, "back to front, no gaps");
            seen[offset..next_end].copy_from_slice(chunk);
            next_end = offset;
            chunks += 1;
        });
        assert_eq!(next_end, 0, "the last chunk starts at 0");
        assert_eq!(seen, whole, "the chunks are the final gradient");
        assert_eq!(model.grads(), &whole[..]);
        if model.max_seq_len().is_some() {
            // ln_f's two tensors, each block, wpe, wte.
            assert_eq!(chunks, 2 + 2 + 2);
        }
    }
}

#[test]
fn a_resumed_trainer_continues_bit_exactly() {
    let dir = shards();
    let mut whole = trainer(dir.path(), gpt(), 4);
    let expected: Vec<f32> = (0..10).map(|_| whole.step().unwrap().loss).collect();

    let mut first = trainer(dir.path(), gpt(), 4);
    for _ in 0..6 {
        first.step().unwrap();
    }
    let ckpt = dir.path().join("checkpoint");
    first
        .save(&ckpt, &serde_json::json!({ "note": "mine" }))
        .unwrap();
    let (mut resumed, state) = Trainer::resume(&ckpt, Dataset::open(dir.path()).unwrap()).unwrap();
    assert_eq!(state["note"], "mine", "the caller's fields come back");
    assert_eq!(state["step"], 6);
    assert_eq!(resumed.steps_done(), 6);
    assert_eq!(resumed.config(), first.config());
    let rest: Vec<f32> = (0..4).map(|_| resumed.step().unwrap().loss).collect();
    assert_eq!(
        rest.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        expected[6..]
            .iter()
            .map(|l| l.to_bits())
            .collect::<Vec<_>>()
    );
}

#[test]
fn bad_settings_are_refused_with_the_numbers() {
    let dir = shards();
    let err = trainer(dir.path(), gpt(), 3)
        .with_collective(Threads::group(2).remove(0))
        .err()
        .unwrap();
    assert!(matches!(
        err,
        TrainError::UnevenBatch { batch: 3, ranks: 2 }
    ));
    assert!(err.to_string().contains("3 windows") && err.to_string().contains("2 ranks"));

    let optimizer = Optimizer::new(
        OptimizerConfig::AdamW(AdamWConfig::default()),
        gpt().layout(),
    );
    let mut config = *trainer(dir.path(), gpt(), 2).config();
    config.seq_len = 2 * T;
    let err = Trainer::new(gpt(), optimizer, config, Dataset::open(dir.path()).unwrap())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("64 tokens") && err.to_string().contains("32"),
        "{err}"
    );

    let missing = dir.path().join("nothing");
    let err = Trainer::resume(&missing, Dataset::open(dir.path()).unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("nothing"), "{err}");
}
