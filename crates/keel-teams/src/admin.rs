//! Creating and changing teams and keys, for the CLI (`keel keys`, `keel teams`) and the
//! admin API (`/v1/admin/…`) alike: settings are checked here, once.

use keel_store::{BudgetRecord, KeyRecord, Store, TeamRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::period::Period;
use crate::{Error, Result, new_key};

/// A team's settings as a client sends them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    pub name: String,
    pub parent: Option<String>,
    pub budget_usd: Option<f64>,
    pub budget_period: Option<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub metadata: Option<Value>,
}

/// A key's settings as a client sends them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub team: String,
    #[serde(default)]
    pub name: String,
    /// Model aliases the key may call; none: all.
    #[serde(default)]
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub budget_usd: Option<f64>,
    pub budget_period: Option<String>,
    pub user_budget_usd: Option<f64>,
    pub user_budget_period: Option<String>,
    /// Seconds from now until the key stops working.
    pub expires_in_s: Option<u64>,
    pub metadata: Option<Value>,
}

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok { Ok(()) } else { Err(Error::Invalid(format!("{what} `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.`"))) }
}

fn budget(usd: Option<f64>, period: Option<&str>) -> Result<Option<BudgetRecord>> {
    match usd {
        None if period.is_some() => Err(Error::Invalid("a budget period needs a budget amount (budget_usd)".into())),
        None => Ok(None),
        Some(usd) if !usd.is_finite() || usd < 0.0 => Err(Error::Invalid(format!("budget {usd} USD: give a number ≥ 0"))),
        Some(usd) => Ok(Some(BudgetRecord { usd, period: Period::parse(period.unwrap_or("total"))?.as_str().to_string() })),
    }
}

fn metadata(value: Option<Value>) -> Result<String> {
    match value.unwrap_or_else(|| json!({})) {
        Value::Object(map) => Ok(Value::Object(map).to_string()),
        other => Err(Error::Invalid(format!("metadata must be a JSON object, not {other}"))),
    }
}

fn positive(what: &str, value: Option<u64>) -> Result<Option<u64>> {
    match value {
        Some(0) => Err(Error::Invalid(format!("{what} 0 would refuse every request; leave it out for no limit"))),
        other => Ok(other),
    }
}

/// Creates a team or changes the one with this name.
pub fn put_team(store: &Store, spec: TeamSpec) -> Result<TeamRecord> {
    check_name("team", &spec.name)?;
    let created_ms = store.team(&spec.name).map(|t| t.created_ms).unwrap_or_else(|_| keel_core::now_ms());
    let team = TeamRecord {
        id: spec.name,
        parent: spec.parent,
        budget: budget(spec.budget_usd, spec.budget_period.as_deref())?,
        rpm: positive("rpm", spec.rpm)?,
        tpm: positive("tpm", spec.tpm)?,
        metadata: metadata(spec.metadata)?,
        created_ms,
    };
    store.put_team(&team)?;
    Ok(team)
}

fn record(spec: KeySpec, now_ms: i64) -> Result<(String, KeyRecord)> {
    if !spec.name.is_empty() {
        check_name("key name", &spec.name)?;
    }
    let made = new_key()?;
    let record = KeyRecord {
        id: made.id,
        name: spec.name,
        prefix: made.prefix,
        hash: made.hash,
        team: spec.team,
        models: spec.models,
        rpm: positive("rpm", spec.rpm)?,
        tpm: positive("tpm", spec.tpm)?,
        budget: budget(spec.budget_usd, spec.budget_period.as_deref())?,
        user_budget: budget(spec.user_budget_usd, spec.user_budget_period.as_deref())?,
        expires_ms: spec.expires_in_s.map(|s| now_ms + (s as i64).saturating_mul(1000)),
        metadata: metadata(spec.metadata)?,
        created_ms: now_ms,
        revoked_ms: None,
        rotated_to: None,
    };
    Ok((made.secret, record))
}

/// Makes and stores a key; the secret comes back this once.
pub fn create_key(store: &Store, spec: KeySpec) -> Result<(String, KeyRecord)> {
    let (secret, record) = record(spec, keel_core::now_ms())?;
    store.insert_key(&record)?;
    Ok((secret, record))
}

/// Replaces a key with a new one of the same settings; the old one keeps working for
/// `grace_s` seconds. The new secret comes back this once.
pub fn rotate_key(store: &Store, id: &str, grace_s: u64) -> Result<(String, KeyRecord)> {
    let old = store.key(id)?;
    let now = keel_core::now_ms();
    let made = new_key()?;
    let new = KeyRecord { id: made.id, prefix: made.prefix, hash: made.hash, created_ms: now, revoked_ms: None, rotated_to: None, ..old.clone() };
    store.rotate_key(&old.id, &new, now + (grace_s as i64).saturating_mul(1000))?;
    Ok((made.secret, new))
}

fn budget_json(b: &Option<BudgetRecord>) -> Value {
    b.as_ref().map_or(Value::Null, |b| json!({"usd": b.usd, "period": b.period}))
}

/// `active`, `expired` or `revoked` at `now_ms`.
pub fn key_status(key: &KeyRecord, now_ms: i64) -> &'static str {
    if key.revoked_ms.is_some() {
        "revoked"
    } else if key.expires_ms.is_some_and(|at| at <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

/// A key just made or rotated, with its secret: the one answer that ever holds it.
pub fn created_json(secret: &str, key: &KeyRecord) -> Value {
    let mut body = key_json(key, keel_core::now_ms());
    body["key"] = Value::String(secret.to_string());
    body
}

/// A key as the API and `--json` show it: everything but the hash (and never the secret).
pub fn key_json(key: &KeyRecord, now_ms: i64) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "team": key.team,
        "status": key_status(key, now_ms),
        "models": key.models,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "budget": budget_json(&key.budget),
        "user_budget": budget_json(&key.user_budget),
        "expires_ms": key.expires_ms,
        "metadata": serde_json::from_str::<Value>(&key.metadata).unwrap_or(Value::Null),
        "created_ms": key.created_ms,
        "revoked_ms": key.revoked_ms,
        "rotated_to": key.rotated_to,
    })
}

pub fn team_json(team: &TeamRecord) -> Value {
    json!({
        "name": team.id,
        "parent": team.parent,
        "budget": budget_json(&team.budget),
        "rpm": team.rpm,
        "tpm": team.tpm,
        "metadata": serde_json::from_str::<Value>(&team.metadata).unwrap_or(Value::Null),
        "created_ms": team.created_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_with_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("keel-teams-admin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir.join("keel.db")).unwrap();
        let err = |spec: TeamSpec| put_team(&store, spec).unwrap_err().to_string();
        assert!(err(TeamSpec { name: "has space".into(), ..TeamSpec::default() }).contains("team `has space`"));
        assert!(err(TeamSpec { name: "a".into(), budget_usd: Some(-1.0), ..TeamSpec::default() }).contains("≥ 0"));
        assert!(err(TeamSpec { name: "a".into(), budget_usd: Some(1.0), budget_period: Some("year".into()), ..TeamSpec::default() })
            .contains("unknown budget period `year`"));
        assert!(err(TeamSpec { name: "a".into(), rpm: Some(0), ..TeamSpec::default() }).contains("rpm 0"));
        assert!(err(TeamSpec { name: "a".into(), metadata: Some(json!([1])), ..TeamSpec::default() }).contains("JSON object"));
        assert!(err(TeamSpec { name: "a".into(), parent: Some("nobody".into()), ..TeamSpec::default() }).contains("no team nobody"));
        let missing = create_key(&store, KeySpec { team: "ghost".into(), ..KeySpec::default() }).unwrap_err();
        assert_eq!(missing.to_string(), "no team ghost");

        put_team(&store, TeamSpec { name: "ml".into(), budget_usd: Some(5.0), budget_period: Some("month".into()), ..TeamSpec::default() }).unwrap();
        let (secret, key) = create_key(&store, KeySpec { team: "ml".into(), name: "ci".into(), ..KeySpec::default() }).unwrap();
        let shown = key_json(&key, 0).to_string();
        assert!(!shown.contains(&secret) && !shown.contains(&key.hash), "{shown}");
        assert_eq!(store.team("ml").unwrap().budget, Some(BudgetRecord { usd: 5.0, period: "month".into() }));
    }
}
