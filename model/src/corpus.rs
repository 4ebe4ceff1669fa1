//! The built-in corpus: English-like text from a small stochastic grammar whose entropy rate
//! is known exactly, so a training run can be compared with the best any model could do.
//!
//! The grammar is a *unifilar* finite-state source: from each state, every outgoing edge emits
//! a different string and leads to one next state, so the text determines the path through the
//! states and vice versa. Its entropy rate is then exact and cheap:
//!
//! ```text
//! H = Σ_s π(s) · H(edges out of s)        bits per edge (π: stationary distribution)
//! L = Σ_s π(s) · Σ_e p(e) · len(e)        bytes per edge
//! H / L                                   bits per byte of text
//! ```
//!
//! (The strings leaving a state are prefix-free, so the bytes parse back into edges uniquely;
//! [`Grammar::check`] verifies it.) Written for Lanes; the word lists are ordinary English
//! words, the grammar is ours. Leaves out: the `<eos>` between documents, whose cost is one
//! token per document and is reported separately by the trainer.

use crate::rng::SplitMix64;

/// One choice out of a state: the text it emits, its probability, and the next state.
#[derive(Clone, Debug)]
pub struct Edge {
    pub text: String,
    pub prob: f64,
    pub next: usize,
}

/// A unifilar stochastic grammar: states with weighted, labelled edges.
#[derive(Clone, Debug)]
pub struct Grammar {
    /// State names, for messages.
    pub names: Vec<&'static str>,
    pub edges: Vec<Vec<Edge>>,
    /// Cumulative probabilities per state, for sampling.
    cdf: Vec<Vec<f64>>,
}

/// Word lists of the English-like grammar, most frequent first; weights follow Zipf's law.
const DET_CAP: &[&str] = &["The", "A", "My", "Every", "That", "One", "Her", "Our"];
const DET: &[&str] = &[
    "the", "a", "my", "every", "that", "one", "her", "our", "his", "some",
];
const ADJ: &[&str] = &[
    "old", "small", "quiet", "bright", "green", "heavy", "kind", "strange", "young", "cold",
    "golden", "tired", "clever", "empty", "gentle", "proud", "silver", "wild", "patient",
    "ancient",
];
const NOUN: &[&str] = &[
    "king", "river", "student", "garden", "letter", "horse", "window", "teacher", "city",
    "mountain", "child", "ship", "forest", "doctor", "lamp", "bridge", "farmer", "book", "queen",
    "market", "island", "soldier", "candle", "village", "painter", "storm", "table", "sailor",
    "mirror", "castle", "merchant", "road", "poet", "kitchen", "wolf", "clock",
];
const VERB_T: &[&str] = &[
    "sees",
    "finds",
    "keeps",
    "loves",
    "opens",
    "follows",
    "carries",
    "watches",
    "remembers",
    "builds",
    "paints",
    "hears",
    "forgets",
    "answers",
    "visits",
    "praises",
    "guards",
    "sells",
];
const VERB_I: &[&str] = &[
    "sleeps", "waits", "sings", "laughs", "wanders", "listens", "rests", "dreams",
];
const ADV: &[&str] = &[
    "today",
    "again",
    "slowly",
    "at night",
    "in silence",
    "once more",
];

/// Zipf weights 1/(rank+1), normalized to `total`.
fn zipf(n: usize, total: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|r| 1.0 / r as f64).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|x| x / s * total).collect()
}

impl Grammar {
    /// The built-in English-like grammar: "The old king sees a river today." and the like.
    pub fn english_like() -> Grammar {
        // States: 0 sentence start, 1 subject adjective-or-noun, 2 subject noun, 3 verb,
        // 4 object determiner, 5 object adjective-or-noun, 6 object noun, 7 sentence end.
        let names = vec![
            "start",
            "subject",
            "subject-noun",
            "verb",
            "object",
            "object-adj",
            "object-noun",
            "end",
        ];
        let mut edges: Vec<Vec<Edge>> = vec![Vec::new(); names.len()];
        let mut add = |s: usize, words: &[&str], total: f64, suffix: &str, next: usize| {
            for (w, p) in words.iter().zip(zipf(words.len(), total)) {
                edges[s].push(Edge {
                    text: format!("{w}{suffix}"),
                    prob: p,
                    next,
                });
            }
        };
        add(0, DET_CAP, 1.0, " ", 1);
        add(1, ADJ, 0.35, " ", 2);
        add(1, NOUN, 0.65, " ", 3);
        add(2, NOUN, 1.0, " ", 3);
        add(3, VERB_T, 0.8, " ", 4);
        add(3, VERB_I, 0.2, "", 7);
        add(4, DET, 1.0, " ", 5);
        add(5, ADJ, 0.3, " ", 6);
        add(5, NOUN, 0.7, "", 7);
        add(6, NOUN, 1.0, "", 7);
        // Sentence ends: an optional adverb, a full stop, and a space or a line break.
        for (text, p) in [(". ", 0.55), (".\n", 0.15), ("! ", 0.05), ("? ", 0.05)] {
            edges[7].push(Edge {
                text: text.to_string(),
                prob: p,
                next: 0,
            });
        }
        for (adv, p) in ADV.iter().zip(zipf(ADV.len(), 0.2)) {
            edges[7].push(Edge {
                text: format!(" {adv}. "),
                prob: p,
                next: 0,
            });
        }
        Grammar::new(names, edges)
    }

    /// A grammar from explicit states and edges (probabilities out of each state sum to 1).
    pub fn new(names: Vec<&'static str>, edges: Vec<Vec<Edge>>) -> Grammar {
        let cdf = edges
            .iter()
            .map(|out| {
                let mut acc = 0.0;
                out.iter()
                    .map(|e| {
                        acc += e.prob;
                        acc
                    })
                    .collect()
            })
            .collect();
        let g = Grammar { names, edges, cdf };
        if let Err(e) = g.check() {
            panic!("invalid grammar: {e}");
        }
        g
    }

    /// Verifies that probabilities sum to 1 and each state's strings are non-empty and
    /// prefix-free (so text parses back into edges uniquely, which makes the entropy exact).
    pub fn check(&self) -> Result<(), String> {
        for (s, out) in self.edges.iter().enumerate() {
            let total: f64 = out.iter().map(|e| e.prob).sum();
            if (total - 1.0).abs() > 1e-9 {
                return Err(format!(
                    "state {}: probabilities sum to {total}",
                    self.names[s]
                ));
            }
            for (i, a) in out.iter().enumerate() {
                if a.text.is_empty() || a.next >= self.edges.len() {
                    return Err(format!("state {}: bad edge {:?}", self.names[s], a.text));
                }
                for (j, b) in out.iter().enumerate() {
                    if i != j && b.text.starts_with(&a.text) {
                        return Err(format!(
                            "state {}: {:?} is a prefix of {:?}",
                            self.names[s], a.text, b.text
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Stationary distribution over states (power iteration on the state chain).
    pub fn stationary(&self) -> Vec<f64> {
        let n = self.edges.len();
        let mut pi = vec![1.0 / n as f64; n];
        for _ in 0..10_000 {
            let mut next = vec![0.0; n];
            for (s, out) in self.edges.iter().enumerate() {
                for e in out {
                    next[e.next] += pi[s] * e.prob;
                }
            }
            // Average with the previous iterate: converges even if the chain is periodic
            // (this grammar's cycle through the states is).
            let delta: f64 = next.iter().zip(&pi).map(|(a, b)| (a - b).abs()).sum();
            for (p, q) in pi.iter_mut().zip(&next) {
                *p = 0.5 * (*p + q);
            }
            if delta < 1e-15 {
                break;
            }
        }
        pi
    }

    /// Exact entropy rate of the text in bits per byte.
    pub fn entropy_bits_per_byte(&self) -> f64 {
        let pi = self.stationary();
        let (mut bits, mut bytes) = (0.0, 0.0);
        for (s, out) in self.edges.iter().enumerate() {
            for e in out {
                bits -= pi[s] * e.prob * e.prob.log2();
                bytes += pi[s] * e.prob * e.text.len() as f64;
            }
        }
        bits / bytes
    }

    /// Appends about `n_bytes` of text (whole sentences) to `out`, starting at the sentence
    /// start state.
    pub fn generate_into(&self, rng: &mut SplitMix64, n_bytes: usize, out: &mut String) {
        let start = out.len();
        let mut s = 0;
        while out.len() - start < n_bytes || s != 0 {
            let u = rng.next_f64();
            let cdf = &self.cdf[s];
            let i = cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1);
            let e = &self.edges[s][i];
            out.push_str(&e.text);
            s = e.next;
        }
    }
}

/// The built-in corpus: `n_docs` documents of about `doc_bytes` each, from `seed`.
pub fn builtin_documents(seed: u64, n_docs: usize, doc_bytes: usize) -> Vec<String> {
    let g = Grammar::english_like();
    let mut rng = SplitMix64::new(seed);
    (0..n_docs)
        .map(|_| {
            let mut doc = String::with_capacity(doc_bytes + 64);
            g.generate_into(&mut rng, doc_bytes, &mut doc);
            doc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_valid_and_its_entropy_is_plausible() {
        let g = Grammar::english_like();
        g.check().unwrap();
        let pi = g.stationary();
        assert!((pi.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let h = g.entropy_bits_per_byte();
        assert!(h > 0.3 && h < 2.0, "entropy rate {h} bits/byte");
    }

    /// The empirical information content of a long sample, −log2 p(path)/bytes, converges to
    /// the computed entropy rate: an independent check of `entropy_bits_per_byte`.
    #[test]
    fn empirical_code_length_matches_the_entropy_rate() {
        let g = Grammar::english_like();
        let mut rng = SplitMix64::new(42);
        let (mut bits, mut bytes, mut s) = (0.0f64, 0usize, 0usize);
        for _ in 0..400_000 {
            let u = rng.next_f64();
            let i = g.cdf[s]
                .iter()
                .position(|&c| u < c)
                .unwrap_or(g.cdf[s].len() - 1);
            let e = &g.edges[s][i];
            bits -= e.prob.log2();
            bytes += e.text.len();
            s = e.next;
        }
        let empirical = bits / bytes as f64;
        let exact = g.entropy_bits_per_byte();
        assert!(
            (empirical - exact).abs() < 0.01 * exact,
            "empirical {empirical} vs exact {exact}"
        );
    }

    /// Parsing the text back into edges recovers the path: the bytes carry exactly the
    /// information of the path, which is what makes the per-byte rate exact.
    #[test]
    fn text_parses_back_uniquely() {
        let g = Grammar::english_like();
        let docs = builtin_documents(7, 3, 2_000);
        for doc in &docs {
            let (mut rest, mut s) = (doc.as_str(), 0usize);
            while !rest.is_empty() {
                let matches: Vec<_> = g.edges[s]
                    .iter()
                    .filter(|e| rest.starts_with(&e.text))
                    .collect();
                assert_eq!(
                    matches.len(),
                    1,
                    "ambiguous or no parse at {:?}",
                    &rest[..rest.len().min(20)]
                );
                rest = &rest[matches[0].text.len()..];
                s = matches[0].next;
            }
            assert_eq!(s, 0, "documents end at a sentence boundary");
        }
        assert_eq!(
            docs,
            builtin_documents(7, 3, 2_000),
            "same seed, same corpus"
        );
        assert_ne!(docs, builtin_documents(8, 3, 2_000));
    }
}
