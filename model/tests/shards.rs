//! Shard files and shard folders: the header fields, llm.c's own bytes, the atomic writer, and
//! every kind of bad input giving an error that names the file (never a panic). Each bad file
//! is made here, in a temporary folder. Leaves out: batches (tests/batches.rs) and memory use
//! (tests/rss.rs).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{llmc_bytes, ramp, write_folder};
use model::TokenizerKind;
use model::data::shard::{HEADER_BYTES, MAGIC, header_bytes, parse_header};
use model::data::{DataError, Dataset, Meta, Shard, ShardFormat, ShardWriter, Split, SplitWriter};
use proptest::prelude::*;

fn int_at(bytes: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap())
}

/// The error's message, checked to name `path`.
fn message_naming(err: DataError, path: &Path) -> String {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
    msg
}

#[test]
fn writer_header_fields_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_000000.bin");
    let mut w = ShardWriter::create(&path).unwrap();
    w.write(&[1, 2, 65535]).unwrap();
    w.write(&[256]).unwrap();
    assert_eq!(w.finish().unwrap(), path);
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), HEADER_BYTES + 2 * 4);
    assert_eq!(
        (int_at(&bytes, 0), int_at(&bytes, 1), int_at(&bytes, 2)),
        (20240520, 1, 4)
    );
    assert!(
        (3..256).all(|i| int_at(&bytes, i) == 0),
        "header words 3..256 are zero"
    );
    assert_eq!(&bytes[HEADER_BYTES..], &[1, 0, 2, 0, 255, 255, 0, 1]);
    // Identical to what llm.c's Python writes.
    assert_eq!(bytes, llmc_bytes(&[1, 2, 65535, 256]));
    assert_eq!(&header_bytes(4)[..], &bytes[..HEADER_BYTES]);
}

#[test]
fn reads_a_shard_written_the_way_llmc_writes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny_shakespeare_val.bin");
    let tokens: Vec<u16> = vec![5962, 22307, 25, 198, 50256, 0, 65535];
    fs::write(&path, llmc_bytes(&tokens)).unwrap();
    let shard = Shard::open(&path, ShardFormat::Llmc).unwrap();
    assert_eq!(shard.tokens(), &tokens[..]);
    // The same file through the loader, named explicitly with the tokenizer it was made with.
    let ds = Dataset::open_files(
        std::slice::from_ref(&path),
        &[],
        ShardFormat::Llmc,
        TokenizerKind::Gpt2,
    )
    .unwrap();
    assert_eq!(ds.train().len(), 7);
    assert!(ds.val().is_empty() && ds.meta().is_none());
    // 65535 is outside GPT-2's vocabulary: check_vocab names the file and the position.
    let msg = message_naming(ds.check_vocab(50257).unwrap_err(), &path);
    assert!(msg.contains("token 6 is id 65535"), "{msg}");
}

#[test]
fn reads_raw_nanogpt_bins_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.bin");
    let raw: Vec<u8> = [10u16, 20, 30]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    fs::write(&path, &raw).unwrap();
    let shard = Shard::open(&path, ShardFormat::RawU16).unwrap();
    assert_eq!(shard.tokens(), &[10, 20, 30]);
    // As an llm.c shard it is rejected, with a word about raw files.
    let msg = message_naming(Shard::open(&path, ShardFormat::Llmc).unwrap_err(), &path);
    assert!(
        msg.contains("shorter than the 1024-byte shard header"),
        "{msg}"
    );
    fs::write(&path, &raw[..5]).unwrap();
    let msg = message_naming(Shard::open(&path, ShardFormat::RawU16).unwrap_err(), &path);
    assert!(msg.contains("not a whole number of uint16"), "{msg}");
}

#[test]
fn bad_shards_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = llmc_bytes(&[1, 2, 3]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "magic",
            {
                let mut b = good.clone();
                b[0] ^= 1;
                b
            },
            "wrong magic number 20240521",
        ),
        (
            "version",
            {
                let mut b = good.clone();
                b[4] = 2;
                b
            },
            "unsupported shard version 2",
        ),
        (
            "negative",
            {
                let mut b = good.clone();
                b[8..12].copy_from_slice(&(-1i32).to_le_bytes());
                b
            },
            "count -1 is negative",
        ),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "truncated: the header promises 1030 bytes",
        ),
        (
            "too_long",
            [good.clone(), vec![0]].concat(),
            "1031 bytes but the header promises 1030",
        ),
        (
            "short",
            good[..100].to_vec(),
            "100 bytes is shorter than the 1024-byte shard header",
        ),
        ("empty", Vec::new(), "0 bytes is shorter"),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(format!("{name}.bin"));
        fs::write(&path, bytes).unwrap();
        let msg = message_naming(Shard::open(&path, ShardFormat::Llmc).unwrap_err(), &path);
        assert!(msg.contains(want), "{name}: {msg}");
    }
}

#[test]
fn unreadable_files_give_io_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.bin");
    let err = Shard::open(&missing, ShardFormat::Llmc).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }));
    message_naming(err, &missing);
    // A folder where a file should be (permissions do not stop root, a folder does).
    let folder = dir.path().join("train_000000.bin");
    fs::create_dir(&folder).unwrap();
    message_naming(
        Shard::open(&folder, ShardFormat::Llmc).unwrap_err(),
        &folder,
    );
}

#[test]
fn unfinished_writers_leave_nothing_that_looks_like_a_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_000000.bin");
    let mut w = ShardWriter::create(&path).unwrap();
    w.write(&[1, 2, 3]).unwrap();
    assert!(dir.path().join("train_000000.bin.tmp").exists());
    assert!(!path.exists(), "the final name appears only when finished");
    drop(w);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    // Ids that do not fit uint16 are refused.
    let mut w = ShardWriter::create(&path).unwrap();
    let msg = w.write(&[70000]).unwrap_err().to_string();
    assert!(
        msg.contains("token id 70000 does not fit a uint16"),
        "{msg}"
    );
}

#[test]
fn split_writer_rolls_over_and_the_loader_reads_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let train = ramp(25, 257);
    let mut w = SplitWriter::new(dir.path(), Split::Train, 10);
    w.write(&train[..7]).unwrap();
    w.write(&train[7..]).unwrap();
    let paths = w.finish().unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    );
    let lens: Vec<_> = paths
        .iter()
        .map(|p| Shard::open(p, ShardFormat::Llmc).unwrap().len())
        .collect();
    assert_eq!(lens, [10, 10, 5]);
    // An empty split writes no shard.
    assert!(
        SplitWriter::new(dir.path(), Split::Val, 10)
            .finish()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn folders_open_with_their_meta() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = (ramp(1000, 257), ramp(100, 257));
    write_folder(dir.path(), TokenizerKind::Byte, &train, &val, 300);
    let ds = Dataset::open(dir.path()).unwrap();
    assert_eq!(ds.tokenizer(), TokenizerKind::Byte);
    assert_eq!((ds.train().len(), ds.val().len()), (1000, 100));
    assert_eq!(ds.train().shards().len(), 4);
    let meta = ds.meta().unwrap();
    assert_eq!(
        (meta.vocab_size, meta.eos_id, meta.train.tokens),
        (257, 256, 1000)
    );
    ds.check_vocab(257).unwrap();
    // A leftover temporary file from an interrupted run is ignored.
    fs::write(dir.path().join("train_000004.bin.tmp"), b"partial").unwrap();
    Dataset::open(dir.path()).unwrap();
}

#[test]
fn bad_folders_name_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let case = |name: &str| -> PathBuf {
        let d = root.path().join(name);
        fs::create_dir(&d).unwrap();
        d
    };
    let err_of = |d: &Path| Dataset::open(d).unwrap_err();

    let missing = root.path().join("nope");
    assert!(matches!(err_of(&missing), DataError::Io { .. }));

    let empty = case("empty");
    assert!(err_of(&empty).to_string().contains("the folder is empty"));

    let no_train = case("no_train");
    fs::write(no_train.join("val_000000.bin"), llmc_bytes(&[1])).unwrap();
    assert!(
        err_of(&no_train)
            .to_string()
            .contains("no train_*.bin shards")
    );

    let no_meta = case("no_meta");
    fs::write(no_meta.join("train_000000.bin"), llmc_bytes(&[1])).unwrap();
    let err = err_of(&no_meta);
    assert!(matches!(err, DataError::MetaMissing { .. }), "{err}");

    let corrupt = case("corrupt");
    write_folder(&corrupt, TokenizerKind::Byte, &[1, 2], &[], 10);
    fs::write(corrupt.join("meta.json"), "{ \"tokenizer\": ").unwrap();
    let msg = message_naming(err_of(&corrupt), &corrupt.join("meta.json"));
    assert!(msg.contains("corrupt"), "{msg}");

    let wrong_vocab = case("wrong_vocab");
    write_folder(&wrong_vocab, TokenizerKind::Byte, &[1, 2], &[], 10);
    let text = fs::read_to_string(wrong_vocab.join("meta.json")).unwrap();
    fs::write(wrong_vocab.join("meta.json"), text.replace("257", "300")).unwrap();
    assert!(
        err_of(&wrong_vocab)
            .to_string()
            .contains("disagree with tokenizer byte")
    );

    let unknown_tok = case("unknown_tok");
    write_folder(&unknown_tok, TokenizerKind::Byte, &[1, 2], &[], 10);
    let text = fs::read_to_string(unknown_tok.join("meta.json")).unwrap();
    fs::write(
        unknown_tok.join("meta.json"),
        text.replace("\"byte\"", "\"llama\""),
    )
    .unwrap();
    assert!(
        err_of(&unknown_tok)
            .to_string()
            .contains("unknown tokenizer \"llama\"")
    );

    let missing_shard = case("missing_shard");
    write_folder(&missing_shard, TokenizerKind::Byte, &ramp(30, 257), &[], 10);
    fs::remove_file(missing_shard.join("train_000001.bin")).unwrap();
    let msg = err_of(&missing_shard).to_string();
    assert!(
        msg.contains("records 30 tokens in 3 train shards") && msg.contains("20 tokens in 2"),
        "{msg}"
    );

    let bad_shard = case("bad_shard");
    write_folder(&bad_shard, TokenizerKind::Byte, &ramp(30, 257), &[], 10);
    let shard = bad_shard.join("train_000002.bin");
    let bytes = fs::read(&shard).unwrap();
    fs::write(&shard, &bytes[..bytes.len() - 2]).unwrap();
    let msg = message_naming(err_of(&bad_shard), &shard);
    assert!(msg.contains("truncated"), "{msg}");

    let out_of_vocab = case("out_of_vocab");
    write_folder(&out_of_vocab, TokenizerKind::Byte, &[1, 2, 300, 4], &[], 10);
    let ds = Dataset::open(&out_of_vocab).unwrap();
    let msg = message_naming(
        ds.check_vocab(257).unwrap_err(),
        &out_of_vocab.join("train_000000.bin"),
    );
    assert!(
        msg.contains("token 2 is id 300, outside the vocabulary of size 257"),
        "{msg}"
    );
    ds.check_vocab(301).unwrap();

    let short = case("short");
    write_folder(&short, TokenizerKind::Byte, &[1, 2, 3], &[], 10);
    let ds = Dataset::open(&short).unwrap();
    let (mut x, mut y) = (vec![0; 8], vec![0; 8]);
    let msg = message_naming(
        ds.train()
            .train_batch(0, 0, 2, 4, &mut x, &mut y)
            .unwrap_err(),
        &short,
    );
    assert!(
        msg.contains("holds 3 tokens, fewer than one window of T+1 = 5"),
        "{msg}"
    );
    ds.train().check_window(2).unwrap();
}

#[test]
fn meta_round_trips_through_json() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), TokenizerKind::Gpt2, &[1, 2, 3], &[4], 10);
    let meta = Meta::read(dir.path()).unwrap();
    assert_eq!(meta.tokenizer_kind(), TokenizerKind::Gpt2);
    assert_eq!((meta.vocab_size, meta.eos_id), (50257, 50256));
    assert_eq!(
        (meta.train.tokens, meta.val.tokens, meta.val.shards),
        (3, 1, 1)
    );
    assert_eq!(meta.train.bytes_per_token(), 1.0);
}

proptest! {
    /// Arbitrary bytes: an error or a count consistent with the length, never a panic.
    #[test]
    fn header_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let path = Path::new("fuzz.bin");
        if let Ok(count) = parse_header(path, &bytes) {
            prop_assert_eq!(bytes.len() as u64, HEADER_BYTES as u64 + 2 * count);
        }
    }

    /// A valid magic and version with arbitrary count and length: the same guarantee, on the
    /// inputs most likely to reach the length checks.
    #[test]
    fn header_parser_checks_lengths(count in any::<i32>(), tokens in 0usize..600, extra in 0usize..3) {
        let mut bytes = vec![0u8; HEADER_BYTES + 2 * tokens + extra];
        bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&1i32.to_le_bytes());
        bytes[8..12].copy_from_slice(&count.to_le_bytes());
        let ok = count >= 0 && extra == 0 && count as usize == tokens;
        prop_assert_eq!(parse_header(Path::new("x.bin"), &bytes).is_ok(), ok);
    }
}
