//! Kernel launches counted per thread: how many operations a computation runs one after
//! another, its critical path at the granularity of kernels.
//!
//! Everything inside one kernel call runs in parallel (over rows, heads, tiles, hidden units),
//! but consecutive calls depend on each other, so a computation that makes N calls needs at
//! least N steps however many cores it has. The LSTM walk is the exception that shows the
//! point: one call of [`crate::recurrence::lstm_backward`] walks T time steps, each needing
//! the one before, so it counts T launches, what PyTorch or cuDNN would issue as T
//! (B, 4H)·(4H, H) products.
//!
//! Every public kernel (not the `_ref` references) opens a `Launch` on entry. The count is
//! kept per thread (so computations on other threads, and tests running side by side, do not
//! mix) and only the outermost kernel on a thread counts: a kernel calling another, or a
//! rayon task of a kernel running on the waiting caller's thread, adds nothing. Cost: two
//! thread-local updates per call, nanoseconds against kernels of microseconds.
//!
//! Only with the `trace` feature (the `runner` turns it on for its `parallelism` report).
//! Without it this module is private and its hooks are empty inline functions: a kernel
//! call costs nothing extra.
//!
//! ```
//! use kernels::elementwise::add_assign;
//! let (_, steps) = kernels::launch::count(|| {
//!     let mut acc = [1.0f32; 4];
//!     add_assign(&mut acc, &[1.0; 4]);
//!     add_assign(&mut acc, &[1.0; 4]);
//! });
//! assert_eq!(steps, 2);
//! ```
//!
//! ## Tracing: the work-span model's input
//!
//! [`trace`] also records every outermost launch on this thread as a [`Traced`]: the kernel
//! (where it opened its launch), its dependent steps, its wall time, and how many ways its
//! work is split: the independent tasks a pool could hand to separate cores (row blocks of a
//! GEMM, heads × query tiles of attention, panels of hidden units in one LSTM time step).
//! Kernels state that number with [`ways`] where they split; a kernel that never splits
//! states 1. From these a caller can predict the step time on more cores than it has.
//!
//! Leaves out: dependencies between calls (two independent calls count as two), and work done
//! outside the kernels (plain loops in the models).

#[cfg(not(feature = "trace"))]
pub(crate) use off::{start, ways};
#[cfg(feature = "trace")]
use std::cell::{Cell, RefCell};
#[cfg(feature = "trace")]
use std::panic::Location;
#[cfg(feature = "trace")]
use std::time::Instant;

/// The hooks as the kernels see them without the `trace` feature: nothing to count.
#[cfg(not(feature = "trace"))]
mod off {
    /// A kernel running; holds nothing.
    pub(crate) struct Launch;

    /// Starts a launch: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn start(_steps: u64) -> Launch {
        Launch
    }

    /// States a kernel's split: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn ways(_n: usize) {}
}

#[cfg(feature = "trace")]
thread_local! {
    /// Launch steps counted on this thread.
    static STEPS: Cell<u64> = const { Cell::new(0) };
    /// Kernels running on this thread right now (nested calls count nothing).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The launches recorded by [`trace`], while it runs on this thread.
    static TRACE: RefCell<Option<Vec<Traced>>> = const { RefCell::new(None) };
}

#[cfg(feature = "trace")]
/// One outermost kernel launch, as [`trace`] records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Traced {
    /// Where the kernel opened its launch (its file and line).
    pub kernel: &'static Location<'static>,
    /// Dependent steps: 1, or T for a walk through T time steps.
    pub steps: u64,
    /// Independent tasks each step splits into, the most any of its (nested) kernels stated;
    /// `None` when no kernel said.
    pub ways: Option<u64>,
    /// Times it handed work to the pool (a split into more than one task): each costs a
    /// fork-join, or for a walk the start of its team.
    pub joins: u64,
    /// Wall time of the whole launch.
    pub seconds: f64,
}

#[cfg(feature = "trace")]
/// A kernel running on this thread; dropping it ends the launch. Holds the start time of an
/// outermost launch being traced.
pub(crate) struct Launch(Option<Instant>);

#[cfg(feature = "trace")]
/// Starts a launch of `steps` dependent steps: 1 for a kernel whose work all runs in parallel,
/// T for a walk through T time steps. Counts nothing when called inside another kernel.
#[track_caller]
pub(crate) fn start(steps: u64) -> Launch {
    let kernel = Location::caller();
    let outermost = DEPTH.with(|depth| {
        let outermost = depth.get() == 0;
        if outermost {
            STEPS.with(|s| s.set(s.get() + steps));
        }
        depth.set(depth.get() + 1);
        outermost
    });
    let traced = outermost
        && TRACE.with(|t| match t.borrow_mut().as_mut() {
            Some(launches) => {
                launches.push(Traced {
                    kernel,
                    steps,
                    ways: None,
                    joins: 0,
                    seconds: 0.0,
                });
                true
            }
            None => false,
        });
    Launch(traced.then(Instant::now))
}

#[cfg(feature = "trace")]
impl Drop for Launch {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get() - 1));
        if let Some(started) = self.0 {
            let seconds = started.elapsed().as_secs_f64();
            TRACE.with(|t| {
                if let Some(last) = t.borrow_mut().as_mut().and_then(|l| l.last_mut()) {
                    last.seconds = seconds;
                }
            });
        }
    }
}

#[cfg(feature = "trace")]
/// States that the running kernel splits each of its steps into `n` independent tasks (1 for
/// one that does not split); each call with `n > 1` counts one fork-join. Called on the kernel's own thread, where it decides the split;
/// the outermost launch keeps the largest number any nested kernel states. Records nothing
/// unless [`trace`] runs.
pub(crate) fn ways(n: usize) {
    if DEPTH.with(Cell::get) == 0 {
        return;
    }
    TRACE.with(|t| {
        if let Some(last) = t.borrow_mut().as_mut().and_then(|l| l.last_mut()) {
            let n = n.max(1) as u64;
            last.ways = Some(last.ways.map_or(n, |w| w.max(n)));
            last.joins += u64::from(n > 1);
        }
    });
}

#[cfg(feature = "trace")]
/// Runs `f` and returns its result with every outermost kernel launch it made on this thread,
/// in order. Not reentrant: a `trace` inside `f` takes the launches from there on.
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, Vec<Traced>) {
    /// Ends the trace even when `f` panics.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            TRACE.with(|t| t.borrow_mut().take());
        }
    }
    TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
    let stop = Stop;
    let result = f();
    let launches = TRACE.with(|t| t.borrow_mut().take()).unwrap_or_default();
    drop(stop);
    (result, launches)
}

#[cfg(feature = "trace")]
/// Launch steps counted on this thread since it started.
pub fn steps() -> u64 {
    STEPS.with(Cell::get)
}

#[cfg(feature = "trace")]
/// Runs `f` and returns its result with the launch steps it took on this thread: the length
/// of its critical path in kernel launches.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = steps();
    let result = f();
    (result, steps() - before)
}

#[cfg(all(test, feature = "trace"))]
mod tests {
    use super::*;

    #[test]
    fn nested_launches_count_once() {
        let (_, n) = count(|| {
            let _outer = start(1);
            let _inner = start(5);
        });
        assert_eq!(n, 1);
        let (_, n) = count(|| {
            drop(start(3));
            drop(start(1));
        });
        assert_eq!(n, 4);
    }

    #[test]
    fn a_panicking_kernel_ends_its_launch() {
        let r = std::panic::catch_unwind(|| {
            let _l = start(1);
            panic!("broken precondition");
        });
        assert!(r.is_err());
        assert_eq!(count(|| drop(start(1))).1, 1);
    }

    #[test]
    fn a_trace_records_outermost_launches_with_their_ways() {
        let ((), launches) = trace(|| {
            {
                let _outer = start(1);
                ways(3);
                let _inner = start(7);
                ways(5);
                ways(2);
            }
            let _walk = start(4);
        });
        assert_eq!(launches.len(), 2, "{launches:?}");
        assert_eq!((launches[0].steps, launches[0].ways), (1, Some(5)));
        assert_eq!(launches[0].joins, 3);
        assert_eq!((launches[1].steps, launches[1].ways), (4, None));
        assert_eq!(launches[0].kernel.file(), file!());
        assert!(launches.iter().all(|l| l.seconds >= 0.0));
        // Outside a trace nothing is kept.
        drop(start(1));
        ways(9);
        assert!(trace(|| ()).1.is_empty());
    }

    #[test]
    fn a_trace_times_its_launches() {
        let ((), launches) = trace(|| {
            let _l = start(1);
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        assert!(launches[0].seconds >= 0.02, "{launches:?}");
    }

    #[test]
    fn walks_count_their_time_steps() {
        use crate::Precision;
        use crate::recurrence::{
            LstmDims, PackedWhh, lstm_backward, lstm_forward, lstm_pack_backward, lstm_pack_forward,
        };
        let (b, t, h) = (2, 7, 3);
        let dims = LstmDims { b, t, h };
        let mut hs = vec![0.0; (t + 1) * b * h];
        let mut cs = vec![0.0; (t + 1) * b * h];
        let mut gates = vec![0.1; t * b * 4 * h];
        let w_hh = vec![0.01; 4 * h * h];
        let (mut forward, mut backward) = (PackedWhh::new(), PackedWhh::new());
        lstm_pack_forward(&mut forward, &w_hh, h, Precision::F32);
        lstm_pack_backward(&mut backward, &w_hh, h, Precision::F32);
        let (_, n) = count(|| lstm_forward(&mut hs, &mut cs, &mut gates, &forward, dims));
        assert_eq!(n, t as u64);
        let mut dgates = vec![0.0; t * b * 4 * h];
        let (mut dh0, mut dc0) = (vec![0.0; b * h], vec![0.0; b * h]);
        let dhs = vec![1.0; t * b * h];
        let (_, n) = count(|| {
            lstm_backward(
                &mut dgates,
                &mut dh0,
                &mut dc0,
                &dhs,
                &gates,
                &cs,
                &backward,
                dims,
            )
        });
        assert_eq!(n, t as u64);
    }
}
