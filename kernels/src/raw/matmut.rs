//! Disjoint writable windows of one matrix: [`MatMut`], a `rows × cols` view of a row-major
//! buffer with a leading dimension, and [`Blocks`], a grid of such windows handed to rayon's
//! threads. A `&mut [f32]` cannot express a column block, so these hold a raw pointer; the
//! borrow of the whole buffer (`'a`) bounds every window, and windows are created only by
//! splitting one (`sub` borrows its parent, `blocks` consumes it), so two live windows never
//! overlap. Micro-kernels write through [`MatMut::block_ptr`] after checking their block
//! lies inside. Leaves out: what is computed in a window (the GEMM paths).

use std::marker::PhantomData;

/// A mutable `rows × cols` row-major window into `C` with leading dimension `ld`. Disjoint
/// windows of one matrix can be handed to different threads, which a `&mut [f32]` cannot
/// express for column blocks.
pub(crate) struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    ld: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: a MatMut is a unique borrow of its window (windows handed out by `blocks` are
// disjoint), so sending it to another thread is like sending a `&mut [f32]`.
unsafe impl Send for MatMut<'_> {}

impl<'a> MatMut<'a> {
    /// Views `c` as `rows × cols` with leading dimension `ld`. Panics if `c` is too short.
    pub(crate) fn new(c: &'a mut [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(ld >= cols, "MatMut: ld {ld} < cols {cols}");
        if rows > 0 && cols > 0 {
            assert!(c.len() >= (rows - 1) * ld + cols, "MatMut: slice too short");
        }
        MatMut {
            ptr: c.as_mut_ptr(),
            rows,
            cols,
            ld,
            _borrow: PhantomData,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i` of the window (`cols` elements).
    pub(crate) fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "MatMut: row {i} of {}", self.rows);
        // SAFETY: row i lies inside the window (checked), which this &mut self borrows uniquely.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.ld), self.cols) }
    }

    /// The `rows × cols` sub-window at `(i0, j0)`, borrowed from this one.
    pub(crate) fn sub(&mut self, i0: usize, j0: usize, rows: usize, cols: usize) -> MatMut<'_> {
        assert!(
            i0 + rows <= self.rows && j0 + cols <= self.cols,
            "MatMut::sub outside the window"
        );
        MatMut {
            ptr: if rows == 0 || cols == 0 {
                self.ptr
            } else {
                // SAFETY: (i0, j0) is inside the window (checked; an empty window is never read).
                unsafe { self.ptr.add(i0 * self.ld + j0) }
            },
            rows,
            cols,
            ld: self.ld,
            _borrow: PhantomData,
        }
    }

    /// A pointer to element `(i0, j0)` and the leading dimension, for a micro-kernel that
    /// writes the `rows × cols` block there. Panics unless the block lies inside the window.
    pub(crate) fn block_ptr(
        &mut self,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
    ) -> (*mut f32, usize) {
        assert!(
            rows > 0 && cols > 0 && i0 + rows <= self.rows && j0 + cols <= self.cols,
            "MatMut::block_ptr outside the window"
        );
        // SAFETY: (i0, j0) is inside the window (checked).
        (unsafe { self.ptr.add(i0 * self.ld + j0) }, self.ld)
    }

    /// Splits the window into a grid of `mb × nb` blocks (the last row and column of blocks
    /// may be smaller), numbered row-major, for a parallel iterator to hand out.
    pub(crate) fn blocks(self, mb: usize, nb: usize) -> Blocks<'a> {
        assert!(mb > 0 && nb > 0, "MatMut::blocks: empty block size");
        Blocks {
            ptr: SendPtr(self.ptr),
            rows: self.rows,
            cols: self.cols,
            ld: self.ld,
            mb,
            nb,
            grid_cols: self.cols.div_ceil(nb),
            _borrow: PhantomData,
        }
    }
}

/// A raw pointer that may cross threads; only [`Blocks`] uses it, to hand out disjoint windows.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only dereferenced through the disjoint windows `Blocks::get` hands out.
unsafe impl Send for SendPtr {}
// SAFETY: as above; sharing the pointer itself reads nothing.
unsafe impl Sync for SendPtr {}

/// A grid of disjoint windows of one `MatMut`, see [`MatMut::blocks`].
pub(crate) struct Blocks<'a> {
    ptr: SendPtr,
    rows: usize,
    cols: usize,
    ld: usize,
    mb: usize,
    nb: usize,
    grid_cols: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> Blocks<'a> {
    /// Number of blocks.
    pub(crate) fn len(&self) -> usize {
        self.rows.div_ceil(self.mb) * self.grid_cols
    }

    /// Calls `f(row, col, window)` exactly once for every block — `(row, col)` is the block's
    /// origin in the whole window — on the current rayon pool when `parallel`, else in order.
    /// Consuming the grid is what makes handing out `&mut`-like windows safe: no block can be
    /// asked for twice.
    pub(crate) fn for_each(self, parallel: bool, f: impl Fn(usize, usize, MatMut<'a>) + Sync) {
        let run = |t: usize| {
            let _task = crate::launch::task(t);
            // SAFETY: every t in 0..len() is visited exactly once, by this loop alone.
            let (i0, j0, view) = unsafe { self.block(t) };
            f(i0, j0, view)
        };
        crate::launch::ways(if parallel { self.len() } else { 1 });
        if parallel && self.len() > 1 {
            use rayon::prelude::*;
            (0..self.len()).into_par_iter().for_each(run);
        } else {
            (0..self.len()).for_each(run);
        }
    }

    /// Block `t` (row-major in the grid), with its origin `(row, col)` in the whole window.
    ///
    /// # Safety
    /// Windows for distinct `t` are disjoint; the caller must not take the same `t` twice.
    unsafe fn block(&self, t: usize) -> (usize, usize, MatMut<'a>) {
        assert!(t < self.len(), "Blocks::block: block {t} of {}", self.len());
        let (bi, bj) = (t / self.grid_cols, t % self.grid_cols);
        let (i0, j0) = (bi * self.mb, bj * self.nb);
        let rows = self.mb.min(self.rows - i0);
        let cols = self.nb.min(self.cols - j0);
        // SAFETY: (i0, j0) lies inside the window (t < len), and block t covers rows
        // i0..i0+rows and columns j0..j0+cols only, which no other block number covers.
        let ptr = unsafe { self.ptr.0.add(i0 * self.ld + j0) };
        let view = MatMut {
            ptr,
            rows,
            cols,
            ld: self.ld,
            _borrow: PhantomData,
        };
        (i0, j0, view)
    }
}
