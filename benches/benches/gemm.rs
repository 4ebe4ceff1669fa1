//! sgemm throughput: Lanes against the peer crates a Rust user would pick instead
//! (`matrixmultiply`, `gemm`) and, on small shapes, the scalar reference — side by side in one
//! criterion group per shape. Throughput is `2·m·n·k` elements, so criterion's `elem/s` reads
//! as FLOP/s (1 Gelem/s = 1 GFLOP/s). Everything runs single-threaded (a 1-thread rayon pool;
//! `gemm` told `Parallelism::None`; `matrixmultiply` is built without threads), except the
//! last group, which compares Lanes on 1 and 2 threads.
//!
//! Run: `cargo bench --bench gemm` (about 90 seconds). Leaves out: MKL/OpenBLAS, measured by
//! `benches/peers/peers_gemm.py` on the same shapes.

use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use kernels::gemm::sgemm_ref;
use kernels::testutil::TestRng;
use kernels::{PackedB, Precision, Transpose, gemm as lanes_gemm, gemm_packed, sgemm};

/// One product `C (m × n) = op(A) (m × k) · op(B) (k × n)`, named `m×k×n` like the peers.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    k: usize,
    n: usize,
    /// `Yes`: B is stored n × k (`x · Wᵀ`, as PyTorch stores weights).
    tb: Transpose,
    /// Also time the scalar reference (small shapes only: it runs at ~1 GFLOP/s).
    reference: bool,
}

const fn nn(m: usize, k: usize, n: usize) -> Shape {
    Shape {
        m,
        k,
        n,
        tb: Transpose::No,
        reference: false,
    }
}

/// The shapes (square, a small GPT's C = 384 training products, GEMV) and the
/// shapes of Lanes' own models.
const SHAPES: [Shape; 12] = [
    Shape {
        reference: true,
        ..nn(256, 256, 256)
    },
    nn(512, 512, 512),
    nn(1024, 1024, 1024),
    nn(2048, 2048, 2048),
    nn(2048, 384, 1152),
    nn(2048, 384, 1536),
    nn(2048, 1536, 384),
    nn(2048, 384, 257),
    nn(64, 512, 2048),
    Shape {
        reference: true,
        ..nn(1, 512, 2048)
    },
    // The byte-level GPT's logits (x · wteᵀ, B·T = 4096, C = 256, V = 257).
    Shape {
        tb: Transpose::Yes,
        ..nn(4096, 256, 257)
    },
    // One LSTM step for a batch of 64 (h · W_hhᵀ, H = 360, 4H = 1440).
    Shape {
        tb: Transpose::Yes,
        ..nn(64, 360, 1440)
    },
];

struct Operands {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Operands {
    fn new(s: Shape) -> Self {
        let mut rng = TestRng::new(1);
        Operands {
            a: rng.vec(s.m * s.k, 1.0),
            b: rng.vec(s.k * s.n, 1.0),
            c: vec![0.0; s.m * s.n],
        }
    }
}

/// Leading dimension of the stored B.
fn ldb(s: Shape) -> usize {
    if s.tb == Transpose::No { s.n } else { s.k }
}

/// A function with `sgemm`'s BLAS signature: Lanes' kernel or its scalar reference.
type Blas = fn(
    Transpose,
    Transpose,
    usize,
    usize,
    usize,
    f32,
    &[f32],
    usize,
    &[f32],
    usize,
    f32,
    &mut [f32],
    usize,
);

/// `C = A·op(B)` through a BLAS-style function.
fn blas(f: Blas, s: Shape, o: &mut Operands) {
    let (a, b, c) = (&o.a, &o.b, &mut o.c);
    f(
        Transpose::No,
        s.tb,
        s.m,
        s.n,
        s.k,
        1.0,
        a,
        s.k,
        b,
        ldb(s),
        0.0,
        c,
        s.n,
    );
}

fn lanes(s: Shape, o: &mut Operands) {
    blas(sgemm, s, o);
}

fn reference(s: Shape, o: &mut Operands) {
    blas(sgemm_ref, s, o);
}

/// B's (row, column) strides for the peers, which take strided views.
fn b_strides(s: Shape) -> (isize, isize) {
    if s.tb == Transpose::No {
        (s.n as isize, 1)
    } else {
        (1, s.k as isize)
    }
}

fn matrixmultiply(s: Shape, o: &mut Operands) {
    let (rsb, csb) = b_strides(s);
    // SAFETY: a is m×k, b is k×n with the given strides, c is m×n; all inside their Vecs.
    unsafe {
        matrixmultiply::sgemm(
            s.m,
            s.k,
            s.n,
            1.0,
            o.a.as_ptr(),
            s.k as isize,
            1,
            o.b.as_ptr(),
            rsb,
            csb,
            0.0,
            o.c.as_mut_ptr(),
            s.n as isize,
            1,
        );
    }
}

fn gemm_crate(s: Shape, o: &mut Operands) {
    let (rsb, csb) = b_strides(s);
    // SAFETY: as above. `gemm` computes dst = alpha·dst + beta·lhs·rhs; read_dst = false
    // ignores dst, so beta = 1 gives C = A·B.
    unsafe {
        gemm::gemm(
            s.m,
            s.n,
            s.k,
            o.c.as_mut_ptr(),
            1,
            s.n as isize,
            false,
            o.a.as_ptr(),
            1,
            s.k as isize,
            o.b.as_ptr(),
            csb,
            rsb,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A group named `{what} m×k×n` whose throughput reads as FLOP/s, sized to keep the whole
/// bench around two minutes.
fn group<'a>(
    c: &'a mut Criterion,
    what: &str,
    s: Shape,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let t = if s.tb == Transpose::No {
        ""
    } else {
        " B transposed"
    };
    let mut g = c.benchmark_group(format!("{what} {}x{}x{}{t}", s.m, s.k, s.n));
    g.throughput(Throughput::Elements((2 * s.m * s.n * s.k) as u64));
    // Flat sampling: every sample runs the same number of iterations, so a 100 ms product is
    // timed ~10 times instead of criterion's linear 1 + 2 + … + 10 = 55.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(1));
    g
}

fn single_thread(c: &mut Criterion) {
    let pool = benches::pool(1);
    type Impl = (&'static str, fn(Shape, &mut Operands));
    let impls: [Impl; 4] = [
        ("lanes", lanes),
        ("matrixmultiply", matrixmultiply),
        ("gemm", gemm_crate),
        ("scalar reference", reference),
    ];
    for s in SHAPES {
        let mut o = Operands::new(s);
        let mut g = group(c, "sgemm", s);
        for (name, f) in impls {
            if name == "scalar reference" && !s.reference {
                continue;
            }
            g.bench_function(name, |bch| pool.install(|| bch.iter(|| f(s, &mut o))));
        }
        g.finish();
    }
}

fn threads(c: &mut Criterion) {
    let s = nn(1024, 1024, 1024);
    let mut o = Operands::new(s);
    let mut g = group(c, "sgemm threads", s);
    g.measurement_time(Duration::from_secs(2));
    for t in [1, 2] {
        let pool = benches::pool(t);
        let name = format!("lanes, {t} thread{}", if t > 1 { "s" } else { "" });
        g.bench_function(name, |bch| pool.install(|| bch.iter(|| lanes(s, &mut o))));
    }
    g.finish();
}

/// The GPT shapes in all four transpose cases, fp32 beside bf16 (B packed per call, and
/// packed once as a cached weight is), one thread. The forward product is NN, the weight
/// gradient TN (A = the activations, stored transposed) and the input gradient NT.
fn precision(c: &mut Criterion) {
    let pool = benches::pool(1);
    const GPT: [(usize, usize, usize); 4] = [
        (2048, 384, 1152),
        (2048, 384, 1536),
        (2048, 1536, 384),
        (2048, 384, 257),
    ];
    let t = |x: Transpose| if x == Transpose::No { "N" } else { "T" };
    for (m, k, n) in GPT {
        for ta in [Transpose::No, Transpose::Yes] {
            for tb in [Transpose::No, Transpose::Yes] {
                let mut rng = TestRng::new(1);
                let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
                let mut cm = vec![0.0; m * n];
                let lda = if ta == Transpose::No { k } else { m };
                let ldb = if tb == Transpose::No { n } else { k };
                let mut g = c.benchmark_group(format!("gemm {}{} {m}x{k}x{n}", t(ta), t(tb)));
                g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                g.sampling_mode(SamplingMode::Flat);
                g.sample_size(10);
                g.warm_up_time(Duration::from_millis(300));
                g.measurement_time(Duration::from_secs(1));
                for p in [Precision::F32, Precision::Bf16] {
                    g.bench_function(p.name(), |bch| {
                        pool.install(|| {
                            bch.iter(|| {
                                lanes_gemm(
                                    p, ta, tb, m, n, k, 1.0, &a, lda, &b, ldb, 0.0, &mut cm, n,
                                )
                            })
                        })
                    });
                }
                let packed = PackedB::of(tb, k, n, &b, ldb);
                g.bench_function("bf16, B packed once", |bch| {
                    pool.install(|| {
                        bch.iter(|| gemm_packed(ta, m, 1.0, &a, lda, &packed, 0.0, &mut cm, n))
                    })
                });
                g.finish();
            }
        }
    }
}

criterion_group! {
    name = benches;
    // No HTML plots: rendering them would take longer than the measurements.
    config = Criterion::default().without_plots();
    targets = single_thread, threads, precision
}
criterion_main!(benches);
