//! The parallelism sweep: one full training step (forward, backward, AdamW) of the matched
//! `small` GPT and `small` LSTM (3.3M parameters each, V = 257, the same tokens per step), in
//! tokens per second, on 1 thread and on every core.
//!
//! ```text
//! cargo bench --bench parallelism                # everything (about 2.5 minutes on 2 cores)
//! cargo bench --bench parallelism -- B1_         # the batch-of-one shapes only
//! ```
//!
//! Shapes: T ∈ {64, 256, 1024} at B·T = 4096, where the LSTM spreads each time step over a
//! batch, and B = 1 at T ∈ {256, 1024}, where it cannot. Each group
//! `parallelism/B{b}_T{t}` holds both models on both pools, so the GPT/LSTM ratio and each
//! model's speedup read off one criterion report. `runner parallelism` runs the same sweep
//! with the critical-path counts, a table and a chart. Leaves out: data loading (random
//! tokens) and checkpoints.

use std::time::Duration;

use benches::{Trainer, pool};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use model::{Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, TokenizerKind};

/// (B, T): the fixed-tokens sweep, then the batch of one.
const SHAPES: [(usize, usize); 5] = [(64, 64), (16, 256), (4, 1024), (1, 256), (1, 1024)];

/// The matched pair at sequence length `t`: `small` GPT with a position table of at least
/// `t` rows, `small` LSTM.
fn model(name: &str, t: usize) -> Box<dyn LanguageModel> {
    match name {
        "gpt" => {
            let small = GptConfig::preset("small").unwrap();
            let cfg = GptConfig {
                n_positions: small.n_positions.max(t),
                ..small
            };
            Box::new(Gpt::new(cfg, 0).unwrap())
        }
        _ => Box::new(Lstm::new(
            LstmConfig::preset("small", TokenizerKind::Byte).unwrap(),
            0,
        )),
    }
}

fn parallelism(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1, cores];
    threads.dedup();
    let pools: Vec<_> = threads.iter().map(|&n| (n, pool(n))).collect();
    for (b, t) in SHAPES {
        let mut group = c.benchmark_group(format!("parallelism/B{b}_T{t}"));
        // A step takes 20 ms to 0.6 s: ten flat samples (the slowest case one step each)
        // are enough, and keep the whole bench near 2.5 minutes on 2 cores.
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(if b * t >= 4096 { 8 } else { 2 }));
        group.throughput(Throughput::Elements((b * t) as u64));
        for name in ["gpt", "lstm"] {
            // Built by the first case that runs, so a filtered-out case costs nothing.
            let mut trainer = None;
            for (n, pool) in &pools {
                group.bench_function(BenchmarkId::new(name, format!("{n}t")), |bench| {
                    let trainer = trainer.get_or_insert_with(|| Trainer::new(model(name, t), b, t));
                    pool.install(|| bench.iter(|| trainer.step()))
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Criterion's HTML plots cost seconds per case; the runner draws this sweep's chart.
    config = Criterion::default().without_plots();
    targets = parallelism
}
criterion_main!(benches);
