//! SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA
//! 2014; constants as in Vigna's `splitmix64.c`): the small, fast, well-mixed generator behind
//! every seeded choice in Lanes (data order, initialization, sampling). Its output is defined
//! by integer arithmetic alone, so a seed gives the same numbers on every platform, compiler
//! and thread count — which is what makes a resumed run see the batches it would have seen.
//! Leaves out: cryptographic strength.

/// The golden-ratio increment 2^64 / φ.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer (also usable as a hash).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit state advanced by a Weyl sequence (state += γ) and finalized by [`mix64`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The stream for one `(seed, step)` pair: a pure function of the two, so step `s` can be
    /// drawn without drawing steps `0..s` first. Distinct steps of one seed get distinct
    /// streams (`mix64` is a bijection).
    pub fn for_step(seed: u64, step: u64) -> Self {
        SplitMix64::new(mix64(mix64(seed).wrapping_add(step)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// A uniform integer in `0..n`, exactly (Lemire's multiply-shift with rejection, "Fast
    /// random integer generation in an interval", 2019; the rejection fires with probability
    /// below n / 2^64). Panics if `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            // Reject the few low products that would over-represent some results.
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// A standard normal draw (Box–Muller on two uniform draws; the pair's second value is
    /// discarded, so every call consumes exactly two `u64`s).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fills `out` with normal(0, std²) draws, in order, using both values of each Box–Muller
    /// pair (half the `ln` and `sin_cos` calls: GPT-2 124M initializes 124M weights).
    pub fn fill_normal(&mut self, out: &mut [f32], std: f32) {
        let std = std as f64;
        let mut pairs = out.chunks_exact_mut(2);
        for pair in &mut pairs {
            let u1 = 1.0 - self.next_f64();
            let u2 = self.next_f64();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
            pair[0] = (r * c) as f32;
            pair[1] = (r * s) as f32;
        }
        if let [last] = pairs.into_remainder() {
            *last = (self.next_normal() * std) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // First outputs of SplitMix64 seeded with 0 (as published with the algorithm).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        // splitmix64.c seeded with 1234567 (the sequence rand_xoshiro's tests also pin).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut r = SplitMix64::new(9);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert!(r.below(7) < 7);
            assert!((0.0..1.0).contains(&r.next_f32()));
        }
        assert_eq!(SplitMix64::new(1).below(1), 0);
        assert!(SplitMix64::new(2).below(u64::MAX) < u64::MAX);
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            seen[r.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }

    #[test]
    fn normal_draws_have_the_right_moments() {
        let mut r = SplitMix64::new(42);
        let n = 200_001; // odd: the last value of fill_normal takes the single-draw path
        let moments = |xs: &[f64]| {
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
            (mean, var)
        };
        let xs: Vec<f64> = (0..n).map(|_| r.next_normal()).collect();
        let (mean, var) = moments(&xs);
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
        let mut ys = vec![0.0f32; n];
        r.fill_normal(&mut ys, 2.0);
        let ys: Vec<f64> = ys.iter().map(|&y| y as f64).collect();
        let (mean, var) = moments(&ys);
        assert!(
            mean.abs() < 0.02 && (var - 4.0).abs() < 0.04,
            "{mean} {var}"
        );
        // The two values of a pair are uncorrelated.
        let corr = ys.chunks_exact(2).map(|p| p[0] * p[1]).sum::<f64>() / (n / 2) as f64 / 4.0;
        assert!(corr.abs() < 0.02, "pair correlation {corr}");
    }

    #[test]
    fn steps_are_pure_and_distinct() {
        let a = SplitMix64::for_step(42, 10).next_u64();
        assert_eq!(a, SplitMix64::for_step(42, 10).next_u64());
        assert_ne!(a, SplitMix64::for_step(42, 11).next_u64());
        assert_ne!(a, SplitMix64::for_step(43, 10).next_u64());
    }
}
