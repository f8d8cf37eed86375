//! `keel prompts …`: push versions of a prompt, label them, split traffic between labels,
//! look at them, diff two of them and render one with variables.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use keel_eval::{Format, PromptDef, PromptMessage, registry};
use keel_store::{LATEST, PromptVersion, Selector, Store};
use serde_json::{Map, Value, json};

use crate::settings;
use crate::table::{self, Cell};

#[derive(Debug, Subcommand)]
pub enum PromptsCommand {
    /// Store FILE (TOML, YAML or JSON; `-` reads stdin) as the next version of NAME.
    Push {
        name: String,
        file: String,
        /// What changed, kept with the version.
        #[arg(short, long, default_value = "")]
        message: String,
        /// Point these labels at the new version too (e.g. `--label staging`).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every prompt with its latest version and labels.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One version: NAME (its `production` version), NAME@3, or NAME@staging.
    Show {
        prompt: String,
        #[arg(long)]
        json: bool,
    },
    /// Every version of NAME with its message and labels, newest first.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The changes from version (or label) A to B of NAME, template and config.
    Diff { name: String, a: String, b: String },
    /// Point LABEL of NAME at VERSION (`production` is what callers get by default).
    Label {
        name: String,
        #[arg(value_name = "VERSION")]
        number: u32,
        label: String,
    },
    /// Split NAME's default traffic over labels by weight, e.g. `production=90 candidate=10`;
    /// one user (the request's `user`, else `x-keel-session-id`) always gets one arm.
    Split {
        name: String,
        /// LABEL=WEIGHT pairs.
        arms: Vec<String>,
        /// Remove the split: callers get `production` again.
        #[arg(long, conflicts_with = "arms")]
        clear: bool,
    },
    /// The messages NAME[@VERSION|@LABEL] renders to, with `--var key=value` (a value that
    /// parses as JSON is used as JSON: lists for loops and placeholders).
    Render {
        prompt: String,
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: Option<&Path>, command: PromptsCommand) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&settings::load(config)?.store_path())?);
    match command {
        PromptsCommand::Push { name, file, message, labels, json } => push(&store, &name, &file, &message, &labels, json),
        PromptsCommand::List { json } => list(&store, json),
        PromptsCommand::Show { prompt, json } => show(&store, &prompt, json),
        PromptsCommand::History { name, json } => history(&store, &name, json),
        PromptsCommand::Diff { name, a, b } => diff(&store, &name, &a, &b),
        PromptsCommand::Label { name, number, label } => {
            store.set_prompt_label(&name, &label, number)?;
            println!("{name}@{label} → version {number}");
            Ok(())
        }
        PromptsCommand::Split { name, arms, clear } => split(&store, &name, &arms, clear),
        PromptsCommand::Render { prompt, vars, json } => render(&store, &prompt, &vars, json),
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
        bail!("`{name}` is not a prompt name: use letters, digits, `-`, `_`, `.` and `/`");
    }
    Ok(())
}

fn push(store: &Store, name: &str, file: &str, message: &str, labels: &[String], json: bool) -> anyhow::Result<()> {
    check_name(name)?;
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("could not read the prompt from stdin")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("could not read {file}"))?
    };
    let def = PromptDef::parse(&text, Format::from_path(file)).with_context(|| format!("{file} is not a prompt keel can use"))?;
    let version = store.push_prompt(name, &def.to_json(), message)?;
    for label in labels {
        store.set_prompt_label(name, label, version)?;
    }
    if json {
        println!("{}", json!({"name": name, "version": version, "labels": labels, "variables": def.variables()}));
    } else {
        let labels = if labels.is_empty() { String::new() } else { format!(" ({})", labels.join(", ")) };
        println!("{name} version {version}{labels}");
        let variables: Vec<String> = def.variables().into_iter().collect();
        if !variables.is_empty() {
            println!("{}", table::paint(&format!("variables: {}", variables.join(", ")), table::DIM));
        }
    }
    Ok(())
}

fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let prompts = store.list_prompts()?;
    if json {
        let data: Vec<Value> = prompts
            .iter()
            .map(|p| json!({"name": p.name, "latest": p.latest, "versions": p.versions, "updated_ms": p.updated_ms, "labels": labels_object(&p.labels)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    if prompts.is_empty() {
        println!("no prompts yet; push one with: keel prompts push NAME FILE");
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = prompts
        .iter()
        .map(|p| {
            let labels = p.labels.iter().filter(|(l, _)| l != LATEST).map(|(l, v)| format!("{l}={v}")).collect::<Vec<_>>().join(" ");
            vec![
                Cell::new(&p.name),
                Cell::num(p.latest.to_string()),
                Cell::num(p.versions.to_string()),
                Cell::new(labels).color(table::GREEN),
                Cell::new(crate::cli::gateway::format_time(p.updated_ms)).color(table::DIM),
            ]
        })
        .collect();
    print!("{}", table::render(&["NAME", "LATEST", "VERSIONS", "LABELS", "UPDATED"], &rows));
    Ok(())
}

fn labels_object(labels: &[(String, u32)]) -> Value {
    Value::Object(labels.iter().map(|(label, version)| (label.clone(), json!(version))).collect())
}

/// `NAME`, `NAME@3` or `NAME@label`.
fn parse_ref(text: &str) -> (String, Option<Selector>) {
    match text.split_once('@') {
        Some((name, selector)) => {
            let selector = match selector.parse::<u32>() {
                Ok(version) => Selector::Version(version),
                Err(_) => Selector::Label(selector.to_string()),
            };
            (name.to_string(), Some(selector))
        }
        None => (text.to_string(), None),
    }
}

/// The version a reference names; with no selector, `production` (else `latest`, saying so).
fn lookup(store: &Arc<Store>, text: &str) -> anyhow::Result<PromptVersion> {
    let (name, selector) = parse_ref(text);
    let registry = keel_eval::Registry::new(store.clone(), std::time::Duration::ZERO);
    let (version, label) = match &selector {
        Some(Selector::Version(version)) => (Some(*version), None),
        Some(Selector::Label(label)) => (None, Some(label.as_str())),
        None => (None, Some(keel_eval::PRODUCTION)),
    };
    let resolved = match registry.resolve(&keel_eval::Ask { name: &name, version, label, sticky: None }) {
        Ok(resolved) => resolved,
        Err(keel_eval::Error::NotFound(_)) if selector.is_none() && store.prompt(&name, &Selector::Label(LATEST.into()))?.is_some() => {
            eprintln!("{}", table::paint(&format!("{name} has no production label yet; showing its latest version"), table::YELLOW));
            return store.prompt(&name, &Selector::Label(LATEST.into()))?.context("the prompt vanished");
        }
        Err(err) => return Err(err.into()),
    };
    store.prompt(&name, &Selector::Version(resolved.version))?.context("the prompt vanished")
}

fn show(store: &Arc<Store>, text: &str, json: bool) -> anyhow::Result<()> {
    let version = lookup(store, text)?;
    let def = PromptDef::from_json(&version.body)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": version.name, "version": version.version, "labels": version.labels, "message": version.message,
                "created_ms": version.created_ms, "definition": serde_json::to_value(&def)?, "variables": def.variables(),
            }))?
        );
        return Ok(());
    }
    let labels = if version.labels.is_empty() { String::new() } else { format!(" [{}]", version.labels.join(", ")) };
    println!("{}", table::paint(&format!("{} version {}{labels}", version.name, version.version), table::BOLD));
    if !version.message.is_empty() {
        println!("{}", table::paint(&version.message, table::DIM));
    }
    print!("{}", pretty(&def));
    Ok(())
}

/// A definition as readable lines: each message under its role, then the config.
fn pretty(def: &PromptDef) -> String {
    let mut out = String::new();
    if let Some(text) = &def.text {
        out.push_str("── text\n");
        out.push_str(text);
        out.push('\n');
    }
    for message in &def.messages {
        match message {
            PromptMessage::Message { role, content } => {
                out.push_str(&format!("── {role}\n{content}\n"));
            }
            PromptMessage::Placeholder { placeholder } => out.push_str(&format!("── {{{{ messages from `{placeholder}` }}}}\n")),
        }
    }
    let config = serde_json::to_value(&def.config).unwrap_or_default();
    if config.as_object().is_some_and(|c| !c.is_empty()) {
        out.push_str("── config\n");
        for (key, value) in config.as_object().into_iter().flatten() {
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    out
}

fn history(store: &Store, name: &str, json: bool) -> anyhow::Result<()> {
    let versions = store.prompt_versions(name)?;
    if versions.is_empty() {
        bail!("no prompt `{name}`; push one with `keel prompts push {name} FILE`");
    }
    if json {
        let data: Vec<Value> = versions
            .iter()
            .map(|v| json!({"version": v.version, "labels": v.labels, "message": v.message, "created_ms": v.created_ms}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let rows: Vec<Vec<Cell>> = versions
        .iter()
        .map(|v| {
            vec![
                Cell::num(v.version.to_string()),
                Cell::new(v.labels.join(" ")).color(table::GREEN),
                Cell::new(crate::cli::gateway::format_time(v.created_ms)).color(table::DIM),
                Cell::new(&v.message),
            ]
        })
        .collect();
    print!("{}", table::render(&["VERSION", "LABELS", "CREATED", "MESSAGE"], &rows));
    Ok(())
}

fn diff(store: &Arc<Store>, name: &str, a: &str, b: &str) -> anyhow::Result<()> {
    let old = lookup(store, &format!("{name}@{a}"))?;
    let new = lookup(store, &format!("{name}@{b}"))?;
    let (old_text, new_text) = (pretty(&PromptDef::from_json(&old.body)?), pretty(&PromptDef::from_json(&new.body)?));
    println!("{}", table::paint(&format!("--- {name} version {}", old.version), table::RED));
    println!("{}", table::paint(&format!("+++ {name} version {}", new.version), table::GREEN));
    let old_lines: Vec<&str> = old_text.lines().collect();
    let new_lines: Vec<&str> = new_text.lines().collect();
    for (sign, line) in line_diff(&old_lines, &new_lines) {
        match sign {
            '-' => println!("{}", table::paint(&format!("-{line}"), table::RED)),
            '+' => println!("{}", table::paint(&format!("+{line}"), table::GREEN)),
            _ => println!(" {line}"),
        }
    }
    Ok(())
}

/// A line diff by longest common subsequence: (' ', '-' or '+', line) in order.
fn line_diff<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (old.len(), new.len());
    let mut common = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if old[i] == new[j] { common[i + 1][j + 1] + 1 } else { common[i + 1][j].max(common[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            out.push((' ', old[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < n && (j == m || common[i + 1][j] >= common[i][j + 1]) {
            out.push(('-', old[i]));
            i += 1;
        } else {
            out.push(('+', new[j]));
            j += 1;
        }
    }
    out
}

fn split(store: &Store, name: &str, arms: &[String], clear: bool) -> anyhow::Result<()> {
    if store.prompt(name, &Selector::Label(LATEST.into()))?.is_none() {
        bail!("no prompt `{name}`; push one with `keel prompts push {name} FILE`");
    }
    if clear {
        store.set_prompt_split(name, &[])?;
        println!("{name}: no split; callers get production");
        return Ok(());
    }
    if arms.is_empty() {
        bail!("name the arms as LABEL=WEIGHT, e.g. `keel prompts split {name} production=90 candidate=10`, or pass --clear");
    }
    let parsed = registry::parse_split(arms)?;
    for (label, _) in &parsed {
        if store.prompt(name, &Selector::Label(label.clone()))?.is_none() {
            bail!("prompt `{name}` has no label `{label}`; set it first with `keel prompts label {name} VERSION {label}`");
        }
    }
    store.set_prompt_split(name, &parsed)?;
    let total: u32 = parsed.iter().map(|(_, w)| w).sum();
    let shares: Vec<String> = parsed.iter().map(|(l, w)| format!("{l} {:.0}%", f64::from(*w) * 100.0 / f64::from(total))).collect();
    println!("{name}: {}", shares.join(", "));
    Ok(())
}

fn render(store: &Arc<Store>, text: &str, vars: &[String], json: bool) -> anyhow::Result<()> {
    let version = lookup(store, text)?;
    let def = PromptDef::from_json(&version.body)?;
    let mut values = Map::new();
    for var in vars {
        let Some((key, value)) = var.split_once('=') else { bail!("`{var}`: write variables as --var KEY=VALUE") };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        values.insert(key.to_string(), value);
    }
    let messages = def.render(&values)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": version.name, "version": version.version, "messages": messages, "config": serde_json::to_value(&def.config)?,
            }))?
        );
        return Ok(());
    }
    for message in &messages {
        println!("{}", table::paint(&format!("── {}", message["role"].as_str().unwrap_or("?")), table::BOLD));
        match &message["content"] {
            Value::String(text) => println!("{text}"),
            other => println!("{other}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::line_diff;

    #[test]
    fn a_line_diff_keeps_what_is_common() {
        let diff = line_diff(&["a", "b", "c"], &["a", "x", "c", "d"]);
        assert_eq!(diff, [(' ', "a"), ('-', "b"), ('+', "x"), (' ', "c"), ('+', "d")]);
    }
}
