//! Helpers for testing kernels against their references, shared by every kernel's tests and
//! by downstream crates: the awkward-length list, a tolerance comparison that names what
//! differs, and a tiny deterministic random source. Leaves out: anything timing-related
//! (performance is measured in `benches/`, never in tests).

use crate::simd::LANES;

/// Lengths that break kernels: empty, one, around the lane width, primes, a vocabulary-sized
/// row (257 = byte vocabulary). Every SIMD kernel's test sweeps these.
pub fn awkward_lengths() -> Vec<usize> {
    let mut v = vec![
        0,
        1,
        2,
        LANES - 1,
        LANES,
        LANES + 1,
        2 * LANES + 1,
        17,
        63,
        64,
        65,
        257,
    ];
    v.sort_unstable();
    v.dedup();
    v
}

/// How much a tolerance measured on the 16-lane AVX-512 build grows for a long sum on this
/// build: each of the `LANES` running sums adds 16/`LANES` times as many terms, and rounding
/// errors of a long sum grow like a random walk, so by the square root of that (1 at 16
/// lanes, 2 at 4). For the tests' reductions (dot products, softmax normalizers) only.
pub fn sum_tolerance_scale() -> f32 {
    (16.0 / LANES as f32).sqrt().max(1.0)
}

/// Panics with the first offending index unless `|got - want| <= atol + rtol * |want|` holds
/// elementwise (NaN matches only NaN; infinities must match exactly).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} != {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() || w.is_nan() {
            assert!(g.is_nan() && w.is_nan(), "{what}[{i}]: got {g}, want {w}");
            continue;
        }
        if g.is_infinite() || w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]: got {g}, want {w}");
            continue;
        }
        let err = (g - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (|diff| {err:e} > tol {tol:e}; rtol {rtol:e}, atol {atol:e})"
        );
        if err > worst.1 {
            worst = (i, err);
        }
    }
}

/// A small deterministic generator (SplitMix64) for test data; not for training.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A vector of `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "x[1]")]
    fn assert_close_names_the_first_bad_index() {
        assert_close(&[1.0, 2.0], &[1.0, 2.1], 1e-3, 0.0, "x");
    }

    #[test]
    fn assert_close_accepts_within_tolerance_and_matching_nans() {
        assert_close(
            &[1.0, f32::NAN, f32::INFINITY],
            &[1.0005, f32::NAN, f32::INFINITY],
            1e-3,
            0.0,
            "x",
        );
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (TestRng::new(7), TestRng::new(7));
        for _ in 0..1000 {
            let x = a.uniform();
            assert_eq!(x, b.uniform());
            assert!((-1.0..1.0).contains(&x));
        }
    }
}
