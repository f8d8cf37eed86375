//! `keel guard detect`, `keel guard detector train` and `keel guard detector eval`: the
//! prompt-injection detector on a text, trained on labelled prompts, and measured.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use keel_guard::detect::{self, Detector};

use crate::table::{self, Cell};

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    /// The text to score; `-` (or nothing) reads standard input.
    text: Option<String>,
    /// A model written by `keel guard detector train` instead of the one keel ships.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum DetectorCommand {
    /// Train the classifier on labelled prompts: four fifths of them (a fixed split by a
    /// hash of each text); the held-out fifth sets the threshold at 1% false positives.
    /// Example: keel guard detector train --data ../shared/data/llm-warden/train.csv --out injection.model
    Train(TrainArgs),
    /// Precision and recall at the model's threshold and at a 1% false-positive rate, for the
    /// rules, the classifier and both, plus latency per 2 KB; on CSV (prompt,type) or JSON
    /// lines ({"text", "label"}) files.
    Eval(EvalArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Labelled prompts: CSV with `prompt`/`text` and `type`/`label` columns, or JSON lines.
    #[arg(long)]
    data: PathBuf,
    /// Where to write the model (keel ships crates/keel-guard/data/injection.model).
    #[arg(long, default_value = "injection.model")]
    out: PathBuf,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Labelled files to measure on, each reported on its own.
    #[arg(long = "data", required = true)]
    data: Vec<PathBuf>,
    /// Which rows: `validation` (the fifth `train` held out) or `all` (a separate test file).
    #[arg(long, default_value = "all")]
    split: String,
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn load(model: &Option<PathBuf>) -> anyhow::Result<Detector> {
    match model {
        None => Ok(Detector::builtin().clone()),
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
            Detector::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
    }
}

/// `keel guard detect [TEXT]`.
pub fn detect(args: DetectArgs) -> anyhow::Result<()> {
    let text = match args.text.as_deref() {
        None | Some("-") => std::io::read_to_string(std::io::stdin()).context("could not read standard input")?,
        Some(text) => text.to_string(),
    };
    let detector = load(&args.model)?;
    let found = detector.scan(&text);
    if args.json {
        println!("{}", serde_json::json!({"score": found.score, "flagged": found.flagged, "rule": found.rule, "threshold": detector.threshold}));
        return Ok(());
    }
    let verdict = if found.flagged { table::paint("injection", table::RED) } else { table::paint("no injection found", table::GREEN) };
    let why = found.rule.map_or_else(|| "classifier".to_string(), |r| format!("rule {r}"));
    println!("{verdict}  score {:.3} (threshold {:.3}, {why})", found.score, detector.threshold);
    Ok(())
}

/// `keel guard detector train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let examples = detect::read_labelled(&args.data).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let trained = detect::train_split(examples, args.epochs).map_err(|e| anyhow::anyhow!("{}: {e}", args.data.display()))?;
    let detect::Trained { model, training, validation, precision, recall } = trained;
    std::fs::write(&args.out, model.to_bytes()).with_context(|| format!("could not write {}", args.out.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"train": training, "validation": validation, "threshold": model.threshold,
                "precision": precision, "recall": recall, "seconds": started.elapsed().as_secs_f64(), "out": args.out})
        );
    } else {
        println!(
            "trained on {} prompts in {:.1} s; threshold {:.4} (1% false positives on the {} held out): precision {:.3}, recall {:.3}; wrote {}",
            training,
            started.elapsed().as_secs_f64(),
            model.threshold,
            validation,
            precision,
            recall,
            args.out.display()
        );
    }
    Ok(())
}

/// `keel guard detector eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let detector = load(&args.model)?;
    let validation_only = match args.split.as_str() {
        "validation" => true,
        "all" => false,
        other => bail!("--split is `validation` or `all`, not `{other}`"),
    };
    let mut reports = Vec::new();
    for file in &args.data {
        let rows: Vec<(String, bool)> =
            detect::read_labelled(file).map_err(anyhow::Error::msg)?.into_iter().filter(|(t, _)| !validation_only || detect::is_validation(t)).collect();
        if rows.is_empty() {
            bail!("{}: no rows to measure", file.display());
        }
        reports.push(detect::measure(&detector, &file.display().to_string(), &rows));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    for report in &reports {
        println!(
            "{}: {} benign, {} injections; threshold {:.4}; {:.0} µs p50, {:.0} µs p99 per 2 KB (one core)",
            report.file, report.benign, report.injections, detector.threshold, report.p50_us_per_2kb, report.p99_us_per_2kb
        );
        let rows: Vec<Vec<Cell>> = report
            .parts
            .iter()
            .map(|p| {
                vec![
                    Cell::new(p.part),
                    Cell::num(format!("{:.3}", p.precision)),
                    Cell::num(format!("{:.3}", p.recall)),
                    Cell::num(format!("{:.3}", p.false_positive_rate)),
                    Cell::num(format!("{:.3}", p.precision_at_1pct_fpr)),
                    Cell::num(format!("{:.3}", p.recall_at_1pct_fpr)),
                ]
            })
            .collect();
        print!("{}", table::render(&["PART", "PRECISION", "RECALL", "FPR", "P @1% FPR", "R @1% FPR"], &rows));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct NamesTrainArgs {
    /// Sentences with labelled PII spans (Presidio's synthetic data set format); their PERSON
    /// spans are the names.
    #[arg(long, default_value = "../shared/data/presidio-synth/dev.json")]
    data: PathBuf,
    /// Where to write the model (keel ships crates/keel-guard/data/names.model).
    #[arg(long, default_value = "names.model")]
    out: PathBuf,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    #[arg(long)]
    json: bool,
}

/// `keel guard names train`: the name tagger on four fifths of the sentences (the split by a
/// hash of each text, as for the detector); the held-out fifth sets the threshold for the
/// best F2 and is measured.
pub fn names_train(args: NamesTrainArgs) -> anyhow::Result<()> {
    use keel_guard::names;
    let sentences = names::read_spans(&args.data, "PERSON").map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let names::Trained { model, training, validation, precision, recall, f2 } =
        names::train_split(sentences, args.epochs).map_err(|e| anyhow::anyhow!("{}: {e}", args.data.display()))?;
    std::fs::write(&args.out, model.to_bytes()).with_context(|| format!("could not write {}", args.out.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"train": training, "validation": validation, "threshold": model.threshold,
                "precision": precision, "recall": recall, "f2": f2, "seconds": started.elapsed().as_secs_f64(), "out": args.out})
        );
    } else {
        println!(
            "trained on {} sentences in {:.1} s; threshold {:.2} (best F2 on the {} held out): names precision {:.3}, recall {:.3}, F2 {:.3}; wrote {}",
            training,
            started.elapsed().as_secs_f64(),
            model.threshold,
            validation,
            precision,
            recall,
            f2,
            args.out.display()
        );
    }
    Ok(())
}
