//! Prompt prefill against feeding the prompt token by token: a 1,000-token prompt into the
//! `small` GPT's decoder (L=4, C=256, NH=4, a position table of 1,024 rows, V=257), in
//! prompt tokens per second.
//!
//! ```text
//! cargo bench --bench prefill                    # both ways, about 20 seconds
//! ```
//!
//! `token_by_token` calls `Decoder::feed` once per token (one position through every layer,
//! matrix-vector products, attention over the cache); `prefill` calls `Decoder::prefill`,
//! one forward pass over all positions (matrix products of 1,000 rows, flash attention)
//! that writes the same KV cache. Both on the global rayon pool (every core). Leaves out:
//! the LSTM, whose prefill walks the prompt token by token (its recurrence is sequential).

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use model::{Gpt, GptConfig, LanguageModel};

const PROMPT: usize = 1000;

fn prefill(c: &mut Criterion) {
    let cfg = GptConfig {
        n_positions: 1024,
        ..GptConfig::preset("small").unwrap()
    };
    let gpt = Gpt::new(cfg, 0).unwrap();
    let v = gpt.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7 + 3) % v).collect();
    let mut group = c.benchmark_group("prefill/small_P1000");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(PROMPT as u64));
    let mut dec = gpt.decoder();
    group.bench_function("token_by_token", |b| {
        b.iter(|| {
            dec.reset();
            for &t in &prompt {
                dec.feed(t).unwrap();
            }
        })
    });
    group.bench_function("prefill", |b| {
        b.iter(|| {
            dec.reset();
            dec.prefill(&prompt).unwrap();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = prefill
}
criterion_main!(benches);
