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
//! Leaves out: dependencies between calls (two independent calls count as two), and work done
//! outside the kernels (plain loops in the models).

use std::cell::Cell;

thread_local! {
    /// Launch steps counted on this thread.
    static STEPS: Cell<u64> = const { Cell::new(0) };
    /// Kernels running on this thread right now (nested calls count nothing).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A kernel running on this thread; dropping it ends the launch.
pub(crate) struct Launch(());

/// Starts a launch of `steps` dependent steps: 1 for a kernel whose work all runs in parallel,
/// T for a walk through T time steps. Counts nothing when called inside another kernel.
pub(crate) fn start(steps: u64) -> Launch {
    DEPTH.with(|depth| {
        if depth.get() == 0 {
            STEPS.with(|s| s.set(s.get() + steps));
        }
        depth.set(depth.get() + 1);
    });
    Launch(())
}

impl Drop for Launch {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}

/// Launch steps counted on this thread since it started.
pub fn steps() -> u64 {
    STEPS.with(Cell::get)
}

/// Runs `f` and returns its result with the launch steps it took on this thread: the length
/// of its critical path in kernel launches.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = steps();
    let result = f();
    (result, steps() - before)
}

#[cfg(test)]
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
    fn walks_count_their_time_steps() {
        use crate::recurrence::{lstm_backward, lstm_forward, lstm_packed_len};
        let (b, t, h) = (2, 7, 3);
        let mut hs = vec![0.0; (t + 1) * b * h];
        let mut cs = vec![0.0; (t + 1) * b * h];
        let mut gates = vec![0.1; t * b * 4 * h];
        let packed = vec![0.01; lstm_packed_len(h)];
        let (_, n) = count(|| lstm_forward(&mut hs, &mut cs, &mut gates, &packed, b, t, h));
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
                &packed,
                b,
                t,
                h,
            )
        });
        assert_eq!(n, t as u64);
    }
}
