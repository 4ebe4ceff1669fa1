//! The measurements `--project` simulates from and checks itself against.
//!
//! For each (model, shape), one model trains on a pool of 1 thread and a pool of 2 in turn:
//!
//! - **pairs**: a 1-thread step traced with the kernels splitting as 2 workers would
//!   ([`kernels::parallel::plan`]), then a 2-thread step traced live, again and again, so a
//!   noisy moment of the machine hits both halves of a pair alike. The simulator predicts each
//!   2-thread step from the 1-thread one of its pair.
//! - **notional steps**: for every other core count P projected, one 1-thread step traced with
//!   the kernels splitting as P workers would: every task P threads would share, with its
//!   1-thread time.
//!
//! And for the machine: the costs the simulator adds ([`Costs`]: a rayon fork-join and a
//! walk's barrier on 2 threads, memory bandwidth on 1 and 2), and forced GEMMs cut into exactly
//! 3 and 5 equal tasks, run on 2 threads (1.5× and 1.67× at best, where a model that only
//! counts P says 2×).
//!
//! Leaves out: data loading (random tokens), and every thread count above 2 (this machine has
//! no more cores; the device machine's figures, where one is lent, are a separate run).

use std::time::{Duration, Instant};

use anyhow::Result;
use kernels::launch::Trace;
use kernels::parallel::{Plan, plan};
use model::{ModelKind, Precision};
use rayon::prelude::*;

use super::Shape;
use super::measure::Trainer;
use super::simulate::Costs;

/// One model at one shape: its pairs and its notional steps.
pub(super) struct Case {
    pub(super) kind: ModelKind,
    pub(super) shape: Shape,
    /// The 1-thread halves of the pairs, split for 2 workers.
    pub(super) one: Vec<Trace>,
    /// The 2-thread halves, traced live.
    pub(super) two: Vec<Trace>,
    /// (P, a 1-thread step split for P workers) for every projected P other than 2.
    pub(super) notional: Vec<(usize, Trace)>,
}

impl Case {
    /// Trains `kind` at `shape`: one untimed step on each pool, `pairs` pairs, then one
    /// notional step for each of `cores` but 2.
    pub(super) fn measure(
        kind: ModelKind,
        shape: Shape,
        pairs: usize,
        cores: &[usize],
        precision: Precision,
        pools: &Pools,
    ) -> Result<Case> {
        let mut trainer = Trainer::new(kind, shape, precision);
        pools.one.install(|| trainer.step());
        pools.two.install(|| trainer.step());
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            one.push(
                pools
                    .one
                    .install(|| plan(Plan::workers(2), || trainer.traced_step())),
            );
            two.push(pools.two.install(|| trainer.traced_step()));
        }
        let notional = cores
            .iter()
            .filter(|&&p| p != 2)
            .map(|&p| {
                let trace = pools
                    .one
                    .install(|| plan(Plan::workers(p), || trainer.traced_step()));
                (p, trace)
            })
            .collect();
        Ok(Case {
            kind,
            shape,
            one,
            two,
            notional,
        })
    }

    /// The 1-thread traces that hold the split for `p` workers: the pairs' for 2, else the
    /// notional step's; empty when `p` was not measured.
    pub(super) fn traces(&self, p: usize) -> &[Trace] {
        if p == 2 {
            return &self.one;
        }
        self.notional
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(&[], |(_, t)| std::slice::from_ref(t))
    }
}

/// The pools every measurement here runs on.
pub(super) struct Pools {
    pub(super) one: rayon::ThreadPool,
    pub(super) two: rayon::ThreadPool,
}

impl Pools {
    pub(super) fn new() -> Result<Pools> {
        Ok(Pools {
            one: super::measure::pool(1)?,
            two: super::measure::pool(2)?,
        })
    }
}

/// Bytes per second streamed by [`kernels::elementwise::copy`] over 256 MiB (far past every
/// cache), counted as the kernel states them ([`kernels::launch`]'s bytes): the same
/// measure the roofline divides each launch's bytes by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Bandwidth {
    pub(super) one: f64,
    pub(super) two: f64,
}

/// Elements of each buffer the bandwidth is measured over (256 MiB of f32).
const STREAM_ELEMS: usize = 64 << 20;

impl Bandwidth {
    /// The best of 7 copies on each pool, after one that faults the pages in.
    pub(super) fn measure(pools: &Pools) -> Bandwidth {
        let src = vec![1.0f32; STREAM_ELEMS];
        let mut dst = vec![0.0f32; STREAM_ELEMS];
        let mut on = |pool: &rayon::ThreadPool| {
            pool.install(|| {
                kernels::elementwise::copy(&mut dst, &src);
                (0..7)
                    .map(|_| {
                        let trace =
                            kernels::launch::trace(|| kernels::elementwise::copy(&mut dst, &src)).1;
                        trace.launches[0].bytes as f64 / trace.launches[0].seconds
                    })
                    .fold(0.0, f64::max)
            })
        };
        let one = on(&pools.one);
        let two = on(&pools.two);
        Bandwidth { one, two }
    }
}

/// A fork-join and a barrier crossing measured on 2 threads; with `bandwidth`, the machine
/// the 2-thread validation simulates (its total bandwidth the one 2 threads reach here).
pub(super) fn costs_here(pools: &Pools, bandwidth: Bandwidth) -> Costs {
    // Two tasks of 20 µs each, so that the second thread must take one: what the pair
    // takes beyond 20 µs is the fork-join.
    let work = Duration::from_micros(20);
    let fork_join_2 = pools.two.install(|| {
        least_seconds(400, || {
            (0..2usize).into_par_iter().for_each(|_| {
                let start = Instant::now();
                while start.elapsed() < work {
                    std::hint::spin_loop();
                }
            });
        })
    }) - work.as_secs_f64();
    // A walk with one panel of hidden units per thread and a batch of one: each step's work
    // is a few thousand multiply-adds, so its time on 2 threads beyond half the 1-thread time
    // is the barrier.
    let per_step = |pool: &rayon::ThreadPool| {
        let (b, t, h) = (1, 2048, 2 * kernels::simd::LANES);
        let mut hs = vec![0.0; (t + 1) * b * h];
        let mut cs = vec![0.0; (t + 1) * b * h];
        let mut gates = vec![0.01; t * b * 4 * h];
        let mut packed = kernels::recurrence::PackedWhh::new();
        let w_hh = vec![0.01; 4 * h * h];
        kernels::recurrence::lstm_pack_forward(&mut packed, &w_hh, h, kernels::Precision::F32);
        pool.install(|| {
            least_seconds(31, || {
                let dims = kernels::LstmDims { b, t, h };
                kernels::recurrence::lstm_forward(&mut hs, &mut cs, &mut gates, &packed, dims);
            })
        }) / t as f64
    };
    let barrier_2 = (per_step(&pools.two) - per_step(&pools.one) / 2.0).max(0.0);
    Costs {
        fork_join_2: fork_join_2.max(0.0),
        barrier_2,
        bw_1: bandwidth.one,
        bw_total: bandwidth.two,
    }
}

/// The least of `samples` timings of `f`, seconds: other work on the machine only adds.
fn least_seconds(samples: usize, mut f: impl FnMut()) -> f64 {
    (0..samples)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A GEMM forced into exactly `tasks` equal tasks (`Plan::max_tasks`), in pairs as a case.
pub(super) struct Forced {
    pub(super) tasks: usize,
    /// (m, n, k) of the product.
    pub(super) dims: (usize, usize, usize),
    /// 1-thread traces, split as on 2 workers with the cap.
    pub(super) one: Vec<Trace>,
    /// 2-thread traces with the same cap.
    pub(super) two: Vec<Trace>,
}

/// Rows of one task of a forced GEMM: a whole block of the fp32 path (its `MC`).
const FORCED_ROWS: usize = 192;

impl Forced {
    /// C (192·tasks × 512) = A (192·tasks × 1024) · B (1024 × 512), `pairs` times on each pool.
    pub(super) fn measure(tasks: usize, pairs: usize, pools: &Pools) -> Forced {
        let (m, n, k) = (FORCED_ROWS * tasks, 512, 1024);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        let cap = Plan {
            workers: 2,
            max_tasks: tasks,
        };
        let mut product = || {
            kernels::launch::trace(|| {
                plan(cap, || {
                    use kernels::Transpose::No;
                    kernels::sgemm(No, No, m, n, k, 1.0, &a, k, &b, n, 0.0, &mut c, n)
                })
            })
            .1
        };
        pools.one.install(&mut product);
        pools.two.install(&mut product);
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            one.push(pools.one.install(&mut product));
            two.push(pools.two.install(&mut product));
        }
        Forced {
            tasks,
            dims: (m, n, k),
            one,
            two,
        }
    }
}
