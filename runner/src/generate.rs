//! `runner generate`: text from a checkpoint, streamed token by token.
//!
//! The prompt is conditioned on a start context, the end-of-sequence token (as GPT-2 starts
//! from `<|endoftext|>`), so an empty prompt asks for the start of a new document. The
//! prompt is prefilled ([`Decoder::prefill`](model::Decoder::prefill): the transformer runs it
//! in one forward pass filling its KV cache; the LSTM walks it). Each step then
//! feeds one token to the model's [`Decoder`](model::Decoder) — the transformer's KV cache or the LSTM's
//! carried (h, c) — so a new token costs one position, not the whole prefix; then a
//! [`Sampler`] picks the next token from the logits (greedy, naive, top-k, nucleus, each with
//! a temperature). Text is printed as soon as the tokenizer's streaming decoder has whole
//! characters. When the transformer's context fills, the window slides: the decoder restarts
//! on the last half of the context, prefilled (said on stderr). The prompt's tokens per
//! second and the generated ones' go to stderr, separately, so stdout holds only the text.
//!
//! Leaves out: batched generation, beam search, repetition penalties.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args as ClapArgs;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use model::sampling::{Rule, Sampler};
use model::{LanguageModel, Precision, Tokenizer, TokenizerKind};

use crate::precision::PrecisionArg;
use crate::{ckpt, fmt};

#[derive(ClapArgs)]
pub struct Args {
    /// Checkpoint: a run folder (runs/NAME) or a folder with config.json + model.safetensors.
    #[arg(long)]
    pub ckpt: PathBuf,

    /// Text to continue; empty starts a new document.
    #[arg(long, default_value = "")]
    pub prompt: String,

    /// Tokens to generate (at most).
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,

    /// Softmax temperature: below 1 sharpens the distribution, above 1 flattens it.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,

    /// Sample only among the K most probable tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Sample only from the nucleus: the fewest most-probable tokens holding mass P.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,

    /// Always take the most probable token (no sampling; excludes --temperature, --top-k,
    /// --top-p).
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,

    /// Seed of the random draws: the same seed, checkpoint and flags give the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,

    /// Stop at the first end-of-sequence token instead of printing it and going on.
    #[arg(long)]
    pub stop_at_eos: bool,

    /// Tokenizer, for a checkpoint whose config.json names none.
    #[arg(long, value_parser = PossibleValuesParser::new(["byte", "gpt2"])
              .map(|s| TokenizerKind::from_name(&s).expect("a listed name")))]
    pub tokenizer: Option<TokenizerKind>,

    #[command(flatten)]
    pub precision: PrecisionArg,
}

pub fn run(args: Args) -> Result<()> {
    let rule = if args.greedy {
        Rule::Greedy
    } else {
        Rule::Sample {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        }
    };
    if let Err(e) = rule.validate() {
        bail!("{e}; hint: e.g. --temperature 0.8 --top-k 40 --top-p 0.95, or --greedy");
    }
    let mut loaded = ckpt::open(&args.ckpt, args.tokenizer)?;
    let want = args.precision.or(Precision::fastest());
    PrecisionArg::apply(want, loaded.net.lm_mut());
    let lm = loaded.net.lm();
    let tokenizer = loaded.tokenizer;
    let prompt = prompt_ids(&tokenizer, &args.prompt);
    if let Some(cap) = lm.max_seq_len()
        && prompt.len() > cap
    {
        bail!(
            "the prompt is {} tokens with the start token, longer than the model's context of {cap}; hint: shorten --prompt",
            prompt.len()
        );
    }
    eprintln!(
        "{} from {} ({} tokenizer, {} products), {}",
        loaded.net.describe(),
        loaded.dir.display(),
        tokenizer.name(),
        lm.precision(),
        describe_rule(rule, args.seed)
    );
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", args.prompt)?;
    stdout.flush()?;
    let mut sampler = Sampler::new(rule, args.seed);
    let g = generate(
        lm,
        &tokenizer,
        &prompt,
        &mut sampler,
        args.max_tokens,
        args.stop_at_eos,
        |text| {
            // A closed pipe (`| head`) ends the generation quietly.
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_ok()
        },
    );
    writeln!(stdout).ok();
    for note in &g.notes {
        eprintln!("{note}");
    }
    eprintln!(
        "prompt: {} in {:.3} s ({} tokens/s{}); generated: {} in {:.2} s ({} tokens/s)",
        fmt::counted(prompt.len() as u64, "token"),
        g.prompt_seconds,
        ckpt::thousands((prompt.len() as f64 / g.prompt_seconds.max(1e-9)) as u64),
        match loaded.net {
            ckpt::Net::Gpt(_) if prompt.len() > 1 => ", one forward pass",
            _ => ", token by token",
        },
        fmt::counted(g.ids.len() as u64, "token"),
        g.seconds,
        ckpt::thousands((g.ids.len() as f64 / g.seconds.max(1e-9)) as u64),
    );
    Ok(())
}

/// The ids a prompt conditions on: `<eos>` (the start context), then the prompt's tokens.
pub fn prompt_ids(tokenizer: &Tokenizer, prompt: &str) -> Vec<u32> {
    let mut ids = vec![tokenizer.eos_id()];
    tokenizer.encode_into(prompt, &mut ids);
    ids
}

/// "greedy" / "sampling at temperature 0.8, top-k 40, seed 1337", for the header line.
pub fn describe_rule(rule: Rule, seed: u64) -> String {
    match rule {
        Rule::Greedy => "greedy decoding".to_string(),
        Rule::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let mut s = format!("sampling at temperature {}", fmt::short(temperature));
            if let Some(k) = top_k {
                s += &format!(", top-k {k}");
            }
            if let Some(p) = top_p {
                s += &format!(", top-p {}", fmt::short(p));
            }
            s + &format!(", seed {seed}")
        }
    }
}

/// What [`generate`] produced.
pub struct Generation {
    /// The generated ids (not the prompt), the end-of-sequence id included if one was drawn
    /// and not stopped at.
    pub ids: Vec<u32>,
    /// Seconds spent generating, and feeding the prompt before that.
    pub seconds: f64,
    pub prompt_seconds: f64,
    /// Things the user should know (the window slid, the text ended).
    pub notes: Vec<String>,
}

/// Continues `prompt` (non-empty, at most the context long) by up to `max_tokens` tokens
/// drawn by `sampler`, calling `emit` with each piece of decoded text as soon as it is whole
/// characters. Stops early when `emit` returns false, or at `<eos>` if `stop_at_eos`.
pub fn generate(
    lm: &dyn LanguageModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    sampler: &mut Sampler,
    max_tokens: usize,
    stop_at_eos: bool,
    mut emit: impl FnMut(&str) -> bool,
) -> Generation {
    assert!(
        !prompt.is_empty(),
        "generate: the prompt needs a start token"
    );
    let mut decoder = lm.decoder();
    let capacity = decoder.capacity();
    let started = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec(); // every token fed or to feed
    let mut logits = decoder
        .prefill(prompt)
        .expect("the caller checked the prompt's length and tokenization gives ids < V")
        .to_vec();
    let prompt_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut stream = tokenizer.stream_decoder();
    let (mut ids, mut notes, mut text) = (Vec::new(), Vec::new(), String::new());
    while ids.len() < max_tokens {
        let id = sampler.sample(&logits);
        if stop_at_eos && id == tokenizer.eos_id() {
            notes.push(format!(
                "stopped at {} after {} tokens",
                tokenizer.kind().eos_text(),
                ids.len()
            ));
            break;
        }
        ids.push(id);
        history.push(id);
        text.clear();
        stream
            .push(id, &mut text)
            .expect("sampled ids are inside the vocabulary");
        if !text.is_empty() && !emit(&text) {
            break;
        }
        if ids.len() == max_tokens {
            break;
        }
        if capacity == Some(decoder.position()) {
            // Slide: restart on the last half of the context (each token then costs at most
            // two positions on average).
            let keep = (capacity.expect("bounded") / 2).max(1);
            if notes.is_empty() {
                notes.push(format!(
                    "the context of {} tokens filled: the window slid, keeping the last {keep} tokens each time",
                    capacity.expect("bounded")
                ));
            }
            decoder.reset();
            let tail = history.len() - keep;
            if tail < history.len() - 1 {
                decoder
                    .prefill(&history[tail..history.len() - 1])
                    .expect("half a context fits an empty one");
            }
        }
        logits.clear();
        logits.extend_from_slice(
            decoder
                .feed(id)
                .expect("the window slid before the context filled; sampled ids are < V"),
        );
    }
    text.clear();
    stream.finish(&mut text);
    if !text.is_empty() {
        emit(&text);
    }
    Generation {
        ids,
        seconds: started.elapsed().as_secs_f64(),
        prompt_seconds,
        notes,
    }
}
