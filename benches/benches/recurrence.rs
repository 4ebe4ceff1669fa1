//! The LSTM recurrence alone (`kernels::recurrence`), fp32 against bf16: one layer of the
//! `small` LSTM (H = 360) walked forward and back through T = 256 steps, with W_hh packed for
//! each walk as a training step does, at B ∈ {1, 16, 64}, on one thread.
//!
//! Throughput is tokens (B·T) per second of forward + backward walk, so the cases read like
//! the training-step bench's; each walk is T dependent (B, H)·(H, 4H) products with the cell
//! fused. The bf16 cases run bf16 only on a build with AVX512_BF16 (elsewhere they repeat
//! fp32; the bench prints which). Leaves out: the input projection and dW GEMMs (`gemm` and
//! `train_step` time those), and 2 threads (`train_step` and `parallelism` cover the walk's
//! threading).
//!
//! `cargo bench --bench recurrence` (about a minute).

use std::hint::black_box;
use std::time::Duration;

use benches::pool;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kernels::recurrence::{
    Backward, Forward, PackedWhh, lstm_backward, lstm_forward, lstm_pack_backward,
    lstm_pack_forward,
};
use kernels::testutil::TestRng;
use kernels::{LstmDims, Precision};

/// Hidden size of `LstmConfig::small`.
const H: usize = 360;
const T: usize = 256;
const BATCHES: [usize; 3] = [1, 16, 64];

/// A layer's weights, inputs and every buffer a forward + backward walk needs.
struct Walk {
    b: usize,
    precision: Precision,
    w_hh: Vec<f32>,       // (4H, H)
    projection: Vec<f32>, // (T, B, 4H) the input projection the walk starts from
    gates: Vec<f32>,      // (T, B, 4H)
    hs: Vec<f32>,         // (T+1, B, H)
    cs: Vec<f32>,         // (T+1, B, H)
    dhs: Vec<f32>,        // (T, B, H)
    dgates: Vec<f32>,     // (T, B, 4H)
    dh0: Vec<f32>,        // (B, H)
    dc0: Vec<f32>,        // (B, H)
    fwd: PackedWhh<Forward>,
    bwd: PackedWhh<Backward>,
}

impl Walk {
    fn new(b: usize, precision: Precision) -> Self {
        let mut rng = TestRng::new(b as u64);
        let state = (T + 1) * b * H;
        Walk {
            b,
            precision,
            w_hh: rng.vec(4 * H * H, 2.0 / (H as f32).sqrt()),
            projection: rng.vec(T * b * 4 * H, 2.0),
            gates: vec![0.0; T * b * 4 * H],
            hs: vec![0.0; state],
            cs: vec![0.0; state],
            dhs: rng.vec(T * b * H, 1.0),
            dgates: vec![0.0; T * b * 4 * H],
            dh0: vec![0.0; b * H],
            dc0: vec![0.0; b * H],
            fwd: PackedWhh::new(),
            bwd: PackedWhh::new(),
        }
    }

    /// What a training step does with one layer's recurrence: pack, walk forward, pack, walk
    /// back.
    fn step(&mut self) {
        let b = self.b;
        self.gates.copy_from_slice(&self.projection);
        lstm_pack_forward(&mut self.fwd, &self.w_hh, H, self.precision);
        lstm_forward(
            &mut self.hs,
            &mut self.cs,
            &mut self.gates,
            &self.fwd,
            LstmDims { b, t: T, h: H },
        );
        lstm_pack_backward(&mut self.bwd, &self.w_hh, H, self.precision);
        lstm_backward(
            &mut self.dgates,
            &mut self.dh0,
            &mut self.dc0,
            &self.dhs,
            &self.gates,
            &self.cs,
            &self.bwd,
            LstmDims { b, t: T, h: H },
        );
        black_box(&self.dh0);
    }
}

fn recurrence(c: &mut Criterion) {
    println!(
        "recurrence: bf16 cases run {} on this build",
        Precision::Bf16.effective()
    );
    let one = pool(1);
    let mut group = c.benchmark_group(format!("recurrence/lstm_H{H}_T{T}_1t"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for b in BATCHES {
        group.throughput(Throughput::Elements((b * T) as u64));
        for precision in [Precision::F32, Precision::Bf16] {
            let id = BenchmarkId::new(format!("B{b}"), precision);
            let mut walk = None;
            group.bench_function(id, |bench| {
                let walk = walk.get_or_insert_with(|| Walk::new(b, precision));
                one.install(|| bench.iter(|| walk.step()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, recurrence);
criterion_main!(benches);
