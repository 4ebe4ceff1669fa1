//! Sampling rules: how a generator turns the model's logits (V) into the next token.
//!
//! ```text
//! greedy:      argmax_i logits_i                                   (first index on a tie)
//! naive:       p = softmax(logits / temperature), draw i ~ p
//! top-k:       keep the k most probable tokens of p, renormalize, draw
//! top-p:       keep the smallest set of most probable tokens whose mass reaches P (the
//!              nucleus, Holtzman et al. 2020), renormalize, draw
//! ```
//!
//! Temperature below 1 sharpens p, above 1 flattens it. Top-k and top-p combine (k first,
//! then the nucleus of what is left, as Hugging Face's `generate` does). Ties in probability
//! are broken by the lower token id, so the kept set — and hence every draw for a seed — is
//! the same on every machine. Draws come from [`SplitMix64`], one `next_f64` per token.
//!
//! [`Sampler::distribution`] exposes the exact distribution a draw uses, so that tests check
//! the rules on the distribution itself, not only on samples. Leaves out: repetition
//! penalties, beam search, min-p, typical sampling.

use crate::rng::SplitMix64;

/// A sampling rule and its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Always the most probable token: deterministic, no random draw.
    Greedy,
    /// A random draw from softmax(logits / temperature), optionally cut to the `top_k` most
    /// probable tokens and/or the nucleus of mass `top_p`.
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    },
}

/// A rule parameter outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("temperature {0} must be a positive finite number")]
    Temperature(f32),
    #[error("top-k {0} must be at least 1")]
    TopK(usize),
    #[error("top-p {0} must be in (0, 1]")]
    TopP(f32),
}

impl Rule {
    /// Naive sampling at temperature 1: draw from the model's distribution as it is.
    pub const NAIVE: Rule = Rule::Sample {
        temperature: 1.0,
        top_k: None,
        top_p: None,
    };

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if let Rule::Sample {
            temperature,
            top_k,
            top_p,
        } = *self
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(SamplingError::Temperature(temperature));
            }
            if let Some(k) = top_k
                && k == 0
            {
                return Err(SamplingError::TopK(k));
            }
            if let Some(p) = top_p
                && !(p > 0.0 && p <= 1.0)
            {
                return Err(SamplingError::TopP(p));
            }
        }
        Ok(())
    }
}

/// Draws tokens by one [`Rule`] from a seeded stream; reuses its buffers between tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    rule: Rule,
    rng: SplitMix64,
    probs: Vec<f32>,   // (V) the distribution of the last call
    order: Vec<u32>,   // (≤ V) token ids, most probable first (filled only when cutting)
    scratch: Vec<f32>, // (V) the cut distribution before it becomes `probs`
}

impl Sampler {
    /// A sampler for `rule` drawing from `SplitMix64::new(seed)`. Panics on an invalid rule
    /// (see [`Rule::validate`]).
    pub fn new(rule: Rule, seed: u64) -> Self {
        if let Err(e) = rule.validate() {
            panic!("Sampler::new: {e}");
        }
        Sampler {
            rule,
            rng: SplitMix64::new(seed),
            probs: Vec::new(),
            order: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// The distribution over the V tokens that [`Self::sample`] draws from for these logits:
    /// one-hot for greedy, else the (cut and renormalized) tempered softmax. Entries outside
    /// the kept set are exactly 0.
    pub fn distribution(&mut self, logits: &[f32]) -> &[f32] {
        assert!(!logits.is_empty(), "Sampler: empty logits");
        let v = logits.len();
        self.probs.clear();
        self.probs.resize(v, 0.0);
        let (temperature, top_k, top_p) = match self.rule {
            Rule::Greedy => {
                self.probs[argmax(logits)] = 1.0;
                return &self.probs;
            }
            Rule::Sample {
                temperature,
                top_k,
                top_p,
            } => (temperature, top_k, top_p),
        };
        // Tempered softmax in f64 (V ≤ 50257 exps per token: negligible beside the model).
        let inv_t = 1.0 / f64::from(temperature);
        let max = f64::from(logits[argmax(logits)]);
        let mut sum = 0.0f64;
        for (p, &l) in self.probs.iter_mut().zip(logits) {
            let e = ((f64::from(l) - max) * inv_t).exp();
            *p = e as f32;
            sum += e;
        }
        let k = top_k.map_or(v, |k| k.min(v));
        if k < v || top_p.is_some_and(|p| p < 1.0) {
            self.cut(k, top_p.unwrap_or(1.0));
        } else {
            let inv = (1.0 / sum) as f32;
            self.probs.iter_mut().for_each(|p| *p *= inv);
        }
        &self.probs
    }

    /// Keeps the `k` most probable tokens, then of those the smallest prefix holding a
    /// fraction `p` of their mass; zeroes the rest and renormalizes (`probs` may be
    /// unnormalized on entry).
    fn cut(&mut self, k: usize, p: f32) {
        let probs = &self.probs;
        // Most probable first; equal probabilities by lower id, so the order is total.
        let before = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        self.order.clear();
        self.order.extend(0..probs.len() as u32);
        if k < self.order.len() {
            self.order.select_nth_unstable_by(k - 1, before);
            self.order.truncate(k);
        }
        self.order.sort_unstable_by(before);
        // The nucleus: the shortest prefix reaching mass p (at least one token).
        let top_k_mass: f64 = self
            .order
            .iter()
            .map(|&id| f64::from(probs[id as usize]))
            .sum();
        let target = f64::from(p) * top_k_mass;
        let mut mass = 0.0f64;
        let mut keep = self.order.len();
        for (i, &id) in self.order.iter().enumerate() {
            mass += f64::from(probs[id as usize]);
            if mass >= target {
                keep = i + 1;
                break;
            }
        }
        let kept: f64 = self.order[..keep]
            .iter()
            .map(|&id| f64::from(probs[id as usize]))
            .sum();
        let inv = (1.0 / kept) as f32;
        self.scratch.clear();
        self.scratch.resize(probs.len(), 0.0);
        for &id in &self.order[..keep] {
            self.scratch[id as usize] = probs[id as usize] * inv;
        }
        std::mem::swap(&mut self.probs, &mut self.scratch);
    }

    /// The next token for these logits (V). Greedy consumes no randomness; the other rules
    /// one uniform draw, mapped through the cumulative distribution in id order.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.rule == Rule::Greedy {
            return argmax(logits) as u32;
        }
        self.distribution(logits);
        let total: f64 = self.probs.iter().map(|&p| f64::from(p)).sum();
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        let mut last = 0;
        for (i, &p) in self.probs.iter().enumerate() {
            if p > 0.0 {
                acc += f64::from(p);
                last = i;
                if acc > u {
                    return i as u32;
                }
            }
        }
        last as u32 // u within rounding of the total: the last kept token
    }
}

/// Index of the largest value (the first one on a tie; NaN never wins).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits with a clear order, token 0 least probable, some ties.
    fn logits() -> Vec<f32> {
        vec![-1.0, 2.0, 0.5, 3.0, 0.5, -2.0, 1.0, 2.5, 0.0, 1.5]
    }

    fn sample_rule(temperature: f32, top_k: Option<usize>, top_p: Option<f32>) -> Rule {
        Rule::Sample {
            temperature,
            top_k,
            top_p,
        }
    }

    fn softmax(l: &[f32], t: f64) -> Vec<f64> {
        let e: Vec<f64> = l.iter().map(|&x| (f64::from(x) / t).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|x| x / s).collect()
    }

    fn counts(s: &mut Sampler, l: &[f32], n: usize) -> Vec<usize> {
        let mut c = vec![0; l.len()];
        for _ in 0..n {
            c[s.sample(l) as usize] += 1;
        }
        c
    }

    #[test]
    fn greedy_is_argmax_and_draws_nothing() {
        let l = logits();
        let mut s = Sampler::new(Rule::Greedy, 1);
        assert_eq!(s.sample(&l), 3);
        assert_eq!(s.distribution(&l)[3], 1.0);
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 2.0]), 1, "first on a tie");
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1, "NaN never wins");
        for _ in 0..10 {
            assert_eq!(s.sample(&l), 3);
        }
    }

    #[test]
    fn naive_sampling_matches_the_softmax() {
        let l = logits();
        let mut s = Sampler::new(Rule::NAIVE, 3);
        let want = softmax(&l, 1.0);
        for (got, want) in s.distribution(&l).iter().zip(&want) {
            assert!((f64::from(*got) - want).abs() < 1e-6);
        }
        let n = 200_000;
        let c = counts(&mut s, &l, n);
        for (i, (&c, &p)) in c.iter().zip(&want).enumerate() {
            // Within 5 standard deviations of the binomial count.
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (c as f64 - n as f64 * p).abs() < 5.0 * sd + 1.0,
                "token {i}: {c} draws, expected {}",
                n as f64 * p
            );
        }
    }

    #[test]
    fn top_k_never_emits_outside_the_k_largest() {
        let l = logits();
        // Order by logit: 3 (3.0), 7 (2.5), 1 (2.0), 9 (1.5), 6 (1.0), then the 0.5 tie 2, 4.
        for (k, allowed) in [
            (1, vec![3]),
            (3, vec![3, 7, 1]),
            (6, vec![3, 7, 1, 9, 6, 2]), // the tie at 0.5 goes to the lower id
        ] {
            let mut s = Sampler::new(sample_rule(1.0, Some(k), None), 5);
            let d = s.distribution(&l).to_vec();
            let kept: Vec<usize> = (0..l.len()).filter(|&i| d[i] > 0.0).collect();
            let mut want = allowed.clone();
            want.sort();
            assert_eq!(kept, want, "k = {k}");
            assert!((d.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            // Renormalized in proportion to the softmax.
            let p = softmax(&l, 1.0);
            let mass: f64 = allowed.iter().map(|&i| p[i]).sum();
            for &i in &allowed {
                assert!((f64::from(d[i]) - p[i] / mass).abs() < 1e-6);
            }
            let c = counts(&mut s, &l, 20_000);
            for (i, &n) in c.iter().enumerate() {
                assert!(
                    allowed.contains(&i) || n == 0,
                    "k = {k}: token {i} drawn {n} times"
                );
            }
        }
        // k ≥ V keeps everything.
        let mut s = Sampler::new(sample_rule(1.0, Some(100), None), 5);
        assert!(s.distribution(&l).iter().all(|&p| p > 0.0));
    }

    #[test]
    fn nucleus_keeps_the_smallest_set_reaching_p() {
        let l = logits();
        let p = softmax(&l, 1.0);
        let mut by_prob: Vec<usize> = (0..l.len()).collect();
        by_prob.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        for top_p in [0.05f32, 0.3, 0.5, 0.8, 0.95, 0.999] {
            let mut s = Sampler::new(sample_rule(1.0, None, Some(top_p)), 9);
            let d = s.distribution(&l).to_vec();
            let kept: Vec<usize> = by_prob.iter().copied().filter(|&i| d[i] > 0.0).collect();
            // A prefix of the probability order...
            assert_eq!(kept, by_prob[..kept.len()], "top-p {top_p}");
            // ...that reaches p, while one token fewer does not.
            let mass = |n: usize| by_prob[..n].iter().map(|&i| p[i]).sum::<f64>();
            assert!(mass(kept.len()) >= f64::from(top_p) - 1e-6, "top-p {top_p}");
            assert!(mass(kept.len() - 1) < f64::from(top_p), "top-p {top_p}");
            let c = counts(&mut s, &l, 5_000);
            assert!(c.iter().enumerate().all(|(i, &n)| n == 0 || d[i] > 0.0));
        }
        // p = 1 keeps every token.
        let mut s = Sampler::new(sample_rule(1.0, None, Some(1.0)), 9);
        assert!(s.distribution(&l).iter().all(|&x| x > 0.0));
    }

    #[test]
    fn top_k_then_top_p_combine() {
        let l = logits();
        // k = 3 keeps 3, 7, 1. The nucleus 0.5 is taken of their renormalized mass, where
        // token 3 alone holds 0.506; of the whole softmax it holds 0.389 and would need 7 too.
        let mut s = Sampler::new(sample_rule(1.0, Some(3), Some(0.5)), 2);
        let d = s.distribution(&l).to_vec();
        let kept: Vec<usize> = (0..l.len()).filter(|&i| d[i] > 0.0).collect();
        let p = softmax(&l, 1.0);
        let m3: f64 = [3, 7, 1].iter().map(|&i| p[i]).sum();
        assert!(p[3] / m3 >= 0.5 && p[3] < 0.5);
        assert_eq!(kept, vec![3]);
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = logits();
        let entropy = |d: &[f32]| -> f64 {
            d.iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| -f64::from(p) * f64::from(p).log2())
                .sum()
        };
        let at = |t: f32| {
            let mut s = Sampler::new(sample_rule(t, None, None), 0);
            let d = s.distribution(&l).to_vec();
            let want = softmax(&l, f64::from(t));
            for (g, w) in d.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() < 1e-6, "temperature {t}");
            }
            d
        };
        let (cold, one, hot) = (at(0.25), at(1.0), at(4.0));
        assert!(entropy(&cold) < entropy(&one) && entropy(&one) < entropy(&hot));
        assert!(
            cold[3] > one[3] && one[3] > hot[3],
            "the argmax gains mass when cold"
        );
        assert!(
            cold[5] < one[5] && one[5] < hot[5],
            "the least likely gains when hot"
        );
        // Very cold is greedy in effect; very hot is nearly uniform.
        assert!(at(0.01)[3] > 0.999);
        assert!(at(1000.0).iter().all(|&p| (p - 0.1).abs() < 0.01));
    }

    #[test]
    fn a_fixed_seed_repeats_and_another_differs() {
        let l = logits();
        let draw = |seed| {
            let mut s = Sampler::new(sample_rule(1.3, Some(8), Some(0.95)), seed);
            (0..64).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert_eq!(
            sample_rule(0.0, None, None).validate(),
            Err(SamplingError::Temperature(0.0))
        );
        assert!(sample_rule(f32::NAN, None, None).validate().is_err());
        assert_eq!(
            sample_rule(1.0, Some(0), None).validate(),
            Err(SamplingError::TopK(0))
        );
        assert!(sample_rule(1.0, None, Some(0.0)).validate().is_err());
        assert!(sample_rule(1.0, None, Some(1.5)).validate().is_err());
        assert!(Rule::Greedy.validate().is_ok() && Rule::NAIVE.validate().is_ok());
    }
}
