//! The architecture's invariants that a tool can check (ARCHITECTURE.md, "Invariants"): the
//! dependency graph as `cargo metadata` reports it, and the source tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Each workspace crate's normal (not dev, not build) dependencies, and its features.
struct Workspace {
    deps: BTreeMap<String, BTreeSet<String>>,
    features: BTreeMap<String, serde_json::Value>,
}

fn workspace() -> Workspace {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut deps = BTreeMap::new();
    let mut features = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap().to_string();
        let normal: BTreeSet<String> = package["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        features.insert(name.clone(), package["features"].clone());
        deps.insert(name, normal);
    }
    Workspace { deps, features }
}

fn keel_deps(ws: &Workspace, krate: &str) -> BTreeSet<String> {
    ws.deps[krate].iter().filter(|d| d.starts_with("keel")).cloned().collect()
}

#[test]
fn the_crates_are_layered_one_way() {
    let ws = workspace();
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(keel_deps(&ws, "keel-core"), set(&[]), "keel-core depends on no other keel crate");
    for io in ["tokio", "axum", "reqwest", "hyper", "rusqlite"] {
        assert!(!ws.deps["keel-core"].contains(io), "keel-core does no IO, yet depends on {io}");
    }
    assert_eq!(keel_deps(&ws, "keel-store"), set(&["keel-core"]), "keel-store stands on keel-core alone");
    assert_eq!(keel_deps(&ws, "keel-guard"), set(&["keel-core"]), "keel-guard stands on keel-core alone");
    assert_eq!(keel_deps(&ws, "keel-eval"), set(&["keel-core", "keel-store"]), "keel-eval stands on keel-core and keel-store");
    assert_eq!(keel_deps(&ws, "keel-teams"), set(&["keel-core", "keel-store"]), "keel-teams stands on keel-core and keel-store");
    for io in ["tokio", "axum", "hyper"] {
        assert!(!ws.deps["keel-teams"].contains(io), "keel-teams decides, the server serves; yet it depends on {io}");
    }
    assert!(!ws.deps["keel-rag"].contains("keel-llm"), "keel-rag reaches models through its traits, not keel-llm");
    assert!(!ws.deps["keel-llm"].iter().any(|d| d.starts_with("llama") || d == "keel-local"), "keel-llm links no llama.cpp");
    for (name, deps) in &ws.deps {
        if name != "keel" {
            assert!(!deps.contains("keel-local"), "only the binary plugs in keel-local, not {name}");
            assert!(!deps.contains("anyhow"), "anyhow is the binary's alone, not {name}'s");
        }
    }
}

#[test]
fn test_support_and_scale_out_engines_are_features() {
    let ws = workspace();
    let server = &ws.features["keel-server"];
    assert!(server["fake-upstream"].is_array(), "keel-server has a fake-upstream feature");
    let default = server["default"].as_array().cloned().unwrap_or_default();
    assert!(!default.iter().any(|f| f == "fake-upstream"), "the fake upstream is not in keel-server's default build");
    let rag = &ws.features["keel-rag"];
    for feature in ["pgvector", "qdrant", "pdf"] {
        assert!(rag[feature].is_array(), "keel-rag has a {feature} feature");
        assert!(rag["default"].as_array().unwrap().iter().any(|f| f == feature), "keel-rag's default build has {feature}");
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_a_god_file_and_each_says_what_it_is_for() {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        sources(&krate.unwrap().path().join("src"), &mut files);
    }
    assert!(files.len() > 50, "found {} source files", files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines = text.lines().count();
        assert!(lines <= 800, "{} has {lines} lines; split it by concept (ARCHITECTURE.md)", file.display());
        assert!(text.starts_with("//!"), "{} does not start with a //! line saying what it is for", file.display());
    }
}

#[test]
fn status_codes_are_chosen_in_one_place() {
    let src = root().join("crates/keel-server/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        // The error mapping, and the fake upstream (test support that plays a provider).
        if relative == Path::new("error.rs") || relative.starts_with("fake") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("StatusCode::"), "{} chooses a status code; map errors in keel-server/src/error.rs", file.display());
    }
}

#[test]
fn library_functions_return_their_crates_error_not_a_string() {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        if krate.file_name().is_some_and(|n| n == "keel") {
            continue;
        }
        sources(&krate.join("src"), &mut files);
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let public = line.trim_start().starts_with("pub fn") || line.trim_start().starts_with("pub async fn");
            // The return type, where it is a Result whose error is a bare String.
            let returns = line.split_once("->").map(|(_, ret)| ret.trim()).unwrap_or_default();
            let string_error = returns.contains("Result<") && returns.trim_end_matches('{').trim_end().ends_with(", String>");
            assert!(
                !(public && string_error),
                "{}:{}: a public function returns Result<_, String>; use the crate's error enum",
                file.display(),
                n + 1
            );
        }
    }
}
