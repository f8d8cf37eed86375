//! The keys and teams a replica holds in memory: a snapshot looked up by the hash of the
//! presented secret (one SHA-256, one hash-map probe, no store read on the request path),
//! swapped whole when the store's access generation moves. `keel serve` calls
//! [`Directory::refresh`] every 250 ms, so a revocation reaches every replica within a second.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keel_store::{KeyRecord, Store, TeamRecord};

use crate::key::{SECRET_PREFIX, hash_secret};
use crate::ledger::{Ask, BudgetScope, Ledger, Plan, Refusal, Reservation};
use crate::Result;

/// Who a request comes from: its key and the teams it answers to, its own first, then each
/// parent up to the org.
#[derive(Debug)]
pub struct Caller {
    pub key: KeyRecord,
    pub teams: Vec<Arc<TeamRecord>>,
    /// Its rate limits and budgets, named once here rather than on every request.
    pub(crate) plan: Plan,
}

impl Caller {
    pub fn new(key: KeyRecord, teams: Vec<Arc<TeamRecord>>) -> Caller {
        let plan = Plan::new(&key, &teams);
        Caller { key, teams, plan }
    }

    /// Whether the key may call this model alias (no list: every alias).
    pub fn may_use(&self, alias: &str) -> bool {
        self.key.models.is_empty() || self.key.models.iter().any(|m| m == alias)
    }
}

/// Why a presented key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unknown,
    Revoked { prefix: String },
    Expired { prefix: String },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Unknown => write!(f, "the API key is not valid for this keel server"),
            Denied::Revoked { prefix } => write!(f, "the API key {prefix}… has been revoked"),
            Denied::Expired { prefix } => write!(f, "the API key {prefix}… has expired"),
        }
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    generation: i64,
    by_hash: HashMap<String, Arc<Caller>>,
}

#[derive(Debug)]
pub struct Directory {
    store: Arc<Store>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// The rate limits and budgets of this replica's calls.
    pub ledger: Ledger,
}

impl Directory {
    /// Loads every key and team from `store`.
    pub fn open(store: Arc<Store>) -> Result<Directory> {
        let directory =
            Directory { store, snapshot: RwLock::new(Arc::new(Snapshot { generation: -1, ..Snapshot::default() })), ledger: Ledger::default() };
        directory.refresh()?;
        Ok(directory)
    }

    /// Reloads when the store's keys or teams changed since the last load; whether it did.
    pub fn refresh(&self) -> Result<bool> {
        let generation = self.store.access_generation()?;
        if generation == self.current().generation {
            return Ok(false);
        }
        let teams: HashMap<String, Arc<TeamRecord>> = self.store.teams()?.into_iter().map(|t| (t.id.clone(), Arc::new(t))).collect();
        let mut by_hash = HashMap::new();
        for key in self.store.keys(None)? {
            let mut chain = Vec::new();
            let mut at = teams.get(&key.team);
            while let Some(team) = at {
                if chain.iter().any(|t: &Arc<TeamRecord>| t.id == team.id) {
                    break;
                }
                chain.push(team.clone());
                at = team.parent.as_ref().and_then(|p| teams.get(p));
            }
            by_hash.insert(key.hash.clone(), Arc::new(Caller::new(key, chain)));
        }
        *self.snapshot.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(Snapshot { generation, by_hash });
        Ok(true)
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Reserves `ask` against every limit and budget of `caller` (see [`Ledger::reserve`]),
    /// reading a budget's spend so far from the store's traces when first needed.
    pub fn reserve(&self, caller: &Caller, user: Option<&str>, ask: Ask) -> Result<Reservation, Refusal> {
        let spent = |scope: &BudgetScope, since: i64| {
            let read = match scope {
                BudgetScope::Key(id) => self.store.spend_since(Some(id), None, None, since),
                BudgetScope::Team(id) => self.store.spend_since(None, Some(id), None, since),
                BudgetScope::User { key, user } => self.store.spend_since(Some(key), None, Some(user), since),
            };
            read.map_err(|e| e.to_string())
        };
        self.ledger.reserve(caller, user, ask, keel_core::now_ms(), &spent)
    }

    /// Whether any key exists (revoked ones included): then every request needs a key.
    pub fn has_keys(&self) -> bool {
        !self.current().by_hash.is_empty()
    }

    /// The caller a presented secret belongs to, if it is live at `now_ms`.
    pub fn authenticate(&self, secret: &str, now_ms: i64) -> Result<Arc<Caller>, Denied> {
        if !secret.starts_with(SECRET_PREFIX) {
            return Err(Denied::Unknown);
        }
        let caller = self.current().by_hash.get(&hash_secret(secret)).cloned().ok_or(Denied::Unknown)?;
        let prefix = || caller.key.prefix.clone();
        if caller.key.revoked_ms.is_some() {
            return Err(Denied::Revoked { prefix: prefix() });
        }
        if caller.key.expires_ms.is_some_and(|at| at <= now_ms) {
            return Err(Denied::Expired { prefix: prefix() });
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::new_key;

    fn store() -> Arc<Store> {
        let dir = std::env::temp_dir().join(format!("keel-teams-directory-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(Store::open(&dir.join("keel.db")).unwrap())
    }

    fn team(id: &str, parent: Option<&str>) -> TeamRecord {
        TeamRecord { id: id.into(), parent: parent.map(Into::into), budget: None, rpm: None, tpm: None, metadata: "{}".into(), created_ms: 0 }
    }

    #[test]
    fn keys_authenticate_until_revoked_or_expired_and_carry_their_team_chain() {
        let store = store();
        store.put_team(&team("acme", None)).unwrap();
        store.put_team(&team("support", Some("acme"))).unwrap();
        // A team cannot sit under one of its own descendants.
        assert!(store.put_team(&team("acme", Some("support"))).is_err());
        let made = new_key().unwrap();
        let record = KeyRecord {
            id: made.id.clone(),
            name: "bot".into(),
            prefix: made.prefix.clone(),
            hash: made.hash.clone(),
            team: "support".into(),
            models: vec!["fast".into()],
            metadata: "{}".into(),
            ..KeyRecord::default()
        };
        store.insert_key(&record).unwrap();
        let directory = Directory::open(store.clone()).unwrap();
        assert!(directory.has_keys());
        let caller = directory.authenticate(&made.secret, 1).unwrap();
        assert_eq!(caller.teams.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["support", "acme"]);
        assert!(caller.may_use("fast") && !caller.may_use("smart"));
        assert_eq!(directory.authenticate("sk-keel-nope", 1).unwrap_err(), Denied::Unknown);
        assert_eq!(directory.authenticate(&made.secret[..made.secret.len() - 1], 1).unwrap_err(), Denied::Unknown);

        // Nothing changes until the generation moves; then the revocation is seen.
        assert!(!directory.refresh().unwrap());
        store.revoke_key(&made.prefix).unwrap();
        assert!(directory.authenticate(&made.secret, 1).is_ok());
        assert!(directory.refresh().unwrap());
        assert_eq!(directory.authenticate(&made.secret, 1).unwrap_err(), Denied::Revoked { prefix: made.prefix.clone() });

        // A rotated key keeps working through its grace period, then expires.
        let next = new_key().unwrap();
        let fresh = KeyRecord { id: next.id.clone(), prefix: next.prefix.clone(), hash: next.hash.clone(), ..record.clone() };
        let second = new_key().unwrap();
        let old = KeyRecord { id: second.id.clone(), prefix: second.prefix.clone(), hash: second.hash.clone(), ..record };
        store.insert_key(&old).unwrap();
        store.rotate_key(&old.id, &fresh, 1_000).unwrap();
        directory.refresh().unwrap();
        assert!(directory.authenticate(&second.secret, 999).is_ok());
        assert_eq!(directory.authenticate(&second.secret, 1_000).unwrap_err(), Denied::Expired { prefix: second.prefix.clone() });
        assert!(directory.authenticate(&next.secret, 5_000).is_ok());
        assert_eq!(store.key(&old.id).unwrap().rotated_to.as_deref(), Some(next.id.as_str()));
    }
}
