//! `runner race`: the lecture's claim put to the test where it matters, learning. The matched
//! GPT and LSTM train on the same shards for the same wall-clock budget, one after the other on
//! the same threads, and their held-out bits/byte are drawn against seconds and tokens seen.
//!
//! Fair by construction:
//!
//! ```text
//! for model in GPT, LSTM:                         the learning-rate sweep
//!     for lr in --gpt-lrs / --lstm-lrs:           --sweep-share of the budget each
//!         train(model, lr); keep the final validation bits/byte
//!     best lr = the lowest of them (a diverged run counts as none)
//! for model in GPT, LSTM:                         the race
//!     train(model, best lr, --time)               evaluated --evals times on the way
//! verdict: who is lower at 25%, 50% and 100% of the budget, by how much
//! ```
//!
//! Every leg is a call of `runner train`'s own training loop (its `--time` budget fits the
//! cosine schedule to the clock; warmup 20 steps and clipping at 1.0, its defaults, for both)
//! and is read back from its `metrics.jsonl`. Each leg also records the share of the CPU that
//! other processes took while it ran (/proc/stat), since the machine may be shared.
//!
//! Writes `race.md`, `race.json` and `race.svg` to `--out`; the legs' run folders (with their
//! checkpoints) go under `--runs`.
//!
//! Leaves out: several seeds per leg (one seed, the same for both), and model sizes other than
//! the matched presets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args as ClapArgs;
use serde_json::json;

use crate::builtin;
use crate::machine::{self, Ticks};
use crate::plot;
use crate::precision::PrecisionArg;
use crate::train::{self, ModelArg, OptimizerArg, parse_duration};

#[derive(ClapArgs)]
pub struct Args {
    /// Shard folder from `runner prepare`; without it, the built-in corpus (generated from
    /// --seed into RUNS/data), whose exact entropy rate is drawn as the floor.
    #[arg(long, value_name = "DIR")]
    shards: Option<PathBuf>,

    /// Size preset of both models: small (about 3.3M parameters each) or tiny (for tests).
    #[arg(long, default_value = "small", value_parser = ["tiny", "small"])]
    preset: String,

    /// Wall-clock budget of each model's race leg, e.g. 2m, 5m.
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    time: Duration,

    /// Peak learning rates the GPT's sweep tries (AdamW).
    #[arg(long, value_delimiter = ',', default_value = "1e-3,3e-3,1e-2")]
    gpt_lrs: Vec<f32>,

    /// Peak learning rates the LSTM's sweep tries (AdamW).
    #[arg(long, value_delimiter = ',', default_value = "1e-3,3e-3,1e-2")]
    lstm_lrs: Vec<f32>,

    /// Budget of each sweep run, as a share of --time.
    #[arg(long, default_value_t = 0.2)]
    sweep_share: f64,

    /// Evaluations on the validation split during each race leg (the points of the curves),
    /// at most; each costs both models the same few forward passes out of their budget.
    #[arg(long, default_value_t = 12)]
    evals: u64,

    /// Batches of B windows per evaluation (the same first batches of the validation split
    /// for both models).
    #[arg(long, default_value_t = 4)]
    eval_batches: u64,

    /// Windows per batch B, for both.
    #[arg(long, default_value_t = 16)]
    batch: u64,

    /// Seed of both models' weights, the batches and the built-in corpus.
    #[arg(long, default_value_t = 1337)]
    seed: u64,

    /// Folder for race.md, race.json and race.svg.
    #[arg(long, default_value = "race")]
    out: PathBuf,

    /// Folder for the legs' run folders (checkpoints, metrics.jsonl, loss.svg).
    #[arg(long, default_value = "runs/race")]
    runs: PathBuf,

    /// (Both models run in the same precision.)
    #[command(flatten)]
    precision: PrecisionArg,
}

const MODELS: [ModelArg; 2] = [ModelArg::Gpt, ModelArg::Lstm];

fn name(model: ModelArg) -> &'static str {
    match model {
        ModelArg::Gpt => "GPT",
        ModelArg::Lstm => "LSTM",
    }
}

/// One evaluation of a leg.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) seconds: f64,
    pub(crate) tokens: u64,
    pub(crate) bpb: f64,
}

/// One training run of the race or its sweep.
#[derive(Clone, Debug)]
pub(crate) struct Leg {
    pub(crate) model: ModelArg,
    pub(crate) lr: f32,
    /// Its --time budget, seconds.
    pub(crate) budget: f64,
    /// The validation curve; empty when the run diverged.
    pub(crate) curve: Vec<Point>,
    pub(crate) steps: u64,
    /// Nats/token over bits/byte of this data (to draw the unigram level in bits/byte).
    pub(crate) nats_per_bit: Option<f64>,
    /// Why it stopped early, when it diverged.
    pub(crate) failed: Option<String>,
    /// Share of all cores' time other processes took while it ran.
    pub(crate) other_work: Option<f64>,
}

impl Leg {
    pub(crate) fn final_bpb(&self) -> Option<f64> {
        self.curve.last().map(|p| p.bpb)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "model": name(self.model),
            "lr": self.lr,
            "budget_s": self.budget,
            "steps": self.steps,
            "final_bits_per_byte": self.final_bpb(),
            "failed": self.failed,
            "other_work": self.other_work,
            "curve": self.curve.iter().map(|p| json!({
                "seconds": p.seconds, "tokens": p.tokens, "bits_per_byte": p.bpb,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The sweep's choice: the learning rate whose run ended lowest on the validation split;
/// `None` when every run diverged or had no validation.
pub(crate) fn best_lr(legs: &[Leg]) -> Option<f32> {
    legs.iter()
        .filter_map(|l| l.final_bpb().filter(|b| b.is_finite()).map(|b| (l.lr, b)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(lr, _)| lr)
}

/// Bits/byte of `curve` at `seconds`, linear between evaluations; `None` before the first
/// one or after the last.
pub(crate) fn bpb_at(curve: &[Point], seconds: f64) -> Option<f64> {
    let i = curve.iter().position(|p| p.seconds >= seconds)?;
    if i == 0 {
        return (curve[0].seconds == seconds).then_some(curve[0].bpb);
    }
    let (a, b) = (curve[i - 1], curve[i]);
    let f = (seconds - a.seconds) / (b.seconds - a.seconds);
    Some(a.bpb + f * (b.bpb - a.bpb))
}

/// Where each model stands at a share of the budget.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Standing {
    pub(crate) share: f64,
    pub(crate) seconds: f64,
    pub(crate) gpt: Option<f64>,
    pub(crate) lstm: Option<f64>,
}

impl Standing {
    /// "GPT ahead by 0.412 bits/byte", or why no one is.
    fn text(&self) -> String {
        match (self.gpt, self.lstm) {
            (Some(g), Some(l)) if g < l => format!("GPT ahead by {:.3} bits/byte", l - g),
            (Some(g), Some(l)) if l < g => format!("LSTM ahead by {:.3} bits/byte", g - l),
            (Some(_), Some(_)) => "level".to_string(),
            _ => "no evaluation yet".to_string(),
        }
    }
}

/// Each model's bits/byte at 25%, 50% and 100% of the budget (the final evaluation for 100%:
/// it lands at the budget's end).
pub(crate) fn standings(gpt: &Leg, lstm: &Leg, budget: f64) -> Vec<Standing> {
    [0.25, 0.5, 1.0]
        .map(|share| {
            let seconds = share * budget;
            let at = |leg: &Leg| {
                if share == 1.0 {
                    leg.final_bpb()
                } else {
                    bpb_at(&leg.curve, seconds)
                }
            };
            Standing {
                share,
                seconds,
                gpt: at(gpt),
                lstm: at(lstm),
            }
        })
        .to_vec()
}

/// The one-line verdict.
pub(crate) fn verdict_line(standings: &[Standing]) -> String {
    let parts: Vec<String> = standings
        .iter()
        .map(|s| {
            format!(
                "at {:.0}% ({:.0} s) {}",
                100.0 * s.share,
                s.seconds,
                s.text()
            )
        })
        .collect();
    format!("verdict: {}", parts.join("; "))
}

/// What every leg shares.
struct Setup {
    shards: PathBuf,
    preset: String,
    batch: u64,
    eval_batches: u64,
    seed: u64,
    runs: PathBuf,
    precision: PrecisionArg,
}

impl Setup {
    /// Trains one leg through `runner train`'s loop and reads its curve back.
    fn leg(
        &self,
        model: ModelArg,
        lr: f32,
        budget: f64,
        eval_every: u64,
        tag: &str,
    ) -> Result<Leg> {
        let out = self
            .runs
            .join(format!("{tag}-{}-lr{lr:e}", name(model).to_lowercase()));
        let args = train::Args {
            shards: Some(self.shards.clone()),
            model,
            preset: self.preset.clone(),
            layers: None,
            d_model: None,
            heads: None,
            hidden: None,
            seq_len: None,
            batch: self.batch,
            steps: None,
            time: Some(Duration::from_secs_f64(budget)),
            lr: Some(lr),
            min_lr: None,
            warmup: 20,
            optimizer: OptimizerArg::Adamw,
            weight_decay: None,
            grad_clip: 1.0,
            seed: self.seed,
            eval_every,
            eval_batches: self.eval_batches,
            save_every: u64::MAX / 2,
            out: Some(out.clone()),
            resume: false,
            precision: self.precision.clone(),
        };
        println!(
            "\n== {tag}: {} at lr {lr:e} for {budget:.0} s ==",
            name(model)
        );
        let before = Ticks::read();
        let result = train::run(args, &clap::ArgMatches::default());
        let other_work = before
            .zip(Ticks::read())
            .and_then(|(a, b)| a.others_share(b));
        let failed = result.err().map(|e| format!("{e:#}"));
        let (curve, steps, nats_per_bit) = read_metrics(
            &out.join("metrics.jsonl"),
            self.batch,
            train::default_window(&self.preset) as u64,
        )?;
        if let Some(e) = &failed
            && !e.contains("diverged")
        {
            bail!("the {tag} run of the {} failed: {e}", name(model));
        }
        Ok(Leg {
            model,
            lr,
            budget,
            curve: if failed.is_some() { Vec::new() } else { curve },
            steps,
            nats_per_bit,
            failed,
            other_work,
        })
    }
}

/// The validation curve of a run's metrics.jsonl (B·T tokens a step), its last step, and
/// nats/token per bit/byte.
fn read_metrics(path: &Path, batch: u64, t: u64) -> Result<(Vec<Point>, u64, Option<f64>)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; hint: the leg did not start",
            path.display()
        )
    })?;
    let (mut curve, mut steps, mut ratio) = (Vec::new(), 0, None);
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let step = v["step"].as_u64().unwrap_or(0);
        steps = steps.max(step);
        if let (Some(bpb), Some(loss), Some(seconds)) = (
            v["val_bits_per_byte"].as_f64(),
            v["val_loss"].as_f64(),
            v["elapsed_s"].as_f64(),
        ) {
            ratio = Some(loss / bpb);
            curve.push((step, seconds, bpb));
        }
    }
    let curve = curve
        .into_iter()
        .map(|(step, seconds, bpb)| Point {
            seconds,
            tokens: step * batch * t,
            bpb,
        })
        .collect();
    Ok((curve, steps, ratio))
}

pub fn run(args: Args) -> Result<()> {
    let budget = args.time.as_secs_f64();
    ensure!(
        budget > 0.0 && args.sweep_share > 0.0 && args.sweep_share <= 1.0,
        "--time must be positive and --sweep-share in (0, 1]; hint: e.g. --time 5m --sweep-share 0.2"
    );
    ensure!(
        args.gpt_lrs.len() >= 3 && args.lstm_lrs.len() >= 3,
        "a fair sweep tries at least 3 learning rates per model; hint: e.g. --gpt-lrs 1e-3,3e-3,1e-2"
    );
    ensure!(
        args.gpt_lrs
            .iter()
            .chain(&args.lstm_lrs)
            .all(|lr| lr.is_finite() && *lr > 0.0),
        "learning rates must be positive; hint: e.g. 1e-3,3e-3,1e-2"
    );
    ensure!(args.evals > 0, "--evals must be at least 1; hint: e.g. 16");
    // Never overwrite an earlier race's legs (their checkpoints are someone's work).
    if let Some(earlier) = std::fs::read_dir(&args.runs).ok().and_then(|d| {
        d.flatten().map(|e| e.file_name()).find(|n| {
            let n = n.to_string_lossy();
            n.starts_with("sweep-") || n.starts_with("race-")
        })
    }) {
        bail!(
            "{} already holds the legs of a race ({}); hint: choose another --runs, or delete \
             that folder",
            args.runs.display(),
            earlier.to_string_lossy()
        );
    }
    for dir in [&args.out, &args.runs] {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; hint: choose another folder",
                dir.display()
            )
        })?;
    }
    let (shards, entropy) = match &args.shards {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = args.runs.join("data");
            builtin::ensure(&dir, args.seed)?;
            (dir, Some(builtin::entropy_bits_per_byte()))
        }
    };
    let data = train::open_data(&shards)?;
    let unigram = train::unigram_loss(data.train(), data.tokenizer().vocab_size() as usize);
    let setup = Setup {
        shards: shards.clone(),
        preset: args.preset.clone(),
        batch: args.batch,
        eval_batches: args.eval_batches,
        seed: args.seed,
        runs: args.runs.clone(),
        precision: args.precision.clone(),
    };
    let threads = rayon::current_num_threads();
    let command = std::iter::once("runner".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");

    // The sweep: a short run per learning rate, judged on the validation split.
    let sweep_budget = args.sweep_share * budget;
    let mut sweep = Vec::new();
    let mut best = Vec::new();
    for model in MODELS {
        let lrs = match model {
            ModelArg::Gpt => &args.gpt_lrs,
            ModelArg::Lstm => &args.lstm_lrs,
        };
        let legs = lrs
            .iter()
            .map(|&lr| setup.leg(model, lr, sweep_budget, u64::MAX / 2, "sweep"))
            .collect::<Result<Vec<_>>>()?;
        let lr = best_lr(&legs).with_context(|| {
            format!(
                "every sweep run of the {} diverged or had no validation; hint: try lower --{}-lrs",
                name(model),
                name(model).to_lowercase()
            )
        })?;
        // Evaluations spread over the race: from the sweep's speed, steps per evaluation.
        let fastest = legs
            .iter()
            .find(|l| l.lr == lr)
            .map_or(1, |l| l.steps.max(1));
        let expected = fastest as f64 * budget / sweep_budget;
        best.push((
            model,
            lr,
            (expected / args.evals as f64).ceil().max(1.0) as u64,
        ));
        sweep.extend(legs);
    }

    // The race: the same budget for both, one after the other.
    let mut race = Vec::new();
    for &(model, lr, eval_every) in &best {
        race.push(setup.leg(model, lr, budget, eval_every, "race")?);
    }
    let (gpt, lstm) = (&race[0], &race[1]);
    let standings = standings(gpt, lstm, budget);
    let verdict = verdict_line(&standings);
    let unigram_bpb = race
        .iter()
        .chain(&sweep)
        .find_map(|l| l.nats_per_bit)
        .map(|r| unigram / r);

    let report = Report {
        command,
        cpu: machine::cpu_name(),
        threads,
        data: match &args.shards {
            Some(d) => d.display().to_string(),
            None => "the built-in corpus".to_string(),
        },
        tokenizer: data.tokenizer().name().to_string(),
        preset: args.preset.clone(),
        batch: args.batch,
        budget,
        sweep_share: args.sweep_share,
        unigram_bpb,
        entropy,
        sweep,
        race: race.clone(),
        standings,
        verdict: verdict.clone(),
    };
    let write = |file: &str, text: &str| {
        let path = args.out.join(file);
        std::fs::write(&path, text).with_context(|| {
            format!(
                "cannot write {}; hint: choose another --out",
                path.display()
            )
        })
    };
    write("race.md", &report.markdown())?;
    write(
        "race.json",
        &serde_json::to_string_pretty(&report.to_json())?,
    )?;
    report.chart(&args.out.join("race.svg"))?;
    println!("\n{}", report.markdown());
    println!("{verdict}");
    println!(
        "Wrote race.md, race.json and race.svg to {}",
        args.out.display()
    );
    Ok(())
}

/// A finished race.
struct Report {
    command: String,
    cpu: String,
    threads: usize,
    data: String,
    tokenizer: String,
    preset: String,
    batch: u64,
    budget: f64,
    sweep_share: f64,
    unigram_bpb: Option<f64>,
    entropy: Option<f64>,
    sweep: Vec<Leg>,
    race: Vec<Leg>,
    standings: Vec<Standing>,
    verdict: String,
}

/// "12%", or "unknown" off Linux.
fn percent(x: Option<f64>) -> String {
    x.map_or("unknown".to_string(), |x| format!("{:.0}%", 100.0 * x))
}

impl Report {
    fn markdown(&self) -> String {
        let mut s = format!(
            "# The learning race: GPT against LSTM at equal wall-clock\n\n\
             Machine: {}, {} threads for every leg, one leg at a time.  \n\
             Data: {} ({} tokenizer); models: the `{}` presets, B = {}, AdamW, warmup 20 steps, \
             gradients clipped at 1.0.  \n\
             Budget: {:.0} s per model; each sweep run {:.0} s ({:.0}% of it).  \n\
             Command: `{}`\n\n",
            self.cpu,
            self.threads,
            self.data,
            self.tokenizer,
            self.preset,
            self.batch,
            self.budget,
            self.sweep_share * self.budget,
            100.0 * self.sweep_share,
            self.command,
        );
        s += "## Learning-rate sweep (final validation bits/byte)\n\n\
              | model | lr | steps | bits/byte | other CPU work |\n|---|--:|--:|--:|--:|\n";
        for l in &self.sweep {
            let chosen = self.race.iter().any(|r| r.model == l.model && r.lr == l.lr);
            s += &format!(
                "| {} | {:e}{} | {} | {} | {} |\n",
                name(l.model),
                l.lr,
                if chosen { " (chosen)" } else { "" },
                crate::ckpt::thousands(l.steps),
                l.final_bpb()
                    .map_or("diverged".to_string(), |b| format!("{b:.3}")),
                percent(l.other_work),
            );
        }
        s += "\n## The race\n\n\
              | model | lr | steps | tokens seen | final bits/byte | other CPU work |\n\
              |---|--:|--:|--:|--:|--:|\n";
        for l in &self.race {
            let tokens = l.curve.last().map_or(0, |p| p.tokens);
            s += &format!(
                "| {} | {:e} | {} | {} | {} | {} |\n",
                name(l.model),
                l.lr,
                crate::ckpt::thousands(l.steps),
                crate::ckpt::thousands(tokens),
                l.final_bpb()
                    .map_or("diverged".to_string(), |b| format!("{b:.3}")),
                percent(l.other_work),
            );
        }
        s += "\n| share of budget | seconds | GPT bits/byte | LSTM bits/byte | standing |\n\
              |--:|--:|--:|--:|---|\n";
        let f = |x: Option<f64>| x.map_or("–".to_string(), |x| format!("{x:.3}"));
        for st in &self.standings {
            s += &format!(
                "| {:.0}% | {:.0} | {} | {} | {} |\n",
                100.0 * st.share,
                st.seconds,
                f(st.gpt),
                f(st.lstm),
                st.text()
            );
        }
        s += "\nReference levels: ";
        s += &self
            .unigram_bpb
            .map_or("unigram model unknown".to_string(), |u| {
                format!("the unigram model of the training tokens scores {u:.3} bits/byte")
            });
        if let Some(h) = self.entropy {
            s += &format!("; the source's exact entropy rate is {h:.3} bits/byte (the floor)");
        }
        s += ".\n\n";
        if let (Some(g), Some(l)) = (self.race[0].final_bpb(), self.race[1].final_bpb()) {
            let (gt, lt) = (
                self.race[0].curve.last().map_or(0, |p| p.tokens),
                self.race[1].curve.last().map_or(0, |p| p.tokens),
            );
            s += &format!(
                "In the same {:.0} s the GPT saw {} tokens and the LSTM {} ({:.2}×); the GPT \
                 ended at {g:.3} bits/byte, the LSTM at {l:.3}: {}.\n\n",
                self.budget,
                crate::ckpt::thousands(gt),
                crate::ckpt::thousands(lt),
                gt as f64 / lt.max(1) as f64,
                Standing {
                    share: 1.0,
                    seconds: self.budget,
                    gpt: Some(g),
                    lstm: Some(l)
                }
                .text(),
            );
        }
        s += &format!("**{}**\n", self.verdict);
        s
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "command": self.command,
            "cpu": self.cpu,
            "threads": self.threads,
            "data": self.data,
            "tokenizer": self.tokenizer,
            "preset": self.preset,
            "batch": self.batch,
            "budget_s": self.budget,
            "sweep_share": self.sweep_share,
            "unigram_bits_per_byte": self.unigram_bpb,
            "entropy_bits_per_byte": self.entropy,
            "sweep": self.sweep.iter().map(Leg::to_json).collect::<Vec<_>>(),
            "race": self.race.iter().map(Leg::to_json).collect::<Vec<_>>(),
            "standings": self.standings.iter().map(|s| json!({
                "share": s.share, "seconds": s.seconds, "gpt": s.gpt, "lstm": s.lstm,
            })).collect::<Vec<_>>(),
            "verdict": self.verdict,
        })
    }

    /// race.svg: bits/byte against seconds and against tokens seen.
    fn chart(&self, path: &Path) -> Result<()> {
        let curves = |x: fn(&Point) -> f64| -> Vec<plot::Curve> {
            self.race
                .iter()
                .map(|l| plot::Curve {
                    label: format!("{} (lr {:e})", name(l.model), l.lr),
                    dashed: l.model == ModelArg::Lstm,
                    points: l.curve.iter().map(|p| (x(p), p.bpb)).collect(),
                })
                .collect()
        };
        let mut levels = Vec::new();
        if let Some(u) = self.unigram_bpb {
            levels.push((format!("unigram model ({u:.2})"), u));
        }
        if let Some(h) = self.entropy {
            levels.push((format!("entropy rate, the floor ({h:.2})"), h));
        }
        plot::curve_panels(
            path,
            &format!(
                "GPT and LSTM ({}) on {}, {:.0} s each on {} threads",
                self.preset, self.data, self.budget, self.threads
            ),
            &[
                ("seconds".to_string(), curves(|p| p.seconds)),
                ("tokens seen".to_string(), curves(|p| p.tokens as f64)),
            ],
            "held-out bits/byte",
            &levels,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(model: ModelArg, lr: f32, points: &[(f64, f64)]) -> Leg {
        Leg {
            model,
            lr,
            budget: 100.0,
            curve: points
                .iter()
                .map(|&(seconds, bpb)| Point {
                    seconds,
                    tokens: (seconds * 1000.0) as u64,
                    bpb,
                })
                .collect(),
            steps: 10,
            nats_per_bit: Some(std::f64::consts::LN_2),
            failed: None,
            other_work: Some(0.0),
        }
    }

    #[test]
    fn the_sweep_picks_the_lowest_validation_and_skips_diverged_runs() {
        let mut diverged = leg(ModelArg::Gpt, 3e-2, &[]);
        diverged.failed = Some("diverged".into());
        let legs = [
            leg(ModelArg::Gpt, 1e-3, &[(0.0, 8.0), (20.0, 3.1)]),
            leg(ModelArg::Gpt, 3e-3, &[(0.0, 8.0), (20.0, 2.9)]),
            leg(ModelArg::Gpt, 1e-2, &[(0.0, 8.0), (20.0, 3.4)]),
            diverged,
        ];
        assert_eq!(best_lr(&legs), Some(3e-3));
        assert_eq!(best_lr(&legs[3..]), None);
    }

    #[test]
    fn standings_interpolate_and_the_verdict_names_the_leader() {
        let gpt = leg(
            ModelArg::Gpt,
            1e-3,
            &[(0.0, 8.0), (50.0, 4.0), (100.0, 3.0)],
        );
        let lstm = leg(
            ModelArg::Lstm,
            1e-3,
            &[(0.0, 8.0), (40.0, 5.0), (99.0, 3.5)],
        );
        assert_eq!(bpb_at(&gpt.curve, 25.0), Some(6.0));
        assert_eq!(bpb_at(&gpt.curve, 0.0), Some(8.0));
        assert_eq!(bpb_at(&gpt.curve, 101.0), None);
        let s = standings(&gpt, &lstm, 100.0);
        assert_eq!(s[0].gpt, Some(6.0));
        assert!((s[0].lstm.unwrap() - 6.125).abs() < 1e-12);
        assert_eq!((s[2].gpt, s[2].lstm), (Some(3.0), Some(3.5)));
        assert_eq!(
            verdict_line(&s),
            "verdict: at 25% (25 s) GPT ahead by 0.125 bits/byte; at 50% (50 s) GPT ahead by \
             0.746 bits/byte; at 100% (100 s) GPT ahead by 0.500 bits/byte"
        );
    }

    /// A 3-second race of the tiny presets, its legs in `dir/runs`, its report in `dir/out`.
    fn tiny(dir: &Path, out: &str) -> Args {
        Args {
            shards: None,
            preset: "tiny".into(),
            time: Duration::from_secs(3),
            gpt_lrs: vec![1e-3, 3e-3, 1e-2],
            lstm_lrs: vec![3e-3, 1e-2, 3e-2],
            sweep_share: 0.3,
            evals: 4,
            eval_batches: 2,
            batch: 4,
            seed: 7,
            out: dir.join(out),
            runs: dir.join("runs"),
            precision: PrecisionArg::default(),
        }
    }

    /// The whole race on the tiny presets with a few seconds of budget: each model's sweep
    /// tries its learning rates, the race runs the one the sweep chose, both race legs get
    /// the same budget, and the report ends with the verdict.
    #[test]
    fn a_tiny_race_is_fair_by_construction() {
        let dir = tempfile::tempdir().unwrap();
        run(tiny(dir.path(), "race")).unwrap();
        let text = std::fs::read_to_string(dir.path().join("race/race.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let race = v["race"].as_array().unwrap();
        assert_eq!(race.len(), 2);
        assert_eq!(race[0]["budget_s"], race[1]["budget_s"]);
        assert_eq!(race[0]["budget_s"].as_f64(), Some(3.0));
        let sweep = v["sweep"].as_array().unwrap();
        assert_eq!(sweep.len(), 6);
        for r in race {
            let model = r["model"].as_str().unwrap();
            let mine: Vec<&serde_json::Value> =
                sweep.iter().filter(|s| s["model"] == model).collect();
            assert_eq!(mine.len(), 3);
            let best = mine
                .iter()
                .filter_map(|s| Some((s["lr"].as_f64()?, s["final_bits_per_byte"].as_f64()?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert_eq!(r["lr"].as_f64(), Some(best.0), "{model}");
            assert!(
                mine.iter()
                    .all(|s| (s["budget_s"].as_f64().unwrap() - 0.9).abs() < 1e-9)
            );
            assert!(r["curve"].as_array().unwrap().len() >= 2, "{model}");
        }
        assert!(v["entropy_bits_per_byte"].as_f64().is_some());
        assert!(v["unigram_bits_per_byte"].as_f64().is_some());
        let md = std::fs::read_to_string(dir.path().join("race/race.md")).unwrap();
        assert!(md.contains("**verdict: at 25% ("), "{md}");
        assert!(md.contains("other CPU work"), "{md}");
        assert!(dir.path().join("race/race.svg").is_file());

        // A second race into the same --runs keeps the first one's legs.
        let e = run(tiny(dir.path(), "race2")).unwrap_err().to_string();
        assert!(
            e.contains("already holds the legs") && e.contains("hint:"),
            "{e}"
        );
        let legs = std::fs::read_dir(dir.path().join("runs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("metrics.jsonl").is_file())
            .count();
        assert_eq!(legs, 8, "6 sweep runs and 2 race legs, all kept");
    }
}
