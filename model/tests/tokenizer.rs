//! Property tests of the tokenizers on generated text: encode/decode round trips for both,
//! and GPT-2's chunk boundaries giving exactly the whole-text encoding (what lets `prepare`
//! stream a corpus). Leaves out: fixed examples (unit tests in src/tokenizer.rs).

use model::{Tokenizer, TokenizerKind};
use proptest::prelude::*;

/// Text from an alphabet chosen to stress GPT-2's pre-tokenizer: letters, digits,
/// punctuation, contractions, every kind of whitespace (Unicode spaces included) and
/// multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a", "Z", "é", "漢", "🦀", "7", "42", ".", "'s", "'", "-", "\n", "\n\n", " ", "  ", "\t",
        "\r\n", "\u{a0}", "\u{3000}", "x\ny", "word", " the", "\u{2028}",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn gpt2_chunk_boundaries_preserve_the_encoding(s in text()) {
        let g = Tokenizer::new(TokenizerKind::Gpt2);
        let whole = g.encode(&s);
        let bytes = s.as_bytes();
        for p in 0..=bytes.len() {
            if g.is_chunk_boundary(bytes, p) {
                let mut ids = g.encode(std::str::from_utf8(&bytes[..p]).unwrap());
                ids.extend(g.encode(std::str::from_utf8(&bytes[p..]).unwrap()));
                prop_assert_eq!(&ids, &whole, "cut at {}", p);
            }
        }
    }

    #[test]
    fn both_tokenizers_round_trip(s in text()) {
        for kind in TokenizerKind::ALL {
            let t = Tokenizer::new(kind);
            prop_assert_eq!(t.decode(&t.encode(&s)).unwrap(), s.clone());
        }
    }

    #[test]
    fn the_stream_decoder_matches_decode(s in text()) {
        for kind in TokenizerKind::ALL {
            let t = Tokenizer::new(kind);
            let mut dec = t.stream_decoder();
            let mut out = String::new();
            for id in t.encode(&s) {
                dec.push(id, &mut out).unwrap();
            }
            dec.finish(&mut out);
            prop_assert_eq!(&out, &s);
        }
    }
}
