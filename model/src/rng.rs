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
    fn steps_are_pure_and_distinct() {
        let a = SplitMix64::for_step(42, 10).next_u64();
        assert_eq!(a, SplitMix64::for_step(42, 10).next_u64());
        assert_ne!(a, SplitMix64::for_step(42, 11).next_u64());
        assert_ne!(a, SplitMix64::for_step(43, 10).next_u64());
    }
}
