//! `runner`: the command-line program of Lanes, one file per subcommand.
//!
//! `prepare` (text → shards), `train` (shards → checkpoint), `score` (p(text) by the chain
//! rule), `generate` (sampling with a KV cache or carried state), `parallelism` (when and
//! why the transformer trains faster than the LSTM, measured), `race` (the two learning
//! side by side at equal wall-clock), `info` (SIMD path, CPU).
//! Every error is one line `error: ...` ending in a hint, with exit code 2 (clap's own usage
//! errors exit 2 too); an interrupted `train` saves and exits 130.
#![forbid(unsafe_code)]

mod builtin;
mod ckpt;
mod comm;
mod fmt;
mod generate;
mod info;
mod lock;
mod machine;
mod parallelism;
mod plot;
mod precision;
mod prepare;
mod race;
mod score;
mod threads;
mod train;

use anyhow::Context;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Train and use small language models on the CPU"
)]
struct Cli {
    /// Worker threads for every kernel (the rayon pool); 0 = one per core. Results do not
    /// depend on it.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize text files into llm.c-format shards (train_*.bin, val_*.bin) and meta.json.
    Prepare(prepare::Args),
    /// Train a GPT or an LSTM on shards (or on the built-in corpus), with checkpoints.
    Train(train::Args),
    /// Score a text by the chain rule: p(token | prefix) for every token, log p, perplexity.
    Score(score::Args),
    /// Generate text from a prompt: greedy, naive, top-k or nucleus sampling.
    Generate(generate::Args),
    /// Measure when and why the transformer trains faster than the LSTM: tokens/s and
    /// critical paths over T, batch size and thread count (writes a table, JSON and a chart).
    Parallelism(parallelism::Args),
    /// Race the matched GPT and LSTM at equal wall-clock: a learning-rate sweep each, then
    /// held-out bits/byte against seconds and tokens seen (writes a table, JSON and a chart).
    Race(race::Args),
    /// Show the SIMD path of this build, this CPU's features and whether it can run this build.
    Info(info::Args),
}

fn main() {
    // Before anything else runs a kernel: refuse a CPU that lacks this build's instructions.
    if let Err(e) = kernels::cpu::check() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = build_pool(cli.threads).and_then(|()| match cli.command {
        Command::Prepare(args) => prepare::run(args),
        Command::Train(args) => train::run(args, subcommand_matches(&matches)),
        Command::Score(args) => score::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Info(args) => info::run(args),
        Command::Parallelism(args) => parallelism::run(args),
        Command::Race(args) => race::run(args),
    });
    if let Err(e) = result {
        // Ranks that disagree on their run have been told why once, by rank 0.
        if e.downcast_ref::<comm::Disagreed>().is_none() {
            eprintln!("error: {}", one_line(&e));
        }
        std::process::exit(2);
    }
}

/// An error as one line: what went wrong, each cause once (a message that already quotes its
/// source is not followed by it again), then the hints, wherever in the chain they were
/// attached (`.context("hint: ...")` wraps outside, but a hint reads best last).
fn one_line(e: &anyhow::Error) -> String {
    let (mut line, mut hints) = (String::new(), Vec::new());
    for cause in e.chain() {
        let text = cause.to_string();
        let (what, hint) = match text.split_once("hint: ") {
            Some((what, hint)) => (what.trim_end_matches([' ', ';', ',', ':']), Some(hint)),
            None => (text.as_str(), None),
        };
        if !what.is_empty() && !line.contains(what) {
            if !line.is_empty() {
                line += ": ";
            }
            line += what;
        }
        hints.extend(hint.map(str::to_string));
    }
    for hint in hints {
        line += "; hint: ";
        line += &hint;
    }
    line
}

/// The matches of the subcommand given (to tell flags the user typed from defaults).
fn subcommand_matches(matches: &ArgMatches) -> &ArgMatches {
    matches
        .subcommand()
        .map(|(_, m)| m)
        .expect("clap requires a subcommand")
}

/// Sizes rayon's global pool, which every kernel uses: at most [`threads::PER_CORE`] per
/// core, with a warning above one per core.
fn build_pool(n: usize) -> anyhow::Result<()> {
    let cores = threads::cores();
    threads::check(n, cores)?;
    if let Some(warning) = threads::oversubscribed(n, cores) {
        eprintln!("{warning}");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot start the worker threads; hint: try a smaller --threads")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn errors_read_cause_first_and_hint_last() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Err::<(), _>(io)
            .context("data: no such file")
            .context("cannot open data; hint: run runner prepare")
            .unwrap_err();
        assert_eq!(
            one_line(&e),
            "cannot open data: data: no such file; hint: run runner prepare"
        );
        let e = Err::<(), _>(anyhow::anyhow!("x.json: invalid"))
            .context("hint: retrain it")
            .unwrap_err();
        assert_eq!(one_line(&e), "x.json: invalid; hint: retrain it");
    }
}
