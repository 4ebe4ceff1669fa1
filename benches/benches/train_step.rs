//! Full training steps (forward, backward, AdamW) in tokens per second, in fp32 and in bf16
//! mixed precision, on 1 and 2 threads:
//! the figures issue 6 compares with PyTorch (`benches/peers/peers_train.py`,
//! `peers_gpt2_124m.py`).
//!
//! ```text
//! cargo bench --bench train_step            # everything
//! cargo bench --bench train_step -- gpt     # the transformer only
//! cargo bench --bench train_step -- lstm    # the LSTM only (about two minutes)
//! cargo bench --bench train_step -- bf16    # bf16 mixed precision only
//! ```
//!
//! Each model has one function here that registers its groups; the step is the same the
//! runner takes. Leaves out: data loading (random tokens, fixed per run) and checkpointing.

use std::time::Duration;

use benches::Trainer;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use model::{Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, Precision, TokenizerKind};

/// The transformer: `small` at B=16, T=256 and at B=1, T=1024 (tokens/s), and the 124M `gpt2`
/// preset at B=4, T=64 (time per step), each on 1 and 2 threads.
fn gpt(c: &mut Criterion) {
    let small = GptConfig::preset("small").unwrap();
    let long = GptConfig {
        n_positions: 1024,
        ..small.clone()
    };
    let gpt = |cfg: GptConfig| {
        move || -> Box<dyn LanguageModel> { Box::new(Gpt::new(cfg.clone(), 0).unwrap()) }
    };
    bench_steps(c, "gpt_small", gpt(small), 16, 256, 8);
    bench_steps(c, "gpt_small", gpt(long), 1, 1024, 8);
    bench_steps(
        c,
        "gpt2_124m",
        gpt(GptConfig::preset("gpt2").unwrap()),
        4,
        64,
        15,
    );
}

/// The LSTM: `small` (3 × 360, 3.3M parameters, the byte vocabulary) at B=16, T=256 and at
/// B=1, T=1024, on 1 and 2 threads.
fn lstm(c: &mut Criterion) {
    let small = || -> Box<dyn LanguageModel> {
        let config = LstmConfig::preset("small", TokenizerKind::Byte).unwrap();
        Box::new(Lstm::new(config, 0))
    };
    bench_steps(c, "lstm_small", small, 16, 256, 8);
    bench_steps(c, "lstm_small", small, 1, 1024, 8);
}

/// Registers `train_step/{name}/B{b}_T{t}/{fp32,bf16}/{1,2}t`: one training step of the model
/// `make` builds, in each precision (bf16 only where the build has it), on a pool of 1 and of
/// 2 threads, `seconds` of measurement each.
fn bench_steps(
    c: &mut Criterion,
    name: &str,
    make: impl Fn() -> Box<dyn LanguageModel>,
    b: usize,
    t: usize,
    seconds: u64,
) {
    let mut group = c.benchmark_group(format!("train_step/{name}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(seconds));
    group.throughput(Throughput::Elements((b * t) as u64));
    let precisions = if Precision::Bf16.effective() == Precision::Bf16 {
        vec![Precision::F32, Precision::Bf16]
    } else {
        vec![Precision::F32]
    };
    for precision in precisions {
        // Built by the first benchmark that runs, so a filtered-out case costs nothing.
        let mut trainer = None;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let id = BenchmarkId::new(format!("B{b}_T{t}/{precision}"), format!("{threads}t"));
            group.bench_function(id, |bench| {
                let trainer = trainer.get_or_insert_with(|| {
                    let mut model = make();
                    model.set_precision(precision);
                    Trainer::new(model, b, t)
                });
                pool.install(|| bench.iter(|| trainer.step()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gpt, lstm);
criterion_main!(benches);
