//! `runner prepare` end to end, through the built binary: text → shards → tokens → text for
//! both tokenizers, the document split, streaming a document larger than a chunk, the same
//! shards on one thread and two, and bad input failing with exit code 2 and a one-line
//! message naming the file. Every corpus is made here. Leaves out: throughput (measured by
//! hand, see the README).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use model::data::{Dataset, Split};
use model::{Tokenizer, TokenizerKind};

fn runner(args: &[&str], threads: Option<usize>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.args(args);
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    cmd.output().expect("runner runs")
}

fn prepare(inputs: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["prepare".to_string()];
    for i in inputs {
        args.extend(["--input".to_string(), i.display().to_string()]);
    }
    args.extend(["--out".to_string(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    runner(&args, None)
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "runner failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The one-line error of a run that must fail with exit code 2.
fn fails(out: Output) -> String {
    assert_eq!(out.status.code(), Some(2), "expected exit code 2");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// All tokens of a split, read through the loader.
fn split_tokens(ds: &Dataset, split: Split) -> Vec<u32> {
    let s = ds.split(split);
    let mut out = vec![0; s.len() as usize];
    s.copy_tokens(0, &mut out);
    out
}

/// The documents of a token stream: the bytes between end-of-sequence ids.
fn documents(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<Vec<u8>> {
    let eos = tokenizer.eos_id();
    let mut docs: Vec<Vec<u8>> = ids
        .split(|&id| id == eos)
        .map(|d| tokenizer.decode_bytes(d).unwrap())
        .collect();
    assert!(docs.pop().unwrap().is_empty(), "a stream ends with eos");
    docs
}

/// A small corpus: files in a folder tree, one hidden (skipped). Returns the documents in
/// the order prepare reads them.
fn corpus(root: &Path) -> Vec<(PathBuf, String)> {
    let docs = [
        (
            "a.txt",
            "First document.\n\nIt has two paragraphs; one document all the same.\n",
        ),
        (
            "b/c.txt",
            "Ünïcödé and emoji 🦀🎉, CJK 漢字 — split across tokens.\n",
        ),
        (
            "b/d.txt",
            "<|endoftext|> and <eos> spelled in text are ordinary text.\n",
        ),
        ("e.txt", "Short."),
        ("f.txt", "The last one,\nwith lines\nand more lines\n"),
    ];
    fs::create_dir_all(root.join("b")).unwrap();
    fs::write(root.join(".hidden"), "never read").unwrap();
    docs.iter()
        .map(|(name, text)| {
            let path = root.join(name);
            fs::write(&path, text).unwrap();
            (path, text.to_string())
        })
        .collect()
}

#[test]
fn text_round_trips_through_shards_for_both_tokenizers() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = corpus(&tmp.path().join("corpus"));
    for kind in TokenizerKind::ALL {
        let out = tmp.path().join(format!("data_{kind}"));
        let report = ok(prepare(
            &[&tmp.path().join("corpus")],
            &out,
            &[
                "--tokenizer",
                kind.name(),
                "--val-fraction",
                "0.3",
                "--shard-tokens",
                "16",
            ],
        ));
        assert!(report.contains("MB/s"), "{report}");
        let ds = Dataset::open(&out).unwrap();
        let tokenizer = Tokenizer::new(ds.tokenizer());
        assert_eq!(ds.tokenizer(), kind);
        let meta = ds.meta().unwrap().clone();
        let (train, val) = (
            split_tokens(&ds, Split::Train),
            split_tokens(&ds, Split::Val),
        );
        let (train_docs, val_docs) = (documents(&tokenizer, &train), documents(&tokenizer, &val));
        // Every document comes back byte for byte, each in exactly one split, in order.
        let mut got = [train_docs.clone(), val_docs.clone()].concat();
        let mut want: Vec<Vec<u8>> = docs.iter().map(|d| d.1.as_bytes().to_vec()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{kind}");
        assert!(!val_docs.is_empty() && !train_docs.is_empty());
        assert_eq!(meta.train.documents as usize, train_docs.len());
        assert_eq!(meta.val.documents as usize, val_docs.len());
        let text_bytes: usize = docs.iter().map(|d| d.1.len()).sum();
        assert_eq!(
            (meta.train.text_bytes + meta.val.text_bytes) as usize,
            text_bytes
        );
        assert_eq!(
            (meta.train.tokens, meta.val.tokens),
            (train.len() as u64, val.len() as u64)
        );
        assert!(meta.train.shards > 1, "16-token shards");
        ds.check_vocab(kind.vocab_size()).unwrap();
    }
}

#[test]
fn the_split_is_by_document_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    fs::create_dir(&input).unwrap();
    for i in 0..20 {
        fs::write(
            input.join(format!("doc{i:02}.txt")),
            format!("document {i}\n").repeat(50),
        )
        .unwrap();
    }
    let run = |out: &str| {
        let out = tmp.path().join(out);
        ok(prepare(&[&input], &out, &["--json"]));
        Dataset::open(&out).unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    let meta = a.meta().unwrap();
    // 20 equal documents, val fraction 0.1: two held out.
    assert_eq!((meta.train.documents, meta.val.documents), (18, 2));
    assert_eq!(split_tokens(&a, Split::Val), split_tokens(&b, Split::Val));
    assert_eq!(
        split_tokens(&a, Split::Train),
        split_tokens(&b, Split::Train)
    );
}

#[test]
fn a_single_document_is_cut_at_a_line_start() {
    let tmp = tempfile::tempdir().unwrap();
    let text: String = (0..400)
        .map(|i| format!("Line number {i} of the only file.\n"))
        .collect();
    let input = tmp.path().join("input.txt");
    fs::write(&input, &text).unwrap();
    for kind in ["byte", "gpt2"] {
        let out = tmp.path().join(kind);
        ok(prepare(
            &[&input],
            &out,
            &["--tokenizer", kind, "--val-fraction", "0.25"],
        ));
        let ds = Dataset::open(&out).unwrap();
        let t = Tokenizer::new(ds.tokenizer());
        let train = t.decode(&split_tokens(&ds, Split::Train)).unwrap();
        let val = t.decode(&split_tokens(&ds, Split::Val)).unwrap();
        // The train part has no eos (the document goes on); the val part ends the document.
        let val = val.strip_suffix(t.kind().eos_text()).unwrap();
        assert_eq!(format!("{train}{val}"), text);
        assert!(train.ends_with('\n') && val.starts_with("Line number"));
        let frac = train.len() as f64 / text.len() as f64;
        assert!((0.74..0.77).contains(&frac), "{frac}");
    }
}

#[test]
fn a_large_gpt2_document_streams_in_chunks_with_the_whole_encoding() {
    // 3 MiB of text: several 1 MiB chunks, cut only at safe newlines.
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 3 << 20 {
        text.push_str(&format!(
            "Paragraph {i}: fifty-one words ünïcödé 🦀, \t tabs.\n"
        ));
        if i.is_multiple_of(7) {
            text.push_str("\n   indented after a blank line\n");
        }
        i += 1;
    }
    let input = tmp.path().join("big.txt");
    fs::write(&input, &text).unwrap();
    let gpt2 = Tokenizer::new(TokenizerKind::Gpt2);
    let mut want = gpt2.encode(&text);
    want.push(gpt2.eos_id());
    let mut shards = Vec::new();
    for threads in [1, 2] {
        let out = tmp.path().join(format!("t{threads}"));
        let args = [
            "prepare",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            "gpt2",
            "--val-fraction",
            "0",
        ];
        ok(runner(&args, Some(threads)));
        let ds = Dataset::open(&out).unwrap();
        assert!(ds.val().is_empty());
        assert_eq!(split_tokens(&ds, Split::Train), want, "{threads} threads");
        shards.push(fs::read(out.join("train_000000.bin")).unwrap());
    }
    assert_eq!(shards[0], shards[1], "identical shards on 1 and 2 threads");
}

#[test]
fn non_utf8_input_fails_with_gpt2_and_passes_with_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("latin1.txt");
    fs::write(&input, b"caf\xe9 au lait\n").unwrap();
    let err = fails(prepare(
        &[&input],
        &tmp.path().join("g"),
        &["--tokenizer", "gpt2"],
    ));
    assert!(
        err.contains("latin1.txt") && err.contains("not UTF-8 at byte offset 3"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    ok(prepare(
        &[&input],
        &tmp.path().join("b"),
        &["--tokenizer", "byte"],
    ));
    let ds = Dataset::open(&tmp.path().join("b")).unwrap();
    assert_eq!(ds.train().len() + ds.val().len(), 13 + 1);
}

#[test]
fn bad_arguments_and_inputs_fail_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let err = fails(prepare(&[&tmp.path().join("missing.txt")], &out, &[]));
    assert!(
        err.contains("missing.txt") && err.contains("hint:"),
        "{err}"
    );
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = fails(prepare(&[&empty], &out, &[]));
    assert!(err.contains("holds no files"), "{err}");
    let input = tmp.path().join("x.txt");
    fs::write(&input, "text\n").unwrap();
    let err = fails(prepare(&[&input], &out, &["--val-fraction", "1.5"]));
    assert!(err.contains("--val-fraction 1.5"), "{err}");
}

#[test]
fn an_existing_dataset_is_replaced_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("x.txt");
    fs::write(&input, "0123456789".repeat(10)).unwrap();
    let out = tmp.path().join("data");
    ok(prepare(
        &[&input],
        &out,
        &["--shard-tokens", "10", "--val-fraction", "0"],
    ));
    assert!(out.join("train_000010.bin").exists());
    let err = fails(prepare(&[&input], &out, &[]));
    assert!(
        err.contains("already holds a prepared dataset") && err.contains("--overwrite"),
        "{err}"
    );
    // Fewer, larger shards: the stale ones must go, or the folder would mix two runs.
    ok(prepare(
        &[&input],
        &out,
        &["--overwrite", "--val-fraction", "0"],
    ));
    assert!(!out.join("train_000001.bin").exists());
    assert_eq!(Dataset::open(&out).unwrap().train().len(), 101);
}

#[test]
fn the_output_folder_inside_an_input_folder_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("x.txt"), "some text\n").unwrap();
    let out = tmp.path().join("data");
    ok(prepare(&[tmp.path()], &out, &["--val-fraction", "0"]));
    ok(prepare(
        &[tmp.path()],
        &out,
        &["--val-fraction", "0", "--overwrite"],
    ));
    assert_eq!(
        Dataset::open(&out).unwrap().meta().unwrap().train.documents,
        1
    );
}
