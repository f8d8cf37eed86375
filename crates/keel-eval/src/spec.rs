//! Eval files: keel's TOML and the core of promptfoo's YAML (`prompts`, `providers`,
//! `tests` with `vars`/`assert`, `defaultTest`, `threshold`, `weight`, `metric`, tests from a
//! CSV with an `__expected` column), read into one [`Spec`]: a matrix of prompts × targets ×
//! test cases × repeats. Registry prompts and datasets are pinned to the versions read, so a
//! run records exactly what it ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use keel_store::{Selector, Store};

use crate::prompt::{PromptDef, PromptMessage};
use crate::score::{self, Assertion};
use crate::{Error, Result};

/// An eval, compiled: everything that decides its cells, with versions pinned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub prompts: Vec<PromptSpec>,
    pub targets: Vec<TargetSpec>,
    pub tests: Vec<TestSpec>,
    /// The default test's assertions, which every test is graded by before its own (held
    /// once, not copied into 20,000 tests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_assert: Vec<Assertion>,
    /// The dataset (name, version) whose rows are tests, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<(String, u32)>,
    pub repeat: u32,
    /// The judge alias for model-graded assertions that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// The overall pass rate the run must reach (`fail_under`), else it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_under: Option<f64>,
    /// The mean score each named metric must reach.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// How the prompt is shown in tables: `name@version` for a registry prompt.
    pub id: String,
    pub def: PromptDef,
    /// The registry prompt and the version pinned, if it came from the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    pub id: String,
    /// The model alias keel calls (empty for an agent target).
    pub alias: String,
    /// An agent file run through keel's agent runtime instead of one model call: it gets the
    /// rendered prompt's last user message as its input and the test's variables as its
    /// `--var`s; its tool calls are graded by `tool-call` and `trajectory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A RAG collection answered from (`keel rag ask`) with `alias` as the writer; the
    /// passages it retrieved are the answer's context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rag: Option<String>,
    /// Request fields set on every call (temperature, max_tokens, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub vars: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    /// The test's own assertions ([`Spec::assertions`] puts the default test's first).
    pub assert: Vec<Assertion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

// ---- the file as written -------------------------------------------------------------

/// A value or a list of them. The list is tried first: serde would read a list into a
/// struct's fields by position.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawSpec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    prompts: Option<OneOrMany<RawPrompt>>,
    #[serde(default, alias = "targets")]
    providers: Option<OneOrMany<RawProvider>>,
    #[serde(default)]
    tests: Option<OneOrMany<RawTests>>,
    #[serde(default, alias = "default_test", rename = "defaultTest")]
    default_test: Option<RawTest>,
    #[serde(default)]
    dataset: Option<RawDataset>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    judge: Option<String>,
    #[serde(default, alias = "fail-under")]
    fail_under: Option<f64>,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default, rename = "evaluateOptions")]
    evaluate_options: Option<EvaluateOptions>,
    /// Keys keel does not read (promptfoo's `outputPath`, `sharing`, ...): reported, not fatal.
    #[serde(flatten)]
    other: BTreeMap<String, serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct EvaluateOptions {
    #[serde(default, rename = "maxConcurrency")]
    max_concurrency: Option<usize>,
    #[serde(default)]
    repeat: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPrompt {
    Text(String),
    Item(PromptItem),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptItem {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    label: Option<String>,
    /// promptfoo: the prompt text (or a `file://` path).
    #[serde(default)]
    raw: Option<String>,
    /// keel: a registry prompt, `name`, `name@VERSION` or `name@LABEL`.
    #[serde(default)]
    registry: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    messages: Option<Vec<PromptMessage>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawProvider {
    Id(String),
    Item(ProviderItem),
}

#[derive(Debug, Deserialize)]
struct ProviderItem {
    #[serde(default)]
    id: Option<String>,
    /// keel: the model alias (instead of a promptfoo `id`).
    #[serde(default)]
    model: Option<String>,
    /// keel: an agent file (relative to the eval file) run through the agent runtime.
    #[serde(default)]
    agent: Option<String>,
    /// keel: a RAG collection answered from, `model` writing the answer.
    #[serde(default)]
    rag: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    config: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTests {
    File(String),
    Test(Box<RawTest>),
}

#[derive(Debug, Default, Deserialize)]
struct RawTest {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    vars: Option<Value>,
    #[serde(default)]
    assert: Vec<Assertion>,
    #[serde(default)]
    threshold: Option<f64>,
    #[serde(default)]
    options: Option<TestOptions>,
    #[serde(default)]
    expected: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct TestOptions {
    /// The judge for model-graded assertions (promptfoo's grading provider).
    #[serde(default)]
    provider: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDataset {
    Name(String),
    Pinned { name: String, version: Option<u32> },
}

/// Which format an eval file is in.
fn is_yaml(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// A provider id as a keel alias: promptfoo's `openai:chat:NAME`, `openai:NAME`,
/// `anthropic:messages:NAME`, keel's `keel:NAME`, or a bare alias.
pub fn alias_of(id: &str) -> Result<String> {
    for prefix in ["openai:chat:", "openai:responses:", "openai:", "anthropic:messages:", "anthropic:", "keel:"] {
        if let Some(alias) = id.strip_prefix(prefix) {
            return Ok(alias.to_string());
        }
    }
    if id.contains(':') || id.starts_with("file://") || id.starts_with("http") {
        return Err(Error::Invalid(format!(
            "provider `{id}`: keel calls models through its gateway, so name a model alias (`fast`, `keel:fast` or `openai:chat:fast`)"
        )));
    }
    Ok(id.to_string())
}

/// The text a `file://` reference names, relative to the eval file's folder.
fn read_ref(base: &Path, reference: &str) -> Result<(PathBuf, String)> {
    let path = base.join(reference.trim_start_matches("file://"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok((path, text))
}

fn prompt_from_text(text: &str) -> Result<PromptDef> {
    // promptfoo writes chat prompts as a JSON list of messages.
    if text.trim_start().starts_with('[')
        && let Ok(messages) = serde_json::from_str::<Vec<PromptMessage>>(text)
    {
        return PromptDef::parse(&serde_json::json!({ "messages": messages }).to_string(), Some(crate::Format::Json));
    }
    PromptDef::parse(&serde_json::json!({ "text": text }).to_string(), Some(crate::Format::Json))
}

/// promptfoo's `__expected` text as an assertion: `contains: x`, `icontains: x`,
/// `regex: ...`, `similar(0.8): ...`, `grade: ...` (an `llm-rubric`), `not-...`, or a plain
/// text, which must be equal.
pub fn assertion_from_text(text: &str) -> Assertion {
    let plain = || Assertion { kind: "equals".into(), value: Some(Value::String(text.to_string())), threshold: None, weight: None, metric: None, provider: None, assert: vec![] };
    let (head, rest) = match text.split_once(':') {
        Some((head, rest)) => (head.trim(), Some(rest.trim())),
        None => (text.trim(), None),
    };
    let (name, threshold) = match head.split_once('(') {
        Some((name, tail)) => match tail.strip_suffix(')').and_then(|t| t.parse::<f64>().ok()) {
            Some(threshold) => (name, Some(threshold)),
            None => return plain(),
        },
        None => (head, None),
    };
    let (negate, base) = match name.strip_prefix("not-") {
        Some(base) => ("not-", base),
        None => ("", name),
    };
    let base = match base {
        "grade" => "llm-rubric",
        "fn" | "eval" => "javascript",
        other => other,
    };
    let code = matches!(base, "javascript" | "python");
    if (!score::TYPES.contains(&base) && !code) || (rest.is_none() && !matches!(base, "is-json" | "contains-json" | "is-refusal")) {
        return plain();
    }
    Assertion {
        kind: format!("{negate}{base}"),
        value: rest.filter(|r| !r.is_empty()).map(|r| Value::String(r.to_string())),
        threshold,
        weight: None,
        metric: None,
        provider: None,
        assert: vec![],
    }
}

/// What [`load`] read besides the spec: keys it did not use, to warn about.
#[derive(Debug, Default)]
pub struct Loaded {
    pub spec: Spec,
    pub ignored: Vec<String>,
}

impl Spec {
    /// What `test` is graded by: the default test's assertions, then its own.
    pub fn assertions<'a>(&'a self, test: &'a TestSpec) -> impl Iterator<Item = &'a Assertion> {
        self.default_assert.iter().chain(&test.assert)
    }
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            name: String::new(),
            description: None,
            prompts: Vec::new(),
            targets: Vec::new(),
            tests: Vec::new(),
            default_assert: Vec::new(),
            dataset: None,
            repeat: 1,
            judge: None,
            fail_under: None,
            metrics: BTreeMap::new(),
            concurrency: None,
        }
    }
}

/// Reads the eval file at `path` (TOML, or YAML by its extension), resolving registry prompts
/// and datasets in `store` to the versions they name now.
pub fn load(path: &Path, store: &Store) -> Result<Loaded> {
    load_at(path, store, None)
}

/// [`load`] with every registry prompt read at `label` instead of the version or label the
/// file names: the baseline of `keel eval run --baseline LABEL`.
pub fn load_at(path: &Path, store: &Store, label: Option<&str>) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let raw: RawSpec = if is_yaml(path) {
        serde_yaml_ng::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
    } else {
        toml::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("eval").to_string();
    compile(raw, base, name, store, label)
}

fn compile(raw: RawSpec, base: &Path, name: String, store: &Store, label: Option<&str>) -> Result<Loaded> {
    let ignored: Vec<String> = raw.other.keys().cloned().collect();
    let mut spec = Spec { name, description: raw.description, ..Spec::default() };

    for (idx, prompt) in raw.prompts.map(OneOrMany::into_vec).unwrap_or_default().into_iter().enumerate() {
        spec.prompts.push(compile_prompt(prompt, idx, base, store, label)?);
    }
    if spec.prompts.is_empty() {
        // Without prompts each test's `messages` variable is the conversation sent.
        let def = PromptDef::parse(r#"{"messages": [{"placeholder": "messages"}]}"#, Some(crate::Format::Json))?;
        spec.prompts.push(PromptSpec { id: "messages".into(), def, registry: None });
    }

    for provider in raw.providers.map(OneOrMany::into_vec).unwrap_or_default() {
        let (id, label, config) = match provider {
            RawProvider::Id(id) => (id, None, Map::new()),
            RawProvider::Item(ProviderItem { agent: Some(file), label, .. }) => {
                let path = base.join(&file);
                if !path.is_file() {
                    return Err(Error::Invalid(format!("agent target `{file}`: no such file ({})", path.display())));
                }
                let id = label.unwrap_or_else(|| path.file_stem().map_or(file.clone(), |s| s.to_string_lossy().to_string()));
                let agent = Some(path.canonicalize().unwrap_or(path).to_string_lossy().to_string());
                spec.targets.push(TargetSpec { id, alias: String::new(), agent, rag: None, config: Map::new() });
                continue;
            }
            RawProvider::Item(ProviderItem { rag: Some(collection), model, label, .. }) => {
                let model = model.ok_or_else(|| Error::Invalid(format!("RAG target `{collection}` needs `model`, the alias that writes the answer")))?;
                let id = label.unwrap_or_else(|| format!("rag:{collection}"));
                spec.targets.push(TargetSpec { id, alias: model, agent: None, rag: Some(collection), config: Map::new() });
                continue;
            }
            RawProvider::Item(item) => {
                let id = item.model.or(item.id).ok_or_else(|| Error::Invalid("a target needs `model` (an alias), `agent` (a file) or `id`".into()))?;
                (id, item.label, item.config)
            }
        };
        let alias = alias_of(&id)?;
        let mut request = Map::new();
        for (key, value) in config {
            // promptfoo's camelCase options, as the request fields they set.
            let key = match key.as_str() {
                "maxTokens" | "max_output_tokens" => "max_tokens".to_string(),
                "topP" => "top_p".to_string(),
                "apiBaseUrl" | "apiHost" | "apiKey" | "apiKeyEnvar" | "organization" => continue,
                _ => key,
            };
            request.insert(key, value);
        }
        spec.targets.push(TargetSpec { id: label.unwrap_or_else(|| alias.clone()), alias, agent: None, rag: None, config: request });
    }
    if spec.targets.is_empty() {
        return Err(Error::Invalid("the eval names no targets: add `providers` (or `[[targets]]`) with a model alias".into()));
    }

    let default = raw.default_test.unwrap_or_default();
    let default_vars = vars_of(default.vars.clone(), base)?;
    let judge = default.options.as_ref().and_then(|o| o.provider.as_ref()).and_then(|p| match p {
        Value::String(id) => Some(id.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    });
    spec.judge = match raw.judge.or(judge) {
        Some(id) => Some(alias_of(&id)?),
        None => None,
    };
    let make = |test: RawTest, from_file: bool| -> Result<TestSpec> {
        let mut vars = default_vars.clone();
        vars.extend(vars_of(test.vars, base)?);
        let mut assert = test.assert;
        let mut expected = test.expected;
        if from_file && let Some(Value::String(text)) = &expected {
            assert.push(assertion_from_text(text));
            expected = None;
        }
        Ok(TestSpec { description: test.description, vars, expected, assert, threshold: test.threshold.or(default.threshold), trace_id: None })
    };
    for tests in raw.tests.map(OneOrMany::into_vec).unwrap_or_default() {
        match tests {
            RawTests::Test(test) => spec.tests.push(make(*test, false)?),
            RawTests::File(reference) => {
                let (path, text) = read_ref(base, &reference)?;
                for row in crate::dataset::parse_file(&path.to_string_lossy(), &text)? {
                    let description = row.metadata.get("description").and_then(Value::as_str).map(str::to_string);
                    let test = RawTest { description, vars: Some(row.input), expected: row.expected, ..RawTest::default() };
                    spec.tests.push(make(test, true)?);
                }
            }
        }
    }
    if let Some(dataset) = raw.dataset {
        let (name, version) = match dataset {
            RawDataset::Name(text) => match text.split_once('@') {
                Some((name, v)) => (name.to_string(), Some(v.parse().map_err(|_| Error::Invalid(format!("dataset `{text}`: the version after @ is a number")))?)),
                None => (text, None),
            },
            RawDataset::Pinned { name, version } => (name, version),
        };
        let (pinned, rows) = store.dataset(&name, version)?;
        for row in rows {
            let trace_id = row.trace_id.clone();
            let description = row.metadata.get("description").and_then(Value::as_str).map(str::to_string);
            let test = RawTest { description, vars: Some(row.input), expected: row.expected, ..RawTest::default() };
            let mut test = make(test, false)?;
            test.trace_id = trace_id;
            spec.tests.push(test);
        }
        spec.dataset = Some((pinned.name, pinned.version));
    }
    if spec.tests.is_empty() {
        return Err(Error::Invalid("the eval has no test cases: add `tests` or a `dataset`".into()));
    }
    spec.default_assert = default.assert;
    for assertion in spec.default_assert.iter().chain(spec.tests.iter().flat_map(|t| &t.assert)) {
        score::check(assertion)?;
    }
    let options = raw.evaluate_options;
    spec.repeat = raw.repeat.or(options.as_ref().and_then(|o| o.repeat)).unwrap_or(1).max(1);
    spec.concurrency = raw.concurrency.or(options.and_then(|o| o.max_concurrency));
    spec.fail_under = raw.fail_under;
    spec.metrics = raw.metrics;
    Ok(Loaded { spec, ignored })
}

fn compile_prompt(prompt: RawPrompt, idx: usize, base: &Path, store: &Store, at_label: Option<&str>) -> Result<PromptSpec> {
    let item = match prompt {
        RawPrompt::Text(text) => PromptItem { id: None, label: None, raw: Some(text), registry: None, text: None, messages: None },
        RawPrompt::Item(item) => item,
    };
    let label = item.label.or(item.id);
    if let Some(reference) = item.registry {
        let (name, mut selector) = match reference.split_once('@') {
            Some((name, tail)) => (name, tail.parse::<u32>().map_or_else(|_| Selector::Label(tail.to_string()), Selector::Version)),
            None => (reference.as_str(), Selector::Label(crate::PRODUCTION.to_string())),
        };
        if let Some(label) = at_label {
            selector = Selector::Label(label.to_string());
        }
        let found = store.prompt(name, &selector)?.ok_or_else(|| {
            Error::NotFound(match &selector {
                Selector::Version(v) => format!("prompt `{name}` has no version {v}"),
                Selector::Label(l) => format!("prompt `{name}` has no label `{l}` (or no such prompt)"),
            })
        })?;
        let def = PromptDef::from_json(&found.body)?;
        // The id names the version, so a baseline's table and the candidate's differ.
        let id = match label {
            Some(label) => format!("{label} ({name}@{})", found.version),
            None => format!("{name}@{}", found.version),
        };
        return Ok(PromptSpec { id, def, registry: Some((name.to_string(), found.version)) });
    }
    let def = match (item.raw, item.text, item.messages) {
        (Some(raw), None, None) if raw.starts_with("file://") => {
            let (path, text) = read_ref(base, &raw)?;
            let path_text = path.to_string_lossy().to_string();
            match crate::Format::from_path(&path_text) {
                Some(format) if !path_text.ends_with(".json") || !text.trim_start().starts_with('[') => PromptDef::parse(&text, Some(format))?,
                _ => prompt_from_text(&text)?,
            }
        }
        (Some(text), None, None) | (None, Some(text), None) => prompt_from_text(&text)?,
        (None, None, Some(messages)) => PromptDef::parse(&serde_json::json!({ "messages": messages }).to_string(), Some(crate::Format::Json))?,
        _ => return Err(Error::Invalid(format!("prompt {}: give one of `raw`, `text`, `messages` or `registry`", idx + 1))),
    };
    Ok(PromptSpec { id: label.unwrap_or_else(|| format!("prompt {}", idx + 1)), def, registry: None })
}

/// Test variables: an object, or a `file://` to a JSON/YAML object; a variable whose value is
/// `file://PATH` is that file's text.
fn vars_of(vars: Option<Value>, base: &Path) -> Result<Map<String, Value>> {
    let mut map = match vars {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(Value::String(reference)) if reference.starts_with("file://") => {
            let (path, text) = read_ref(base, &reference)?;
            let value: Value = if is_yaml(&path) {
                serde_yaml_ng::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            } else {
                serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            };
            value.as_object().cloned().ok_or_else(|| Error::Invalid(format!("{}: vars must be an object", path.display())))?
        }
        Some(other) => return Err(Error::Invalid(format!("`vars` must be an object, not {other}"))),
    };
    for value in map.values_mut() {
        if let Value::String(text) = value
            && let Some(reference) = text.strip_prefix("file://")
        {
            *value = Value::String(read_ref(base, reference)?.1);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("keel-spec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (Store::open(&dir.join("s.db")).unwrap(), dir)
    }

    #[test]
    fn reads_promptfoo_yaml_with_csv_tests_and_default_asserts() {
        let (store, dir) = store("yaml");
        std::fs::write(dir.join("tests.csv"), "city,__expected\nParis,contains: France\nRome,Italy\nOslo,\"icontains-any: norway, NORGE\"\n").unwrap();
        std::fs::write(
            dir.join("promptfooconfig.yaml"),
            r#"
description: capitals
prompts:
  - "Where is {{city}}?"
  - id: chat
    raw: '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is {{city}}?"}]'
providers:
  - openai:chat:fast
  - id: openai:smart
    label: smart-cold
    config: { temperature: 0, maxTokens: 50, apiKey: nope }
defaultTest:
  assert:
    - type: not-icontains
      value: "I don't know"
tests:
  - file://tests.csv
  - vars: { city: Lima }
    assert:
      - { type: llm-rubric, value: names Peru, provider: openai:chat:judge, weight: 2, metric: accuracy }
    threshold: 0.5
outputPath: results.json
"#,
        )
        .unwrap();
        let loaded = load(&dir.join("promptfooconfig.yaml"), &store).unwrap();
        let spec = loaded.spec;
        assert_eq!(loaded.ignored, ["outputPath"]);
        assert_eq!(spec.prompts.len(), 2);
        assert_eq!(spec.prompts[1].def.messages.len(), 2);
        assert_eq!(spec.targets.iter().map(|t| (t.id.as_str(), t.alias.as_str())).collect::<Vec<_>>(), [("fast", "fast"), ("smart-cold", "smart")]);
        assert_eq!(Value::Object(spec.targets[1].config.clone()), serde_json::json!({"temperature": 0, "max_tokens": 50}));
        assert_eq!(spec.tests.len(), 4);
        let kinds = |t: &TestSpec| spec.assertions(t).map(|a| a.kind.clone()).collect::<Vec<_>>();
        assert_eq!(kinds(&spec.tests[0]), ["not-icontains", "contains"]);
        assert_eq!(kinds(&spec.tests[1]), ["not-icontains", "equals"]);
        assert_eq!(spec.assertions(&spec.tests[2]).nth(1).unwrap().value, Some(Value::String("norway, NORGE".into())));
        assert_eq!(spec.default_assert.len(), 1, "the default test's assertion is held once");
        assert_eq!(kinds(&spec.tests[3]), ["not-icontains", "llm-rubric"]);
        assert_eq!(spec.tests[3].threshold, Some(0.5));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reads_keel_toml_with_a_registry_prompt_and_a_pinned_dataset() {
        let (store, dir) = store("toml");
        store.push_prompt("support", r#"{"text": "Help with {{ question }}"}"#, "v1").unwrap();
        store.set_prompt_label("support", "production", 1).unwrap();
        let row = keel_store::DatasetRow { input: serde_json::json!({"question": "tea"}), expected: Some("Tea".into()), metadata: serde_json::json!({}), trace_id: Some("t1".into()) };
        store.push_dataset("qa", &[row], "first", keel_store::Change::Append).unwrap();
        std::fs::write(
            dir.join("eval.toml"),
            r#"
judge = "judge"
dataset = "qa"
fail_under = 0.9
repeat = 2
[[prompts]]
registry = "support"
[[targets]]
model = "fast"
config = { temperature = 0.2 }
[default_test]
assert = [{ type = "icontains", value = "{{ expected }}" }]
"#,
        )
        .unwrap();
        let spec = load(&dir.join("eval.toml"), &store).unwrap().spec;
        assert_eq!(spec.prompts[0].id, "support@1");
        assert_eq!(spec.prompts[0].registry, Some(("support".into(), 1)));
        assert_eq!(spec.dataset, Some(("qa".into(), 1)));
        assert_eq!((spec.repeat, spec.fail_under, spec.judge.as_deref()), (2, Some(0.9), Some("judge")));
        assert_eq!(spec.tests[0].trace_id.as_deref(), Some("t1"));
        assert_eq!(spec.tests[0].expected, Some(Value::String("Tea".into())));
        std::fs::write(dir.join("bad.toml"), "[[targets]]\nmodel = \"fast\"\n[[tests]]\nassert = [{ type = \"javascript\", value = \"1\" }]\n").unwrap();
        assert!(load(&dir.join("bad.toml"), &store).unwrap_err().to_string().contains("`javascript`"));
        std::fs::write(dir.join("none.toml"), "[[tests]]\nvars = {}\n").unwrap();
        assert!(load(&dir.join("none.toml"), &store).unwrap_err().to_string().contains("no targets"));
        assert!(alias_of("bedrock:claude").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn expected_texts_become_assertions_as_promptfoo_reads_them() {
        let kinds = |t: &str| {
            let a = assertion_from_text(t);
            (a.kind, a.value.and_then(|v| v.as_str().map(str::to_string)), a.threshold)
        };
        assert_eq!(kinds("contains: x"), ("contains".into(), Some("x".into()), None));
        assert_eq!(kinds("not-regex: ^a"), ("not-regex".into(), Some("^a".into()), None));
        assert_eq!(kinds("grade: is kind"), ("llm-rubric".into(), Some("is kind".into()), None));
        assert_eq!(kinds("similar(0.8): hello"), ("similar".into(), Some("hello".into()), Some(0.8)));
        assert_eq!(kinds("is-json"), ("is-json".into(), None, None));
        assert_eq!(kinds("Paris: the capital"), ("equals".into(), Some("Paris: the capital".into()), None));
        assert_eq!(kinds("yes"), ("equals".into(), Some("yes".into()), None));
    }
}
