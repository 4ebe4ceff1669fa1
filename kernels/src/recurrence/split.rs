//! How one step of a walk is cut into parts for its team: blocks of batch rows × blocks of
//! panels (LANES hidden units each), sized from the shape and the pool the walk plans for
//! ([`crate::parallel::workers`]).
//!
//! A part is the rows `rows(i)` × the hidden units of the panels `panels(i)`: it computes
//! those rows' gates, c and h (forward) or dgates and dh (backward) for those units. Its
//! recurrent product needs the whole h_{t-1} (dgates_t) of its rows and streams its panels
//! of W_hh once per register block of rows (4 rows, or 1–2 rows × 2 panels for B ≤ 2, see
//! `step.rs`), so cutting the batch into blocks of a multiple of 4 rows reads no weight more
//! often than the whole batch does; smaller row blocks (1–3 rows) are used only where the
//! parts would otherwise be fewer than the workers.
//!
//! Parts are numbered panel block major (`i = panel_block · row_blocks + row_block`), so the
//! contiguous run of parts a seat of the team owns covers few panels: each thread keeps about
//! 1/Q of W_hh in its cache, however the rows are cut.
//!
//! The choice, for P workers: among the splits into at least P parts (where the shape has
//! that many) and at least P panel blocks (where there are that many panels), those whose
//! slowest seat, owning `ceil(parts / P)` parts of the largest size, has within 1/16 of the
//! least work; of those the fewest parts, then the fewest row blocks. A part costs a little
//! outside its product (the backward cell step of a small part touches its rows' gates in
//! short pieces), so on one worker the step is one part, on two it is two halves of the
//! panels (the walk's split before it cut rows), and rows are cut only where the panels are
//! too few for the workers or the seats would otherwise be uneven: B = 16, H = 360 on 8
//! lanes is 45 parts (all rows × one panel) for P = 16 and 180 (4 rows × one panel) for P =
//! 64. The split changes no result: every element is computed by the same operations in the
//! same order in any part.
//!
//! Leaves out: what a part computes (`step.rs`), the team (`crate::raw::team`).

use crate::simd::LANES;
use std::ops::Range;

/// A step's parts: `row_blocks` blocks of `rows_per` batch rows (the last may be shorter) ×
/// `panel_blocks` blocks of `panels_per` panels (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grid {
    b: usize,
    panels: usize,
    rows_per: usize,
    row_blocks: usize,
    panels_per: usize,
    panel_blocks: usize,
}

impl Grid {
    /// The split of a step of batch `b`, hidden size `h`, for `workers` threads.
    pub(super) fn new(b: usize, h: usize, workers: usize) -> Grid {
        let (b1, panels) = (b.max(1), h.div_ceil(LANES).max(1));
        let workers = workers.max(1);
        let grid = |rows_per: usize, panels_per: usize| Grid {
            b: b1,
            panels,
            rows_per,
            row_blocks: b1.div_ceil(rows_per),
            panels_per,
            panel_blocks: panels.div_ceil(panels_per),
        };
        // Enough parts for the workers, where the shape has them, and at least as many panel
        // blocks, so that each seat's parts cover about 1/P of the panels.
        let need = workers.min(b1 * panels);
        let fits = |g: &Grid| g.parts() >= need && g.panel_blocks >= workers.min(panels);
        let splits = |rows: &[usize]| -> Vec<Grid> {
            let all = rows.iter().flat_map(|&r| (1..=panels).map(move |u| (r, u)));
            all.map(|(r, u)| grid(r, u)).filter(fits).collect()
        };
        // Row blocks that read no weight more often than the whole batch: all rows, or a
        // multiple of the 4-row register block; smaller ones only where those are too few.
        let whole: Vec<usize> = std::iter::once(b1)
            .chain((4..b1).step_by(4).rev())
            .collect();
        let mut candidates = splits(&whole);
        if candidates.is_empty() {
            candidates = splits(&(1..b1.min(4)).rev().collect::<Vec<_>>());
        }
        // The slowest seat's work, in row × panels (a part of the largest size per part).
        let span = |g: &Grid| g.parts().div_ceil(workers) * g.rows_per * g.panels_per;
        let least = candidates
            .iter()
            .map(span)
            .min()
            .expect("one row × one panel fits");
        // Within 1/16 of the least: the fewest parts, then the fewest row blocks.
        let near = candidates
            .into_iter()
            .filter(|g| span(g) * 16 <= least * 17);
        near.min_by_key(|g| (g.parts(), g.row_blocks))
            .expect("the least is near itself")
    }

    /// The parts of a step.
    pub(super) fn parts(&self) -> usize {
        self.row_blocks * self.panel_blocks
    }

    /// The batch rows of part `i`.
    pub(super) fn rows(&self, i: usize) -> Range<usize> {
        let r = i % self.row_blocks * self.rows_per;
        r..(r + self.rows_per).min(self.b)
    }

    /// The panels of part `i` (panel `u` holds hidden units `u·LANES .. (u+1)·LANES`).
    pub(super) fn panels(&self, i: usize) -> Range<usize> {
        let u = i / self.row_blocks * self.panels_per;
        u..(u + self.panels_per).min(self.panels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (row blocks, panel blocks) of the split.
    fn shape(b: usize, h: usize, p: usize) -> (usize, usize) {
        let g = Grid::new(b, h, p);
        (g.row_blocks, g.panel_blocks)
    }

    #[test]
    fn one_worker_gets_one_part_and_two_get_halves_of_the_panels() {
        for (b, h) in [(16, 360), (1, 360), (2, 37), (5, 1)] {
            assert_eq!(shape(b, h, 1), (1, 1), "B={b} H={h}");
        }
        assert_eq!(shape(16, 360, 2), (1, 2));
        assert_eq!(shape(1, 360, 2), (1, 2));
    }

    #[test]
    fn the_small_lstm_splits_as_documented() {
        // 45 panels of 8 lanes, 23 of 16.
        let panels = 360usize.div_ceil(LANES);
        let (rows, cols) = shape(16, 360, 64);
        assert!(cols == panels && rows * cols >= 64, "{rows} × {cols}");
        assert_eq!(shape(1, 360, 64), (1, panels));
        // The module docs' example is the 8-lane build's.
        if LANES == 8 {
            assert_eq!(shape(16, 360, 64), (4, 45));
            assert_eq!(shape(16, 360, 16), (1, 45));
        }
    }

    #[test]
    fn many_workers_get_at_least_as_many_parts_where_the_shape_has_them() {
        for (b, h) in [(16, 360), (64, 360), (4, 360), (2, 360), (3, 100), (16, 8)] {
            for p in [1, 2, 3, 16, 64] {
                let g = Grid::new(b, h, p);
                let most = b * h.div_ceil(LANES);
                assert!(g.parts() >= p.min(most), "B={b} H={h} P={p}: {g:?}");
            }
        }
        assert!(Grid::new(16, 360, 64).parts() >= 64);
        // B = 1: only the panels.
        assert_eq!(Grid::new(1, 360, 64).parts(), 360usize.div_ceil(LANES));
    }

    #[test]
    fn parts_tile_rows_and_panels_once() {
        for (b, h, p) in [
            (16, 360, 64),
            (9, 37, 16),
            (1, 100, 2),
            (2, 360, 64),
            (7, 5, 3),
        ] {
            let g = Grid::new(b, h, p);
            let mut seen = vec![0; b * h.div_ceil(LANES)];
            for i in 0..g.parts() {
                assert!(
                    !g.rows(i).is_empty() && !g.panels(i).is_empty(),
                    "{g:?} {i}"
                );
                for r in g.rows(i) {
                    for u in g.panels(i) {
                        seen[r * h.div_ceil(LANES) + u] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "B={b} H={h} P={p}: {g:?}");
        }
    }
}
