//! `runner`: the command-line program of Lanes, one file per subcommand.
#![forbid(unsafe_code)]

mod info;
mod prepare;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "runner",
    version,
    about = "Train and use small language models on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize text files into llm.c-format shards (train_*.bin, val_*.bin) and meta.json.
    Prepare(prepare::Args),
    /// Show the SIMD path of this build, this CPU's features and whether it can run this build.
    Info(info::Args),
}

fn main() {
    // Before anything else runs a kernel: refuse a CPU that lacks this build's instructions.
    if let Err(e) = kernels::cpu::check() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare(args) => prepare::run(args),
        Command::Info(args) => info::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
