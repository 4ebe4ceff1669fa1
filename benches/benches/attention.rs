//! Causal self-attention: the fused (flash) kernels at B = 1, NH = 4, HS = 64 for
//! T ∈ {256, 1024, 2048}, forward and forward+backward, in fp32 and bf16 (bf16 operands, fp32
//! accumulation; `flash_bf16` runs fp32 where the build lacks AVX512_BF16) side by side, on 1
//! and 2 threads; and, at T = 2048, the naive materialized version (llm.c's loops,
//! (B, NH, T, T) buffers) beside them.
//!
//! Throughput is the causal half of the two (forward) or seven (forward + backward) T×T×HS
//! products, counted like PyTorch's peer script (`benches/peers/peers_kernels.py`), so
//! criterion's "elem/s" read as FLOP/s. Before the groups run, the bench prints the extra
//! memory each version allocates, computed from its buffers. Leaves out: other head sizes
//! (the model's presets use HS = 64) and the PyTorch peer itself (run its script beside this).
//!
//! `cargo bench --bench attention` (about 3 minutes).

use std::hint::black_box;
use std::time::Duration;

use benches::pool;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::attention::{
    attention_backward, attention_backward_naive, attention_forward, attention_forward_naive,
    attention_workspace,
};
use kernels::testutil::TestRng;
use kernels::{AttnDims, Precision};

const B: usize = 1;
const NH: usize = 4;
const HS: usize = 64;
const C: usize = NH * HS;
const LENGTHS: [usize; 3] = [256, 1024, 2048];
const NAIVE_T: usize = 2048;

/// FLOPs of the causal forward: Q·Kᵀ and P·V over the lower triangle.
fn forward_flops(t: usize) -> u64 {
    (2 * 2 * B * NH * t * t * HS / 2) as u64
}

/// The inputs and every buffer a forward + backward needs, allocated once per length.
struct Buffers {
    t: usize,
    qkv: Vec<f32>,  // (B, T, 3C)
    out: Vec<f32>,  // (B, T, C)
    lse: Vec<f32>,  // (B, NH, T)
    dout: Vec<f32>, // (B, T, C)
    dqkv: Vec<f32>, // (B, T, 3C)
}

impl Buffers {
    fn new(t: usize) -> Self {
        let mut rng = TestRng::new(t as u64);
        Buffers {
            t,
            qkv: rng.vec(B * t * 3 * C, 1.0),
            out: vec![0.0; B * t * C],
            lse: vec![0.0; B * NH * t],
            dout: rng.vec(B * t * C, 1.0),
            dqkv: vec![0.0; B * t * 3 * C],
        }
    }

    fn forward(&mut self, p: Precision) {
        attention_forward(&mut self.out, &mut self.lse, &self.qkv, dims(self.t), p);
    }

    fn backward(&mut self, p: Precision) {
        let t = self.t;
        attention_backward(
            &mut self.dqkv,
            &self.dout,
            &self.qkv,
            &self.out,
            &self.lse,
            dims(t),
            p,
        );
    }

    /// The forward, and the backward too when `passes` counts the backward's products.
    fn step(&mut self, passes: u64, p: Precision) {
        self.forward(p);
        if passes == 7 {
            self.backward(p);
        }
    }
}

/// The benches' shapes at sequence length `t`.
fn dims(t: usize) -> AttnDims {
    AttnDims {
        b: B,
        t,
        c: C,
        nh: NH,
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Extra memory of each version at T = 2048, from the buffers each allocates.
fn print_memory() {
    let matrix = B * NH * NAIVE_T * NAIVE_T * std::mem::size_of::<f32>(); // one (B, NH, T, T)
    println!(
        "attention extra memory at B={B} NH={NH} HS={HS} T={NAIVE_T} (beyond qkv/out/lse/grads):"
    );
    for p in [Precision::F32, Precision::Bf16.effective()] {
        let ws = attention_workspace(dims(NAIVE_T), p);
        println!(
            "  flash {p} forward   {:8.1} MiB  (+{} KiB stack per thread)   O(T)",
            mib(ws.forward_bytes),
            ws.per_thread_bytes / 1024
        );
        println!(
            "  flash {p} backward  {:8.1} MiB   O(T)",
            mib(ws.backward_bytes)
        );
    }
    println!(
        "  naive forward   {:8.1} MiB  (preatt, att)   O(T²)",
        mib(2 * matrix)
    );
    println!(
        "  naive backward  {:8.1} MiB  (+ dpreatt, datt; att kept)   O(T²)",
        mib(4 * matrix)
    );
}

fn flash(c: &mut Criterion) {
    print_memory();
    for (name, passes) in [("attention_fwd", 2u64), ("attention_fwd_bwd", 7)] {
        let mut g = c.benchmark_group(name);
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(10);
        for t in LENGTHS {
            let mut bufs = Buffers::new(t);
            g.throughput(Throughput::Elements(forward_flops(t) * passes / 2));
            for threads in [1, 2] {
                let p = pool(threads);
                for prec in [Precision::F32, Precision::Bf16] {
                    let id = BenchmarkId::new(format!("flash_{prec}/{threads}t"), t);
                    g.bench_function(id, |bench| {
                        bench.iter(|| {
                            p.install(|| bufs.step(passes, prec));
                            black_box(&bufs.out);
                        })
                    });
                }
            }
        }
        g.finish();
    }
}

/// Naive materialized vs flash at T = 2048, single thread, in one group.
fn naive_vs_flash(c: &mut Criterion) {
    let t = NAIVE_T;
    let mut g = c.benchmark_group("attention_naive_vs_flash_T2048");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10);
    let p = pool(1);
    let mut bufs = Buffers::new(t);
    let sq = B * NH * t * t;
    let (mut preatt, mut att) = (vec![0.0f32; sq], vec![0.0f32; sq]);
    let (mut dpreatt, mut datt) = (vec![0.0f32; sq], vec![0.0f32; sq]);
    for (name, passes) in [("fwd", 2u64), ("fwd_bwd", 7)] {
        g.throughput(Throughput::Elements(forward_flops(t) * passes / 2));
        g.bench_function(BenchmarkId::new(format!("naive/1t/{name}"), t), |bench| {
            bench.iter(|| {
                p.install(|| {
                    let Buffers {
                        qkv,
                        out,
                        dout,
                        dqkv,
                        ..
                    } = &mut bufs;
                    attention_forward_naive(out, &mut preatt, &mut att, qkv, dims(t));
                    if passes == 7 {
                        attention_backward_naive(
                            dqkv,
                            &mut dpreatt,
                            &mut datt,
                            dout,
                            qkv,
                            &att,
                            dims(t),
                        );
                    }
                });
                black_box(&bufs.out);
            })
        });
        g.bench_function(BenchmarkId::new(format!("flash/1t/{name}"), t), |bench| {
            bench.iter(|| {
                p.install(|| bufs.step(passes, Precision::F32));
                black_box(&bufs.out);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, flash, naive_vs_flash);
criterion_main!(benches);
