//! `sgemm` allocates nothing once its thread-local buffers have grown: the model calls it
//! many times per training step. A counting allocator (its own test binary, so it sees only
//! these calls) counts allocations made by this thread. Leaves out: rayon's own bookkeeping
//! on pool threads — the shapes here are small enough to run on the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kernels::{Transpose, sgemm};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized thread-local
// Cell, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn repeated_calls_do_not_allocate() {
    // (transa, transb, m, n, k): one per path, each under the parallel threshold. Ragged
    // edges on purpose: they use the scratch buffers (B strip copy, transposed A copy).
    let shapes = [
        (Transpose::No, Transpose::No, 1, 1000, 500), // one-row GEMV
        (Transpose::Yes, Transpose::No, 1, 700, 300), // GEMV, A gathered
        (Transpose::No, Transpose::No, 10, 100, 90),  // B in place, ragged strip
        (Transpose::Yes, Transpose::Yes, 5, 200, 40), // dot products, A copied
        (Transpose::No, Transpose::Yes, 100, 99, 100), // packed B, transposed
        (Transpose::Yes, Transpose::No, 90, 70, 150), // packed B, A stored transposed
    ];
    for (ta, tb, m, n, k) in shapes {
        // A stored transposed gets two columns of padding, so the GEMV must gather it.
        let lda = if ta == Transpose::No { k } else { m + 2 };
        let a = vec![0.5f32; m.max(k) * lda];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        let ldb = if tb == Transpose::No { n } else { k };
        let mut call = || sgemm(ta, tb, m, n, k, 1.0, &a, lda, &b, ldb, 0.5, &mut c, n);
        call(); // grows the thread-local buffers
        let before = ALLOCATIONS.with(Cell::get);
        call();
        let allocated = ALLOCATIONS.with(Cell::get) - before;
        assert_eq!(
            allocated, 0,
            "{ta:?}{tb:?} {m}×{n}×{k}: {allocated} allocations"
        );
    }
}
