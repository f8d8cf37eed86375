//! `keel teams`, `keel keys` and `keel spend` on the store a `keel serve` reads.

use crate::{run, temp_dir};

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn teams_and_keys_are_made_listed_rotated_and_revoked_from_the_cli() {
    let dir = temp_dir("keys");
    std::fs::write(dir.join("keel.toml"), "[store]\npath = \"keel.db\"\n").unwrap();
    let org = json(&run(&["teams", "create", "acme", "--budget", "5", "--period", "month", "--json"], &dir));
    assert_eq!(org["budget"], serde_json::json!({"usd": 5.0, "period": "month"}));
    json(&run(&["teams", "create", "support", "--parent", "acme", "--rpm", "10", "--json"], &dir));

    let made = json(&run(&["keys", "create", "--team", "support", "--name", "bot", "--model", "fast,smart", "--json"], &dir));
    let secret = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-keel-"));
    assert_eq!(made["models"], serde_json::json!(["fast", "smart"]));
    let listed = run(&["keys", "list"], &dir);
    let table = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(table.contains(&id) && table.contains("support") && table.contains("fast,smart"), "{table}");
    assert!(!table.contains(&secret[14..]), "a listing never shows the secret: {table}");
    let shown = run(&["teams", "show", "support", "--json"], &dir);
    assert_eq!(json(&shown)["keys"][0]["id"], id.as_str());

    // Bad input: a clear error and a non-zero exit, nothing stored.
    let missing = run(&["keys", "create", "--team", "nobody"], &dir);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("no team nobody"), "{}", stderr(&missing));
    let period = run(&["teams", "create", "x", "--period", "year", "--budget", "1"], &dir);
    assert!(stderr(&period).contains("unknown budget period `year`"), "{}", stderr(&period));
    let looped = run(&["teams", "create", "acme", "--parent", "support"], &dir);
    assert!(stderr(&looped).contains("already under it"), "{}", stderr(&looped));
    let busy = run(&["teams", "delete", "support"], &dir);
    assert!(stderr(&busy).contains("1 live keys"), "{}", stderr(&busy));

    let rotated = json(&run(&["keys", "rotate", &id, "--grace", "60", "--json"], &dir));
    assert_ne!(rotated["key"], made["key"]);
    assert_eq!(json(&run(&["keys", "show", &id, "--json"], &dir))["rotated_to"], rotated["id"]);
    let revoked = json(&run(&["keys", "revoke", made["prefix"].as_str().unwrap(), "--json"], &dir));
    assert_eq!(revoked["status"], "revoked");
    let again = run(&["keys", "rotate", &id], &dir);
    assert!(stderr(&again).contains("is revoked"), "{}", stderr(&again));

    let spend = json(&run(&["spend", "--by", "team", "--json"], &dir));
    assert_eq!(spend["data"], serde_json::json!([]));
    let bad = run(&["spend", "--by", "colour"], &dir);
    assert!(stderr(&bad).contains("cannot sum spend by `colour`"), "{}", stderr(&bad));
}
