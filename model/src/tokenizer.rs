//! Tokenizers: text → token ids → text, each with an end-of-sequence token.
//!
//! - `byte`: the 256 byte values are ids 0..=255 and `<eos>` is 256 (vocabulary 257). Lossless
//!   for any input, UTF-8 or not.
//! - `gpt2`: GPT-2's byte-level BPE (vocabulary 50257, `<|endoftext|>` = 50256) from
//!   `tiktoken-rs`, whose `r50k_base` ranks are compiled into the binary (`include_str!`), so
//!   nothing is downloaded, ever. The ranks are parsed once per process on first use (see
//!   [`Tokenizer::new`]).
//!
//! Encoding never produces the end-of-sequence id: text that spells `<|endoftext|>` or `<eos>`
//! is ordinary text, and whoever builds the token stream appends [`Tokenizer::eos_id`] where a
//! document ends. Decoding renders the end-of-sequence id as that spelling. [`StreamDecoder`]
//! turns ids into text one at a time for generation.
//!
//! Leaves out: training a BPE, other vocabularies, special tokens beyond end-of-sequence.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::data::DataError;

/// Which tokenizer: the name stored in `meta.json` and checkpoints, and the `--tokenizer` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenizerKind {
    /// 256 byte values + `<eos>` (id 256).
    Byte,
    /// GPT-2 BPE, `<|endoftext|>` = 50256.
    Gpt2,
}

impl TokenizerKind {
    /// Every tokenizer, in the order `--help` lists them.
    pub const ALL: [TokenizerKind; 2] = [TokenizerKind::Byte, TokenizerKind::Gpt2];

    /// The name used in files and on the command line: `byte` or `gpt2`.
    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Byte => "byte",
            TokenizerKind::Gpt2 => "gpt2",
        }
    }

    /// The tokenizer called `name`, or [`DataError::UnknownTokenizer`].
    pub fn from_name(name: &str) -> Result<Self, DataError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| DataError::UnknownTokenizer {
                name: name.to_string(),
            })
    }

    /// Number of token ids, end-of-sequence included (V).
    pub fn vocab_size(self) -> u32 {
        match self {
            TokenizerKind::Byte => 257,
            TokenizerKind::Gpt2 => 50257,
        }
    }

    /// The tokenizer a model of vocabulary `vocab_size` was trained with, when its config
    /// does not say: `gpt2` for GPT-2's 50257 tokens (Hugging Face's GPT-2 checkpoints have no
    /// `tokenizer` field), else unknown. Vocabulary 257 is not taken to mean `byte`: a model
    /// from elsewhere with 257 tokens may use any scheme, so the caller must be told. The one
    /// inference rule of Lanes: both models' configs and `runner`'s checkpoint loading use it.
    pub fn infer(vocab_size: usize) -> Option<TokenizerKind> {
        let gpt2 = TokenizerKind::Gpt2;
        (vocab_size == gpt2.vocab_size() as usize).then_some(gpt2)
    }

    /// The end-of-sequence id, appended after every document. Always `vocab_size() - 1`.
    pub fn eos_id(self) -> u32 {
        self.vocab_size() - 1
    }

    /// How the end-of-sequence id is spelled when decoded.
    pub fn eos_text(self) -> &'static str {
        match self {
            TokenizerKind::Byte => "<eos>",
            TokenizerKind::Gpt2 => "<|endoftext|>",
        }
    }
}

impl fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TokenizerKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Self::from_name(s)
    }
}

/// GPT-2's BPE, loaded once per process: the encoder and a table of every id's bytes, so that
/// decoding is a slice lookup.
struct Gpt2 {
    bpe: tiktoken_rs::CoreBPE,
    token_bytes: Vec<Box<[u8]>>, // (V,) bytes of each id; id 50256 holds "<|endoftext|>"
}

fn gpt2() -> &'static Gpt2 {
    static GPT2: OnceLock<Gpt2> = OnceLock::new();
    GPT2.get_or_init(|| {
        // The ranks are compiled into tiktoken-rs; failing to parse them is a broken build.
        let bpe = tiktoken_rs::r50k_base().expect("tiktoken-rs's embedded r50k_base ranks parse");
        let v = TokenizerKind::Gpt2.vocab_size();
        let token_bytes = (0..v)
            .map(|id| {
                bpe.decode_bytes(&[id])
                    .unwrap_or_else(|_| panic!("r50k_base has no id {id}"))
                    .into_boxed_slice()
            })
            .collect();
        Gpt2 { bpe, token_bytes }
    })
}

/// Byte `i` of this table is `i`: the byte tokenizer's decoded bytes are slices of it.
static BYTE_VALUES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// A tokenizer, cheap to copy and shareable across threads.
#[derive(Clone, Copy)]
pub struct Tokenizer {
    kind: TokenizerKind,
    gpt2: Option<&'static Gpt2>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokenizer({})", self.kind)
    }
}

impl Tokenizer {
    /// The tokenizer of this kind. The first `gpt2` in a process parses the embedded ranks
    /// (a few tens of milliseconds, measured in the README); later ones share them.
    pub fn new(kind: TokenizerKind) -> Self {
        let gpt2 = (kind == TokenizerKind::Gpt2).then(gpt2);
        Tokenizer { kind, gpt2 }
    }

    /// The tokenizer called `byte` or `gpt2`.
    pub fn by_name(name: &str) -> Result<Self, DataError> {
        Ok(Self::new(TokenizerKind::from_name(name)?))
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// `byte` or `gpt2`.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// V, end-of-sequence included: 257 or 50257.
    pub fn vocab_size(&self) -> u32 {
        self.kind.vocab_size()
    }

    /// The end-of-sequence id: 256 or 50256.
    pub fn eos_id(&self) -> u32 {
        self.kind.eos_id()
    }

    /// The ids of `text` (no end-of-sequence id is added or recognized).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out);
        out
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        match self.gpt2 {
            None => out.extend(text.bytes().map(u32::from)),
            Some(g) => out.extend(g.bpe.encode_ordinary(text)),
        }
    }

    /// Appends the ids of raw bytes to `out`. `byte` takes any bytes; `gpt2` needs UTF-8 and
    /// otherwise returns [`DataError::NotUtf8`] with the offset of the first bad byte.
    pub fn encode_bytes_into(&self, bytes: &[u8], out: &mut Vec<u32>) -> Result<(), DataError> {
        match self.gpt2 {
            None => out.extend(bytes.iter().map(|&b| u32::from(b))),
            Some(_) => {
                let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
                    offset: e.valid_up_to() as u64,
                })?;
                self.encode_into(text, out);
            }
        }
        Ok(())
    }

    /// The bytes id `id` stands for (the end-of-sequence id gives its spelling).
    pub fn token_bytes(&self, id: u32) -> Result<&'static [u8], DataError> {
        if id >= self.vocab_size() {
            return Err(DataError::TokenNotInVocab {
                id,
                tokenizer: self.name(),
                vocab_size: self.vocab_size(),
            });
        }
        Ok(match self.gpt2 {
            None if id == self.eos_id() => self.kind.eos_text().as_bytes(),
            None => &BYTE_VALUES[id as usize..id as usize + 1],
            Some(g) => &g.token_bytes[id as usize],
        })
    }

    /// The bytes of a sequence of ids: exactly the encoded bytes for ids that came from
    /// [`encode_bytes_into`](Self::encode_bytes_into).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::with_capacity(ids.len() * 2);
        for &id in ids {
            out.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(out)
    }

    /// The text of a sequence of ids; bytes that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A decoder that turns ids into text one at a time (for generation).
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder {
            tokenizer: *self,
            pending: Vec::with_capacity(16),
        }
    }

    /// The largest cut `p <= bytes.len()` such that encoding `bytes[..p]` and `bytes[p..]`
    /// separately gives the same ids as encoding `bytes` whole — however `bytes` continues —
    /// or 0 if `bytes` holds no such cut. Lets a corpus be encoded in chunks, streaming.
    ///
    /// `byte` can cut anywhere. For `gpt2`, whose pre-tokenizer splits text into pieces by a
    /// regular expression before BPE merges bytes inside a piece, a safe cut is right after a
    /// `\n` that has a non-whitespace character on both sides (`x\n|y`): no piece pattern
    /// spans a lone newline between two non-space characters, the pattern `\s++$` makes the
    /// same `\n` piece at the end of a chunk as `\s` does inside the text, and no pattern
    /// looks behind, so the pieces on each side are those of the whole text.
    pub fn chunk_boundary(&self, bytes: &[u8]) -> usize {
        if self.gpt2.is_none() {
            return bytes.len();
        }
        let mut end = bytes.len();
        while let Some(i) = bytes[..end].iter().rposition(|&b| b == b'\n') {
            if self.is_chunk_boundary(bytes, i + 1) {
                return i + 1;
            }
            end = i;
        }
        0
    }

    /// Whether cutting `bytes` at `p` (0 < p < len) is safe in the sense of
    /// [`chunk_boundary`](Self::chunk_boundary): anywhere for `byte`, `x\n|y` for `gpt2`.
    pub fn is_chunk_boundary(&self, bytes: &[u8], p: usize) -> bool {
        if p == 0 || p >= bytes.len() {
            return false;
        }
        if self.gpt2.is_none() {
            return true;
        }
        p >= 2
            && bytes[p - 1] == b'\n'
            && matches!(first_char(&bytes[p..]), Some(c) if !c.is_whitespace())
            && matches!(last_char(&bytes[..p - 1]), Some(c) if !c.is_whitespace())
    }
}

/// The first character of `bytes`, or None if they do not start with a whole UTF-8 character.
fn first_char(bytes: &[u8]) -> Option<char> {
    let head = &bytes[..bytes.len().min(4)];
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    valid.chars().next()
}

/// The last character of `bytes`, or None if they do not end with a whole UTF-8 character.
fn last_char(bytes: &[u8]) -> Option<char> {
    let start = bytes.len().saturating_sub(4);
    // Start at the last byte that is not a continuation byte (0b10xx_xxxx).
    let lead = (start..bytes.len())
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)?;
    std::str::from_utf8(&bytes[lead..]).ok()?.chars().next()
}

/// Turns ids into text one at a time. A GPT-2 token can end in the middle of a multi-byte
/// UTF-8 character (an emoji is often two or three tokens), so the decoder holds back an
/// incomplete character's bytes until the ids that complete it arrive; a byte sequence that
/// can never become valid UTF-8 is emitted as U+FFFD at once. [`finish`](Self::finish) flushes
/// what is held back.
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    pending: Vec<u8>, // at most 3 bytes of an incomplete character between calls
}

impl StreamDecoder {
    /// Appends to `out` the text that id `id` completes.
    pub fn push(&mut self, id: u32, out: &mut String) -> Result<(), DataError> {
        self.pending
            .extend_from_slice(self.tokenizer.token_bytes(id)?);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let s = std::str::from_utf8(&self.pending[start..start + valid])
                        .expect("prefix up to valid_up_to is UTF-8");
                    out.push_str(s);
                    match e.error_len() {
                        // An invalid sequence: it will never complete.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Appends what is held back (an unfinished character becomes U+FFFD) and resets.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> [Tokenizer; 2] {
        TokenizerKind::ALL.map(Tokenizer::new)
    }

    #[test]
    fn only_gpt2s_vocabulary_names_its_tokenizer() {
        assert_eq!(TokenizerKind::infer(50257), Some(TokenizerKind::Gpt2));
        // 257 could be any byte-level scheme; 1000 is no Lanes tokenizer (an LSTM of V = 1000
        // was once called gpt2).
        for v in [257, 1000, 50256, 0] {
            assert_eq!(TokenizerKind::infer(v), None, "V = {v}");
        }
    }

    #[test]
    fn names_sizes_and_eos() {
        let byte = Tokenizer::by_name("byte").unwrap();
        assert_eq!((byte.vocab_size(), byte.eos_id()), (257, 256));
        let gpt2 = Tokenizer::by_name("gpt2").unwrap();
        assert_eq!((gpt2.vocab_size(), gpt2.eos_id()), (50257, 50256));
        assert_eq!(gpt2.decode(&[50256]).unwrap(), "<|endoftext|>");
        assert_eq!(byte.decode(&[104, 105, 256]).unwrap(), "hi<eos>");
        let err = Tokenizer::by_name("bpe").unwrap_err().to_string();
        assert!(err.contains("unknown tokenizer \"bpe\""), "{err}");
    }

    #[test]
    fn gpt2_matches_known_ids() {
        // GPT-2's ids for this text, as Hugging Face's GPT2TokenizerFast gives them.
        let g = Tokenizer::new(TokenizerKind::Gpt2);
        assert_eq!(g.encode("Hello world"), vec![15496, 995]);
        assert_eq!(g.encode(" the"), vec![262]);
        // The end-of-text spelling is ordinary text to `encode`.
        assert!(!g.encode("a<|endoftext|>b").contains(&50256));
    }

    #[test]
    fn encode_decode_round_trip() {
        let text = "Ünïcödé, emoji 🦀🎉, CJK 漢字, tabs\tand\r\nnewlines\n\n  spaces  ";
        for t in both() {
            let ids = t.encode(text);
            assert!(ids.iter().all(|&id| id < t.eos_id()), "{t:?}");
            assert_eq!(t.decode(&ids).unwrap(), text, "{t:?}");
        }
    }

    #[test]
    fn byte_accepts_any_bytes_gpt2_names_the_offset() {
        let bytes = b"ok\xff\xfe bytes";
        let mut ids = Vec::new();
        let byte = Tokenizer::new(TokenizerKind::Byte);
        byte.encode_bytes_into(bytes, &mut ids).unwrap();
        assert_eq!(byte.decode_bytes(&ids).unwrap(), bytes);
        let gpt2 = Tokenizer::new(TokenizerKind::Gpt2);
        match gpt2.encode_bytes_into(bytes, &mut Vec::new()) {
            Err(DataError::NotUtf8 { offset: 2 }) => {}
            other => panic!("expected NotUtf8 at 2, got {other:?}"),
        }
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        for t in both() {
            let err = t.decode(&[1, t.vocab_size()]).unwrap_err();
            assert!(matches!(err, DataError::TokenNotInVocab { .. }), "{err}");
        }
    }

    #[test]
    fn stream_decoder_holds_back_split_characters() {
        // Byte tokens split every multi-byte character; GPT-2 splits many emoji.
        let text = "a€b🦀c漢字 🎉🎉 done";
        for t in both() {
            let ids = t.encode(text);
            let mut dec = t.stream_decoder();
            let (mut out, mut pieces) = (String::new(), Vec::new());
            for &id in &ids {
                let before = out.len();
                dec.push(id, &mut out).unwrap();
                pieces.push(out[before..].to_string());
            }
            dec.finish(&mut out);
            assert_eq!(out, text, "{t:?}");
            // Some id ended mid-character and produced no text until the next one.
            assert!(pieces.iter().any(String::is_empty), "{t:?}: {pieces:?}");
            assert!(!out.contains('\u{FFFD}'));
        }
        // Byte tokens for "€" (E2 82 AC): nothing appears until the third byte.
        let byte = Tokenizer::new(TokenizerKind::Byte);
        let mut dec = byte.stream_decoder();
        let mut out = String::new();
        dec.push(0xE2, &mut out).unwrap();
        dec.push(0x82, &mut out).unwrap();
        assert_eq!(out, "");
        dec.push(0xAC, &mut out).unwrap();
        assert_eq!(out, "€");
    }

    #[test]
    fn stream_decoder_replaces_invalid_and_flushes_incomplete() {
        let byte = Tokenizer::new(TokenizerKind::Byte);
        let mut dec = byte.stream_decoder();
        let mut out = String::new();
        for id in [b'x', 0xFF, b'y', 0xE2, 0x82] {
            dec.push(u32::from(id), &mut out).unwrap();
        }
        assert_eq!(out, "x\u{FFFD}y");
        dec.finish(&mut out);
        assert_eq!(out, "x\u{FFFD}y\u{FFFD}");
        // A new character after an unfinished one: the unfinished one is replaced.
        for id in [0xE2, b'z'] {
            dec.push(u32::from(id), &mut out).unwrap();
        }
        assert_eq!(out, "x\u{FFFD}y\u{FFFD}\u{FFFD}z");
    }

    #[test]
    fn chunk_boundary_cuts_give_the_whole_encoding() {
        let g = Tokenizer::new(TokenizerKind::Gpt2);
        let text = "First line\nSecond  line \n\n  indented\nlast one\nx\n\ny\n¿que?\n漢字\nend";
        let whole = g.encode(text);
        let bytes = text.as_bytes();
        // Cut greedily at every boundary found in every prefix.
        for limit in 1..=bytes.len() {
            let cut = g.chunk_boundary(&bytes[..limit]);
            if cut == 0 {
                continue;
            }
            let mut ids = g.encode(std::str::from_utf8(&bytes[..cut]).unwrap());
            ids.extend(g.encode(std::str::from_utf8(&bytes[cut..]).unwrap()));
            assert_eq!(ids, whole, "cut at {cut}");
            assert_eq!(bytes[cut - 1], b'\n');
        }
        assert_eq!(g.chunk_boundary(b"no newline here"), 0);
        assert_eq!(g.chunk_boundary(b"ends with newline\n"), 0);
        assert_eq!(g.chunk_boundary(b"a \nb"), 0);
        assert_eq!(g.chunk_boundary(b"a\n b"), 0);
        assert_eq!(g.chunk_boundary(b"a\nb\nc d"), 4);
        let byte = Tokenizer::new(TokenizerKind::Byte);
        assert_eq!(byte.chunk_boundary(b"anything"), 8);
    }
}
