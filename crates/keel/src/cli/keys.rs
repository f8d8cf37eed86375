//! `keel keys …` and `keel teams …`: virtual keys (shown once, stored as hashes) and the teams
//! they belong to, straight on the store a running `keel serve` reads (it sees a change
//! within a second). The admin API under `/v1/admin/` does the same over HTTP.

use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use keel_store::{BudgetRecord, KeyRecord, TeamRecord};
use keel_teams::admin::{self, KeySpec, TeamSpec};
use serde_json::{Value, json};

use crate::cli::datasets::open_store;
use crate::cli::gateway::format_time;
use crate::table::{self, Cell};

#[derive(Debug, Args)]
pub struct Limits {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute (input + output).
    #[arg(long)]
    tpm: Option<u64>,
    /// Spend limit in US dollars.
    #[arg(long, value_name = "USD")]
    budget: Option<f64>,
    /// The budget's period: day, week, month (calendar, UTC) or total.
    #[arg(long, value_name = "PERIOD", requires = "budget")]
    period: Option<String>,
    /// A JSON object kept with it.
    #[arg(long)]
    metadata: Option<String>,
}

fn metadata(text: Option<&str>) -> anyhow::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(t).with_context(|| format!("--metadata `{t}` is not JSON"))).transpose()
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key for TEAM; its secret is printed once and never stored.
    Create {
        #[arg(long)]
        team: String,
        /// A name to tell keys apart.
        #[arg(long, default_value = "")]
        name: String,
        /// The model aliases it may call (repeat or comma-separate); none: all.
        #[arg(long = "model", value_delimiter = ',')]
        models: Vec<String>,
        #[command(flatten)]
        limits: Limits,
        /// What each end user (the request's `user`) may spend through it, in USD.
        #[arg(long, value_name = "USD")]
        user_budget: Option<f64>,
        #[arg(long, value_name = "PERIOD", requires = "user_budget")]
        user_period: Option<String>,
        /// Seconds until it stops working.
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Every key (never a secret): prefix, team, status, models, limits.
    List {
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One key, by id or prefix.
    Show {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a key now, on every replica within a second.
    Revoke {
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a key with a new secret of the same settings; the old one keeps working for
    /// the grace period, then stops.
    Rotate {
        key: String,
        /// Seconds the old key keeps working.
        #[arg(long, default_value_t = 86_400)]
        grace: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// Make a team (or change it: the same name again replaces its settings).
    Create {
        name: String,
        /// The team or org it belongs to; that one's budget and limits apply too.
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        limits: Limits,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a team with no live keys and no teams under it.
    Delete { name: String },
}

fn budget_text(budget: &Option<BudgetRecord>) -> String {
    budget.as_ref().map_or("—".into(), |b| format!("${} / {}", b.usd, b.period))
}

fn limit_text(limit: Option<u64>) -> String {
    limit.map_or("—".into(), |v| v.to_string())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn key_rows(keys: &[KeyRecord], now: i64) -> String {
    let rows: Vec<Vec<Cell>> = keys
        .iter()
        .map(|k| {
            let status = admin::key_status(k, now);
            let color = if status == "active" { table::GREEN } else { table::DIM };
            vec![
                Cell::new(&k.id),
                Cell::new(format!("{}…", k.prefix)),
                Cell::new(&k.name),
                Cell::new(&k.team),
                Cell::new(status).color(color),
                Cell::new(if k.models.is_empty() { "all".to_string() } else { k.models.join(",") }),
                Cell::num(limit_text(k.rpm)),
                Cell::num(limit_text(k.tpm)),
                Cell::new(budget_text(&k.budget)),
                Cell::new(k.expires_ms.map_or("—".into(), format_time)),
            ]
        })
        .collect();
    table::render(&["ID", "KEY", "NAME", "TEAM", "STATUS", "MODELS", "RPM", "TPM", "BUDGET", "EXPIRES"], &rows)
}

fn show_created(secret: &str, record: &KeyRecord, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        return print_json(&admin::created_json(secret, record));
    }
    println!("{what} key {} for team {}:\n\n  {}\n", record.id, record.team, table::paint(secret, table::BOLD));
    println!("{}", table::paint("This is the only time the key is shown; keel keeps only its hash.", table::YELLOW));
    Ok(())
}

pub fn keys(config: Option<&Path>, command: KeysCommand) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    let now = keel_core::now_ms();
    match command {
        KeysCommand::Create { team, name, models, limits, user_budget, user_period, expires_in, json } => {
            let spec = KeySpec {
                team,
                name,
                models,
                rpm: limits.rpm,
                tpm: limits.tpm,
                budget_usd: limits.budget,
                budget_period: limits.period,
                user_budget_usd: user_budget,
                user_budget_period: user_period,
                expires_in_s: expires_in,
                metadata: metadata(limits.metadata.as_deref())?,
            };
            let (secret, record) = admin::create_key(&store, spec)?;
            show_created(&secret, &record, json, "Created")
        }
        KeysCommand::List { team, json } => {
            let keys = store.keys(team.as_deref())?;
            if json {
                return print_json(&Value::Array(keys.iter().map(|k| admin::key_json(k, now)).collect()));
            }
            print!("{}", key_rows(&keys, now));
            Ok(())
        }
        KeysCommand::Show { key, json } => {
            let key = store.key(&key)?;
            if json {
                return print_json(&admin::key_json(&key, now));
            }
            print!("{}", key_rows(std::slice::from_ref(&key), now));
            if let Some(user) = &key.user_budget {
                println!("each end user: ${} / {}", user.usd, user.period);
            }
            if let Some(next) = &key.rotated_to {
                println!("rotated to {next}");
            }
            Ok(())
        }
        KeysCommand::Revoke { key, json } => {
            let key = store.revoke_key(&key)?;
            if json {
                return print_json(&admin::key_json(&key, now));
            }
            println!("Revoked {} ({}…); every replica refuses it within a second.", key.id, key.prefix);
            Ok(())
        }
        KeysCommand::Rotate { key, grace, json } => {
            let (secret, record) = admin::rotate_key(&store, &key, grace)?;
            show_created(&secret, &record, json, "Rotated: new")?;
            if !json {
                println!("The old key keeps working for {grace} s.");
            }
            Ok(())
        }
    }
}

fn team_rows(teams: &[TeamRecord]) -> String {
    let rows: Vec<Vec<Cell>> = teams
        .iter()
        .map(|t| {
            vec![
                Cell::new(&t.id),
                Cell::new(t.parent.clone().unwrap_or_else(|| "—".into())),
                Cell::num(limit_text(t.rpm)),
                Cell::num(limit_text(t.tpm)),
                Cell::new(budget_text(&t.budget)),
                Cell::new(format_time(t.created_ms)),
            ]
        })
        .collect();
    table::render(&["TEAM", "PARENT", "RPM", "TPM", "BUDGET", "CREATED"], &rows)
}

pub fn teams(config: Option<&Path>, command: TeamsCommand) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    match command {
        TeamsCommand::Create { name, parent, limits, json } => {
            let spec = TeamSpec {
                name,
                parent,
                budget_usd: limits.budget,
                budget_period: limits.period,
                rpm: limits.rpm,
                tpm: limits.tpm,
                metadata: metadata(limits.metadata.as_deref())?,
            };
            let team = admin::put_team(&store, spec)?;
            if json {
                return print_json(&admin::team_json(&team));
            }
            print!("{}", team_rows(std::slice::from_ref(&team)));
            Ok(())
        }
        TeamsCommand::List { json } => {
            let teams = store.teams()?;
            if json {
                return print_json(&Value::Array(teams.iter().map(admin::team_json).collect()));
            }
            print!("{}", team_rows(&teams));
            Ok(())
        }
        TeamsCommand::Show { name, json } => {
            let team = store.team(&name)?;
            let keys = store.keys(Some(&team.id))?;
            if json {
                let now = keel_core::now_ms();
                let mut body = admin::team_json(&team);
                body["keys"] = json!(keys.iter().map(|k| admin::key_json(k, now)).collect::<Vec<_>>());
                return print_json(&body);
            }
            print!("{}", team_rows(std::slice::from_ref(&team)));
            if !keys.is_empty() {
                print!("\n{}", key_rows(&keys, keel_core::now_ms()));
            }
            Ok(())
        }
        TeamsCommand::Delete { name } => {
            store.delete_team(&name)?;
            println!("Deleted team {name}.");
            Ok(())
        }
    }
}

/// `keel spend`: what calls cost, summed by key, team, model or day, from the traces.
pub fn spend(config: Option<&Path>, by: &str, days: u32, json: bool) -> anyhow::Result<()> {
    let (_, store) = open_store(config)?;
    let since = keel_core::now_ms() - i64::from(days) * 86_400_000;
    let lines = store.spend(by, since)?;
    if json {
        return print_json(&json!({"by": by, "days": days, "data": lines}));
    }
    let total: f64 = lines.iter().map(|l| l.usd).sum();
    let rows: Vec<Vec<Cell>> = lines
        .iter()
        .map(|l| {
            vec![
                Cell::new(&l.group),
                Cell::num(l.requests.to_string()),
                Cell::num(l.input_tokens.to_string()),
                Cell::num(l.output_tokens.to_string()),
                Cell::num(format!("${:.4}", l.usd)).color(table::GREEN),
            ]
        })
        .collect();
    print!("{}", table::render(&[&by.to_uppercase(), "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "USD"], &rows));
    println!("total over the last {days} days: ${total:.4}");
    Ok(())
}
