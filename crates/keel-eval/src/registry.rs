//! The prompt registry as callers use it: a name and a version, a label, or neither
//! (`production`, or the prompt's A/B split when it has one), resolved through an
//! in-process cache. Versions never change, so they stay cached; labels and splits are
//! re-read once they are older than the cache's time to live. When the store cannot be
//! read, the last good copy is served and [`Registry::health`] says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_store::{LATEST, PromptVersion, Selector, Store};

use crate::prompt::PromptDef;
use crate::{Error, Result};

/// The label callers get when they name neither a version nor a label.
pub const PRODUCTION: &str = "production";

/// A prompt version ready to render, and how it was chosen.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub version: u32,
    /// The labels pointing at this version when it was read.
    pub labels: Vec<String>,
    /// The split's arm (a label) when the version was chosen by an A/B split.
    pub arm: Option<String>,
    pub message: String,
    pub created_ms: i64,
    pub def: PromptDef,
}

/// What a caller asks the registry for.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    pub name: &'a str,
    pub version: Option<u32>,
    pub label: Option<&'a str>,
    /// What keeps one user on one arm of a split: the request's `user`, a session id, or
    /// (with neither) anything unique to the request.
    pub sticky: Option<&'a str>,
}

struct Entry<T> {
    read: Instant,
    value: T,
}

/// A split's arms: (label, weight).
type Arms = Vec<(String, u32)>;
/// What was read for a (name, version or label), `None` where nothing was there.
type Versions = HashMap<(String, Key), Entry<Option<Arc<Resolved>>>>;

pub struct Registry {
    store: Arc<Store>,
    ttl: Duration,
    versions: Mutex<Versions>,
    splits: Mutex<HashMap<String, Entry<Option<Arms>>>>,
    /// Why the last read failed, while cached copies are being served instead.
    failing: Mutex<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Version(u32),
    Label(String),
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(store: Arc<Store>, ttl: Duration) -> Registry {
        Registry { store, ttl, versions: Mutex::default(), splits: Mutex::default(), failing: Mutex::default() }
    }

    /// `None` while the registry reads fine; else why it is serving cached copies.
    pub fn health(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets cached labels and splits of `name` (after this process moved one).
    pub fn invalidate(&self, name: &str) {
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, key), _| n != name || matches!(key, Key::Version(_)));
        self.splits.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// The version `ask` names. An unknown prompt, version or label is [`Error::NotFound`]
    /// with a message naming it; there is no fallback to another version.
    pub fn resolve(&self, ask: &Ask<'_>) -> Result<Arc<Resolved>> {
        let (key, arm) = match (ask.version, ask.label) {
            (Some(version), _) => (Key::Version(version), None),
            (None, Some(label)) => (Key::Label(label.to_string()), None),
            (None, None) => match self.split(ask.name)? {
                Some(arms) => {
                    let arm = choose_arm(ask.name, ask.sticky.unwrap_or_default(), &arms);
                    (Key::Label(arm.clone()), Some(arm))
                }
                None => (Key::Label(PRODUCTION.to_string()), None),
            },
        };
        let found = self.cached(ask.name, &key)?;
        let Some(found) = found else { return Err(self.not_found(ask.name, &key)) };
        Ok(match arm {
            Some(arm) => Arc::new(Resolved { arm: Some(arm), ..(*found).clone() }),
            None => found,
        })
    }

    fn cached(&self, name: &str, key: &Key) -> Result<Option<Arc<Resolved>>> {
        let cache_key = (name.to_string(), key.clone());
        let stale = {
            let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            match versions.get(&cache_key) {
                // A version's text never changes; only a found one is kept for good.
                Some(entry) if matches!(key, Key::Version(_)) && entry.value.is_some() => return Ok(entry.value.clone()),
                Some(entry) if entry.read.elapsed() < self.ttl => return Ok(entry.value.clone()),
                Some(entry) => Some(entry.value.clone()),
                None => None,
            }
        };
        let selector = match key {
            Key::Version(version) => Selector::Version(*version),
            Key::Label(label) => Selector::Label(label.clone()),
        };
        match self.store.prompt(name, &selector) {
            Ok(found) => {
                self.set_failing(None);
                let value = match found {
                    Some(version) => Some(Arc::new(resolved(version)?)),
                    None => None,
                };
                self.versions.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, Entry { read: Instant::now(), value: value.clone() });
                Ok(value)
            }
            Err(err) => {
                self.set_failing(Some(format!("the prompt registry could not be read ({err}); serving cached prompts")));
                stale.ok_or(Error::Store(err))
            }
        }
    }

    fn split(&self, name: &str) -> Result<Option<Arms>> {
        let stale = {
            let splits = self.splits.lock().unwrap_or_else(|p| p.into_inner());
            match splits.get(name) {
                Some(entry) if entry.read.elapsed() < self.ttl => return Ok(entry.value.clone()),
                Some(entry) => Some(entry.value.clone()),
                None => None,
            }
        };
        match self.store.prompt_split(name) {
            Ok(arms) => {
                self.splits.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Entry { read: Instant::now(), value: arms.clone() });
                Ok(arms)
            }
            Err(err) => {
                self.set_failing(Some(format!("the prompt registry could not be read ({err}); serving cached prompts")));
                stale.ok_or(Error::Store(err))
            }
        }
    }

    fn set_failing(&self, why: Option<String>) {
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn not_found(&self, name: &str, key: &Key) -> Error {
        let labels = self.store.prompt_labels(name).unwrap_or_default();
        let Some((_, latest)) = labels.iter().find(|(label, _)| label == LATEST) else {
            return Error::NotFound(format!("no prompt `{name}`; push one with `keel prompts push {name} FILE`"));
        };
        Error::NotFound(match key {
            Key::Version(version) => format!("prompt `{name}` has no version {version} (its latest is {latest})"),
            Key::Label(label) => {
                let known = labels.iter().map(|(label, version)| format!("{label}={version}")).collect::<Vec<_>>().join(", ");
                format!("prompt `{name}` has no label `{label}` (it has {known}); set it with `keel prompts label {name} VERSION {label}`")
            }
        })
    }
}

fn resolved(version: PromptVersion) -> Result<Resolved> {
    let def = PromptDef::from_json(&version.body)?;
    Ok(Resolved {
        name: version.name,
        version: version.version,
        labels: version.labels,
        arm: None,
        message: version.message,
        created_ms: version.created_ms,
        def,
    })
}

/// The arm of a split that `sticky` lands on: a stable hash (FNV-1a, the same in every
/// process and release) of the prompt's name and the sticky key, over the arms' weights.
pub fn choose_arm(name: &str, sticky: &str, arms: &[(String, u32)]) -> String {
    let total: u64 = arms.iter().map(|(_, weight)| u64::from(*weight)).sum();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes().chain([0]).chain(sticky.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut point = if total == 0 { 0 } else { hash % total };
    for (label, weight) in arms {
        if point < u64::from(*weight) {
            return label.clone();
        }
        point -= u64::from(*weight);
    }
    arms.first().map(|(label, _)| label.clone()).unwrap_or_else(|| PRODUCTION.to_string())
}

/// Reads `label=weight` pairs (`production=90 candidate=10`).
pub fn parse_split(arms: &[String]) -> Result<Vec<(String, u32)>> {
    let parsed = arms
        .iter()
        .map(|arm| {
            let (label, weight) =
                arm.split_once('=').ok_or_else(|| Error::Invalid(format!("`{arm}`: write each arm as LABEL=WEIGHT")))?;
            let weight: u32 = weight.trim().parse().map_err(|_| Error::Invalid(format!("`{arm}`: the weight must be a whole number")))?;
            Ok((label.trim().to_string(), weight))
        })
        .collect::<Result<Vec<_>>>()?;
    if !parsed.is_empty() && parsed.iter().all(|(_, weight)| *weight == 0) {
        return Err(Error::Invalid("a split needs at least one arm with a weight above 0".into()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_is_sticky_and_follows_its_weights() {
        let arms = vec![("production".to_string(), 90), ("candidate".to_string(), 10)];
        let mut candidate = 0;
        for user in 0..10_000 {
            let sticky = format!("user-{user}");
            let arm = choose_arm("support", &sticky, &arms);
            assert_eq!(arm, choose_arm("support", &sticky, &arms), "one user, one arm");
            candidate += usize::from(arm == "candidate");
        }
        assert!((800..1200).contains(&candidate), "about 10% on the candidate: {candidate}");
        assert!(parse_split(&["a=1".into(), "b".into()]).is_err());
        assert!(parse_split(&["a=0".into()]).is_err());
        assert_eq!(parse_split(&["a=3".into(), "b=1".into()]).unwrap(), [("a".to_string(), 3), ("b".to_string(), 1)]);
    }
}
