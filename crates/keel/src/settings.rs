//! Finding and loading the config, and where keel keeps its data.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keel_core::config::{Config, ConfigError};

/// A loaded config and the file it came from (none: the built-in defaults).
pub struct Settings {
    pub config: Config,
    pub path: Option<PathBuf>,
}

/// The config file to read: `--config`, else `$KEEL_CONFIG`, else `./keel.toml` if present.
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("KEEL_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = PathBuf::from("keel.toml");
    local.exists().then_some(local)
}

/// Renders a config error with the offending line and a caret under the column.
pub fn describe_error(path: &Path, src: &str, err: &ConfigError) -> String {
    let mut out = format!("{}: {err}", path.display());
    if let (Some(line), Some(column)) = (err.line, err.column)
        && let Some(text) = src.lines().nth(line - 1) {
            out.push_str(&format!("\n  {line:>4} | {text}\n       | {}^", " ".repeat(column.saturating_sub(1))));
        }
    out
}

pub fn load(flag: Option<&Path>) -> anyhow::Result<Settings> {
    let Some(path) = config_path(flag) else {
        return Ok(Settings { config: crate::local::default_config(), path: None });
    };
    let src = std::fs::read_to_string(&path).with_context(|| format!("could not read config {}", path.display()))?;
    match Config::from_toml_str(&src) {
        Ok(config) => Ok(Settings { config, path: Some(path) }),
        Err(err) => bail!("{}", describe_error(&path, &src, &err)),
    }
}

/// keel's data folder: `$KEEL_HOME`, else `$XDG_DATA_HOME/keel`, else `~/.local/share/keel`.
pub fn data_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("KEEL_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(xdg).join("keel");
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/keel"),
        None => PathBuf::from(".keel"),
    }
}

impl Settings {
    /// The SQLite file: `store.path` (relative to the config file), else the data folder's.
    pub fn store_path(&self) -> PathBuf {
        match &self.config.store.path {
            Some(path) if path.is_absolute() => path.clone(),
            Some(path) => match self.path.as_deref().and_then(Path::parent) {
                Some(dir) => dir.join(path),
                None => path.clone(),
            },
            None => data_dir().join("keel.db"),
        }
    }

    /// The agents folder: `agents.dir` (relative to the config file), if set.
    pub fn agents_dir(&self) -> Option<PathBuf> {
        let dir = self.config.agents.dir.as_ref()?;
        Some(match self.path.as_deref().and_then(Path::parent) {
            Some(base) if dir.is_relative() => base.join(dir),
            _ => dir.clone(),
        })
    }

    pub fn env(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// What trace bodies go through before they are stored: keel-guard's PII redaction when
/// `[store] redact_pii` is on.
pub fn redactor(config: &keel_core::config::Config) -> Option<keel_store::Redactor> {
    config.store.redact_pii.then_some(keel_guard::pii::redact as keel_store::Redactor)
}
