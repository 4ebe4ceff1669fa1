//! `runner score`: p(text) by the chain rule, one factor per token.
//!
//! ```text
//! ids = [<eos>] + tokenize(text) + [<eos>]                  n text tokens
//! p(text) = Π_{i=1..n+1} p(ids_i | ids_<i)                  n + 1 factors
//! log₂ p(text) = Σ log₂ p(ids_i | ids_<i)
//! perplexity = exp(−ln p(text) / (n + 1))
//! bits per byte = −log₂ p(text) / bytes(text)
//! ```
//!
//! The first factor is conditioned on the start context `<eos>` (as GPT-2 conditions on
//! `<|endoftext|>`), and the last one is `p(<eos> | text)`: the probability that the text ends
//! there, which is what makes the product a distribution over whole texts. The factors come
//! from forward passes over the text (the same code that computes training losses). A text
//! longer than the transformer's context is scored in sliding windows of the context length
//! advancing by half of it, so every token after the first window is predicted from at least
//! half a context of preceding tokens; the output says so. The LSTM has no context limit: it
//! scores in chunks of 1,024 tokens carrying its (h, c) across, which gives the factors of
//! one pass in memory that does not grow with the text (beyond the text and its factors).
//! `--plot-attention` draws one layer's and head's attention weights over (the first window
//! of) the text.
//!
//! Leaves out: scoring several texts in one batch, per-token alternatives (top predictions).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use model::TokenizerKind;
use serde_json::json;

use crate::ckpt::{self, Net};
use crate::fmt;
use crate::plot;
use crate::precision::PrecisionArg;
use model::Precision;

#[derive(ClapArgs)]
pub struct Args {
    /// Checkpoint: a run folder (runs/NAME) or a folder with config.json + model.safetensors.
    #[arg(long)]
    pub ckpt: PathBuf,

    /// The text to score.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub text: Option<String>,

    /// Score the contents of this UTF-8 text file instead of --text.
    #[arg(long)]
    pub file: Option<PathBuf>,

    /// Print the same numbers as JSON.
    #[arg(long)]
    pub json: bool,

    /// Draw one layer/head's attention weights over the text as an SVG heatmap (GPT only).
    #[arg(long, value_name = "SVG")]
    pub plot_attention: Option<PathBuf>,

    /// Transformer block of the attention plot (0-based; default: the last).
    #[arg(long)]
    pub layer: Option<usize>,

    /// Attention head of the plot (0-based).
    #[arg(long, default_value_t = 0)]
    pub head: usize,

    /// Tokenizer, for a checkpoint whose config.json names none.
    #[arg(long, value_parser = PossibleValuesParser::new(["byte", "gpt2"])
              .map(|s| TokenizerKind::from_name(&s).expect("a listed name")))]
    pub tokenizer: Option<TokenizerKind>,

    #[command(flatten)]
    pub precision: PrecisionArg,
}

/// Tokens per LSTM forward when scoring: its activations take about 35 KB per token for the
/// `small` preset, so a chunk holds ~36 MB however long the text.
const LSTM_CHUNK: usize = 1024;

/// One factor of the chain rule.
struct Factor {
    id: u32,
    nats: f64, // −ln p(id | prefix)
}

pub fn run(args: Args) -> Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {} as UTF-8 text", f.display()))
            .context("hint: --file takes a UTF-8 text file")?,
        (None, None) => unreachable!("clap requires --text or --file"),
    };
    if text.is_empty() {
        bail!(
            "the text is empty; hint: give --text a word or more (an empty text is just p(<eos> | <eos>))"
        );
    }
    if args.plot_attention.is_none() && (args.layer.is_some() || args.head != 0) {
        bail!(
            "--layer and --head choose what --plot-attention draws; hint: add --plot-attention attn.svg"
        );
    }
    let mut loaded = ckpt::open(&args.ckpt, args.tokenizer)?;
    let want = args.precision.or(Precision::fastest());
    PrecisionArg::apply(want, loaded.net.lm_mut());
    let tokenizer = loaded.tokenizer;
    let eos = tokenizer.eos_id();
    let mut ids = vec![eos];
    tokenizer.encode_into(&text, &mut ids);
    ids.push(eos);
    let n_factors = ids.len() - 1;

    if args.plot_attention.is_some() {
        let Net::Gpt(gpt) = &loaded.net else {
            bail!(
                "--plot-attention needs a transformer; this checkpoint is an LSTM, which has no attention; hint: drop --plot-attention"
            );
        };
        let cfg = gpt.config();
        let layer = args.layer.unwrap_or(cfg.n_layer - 1);
        if layer >= cfg.n_layer || args.head >= cfg.n_head {
            bail!(
                "--layer {layer} --head {} is outside the model (L = {}, NH = {}); hint: layers and heads count from 0",
                args.head,
                cfg.n_layer,
                cfg.n_head
            );
        }
    }

    // Score in windows of at most the context, each scoring only targets not yet scored. The
    // LSTM, which has no context limit, goes in chunks of LSTM_CHUNK tokens with its (h, c)
    // carried from one to the next: the same factors as one pass, in constant memory.
    let context = loaded.net.lm().max_seq_len();
    let window = context.unwrap_or(LSTM_CHUNK).min(n_factors);
    let stride = (window / 2).max(1);
    if let Net::Lstm(lstm) = &mut loaded.net {
        lstm.set_carry_state(true);
    }
    let (inputs, targets) = (&ids[..n_factors], &ids[1..]);
    let mut factors = Vec::with_capacity(n_factors);
    let mut windows = 0;
    while factors.len() < n_factors {
        let scored = factors.len();
        let (start, end) = if context.is_none() {
            (scored, (scored + window).min(n_factors))
        } else if scored == 0 {
            (0, window)
        } else {
            let end = (scored + stride).min(n_factors);
            (end - window, end)
        };
        let lm = loaded.net.lm_mut();
        lm.forward(&inputs[start..end], &targets[start..end], 1, end - start);
        let losses = lm.token_losses();
        for (i, &nats) in losses.iter().enumerate().skip(scored - start) {
            factors.push(Factor {
                id: targets[start + i],
                nats: f64::from(nats),
            });
        }
        if windows == 0
            && let (Some(svg), Net::Gpt(gpt)) = (&args.plot_attention, &loaded.net)
        {
            let layer = args.layer.unwrap_or(gpt.config().n_layer - 1);
            let t = end - start;
            let mut probs = vec![0.0f32; t * t]; // (T, T)
            gpt.attention_probs(&mut probs, layer, args.head, 0);
            let labels: Vec<String> = inputs[start..end]
                .iter()
                .map(|&id| ckpt::show_token(&tokenizer, id))
                .collect();
            plot::attention_heatmap(svg, &probs, &labels, layer, args.head)?;
        }
        windows += 1;
    }

    let nats: f64 = factors.iter().map(|f| f.nats).sum();
    let bits = nats / std::f64::consts::LN_2;
    let perplexity = (nats / n_factors as f64).exp();
    let bytes = text.len();
    let bits_per_byte = bits / bytes as f64;
    let sliding = (windows > 1 && context.is_some()).then_some((window, stride));
    let chunks = (windows > 1 && context.is_none()).then_some((window, windows));

    if args.json {
        let rows: Vec<_> = factors
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "token": ckpt::show_token(&tokenizer, f.id),
                    "p": (-f.nats).exp(),
                    "bits": f.nats / std::f64::consts::LN_2,
                })
            })
            .collect();
        let value = json!({
            "checkpoint": loaded.dir,
            "tokenizer": tokenizer.name(),
            "precision": loaded.net.lm().precision().name(),
            "text_bytes": bytes,
            "text_tokens": n_factors - 1,
            "factors": rows,
            "log2_p": -bits,
            "ln_p": -nats,
            "perplexity": perplexity,
            "bits_per_byte": bits_per_byte,
            "sliding_window": sliding.map(|(w, s)| json!({ "window": w, "stride": s, "windows": windows })),
            "carried_chunks": chunks.map(|(w, n)| json!({ "tokens": w, "chunks": n })),
            "attention_plot": args.plot_attention,
        });
        println!("{value:#}");
        return Ok(());
    }

    println!(
        "p(text) by the chain rule: {} from {} ({} tokenizer, {} products)",
        loaded.net.describe(),
        loaded.dir.display(),
        tokenizer.name(),
        loaded.net.lm().precision()
    );
    println!(
        "the first token is conditioned on {eos_text}; the last factor is p({eos_text} | text)\n",
        eos_text = tokenizer.kind().eos_text()
    );
    let shown: Vec<String> = factors
        .iter()
        .map(|f| format!("{:?}", ckpt::show_token(&tokenizer, f.id)))
        .collect();
    let width = shown
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:>5}  {:<width$}  {:>17}  {:>8}",
        "#", "token", "p(token | prefix)", "-log2 p"
    );
    for (i, (f, s)) in factors.iter().zip(&shown).enumerate() {
        println!(
            "{:>5}  {:<width$}  {:>17.6}  {:>8.3}",
            i + 1,
            s,
            (-f.nats).exp(),
            f.nats / std::f64::consts::LN_2
        );
    }
    println!();
    println!(
        "log2 p(text)  = {:.3} bits  (ln p = {:.3} nats) over {n_factors} factors ({} + {})",
        -bits,
        -nats,
        fmt::counted(n_factors as u64 - 1, "token"),
        tokenizer.kind().eos_text()
    );
    println!(
        "perplexity    = exp({:.3} / {n_factors}) = {perplexity:.3}",
        nats
    );
    println!(
        "bits per byte = {bits:.3} / {} = {bits_per_byte:.4}",
        fmt::counted(bytes as u64, "byte")
    );
    if let Some((w, s)) = sliding {
        println!(
            "the text is longer than the context: scored in {windows} sliding windows of {w} tokens advancing by {s}, so each token after the first window sees at least {} tokens before it",
            w - s
        );
    }
    if let Some((w, n)) = chunks {
        println!(
            "scored in {n} chunks of up to {w} tokens with the LSTM's (h, c) carried from one to the next: the same factors as one pass, in constant memory"
        );
    }
    if let Some(svg) = &args.plot_attention {
        println!("attention heatmap written to {}", svg.display());
    }
    Ok(())
}
