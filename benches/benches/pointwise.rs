//! Pointwise kernels against their scalar references, single-threaded (a one-thread rayon pool),
//! throughput in elements/s. Memory-bound kernels share their group with a plain copy of their
//! main tensor (`copy`), the speed the memory system allows, so a report reads as a fraction
//! of copy bandwidth. Run: `cargo bench --bench pointwise` (about two minutes).
//!
//! Shapes are GPT-2 small's (C = 768, V = 50257, N = B·T = 2048 rows) and the byte-level
//! vocabulary's (V = 257). Scalar references run on fewer rows where a full run would take
//! seconds; their throughput is per element all the same. Leaves out: multi-threaded scaling
//! (`parallelism` bench) and the PyTorch peer (`benches/peers/peers_kernels.py`, run
//! beside this bench).

use benches::pool;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use kernels::attention_pool::*;
use kernels::cross_entropy::*;
use kernels::elementwise::*;
use kernels::embedding::*;
use kernels::gelu::*;
use kernels::layernorm::*;
use kernels::lstm_cell::*;
use kernels::optim::*;
use kernels::softmax::*;
use kernels::testutil::TestRng;
use kernels::{LstmDims, PoolDims};
use rayon::ThreadPool;
use std::hint::black_box;
use std::time::Duration;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_millis(500))
        .nresamples(10_000)
        .without_plots()
}

/// Times `f` on the one-thread pool `one`, so the kernels' parallel loops run inline.
fn bench1(
    g: &mut BenchmarkGroup<WallTime>,
    one: &ThreadPool,
    id: &str,
    mut f: impl FnMut() + Send,
) {
    g.bench_function(id, |b| b.iter(|| one.install(&mut f)));
}

/// Starts a group whose throughput is `elems` elements per iteration.
fn group<'a>(c: &'a mut Criterion, name: &str, elems: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(elems as u64));
    g
}

/// Rows for the slow scalar references, with the throughput set to match.
fn ref_rows(g: &mut BenchmarkGroup<WallTime>, rows: usize, row_len: usize) -> usize {
    g.throughput(Throughput::Elements((rows * row_len) as u64));
    rows
}

fn softmax(c: &mut Criterion) {
    let one = pool(1);
    let (n, v) = (4096, 257);
    let mut rng = TestRng::new(1);
    let (x, dy) = (rng.vec(n * v, 5.0), rng.vec(n * v, 1.0));
    let (mut y, mut dx) = (vec![0.0f32; n * v], vec![0.0f32; n * v]);
    softmax_forward(&mut y, &x, n, v);
    let mut g = group(c, &format!("softmax {n}x{v}"), n * v);
    bench1(&mut g, &one, "copy", || y.copy_from_slice(black_box(&x)));
    bench1(&mut g, &one, "forward", || {
        softmax_forward(&mut y, black_box(&x), n, v)
    });
    bench1(&mut g, &one, "backward", || {
        softmax_backward(&mut dx, black_box(&dy), &y, n, v)
    });
    bench1(&mut g, &one, "log_softmax forward", || {
        log_softmax_forward(&mut y, black_box(&x), n, v)
    });
    bench1(&mut g, &one, "log_softmax backward", || {
        log_softmax_backward(&mut dx, black_box(&dy), &y, n, v)
    });
    let r = ref_rows(&mut g, 512, v);
    let (x, y, dy, dx) = (&x[..r * v], &mut y[..r * v], &dy[..r * v], &mut dx[..r * v]);
    bench1(&mut g, &one, "forward scalar ref", || {
        softmax_ref(y, black_box(x), r, v)
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        softmax_backward_ref(dx, black_box(dy), y, r, v)
    });
    g.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let one = pool(1);
    for (n, v) in [(2048, 50257), (4096, 257)] {
        let mut rng = TestRng::new(2);
        let x = rng.vec(n * v, 5.0);
        let t: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        let mut dl = vec![0.0f32; n * v];
        let mut losses = vec![0.0f32; n];
        let mut g = group(c, &format!("cross_entropy {n}x{v}"), n * v);
        bench1(&mut g, &one, "copy", || dl.copy_from_slice(black_box(&x)));
        bench1(&mut g, &one, "fused", || {
            cross_entropy_fused(&mut dl, &mut losses, black_box(&x), &t, n, v, None);
        });
        // Runs over its own output: after the first call the "logits" are gradients, which
        // costs the same (no data-dependent branches) and keeps a re-copy out of the time.
        let mut inplace = x.clone();
        bench1(&mut g, &one, "fused in place", || {
            cross_entropy_fused_inplace(black_box(&mut inplace), &mut losses, &t, n, v, None);
        });
        bench1(&mut g, &one, "forward only", || {
            cross_entropy_forward(&mut losses, black_box(&x), &t, n, v, None);
        });
        let r = ref_rows(&mut g, if v > 1000 { 16 } else { 512 }, v);
        bench1(&mut g, &one, "fused scalar ref", || {
            let dl = Some(&mut dl[..r * v]);
            cross_entropy_ref(
                dl,
                &mut losses[..r],
                black_box(&x[..r * v]),
                &t[..r],
                r,
                v,
                None,
            );
        });
        g.finish();
    }
}

fn layernorm(c: &mut Criterion) {
    let one = pool(1);
    let (n, ch) = (2048, 768);
    let mut rng = TestRng::new(4);
    let (x, w, b, dy) = (
        rng.vec(n * ch, 2.0),
        rng.vec(ch, 1.0),
        rng.vec(ch, 1.0),
        rng.vec(n * ch, 1.0),
    );
    let (mut y, mut mean, mut rstd) = (vec![0.0f32; n * ch], vec![0.0f32; n], vec![0.0f32; n]);
    let (mut dx, mut dw, mut db) = (vec![0.0f32; n * ch], vec![0.0f32; ch], vec![0.0f32; ch]);
    layernorm_forward(&mut y, &mut mean, &mut rstd, &x, &w, &b, n, ch, 1e-5);
    let mut g = group(c, &format!("layernorm {n}x{ch}"), n * ch);
    bench1(&mut g, &one, "copy", || y.copy_from_slice(black_box(&x)));
    bench1(&mut g, &one, "forward", || {
        layernorm_forward(
            &mut y,
            &mut mean,
            &mut rstd,
            black_box(&x),
            &w,
            &b,
            n,
            ch,
            1e-5,
        )
    });
    bench1(&mut g, &one, "backward", || {
        layernorm_backward(
            &mut dx,
            &mut dw,
            &mut db,
            black_box(&dy),
            &x,
            &w,
            &mean,
            &rstd,
            n,
            ch,
        )
    });
    let r = ref_rows(&mut g, 256, ch);
    bench1(&mut g, &one, "forward scalar ref", || {
        let (y, x) = (&mut y[..r * ch], black_box(&x[..r * ch]));
        layernorm_forward_ref(y, &mut mean[..r], &mut rstd[..r], x, &w, &b, r, ch, 1e-5)
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        let (dx, dy, x) = (&mut dx[..r * ch], black_box(&dy[..r * ch]), &x[..r * ch]);
        layernorm_backward_ref(
            dx,
            &mut dw,
            &mut db,
            dy,
            x,
            &w,
            &mean[..r],
            &rstd[..r],
            r,
            ch,
        )
    });
    g.finish();
}

fn gelu(c: &mut Criterion) {
    let one = pool(1);
    let len = 2048 * 3072;
    let mut rng = TestRng::new(5);
    let (x, dy) = (rng.vec(len, 4.0), rng.vec(len, 1.0));
    let (mut y, mut dx) = (vec![0.0f32; len], vec![0.0f32; len]);
    let mut g = group(c, "gelu 2048x3072", len);
    bench1(&mut g, &one, "copy", || y.copy_from_slice(black_box(&x)));
    bench1(&mut g, &one, "forward", || {
        gelu_forward(&mut y, black_box(&x))
    });
    bench1(&mut g, &one, "backward", || {
        gelu_backward(&mut dx, &dy, black_box(&x))
    });
    let r = ref_rows(&mut g, 1 << 18, 1);
    bench1(&mut g, &one, "forward scalar ref", || {
        gelu_forward_ref(&mut y[..r], black_box(&x[..r]))
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        gelu_backward_ref(&mut dx[..r], &dy[..r], black_box(&x[..r]))
    });
    g.finish();
}

fn residual_and_bias(c: &mut Criterion) {
    let one = pool(1);
    let (n, ch) = (2048, 768);
    let mut rng = TestRng::new(6);
    let (a, b) = (rng.vec(n * ch, 1.0), rng.vec(n * ch, 1.0));
    let mut y = vec![0.0f32; n * ch];
    let mut db = vec![0.0f32; ch];
    let mut g = group(c, &format!("residual/bias {n}x{ch}"), n * ch);
    bench1(&mut g, &one, "copy", || y.copy_from_slice(black_box(&a)));
    bench1(&mut g, &one, "residual forward", || {
        residual_forward(&mut y, black_box(&a), &b)
    });
    bench1(&mut g, &one, "residual scalar ref", || {
        residual_forward_ref(&mut y, black_box(&a), &b)
    });
    bench1(&mut g, &one, "bias backward", || {
        bias_backward(&mut db, black_box(&a), n, ch)
    });
    bench1(&mut g, &one, "bias backward scalar ref", || {
        bias_backward_ref(&mut db, black_box(&a), n, ch)
    });
    g.finish();
}

fn encoder(c: &mut Criterion) {
    let one = pool(1);
    let (b, t, ch, v) = (4, 512, 768, 50257);
    let mut rng = TestRng::new(7);
    let (wte, wpe) = (rng.vec(v * ch, 1.0), rng.vec(1024 * ch, 1.0));
    let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let dy = rng.vec(b * t * ch, 1.0);
    let mut y = vec![0.0f32; b * t * ch];
    let (mut dwte, mut dwpe) = (vec![0.0f32; v * ch], vec![0.0f32; 1024 * ch]);
    let mut g = group(c, &format!("encoder B={b} T={t} C={ch} V={v}"), b * t * ch);
    bench1(&mut g, &one, "copy", || y.copy_from_slice(black_box(&dy)));
    bench1(&mut g, &one, "forward", || {
        encoder_forward(&mut y, black_box(&tokens), &wte, &wpe, b, t, ch)
    });
    bench1(&mut g, &one, "forward scalar ref", || {
        encoder_forward_ref(&mut y, black_box(&tokens), &wte, &wpe, b, t, ch)
    });
    bench1(&mut g, &one, "backward", || {
        encoder_backward(&mut dwte, &mut dwpe, black_box(&dy), &tokens, b, t, ch)
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        encoder_backward_ref(&mut dwte, &mut dwpe, black_box(&dy), &tokens, b, t, ch)
    });
    g.finish();
}

fn lstm_cell(c: &mut Criterion) {
    let one = pool(1);
    let (b, h) = (64, 1024);
    let dims = LstmDims { b, t: 1, h };
    let mut rng = TestRng::new(8);
    let pre = rng.vec(b * 4 * h, 2.0);
    let (cp, dh, dc) = (
        rng.vec(b * h, 1.0),
        rng.vec(b * h, 1.0),
        rng.vec(b * h, 1.0),
    );
    let (mut ct, mut ht, mut tc) = (
        vec![0.0f32; b * h],
        vec![0.0f32; b * h],
        vec![0.0f32; b * h],
    );
    let (mut gates, mut dg, mut dcp) = (pre.clone(), vec![0.0f32; b * 4 * h], vec![0.0f32; b * h]);
    let mut g = group(c, &format!("lstm_cell B={b} H={h}"), b * h);
    bench1(&mut g, &one, "copy gates", || {
        gates.copy_from_slice(black_box(&pre))
    });
    // The forward activates the gates in place, so each iteration restores them first.
    bench1(&mut g, &one, "copy gates + forward", || {
        gates.copy_from_slice(black_box(&pre));
        lstm_cell_forward(&mut ct, &mut ht, &mut tc, &mut gates, &cp, dims);
    });
    bench1(&mut g, &one, "copy gates + forward scalar ref", || {
        gates.copy_from_slice(black_box(&pre));
        lstm_cell_forward_ref(&mut ct, &mut ht, &mut tc, &mut gates, &cp, dims);
    });
    bench1(&mut g, &one, "backward", || {
        lstm_cell_backward(
            &mut dg,
            &mut dcp,
            black_box(&dh),
            &dc,
            &gates,
            &cp,
            &tc,
            dims,
        )
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        lstm_cell_backward_ref(
            &mut dg,
            &mut dcp,
            black_box(&dh),
            &dc,
            &gates,
            &cp,
            &tc,
            dims,
        )
    });
    g.finish();
}

fn optimizers(c: &mut Criterion) {
    let one = pool(1);
    let n = 1 << 24;
    let mut rng = TestRng::new(9);
    let (mut p, grads) = (rng.vec(n, 1.0), rng.vec(n, 1e-2));
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut scratch = vec![0.0f32; n];
    let (adam, sgd) = (AdamW::default(), Sgd::default());
    let mut step = 1u64;
    let mut g = group(c, &format!("optimizer {n} params"), n);
    bench1(&mut g, &one, "copy", || {
        scratch.copy_from_slice(black_box(&grads))
    });
    bench1(&mut g, &one, "adamw", || {
        adamw_step(&mut p, &mut m, &mut v, black_box(&grads), &adam, step);
        step += 1;
    });
    bench1(&mut g, &one, "sgd momentum", || {
        sgd_step(&mut p, &mut m, black_box(&grads), &sgd, 2)
    });
    bench1(&mut g, &one, "global_norm", || {
        black_box(global_norm(&[black_box(&grads)]));
    });
    // Full size: the optimizers are memory-bound, and a cache-resident slice would flatter
    // the reference.
    bench1(&mut g, &one, "adamw scalar ref", || {
        adamw_step_ref(&mut p, &mut m, &mut v, black_box(&grads), &adam, 3)
    });
    bench1(&mut g, &one, "sgd momentum scalar ref", || {
        sgd_step_ref(&mut p, &mut m, black_box(&grads), &sgd, 2)
    });
    g.finish();
}

fn attention_pool(c: &mut Criterion) {
    let one = pool(1);
    let (b, n, d) = (64, 256, 128);
    let dims = PoolDims { b, n, d };
    let mut rng = TestRng::new(10);
    let (x, w, dy) = (
        rng.vec(b * n * d, 1.0),
        rng.vec(d, 0.1),
        rng.vec(b * d, 1.0),
    );
    let (mut y, mut a) = (vec![0.0f32; b * d], vec![0.0f32; b * n]);
    let (mut dx, mut dw) = (vec![0.0f32; b * n * d], vec![0.0f32; d]);
    attention_pool_forward(&mut y, &mut a, &x, &w, dims);
    let mut g = group(c, &format!("attention_pool B={b} n={n} d={d}"), b * n * d);
    bench1(&mut g, &one, "forward", || {
        attention_pool_forward(&mut y, &mut a, black_box(&x), &w, dims)
    });
    bench1(&mut g, &one, "forward scalar ref", || {
        attention_pool_forward_ref(&mut y, &mut a, black_box(&x), &w, dims)
    });
    bench1(&mut g, &one, "backward", || {
        attention_pool_backward(&mut dx, &mut dw, black_box(&dy), &x, &w, &a, dims)
    });
    bench1(&mut g, &one, "backward scalar ref", || {
        attention_pool_backward_ref(&mut dx, &mut dw, black_box(&dy), &x, &w, &a, dims)
    });
    g.finish();
}

criterion_group! {
    name = pointwise;
    config = config();
    targets = softmax, cross_entropy, layernorm, gelu, residual_and_bias,
        encoder, lstm_cell, optimizers, attention_pool
}
criterion_main!(pointwise);
