//! Agent definitions: what an agent file (TOML) says, checked when it is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The tools keel ships; any other tool name in an agent file needs a `command`.
pub const BUILT_IN_TOOLS: &[&str] = &["read_file", "write_file", "list_dir", "http_get", "shell"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    pub name: String,
    /// A model alias of keel's gateway (`local` runs offline).
    pub model: String,
    /// The system prompt: a text whose `{{name}}` placeholders are filled from the run's
    /// variables, or `{ prompt = "support", label = "production" }` from the prompt registry.
    pub instructions: Instructions,
    #[serde(default)]
    pub description: Option<String>,
    /// The folder file tools and `shell` work in, relative to the agent file.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolSpec>,
    /// Agents this one may hand the conversation over to: the model gets a
    /// `transfer_to_NAME` tool, and the named agent carries on the same run (same
    /// conversation, same budget) and gives the final answer.
    #[serde(default)]
    pub handoffs: BTreeMap<String, HandoffSpec>,
    /// MCP servers whose tools the agent may call, by a name of your choice; their tools
    /// appear to the model as `NAME__TOOL`.
    #[serde(default)]
    pub mcp: BTreeMap<String, McpServerSpec>,
    /// Long-term memory: facts kept across runs, recalled into context and editable with
    /// the `memory_save` and `memory_search` tools (added when this is set).
    #[serde(default)]
    pub memory: Option<MemorySpec>,
    /// A JSON Schema the final answer must satisfy (requested as structured output).
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// The run's first model call must call this tool (`"any"`: some tool); later calls
    /// choose freely. Keeps small models from answering before they look anything up.
    #[serde(default)]
    pub first_tool: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Information-flow policies checked before every tool call (the Rule of Two by default).
    #[serde(default)]
    pub guard: keel_guard::GuardSpec,
    /// `default`: one model reads everything and chooses the calls as it goes. `secure`
    /// (after CaMeL): a planner that sees only the request and the tool schemas writes the
    /// whole plan first; tool output reaches later calls only as values, read by a quarantined
    /// model that has no tools and answers in a schema, and keeps its label to the sinks.
    #[serde(default)]
    pub mode: Mode,
    /// The model the quarantined reads go to in secure mode (default: `model`).
    #[serde(default)]
    pub quarantine_model: Option<String>,
    /// How many invalid tool calls in a row the model may make before the run stops.
    #[serde(default = "three")]
    pub max_invalid_tool_calls: u32,
    /// How many turns in a row may make exactly the same tool calls before the run stops as
    /// a loop.
    #[serde(default = "three")]
    pub max_repeated_turns: u32,
    /// Keep each model request under this many tokens (estimated) by leaving out the oldest
    /// turns; a tool call and its results are kept or left out together.
    #[serde(default)]
    pub max_context_tokens: Option<u64>,
}

/// How an agent's run is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Default,
    Secure,
}

fn three() -> u32 {
    3
}

/// Limits for one run, shared by everything the run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Model calls.
    #[serde(default = "twenty")]
    pub max_steps: u32,
    /// Input plus output tokens over every model call.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Time spent in model calls and tools.
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

fn twenty() -> u32 {
    20
}

impl Default for Budget {
    fn default() -> Budget {
        Budget { max_steps: twenty(), max_tokens: None, max_cost_usd: None, max_seconds: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    Never,
    /// The run pauses before the call until a human approves or denies it.
    Required,
}

/// One tool of an agent: a built-in (by name) or a command that takes the arguments as JSON
/// on standard input and prints its result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// JSON Schema of the arguments (command tools).
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// `http_get`: the hosts it may fetch from.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// `shell`: allow network access (off by default; needs user namespaces to enforce).
    #[serde(default)]
    pub network: bool,
    /// Another agent file (relative to this one): the tool runs that agent on a request and
    /// returns its answer, on this run's budget.
    #[serde(default)]
    pub agent: Option<PathBuf>,
    /// A keel RAG collection (`keel rag ingest … -c NAME`): the tool searches it and returns
    /// passages with their sources and the collection's trust label.
    #[serde(default)]
    pub collection: Option<String>,
    /// What the tool does, for the guard: `private_data`, `untrusted_output`, `external`,
    /// `changes_state` (built-ins know theirs; commands default to untrusted output and an
    /// external effect).
    #[serde(default)]
    pub capabilities: Option<keel_guard::Capabilities>,
    /// The arguments that choose where the tool's action lands (`["to"]`); in secure mode
    /// untrusted values may fill the others. Default: every argument without a content word
    /// (body, subject, title, text, date, time, amount, …) in its name.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// For a tool with untrusted output that answers JSON: the fields outsiders can write
    /// (`["subject", "body"]`); a value from any other field carries the tool's label as
    /// trusted. Default: all of it is untrusted.
    #[serde(default)]
    pub untrusted_fields: Option<Vec<String>>,
}

/// A handoff target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSpec {
    /// The agent file (relative to this one).
    pub agent: PathBuf,
    /// When to hand over, for the model.
    #[serde(default)]
    pub description: Option<String>,
}

/// Long-term memory settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// The embedding model alias facts are embedded with.
    #[serde(default = "local_embed")]
    pub embedding_model: String,
    /// How many facts to recall into the context when a run starts (0: only on request).
    #[serde(default = "five")]
    pub recall: usize,
    /// The run variable that names the user (facts about a user are shared by every agent
    /// that serves them).
    #[serde(default = "user_var")]
    pub user_var: String,
    /// Facts less similar than this to the request are not recalled (cosine, 0 to 1).
    #[serde(default = "min_relevance")]
    pub min_relevance: f64,
    /// A fact's recency weight halves after this many days unused.
    #[serde(default = "half_life_days")]
    pub half_life_days: f64,
}

fn local_embed() -> String {
    "local-embed".into()
}
fn five() -> usize {
    5
}
fn user_var() -> String {
    "user".into()
}
fn min_relevance() -> f64 {
    0.3
}
fn half_life_days() -> f64 {
    30.0
}

impl Default for MemorySpec {
    fn default() -> MemorySpec {
        MemorySpec {
            embedding_model: local_embed(),
            recall: five(),
            user_var: user_var(),
            min_relevance: min_relevance(),
            half_life_days: half_life_days(),
        }
    }
}

/// An MCP server: a command keel starts and talks to over stdio, or a Streamable HTTP URL.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// stdio: the program and its arguments (run from the agent file's folder).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// stdio: extra environment variables; `${VAR}` takes VAR from keel's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Streamable HTTP: the server's endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// Streamable HTTP: extra request headers; `${VAR}` takes VAR from keel's environment,
    /// so secrets stay out of the file (and out of stored runs).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Only these of the server's tools (all when absent).
    #[serde(default)]
    pub allow_tools: Option<Vec<String>>,
    /// Approval for every tool of this server (per-tool settings below override it).
    #[serde(default)]
    pub approval: Approval,
    /// Longest a tool call may take, in seconds (default 60).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Longest the server may take to start and list its tools, in seconds (default 30).
    #[serde(default)]
    pub startup_timeout_s: Option<f64>,
    /// Settings for single tools, by the server's name for them.
    #[serde(default)]
    pub tool: BTreeMap<String, McpToolSpec>,
    /// What every tool of this server does, for the guard (default: untrusted output and an
    /// external effect).
    #[serde(default)]
    pub capabilities: Option<keel_guard::Capabilities>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolSpec {
    #[serde(default)]
    pub approval: Option<Approval>,
    #[serde(default)]
    pub timeout_s: Option<f64>,
    #[serde(default)]
    pub capabilities: Option<keel_guard::Capabilities>,
}

impl AgentDef {
    /// What a tool (by the name the model calls it) does, for the guard: what the agent file
    /// declares, else what keel knows of its built-ins, else the conservative default
    /// (untrusted output, external effect) that MCP servers and commands get.
    pub fn capabilities(&self, tool: &str) -> keel_guard::Capabilities {
        use keel_guard::{Capabilities, Capability::*};
        if let Some(declared) = self.tools.get(tool).and_then(|spec| spec.capabilities) {
            return declared;
        }
        if let Some(spec) = self.tools.get(tool) {
            if spec.collection.is_some() {
                // Private documents, written by whoever wrote them: a trusted collection's
                // output is relabelled when it is read.
                return Capabilities::of(&[PrivateData, UntrustedOutput]);
            }
            if spec.agent.is_some() {
                // Another agent's answer carries whatever it read.
                return Capabilities::of(&[PrivateData, UntrustedOutput]);
            }
        }
        match tool {
            "read_file" | "list_dir" => return Capabilities::of(&[PrivateData]),
            "write_file" => return Capabilities::of(&[ChangesState]),
            "http_get" => return Capabilities::of(&[UntrustedOutput, External]),
            // Without network access the shell reaches only the workspace.
            "shell" if self.tools.get("shell").is_some_and(|spec| spec.network) => {
                return Capabilities::of(&[PrivateData, UntrustedOutput, External, ChangesState]);
            }
            "shell" => return Capabilities::of(&[PrivateData, ChangesState]),
            // Facts carry no label of their own yet, so recalled ones count as untrusted.
            "memory_search" => return Capabilities::of(&[PrivateData, UntrustedOutput]),
            "memory_save" => return Capabilities::NONE,
            _ => {}
        }
        if tool.starts_with("transfer_to_") && self.handoffs.contains_key(&tool["transfer_to_".len()..]) {
            return Capabilities::NONE;
        }
        if let Some((server, remote)) = tool.split_once("__")
            && let Some(spec) = self.mcp.get(server)
        {
            return spec.tool.get(remote).and_then(|t| t.capabilities).or(spec.capabilities).unwrap_or_else(Capabilities::conservative);
        }
        Capabilities::conservative()
    }

    /// Reads and checks an agent file.
    pub fn load(path: &Path) -> Result<AgentDef, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Definition(format!("could not read {}: {e}", path.display())))?;
        let mut def = AgentDef::parse_text(&text).map_err(|e| Error::Definition(format!("{}: {e}", path.display())))?;
        // A relative workspace is relative to the agent file.
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        def.workspace = Some(match def.workspace.take() {
            Some(ws) if ws.is_absolute() => ws,
            Some(ws) => folder.join(ws),
            None => folder.join("workspace"),
        });
        Ok(def)
    }

    /// An agent file's text, parsed and checked.
    pub fn parse(text: &str) -> Result<AgentDef, Error> {
        AgentDef::parse_text(text).map_err(Error::Definition)
    }

    fn parse_text(text: &str) -> Result<AgentDef, String> {
        let def: AgentDef = toml::from_str(text).map_err(|e| e.to_string())?;
        def.check()?;
        Ok(def)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        self.guard.check().map_err(|e| e.to_string())?;
        if self.mode == Mode::Secure && (!self.handoffs.is_empty() || self.output_schema.is_some()) {
            return Err("mode = \"secure\" runs a plan; it takes no handoffs or output_schema (the plan's answer is the output)".into());
        }
        for (name, spec) in &self.tools {
            if crate::memory::TOOLS.contains(&name.as_str()) {
                return Err(format!("tool `{name}` comes with [memory]; add a [memory] table instead of declaring it"));
            }
            let built_in = BUILT_IN_TOOLS.contains(&name.as_str());
            if let Some(collection) = &spec.collection {
                if built_in || spec.command.is_some() || spec.agent.is_some() {
                    return Err(format!("tool `{name}` searches the collection `{collection}`; it takes no `command` or `agent` and cannot be a built-in's name"));
                }
                continue;
            }
            if spec.agent.is_some() {
                if built_in || spec.command.is_some() {
                    return Err(format!("tool `{name}` names an `agent`; it takes no `command` and cannot be a built-in's name"));
                }
                continue;
            }
            match (&spec.command, built_in) {
                (Some(_), true) => return Err(format!("tool `{name}` is built in; it takes no `command`")),
                (None, false) => {
                    return Err(format!(
                        "tool `{name}` is not built in ({}) and has no `command`, `agent` or `collection`",
                        BUILT_IN_TOOLS.join(", ")
                    ));
                }
                (Some(command), false) if command.is_empty() => return Err(format!("tool `{name}`: `command` is empty")),
                _ => {}
            }
            if name == "http_get" && spec.allow_hosts.is_empty() {
                return Err("tool `http_get` needs `allow_hosts`: the hosts it may fetch from".into());
            }
        }
        for name in self.handoffs.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(format!("handoff name `{name}`: use letters, digits, `-` and `_`"));
            }
            if self.tools.contains_key(&format!("transfer_to_{name}")) {
                return Err(format!("tool `transfer_to_{name}` clashes with the handoff `{name}`"));
            }
        }
        if let Some(first) = &self.first_tool
            && first != "any"
            && !self.tools.contains_key(first)
            && !self.mcp.keys().any(|server| first.starts_with(&format!("{server}__")))
        {
            return Err(format!("first_tool = \"{first}\" is not one of the agent's tools"));
        }
        for (name, server) in &self.mcp {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || name.contains("__") {
                return Err(format!("mcp server name `{name}`: use letters, digits, `-` and single `_`"));
            }
            match (&server.command, &server.url) {
                (Some(command), None) if command.is_empty() => return Err(format!("mcp.{name}: `command` is empty")),
                (Some(_), None) => {}
                (None, Some(url)) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    return Err(format!("mcp.{name}: `url` must be an http:// or https:// URL, not `{url}`"));
                }
                (None, Some(_)) => {}
                _ => return Err(format!("mcp.{name}: give exactly one of `command` (stdio) or `url` (Streamable HTTP)")),
            }
        }
        if self.budget.max_steps == 0 {
            return Err("budget.max_steps must be at least 1".into());
        }
        Ok(())
    }

    /// The instructions with `{{name}}` placeholders filled; a placeholder with no value is
    /// an error naming it. A registry prompt is resolved in `store` (its label read now) and
    /// rendered with the run's variables: its system (and developer) messages, or its text.
    pub fn render_instructions(&self, vars: &BTreeMap<String, String>, store: &std::sync::Arc<keel_store::Store>) -> Result<String, Error> {
        let (name, label, version) = match &self.instructions {
            Instructions::Text(text) => {
                return fill(text, |key| vars.get(key).cloned()).map_err(|key| {
                    Error::Definition(format!("the instructions use {{{{{key}}}}}, which has no value (pass --var {key}=...)"))
                });
            }
            Instructions::Prompt { prompt, label, version } => (prompt, label, version),
        };
        let registry = keel_eval::Registry::new(store.clone(), std::time::Duration::ZERO);
        let ask = keel_eval::Ask { name, version: *version, label: label.as_deref(), sticky: None };
        let bad = |err: keel_eval::Error| Error::Definition(format!("instructions: {err}"));
        let resolved = registry.resolve(&ask).map_err(bad)?;
        let values = vars.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let messages = resolved.def.render(&values).map_err(bad)?;
        let system: Vec<&str> = match &resolved.def.text {
            Some(_) => messages.iter().filter_map(|m| m["content"].as_str()).collect(),
            None => messages
                .iter()
                .filter(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
                .filter_map(|m| m["content"].as_str())
                .collect(),
        };
        if system.is_empty() {
            return Err(Error::Definition(format!("instructions: prompt `{name}` has no system message to use as instructions")));
        }
        Ok(system.join("\n\n"))
    }
}

/// An agent's system prompt: written in the agent file, or a prompt of the registry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Instructions {
    Text(String),
    Prompt {
        prompt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
}

/// A text, or a table read strictly, so a misspelt key is named rather than reported as
/// "no variant matched".
impl<'de> Deserialize<'de> for Instructions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FromRegistry {
            prompt: String,
            #[serde(default)]
            label: Option<String>,
            #[serde(default)]
            version: Option<u32>,
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Instructions;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a text, or { prompt = \"NAME\", label = \"LABEL\" } from the prompt registry")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Instructions, E> {
                Ok(Instructions::Text(text.to_string()))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<Instructions, M::Error> {
                let FromRegistry { prompt, label, version } = FromRegistry::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Instructions::Prompt { prompt, label, version })
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

impl From<&str> for Instructions {
    fn from(text: &str) -> Self {
        Instructions::Text(text.to_string())
    }
}

/// A template with its `{{name}}` placeholders (spaces inside the braces allowed) filled from
/// `value`; the first placeholder with no value is the error. An unclosed `{{` stays as is.
pub(crate) fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let key = after[..end].trim();
        out.push_str(&value(key).ok_or_else(|| key.to_string())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A commented starter agent file for `keel agent new NAME`.
pub fn starter(name: &str) -> String {
    format!(
        r#"# An agent for keel. Run it with: keel agent run {name}.toml "your request"
name = "{name}"
# A model alias of keel's gateway; `local` runs offline on the embedded model.
model = "local"
# The system prompt. {{{{placeholders}}}} are filled from `--var name=value`.
instructions = """
You are {name}, a careful assistant. Use the tools when they help, and say when you
do not know.
"""
# File tools and `shell` work inside this folder (relative to this file).
workspace = "workspace"

# One budget for the whole run, sub-agents and handoffs included. When it runs out the
# run stops, keeps its partial result and says which limit it hit.
[budget]
max_steps = 20          # model calls
# max_tokens = 50000    # input + output tokens
# max_cost_usd = 0.50
# max_seconds = 300     # time in model calls and tools

# Leave out the oldest turns to keep each request under this many tokens (a tool call and
# its results go together).
# max_context_tokens = 6000

# Built-in tools: read_file, write_file, list_dir, http_get, shell.
[tools.read_file]
[tools.list_dir]
[tools.write_file]
approval = "required"   # the run pauses until `keel runs approve RUN CALL`

# [tools.http_get]
# allow_hosts = ["docs.example.com"]

# [tools.shell]         # opt-in; runs in the workspace, no network unless `network = true`
# timeout_s = 30

# Another agent as a tool: it answers a request on this run's budget.
# [tools.researcher]
# agent = "researcher.toml"
# description = "Finds facts in the documents"

# An MCP server (stdio or Streamable HTTP); its tools appear as `files__read_text_file`, …
# [mcp.files]
# command = ["npx", "-y", "@modelcontextprotocol/server-filesystem", "workspace"]
# allow_tools = ["read_text_file", "list_directory"]
# [mcp.tracker]
# url = "https://mcp.example.com/mcp"
# headers = {{ Authorization = "Bearer ${{TRACKER_TOKEN}}" }}
# tool.create_issue.approval = "required"

# Hand the conversation over to another agent (the model gets `transfer_to_billing`); it
# carries on the same run and budget and gives the final answer.
# [handoffs.billing]
# agent = "billing.toml"
# description = "Questions about invoices and refunds"

# Long-term memory: facts recalled into context, saved and searched with the memory_save
# and memory_search tools; facts about `--var user=…` are shared by the agents serving them.
# [memory]
# embedding_model = "local-embed"
# recall = 5

# Your own tool: a command that reads its arguments as JSON on standard input.
# [tools.lookup_order]
# description = "Look up an order by id"
# command = ["python3", "tools/lookup_order.py"]
# parameters = {{ type = "object", properties = {{ order_id = {{ type = "string" }} }}, required = ["order_id"] }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_file_parses() {
        let def = AgentDef::parse(&starter("helper")).unwrap();
        assert_eq!(def.name, "helper");
        assert_eq!(def.tools["write_file"].approval, Approval::Required);
        assert_eq!(def.budget.max_steps, 20);
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let base = "name = \"a\"\nmodel = \"local\"\ninstructions = \"x\"\n";
        let err = AgentDef::parse(&format!("{base}[tools.refund]\n")).unwrap_err().to_string();
        assert!(err.contains("tool `refund` is not built in"), "{err}");
        let err = AgentDef::parse(&format!("{base}[tools.http_get]\n")).unwrap_err().to_string();
        assert!(err.contains("allow_hosts"), "{err}");
        let err = AgentDef::parse(&format!("{base}colour = 1\n")).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        let err = AgentDef::parse("name = \"a\"\n").unwrap_err().to_string();
        assert!(err.contains("model"), "{err}");
    }

    #[test]
    fn instructions_fill_placeholders_and_name_missing_ones() {
        let def = AgentDef::parse("name = \"a\"\nmodel = \"m\"\ninstructions = \"Hi {{ user }}, today is {{day}}.\"\n").unwrap();
        let dir = std::env::temp_dir().join(format!("keel-def-test-{}", std::process::id()));
        let store = std::sync::Arc::new(keel_store::Store::open(&dir.join("t.db")).unwrap());
        let mut vars = BTreeMap::new();
        vars.insert("user".to_string(), "Ada".to_string());
        let err = def.render_instructions(&vars, &store).unwrap_err().to_string();
        assert!(err.contains("{{day}}"), "{err}");
        vars.insert("day".to_string(), "Monday".to_string());
        assert_eq!(def.render_instructions(&vars, &store).unwrap(), "Hi Ada, today is Monday.");

        // From the registry: the label is read when the run starts.
        let def = AgentDef::parse("name = \"a\"\nmodel = \"m\"\ninstructions = { prompt = \"helper\", label = \"production\" }\n").unwrap();
        let err = def.render_instructions(&vars, &store).unwrap_err().to_string();
        assert!(err.contains("no prompt `helper`"), "{err}");
        let err = AgentDef::parse("name = \"a\"\nmodel = \"m\"\ninstructions = { promt = \"helper\" }\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `promt`"), "{err}");
        let body = r#"{"messages": [{"role": "system", "content": "You help {{ user }}."}, {"role": "user", "content": "x"}]}"#;
        let version = store.push_prompt("helper", body, "").unwrap();
        assert!(def.render_instructions(&vars, &store).unwrap_err().to_string().contains("no label `production`"));
        store.set_prompt_label("helper", "production", version).unwrap();
        assert_eq!(def.render_instructions(&vars, &store).unwrap(), "You help Ada.");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
