//! A team of threads walking a sequence in lock step (the LSTM recurrence): the spin barrier
//! they meet at once per phase, and [`Shared`], the buffer they write in disjoint parts.
//!
//! [`on_team`] gives each thread a [`Seat`]: its own range of work for the whole walk and
//! its place at the barrier. Slices of a [`Shared`] buffer borrow the seat, and
//! [`Seat::wait`] takes it mutably, so no slice handed out in one phase can live across the
//! barrier into the next: the borrow checker enforces the "complete before the barrier,
//! read after it" half of the protocol. The other half — within one phase, a range one
//! thread writes is touched by no other — is the caller's promise at each `unsafe` getter.
//! Leaves out: what the walk computes (`crate::recurrence`).

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its core.
const SPIN_LIMIT: u32 = 1 << 10;

/// Runs `walk(seat)` on `min(pool size, parts)` threads of the current rayon pool: thread p's
/// seat owns parts `p·n/P .. (p+1)·n/P` for the whole walk.
pub(crate) fn on_team(parts: usize, walk: impl Fn(&mut Seat<'_>) + Sync) {
    crate::launch::ways(parts);
    crate::launch::team_phase(parts);
    let parties = rayon::current_num_threads().min(parts).max(1);
    let barrier = SpinBarrier::new(parties);
    let seat = |p: usize| Seat {
        own: p * parts / parties..(p + 1) * parts / parties,
        parts,
        barrier: &barrier,
    };
    if parties == 1 {
        walk(&mut seat(0));
    } else {
        rayon::broadcast(|ctx| {
            if ctx.index() < parties {
                walk(&mut seat(ctx.index()));
            }
        });
    }
}

/// One thread's place in a walk: its own parts and the barrier.
pub(crate) struct Seat<'b> {
    own: Range<usize>,
    /// The parts of the whole team.
    parts: usize,
    barrier: &'b SpinBarrier,
}

impl Seat<'_> {
    /// The parts this thread owns for the whole walk.
    pub(crate) fn own(&self) -> Range<usize> {
        self.own.clone()
    }

    /// Waits until every thread of the team has arrived. Everything written before is
    /// visible after; taking the seat mutably ends every slice borrowed in the phase before.
    pub(crate) fn wait(&mut self) {
        self.barrier.wait();
        crate::launch::team_phase(self.parts);
    }
}

/// A sense-counting spin barrier for the threads of one walk. Arrival is a release and
/// departure an acquire, so everything written before `wait` is visible after it.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    parties: usize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        SpinBarrier {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            parties,
        }
    }

    fn wait(&self) {
        if self.parties == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // Last to arrive: reset for the next round, then release the others.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
        } else {
            let mut spins = 0;
            while self.generation.load(Ordering::Acquire) == generation {
                if spins < SPIN_LIMIT {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A buffer the threads of a walk write in disjoint parts and read in full only after a
/// barrier. It hands out slices by range, each borrowing both the buffer and the caller's
/// [`Seat`], so a slice ends with the phase it was taken in (see the module doc).
pub(crate) struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Shared` is a `&mut [f32]` split between threads; every access goes through the
// `unsafe` getters below, whose callers guarantee the ranges they use are race-free.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    pub(crate) fn new(buf: &'a mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// `start .. start + len`, to read during the current phase. Panics if out of bounds.
    ///
    /// # Safety
    /// No thread may write `start..start + len` during the current phase (until the seat's
    /// next [`Seat::wait`], which ends the slice's borrow).
    pub(crate) unsafe fn get<'p>(
        &'p self,
        _seat: &'p Seat<'_>,
        start: usize,
        len: usize,
    ) -> &'p [f32] {
        assert!(start + len <= self.len, "Shared::get out of bounds");
        // SAFETY: in bounds (checked above) of a `&'a mut [f32]` that outlives `'p`; the caller
        // rules out concurrent writes for as long as the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }

    /// `start .. start + len`, to write during the current phase. Panics if out of bounds.
    ///
    /// # Safety
    /// No other slice of `start..start + len`, in this thread or another, may be alive during
    /// the current phase.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut<'p>(
        &'p self,
        _seat: &'p Seat<'_>,
        start: usize,
        len: usize,
    ) -> &'p mut [f32] {
        assert!(start + len <= self.len, "Shared::get_mut out of bounds");
        // SAFETY: in bounds (checked above); the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
