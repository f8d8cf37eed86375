//! MCP servers as tool sources (the `rmcp` crate): a server named in an agent file is
//! started (stdio) or reached (Streamable HTTP) when a run first needs it, its tools become
//! the agent's tools as `SERVER__TOOL`, and its resources are readable through
//! `SERVER__read_resource`. keel speaks MCP 2026-07-28 (`server/discover`) and falls back to
//! the 2025-11-25 handshake for older servers. A server that dies is started again on the
//! next call; the call it died in is an error the model sees.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use keel_core::ToolDef;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, GetPromptRequestParams, Implementation, ProtocolVersion, ReadResourceRequestParams,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::Error;
use crate::definition::McpServerSpec;
use crate::tools::{Entry, Tool, ToolContext, ToolKind, truncate};

const DEFAULT_CALL_TIMEOUT_S: f64 = 60.0;
const DEFAULT_STARTUP_TIMEOUT_S: f64 = 30.0;
/// Lines of a stdio server's standard error kept to explain its failures.
const STDERR_LINES: usize = 20;

type Client = RunningService<RoleClient, KeelClient>;

/// keel as an MCP client: it names itself and asks for nothing beyond tools, resources and
/// prompts.
#[derive(Clone)]
struct KeelClient;

impl rmcp::ClientHandler for KeelClient {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("keel", env!("CARGO_PKG_VERSION"));
        info
    }
}

/// One MCP server of an agent.
pub struct McpServer {
    pub name: String,
    spec: McpServerSpec,
    base_dir: PathBuf,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    entries: tokio::sync::OnceCell<BTreeMap<String, Entry>>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").field("name", &self.name).finish()
    }
}

/// What `keel mcp list` shows of a server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub server: String,
    pub protocol: String,
    pub implementation: Option<String>,
    pub tools: Vec<(String, String)>,
    pub resources: Vec<(String, String)>,
    pub prompts: Vec<(String, String)>,
}

/// `${VAR}` replaced by VAR from the environment; a missing variable is an error naming it.
fn expand(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let var = &rest[start + 2..start + end];
        out.push_str(&std::env::var(var).map_err(|_| format!("the environment variable {var} is not set"))?);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl McpServer {
    pub fn new(name: &str, spec: &McpServerSpec, base_dir: &Path) -> McpServer {
        McpServer {
            name: name.into(),
            spec: spec.clone(),
            base_dir: base_dir.into(),
            client: tokio::sync::Mutex::new(None),
            stderr: Arc::default(),
            entries: tokio::sync::OnceCell::new(),
        }
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() { String::new() } else { format!("; its last output: {}", lines.iter().cloned().collect::<Vec<_>>().join(" | ")) }
    }

    /// Starts (or reaches) the server and completes the MCP handshake.
    async fn open(&self) -> Result<Client, String> {
        // reqwest 0.13 (rmcp's HTTP client) uses the process's rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let lifecycle = ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            legacy_version: Some(ProtocolVersion::V_2025_11_25),
        };
        let startup = Duration::from_secs_f64(self.spec.startup_timeout_s.unwrap_or(DEFAULT_STARTUP_TIMEOUT_S).max(0.01));
        let connect = async {
            if let Some(command) = &self.spec.command {
                let mut cmd = tokio::process::Command::new(&command[0]);
                cmd.args(&command[1..]).current_dir(&self.base_dir).kill_on_drop(true);
                for (key, value) in &self.spec.env {
                    cmd.env(key, expand(value)?);
                }
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("could not start `{}`: {e}", command.join(" ")))?;
                if let Some(stderr) = stderr {
                    let tail = self.stderr.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                            if tail.len() == STDERR_LINES {
                                tail.pop_front();
                            }
                            tail.push_back(line);
                        }
                    });
                }
                KeelClient.serve_with_lifecycle(transport, lifecycle).await.map_err(|e| e.to_string())
            } else {
                let url = self.spec.url.clone().unwrap_or_default();
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                let mut headers = HashMap::new();
                for (key, value) in &self.spec.headers {
                    let value = expand(value)?;
                    if key.eq_ignore_ascii_case("authorization") {
                        config = config.auth_header(value.strip_prefix("Bearer ").unwrap_or(&value).to_string());
                        continue;
                    }
                    let name = http::HeaderName::try_from(key.as_str()).map_err(|e| format!("header `{key}`: {e}"))?;
                    let value = http::HeaderValue::try_from(value).map_err(|_| format!("header `{key}` has a value that cannot be sent"))?;
                    headers.insert(name, value);
                }
                let transport = StreamableHttpClientTransport::from_config(config.custom_headers(headers));
                KeelClient.serve_with_lifecycle(transport, lifecycle).await.map_err(|e| e.to_string())
            }
        };
        match tokio::time::timeout(startup, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(format!("the MCP server `{}` did not start: {err}{}", self.name, self.stderr_tail())),
            Err(_) => Err(format!(
                "the MCP server `{}` did not answer its handshake within {:.0} s (startup_timeout_s){}",
                self.name,
                startup.as_secs_f64(),
                self.stderr_tail()
            )),
        }
    }

    /// The live connection, opened (again) if there is none.
    async fn client(&self) -> Result<Arc<Client>, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.is_transport_closed()
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.open().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets a connection that failed, so the next call opens a new one.
    async fn forget(&self, failed: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            *slot = None;
        }
    }

    /// A failed request as the model (or a user) should read it.
    async fn failure(&self, client: &Arc<Client>, what: &str, err: ServiceError) -> String {
        match err {
            ServiceError::McpError(e) => format!("the MCP server `{}` refused {what}: {}", self.name, e.message),
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                self.forget(client).await;
                // Give the process a moment to finish writing why it stopped.
                tokio::time::sleep(Duration::from_millis(50)).await;
                format!(
                    "the MCP server `{}` stopped during {what}{}; it will be started again on the next call",
                    self.name,
                    self.stderr_tail()
                )
            }
            other => format!("the MCP server `{}` failed {what}: {other}", self.name),
        }
    }

    /// The server's tools as the agent's, connecting on first use.
    pub(crate) async fn entries(self: &Arc<Self>) -> Result<&BTreeMap<String, Entry>, String> {
        self.entries.get_or_try_init(|| self.list_entries()).await
    }

    /// The entries if the server has been connected.
    pub fn connected_entries(&self) -> Option<&BTreeMap<String, Entry>> {
        self.entries.get()
    }

    async fn list_entries(self: &Arc<Self>) -> Result<BTreeMap<String, Entry>, String> {
        let client = self.client().await?;
        let tools = match client.list_all_tools().await {
            Ok(tools) => tools,
            Err(err) => return Err(self.failure(&client, "listing its tools", err).await),
        };
        let mut entries = BTreeMap::new();
        for tool in tools {
            let remote = tool.name.to_string();
            if self.spec.allow_tools.as_ref().is_some_and(|allowed| !allowed.contains(&remote)) {
                continue;
            }
            let settings = self.spec.tool.get(&remote);
            let def = ToolDef {
                name: self.tool_name(&remote),
                description: tool.description.as_ref().map(|d| d.to_string()),
                parameters: Value::Object((*tool.input_schema).clone()),
                strict: None,
            };
            let timeout_s = settings.and_then(|s| s.timeout_s).or(self.spec.timeout_s).unwrap_or(DEFAULT_CALL_TIMEOUT_S);
            let tool = Arc::new(McpTool { server: self.clone(), remote, def: def.clone() });
            let approval = settings.and_then(|s| s.approval).unwrap_or(self.spec.approval);
            entries.insert(def.name.clone(), Entry::new(def, ToolKind::Code(tool), approval, Some(timeout_s)));
        }
        let has_resources = client.peer_info().is_some_and(|info| info.capabilities.resources.is_some());
        if has_resources {
            let listed = client.list_all_resources().await.unwrap_or_default();
            let mut known: Vec<String> = listed.iter().take(20).map(|r| format!("{} ({})", r.uri, r.name)).collect();
            if listed.len() > 20 {
                known.push(format!("and {} more", listed.len() - 20));
            }
            let def = ToolDef {
                name: self.tool_name("read_resource"),
                description: Some(format!(
                    "Read a resource of the {} MCP server by its URI.{}",
                    self.name,
                    if known.is_empty() { String::new() } else { format!(" Known resources: {}", known.join("; ")) }
                )),
                parameters: json!({"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"], "additionalProperties": false}),
                strict: None,
            };
            let timeout_s = self.spec.timeout_s.unwrap_or(DEFAULT_CALL_TIMEOUT_S);
            let tool = Arc::new(ReadResource { server: self.clone(), def: def.clone() });
            entries.insert(def.name.clone(), Entry::new(def, ToolKind::Code(tool), self.spec.approval, Some(timeout_s)));
        }
        Ok(entries)
    }

    /// `SERVER__TOOL`, cut to the 64 characters model APIs accept.
    fn tool_name(&self, remote: &str) -> String {
        let mut name: String = format!("{}__{remote}", self.name)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .collect();
        name.truncate(64);
        name
    }

    /// Calls a tool of the server: its text, or its error (the tool's own error text, or why
    /// the call could not be made).
    pub async fn call_tool(&self, remote: &str, arguments: Value) -> Result<String, Error> {
        self.call_text(remote, arguments).await.map_err(Error::Mcp)
    }

    /// [`McpServer::call_tool`] as a tool call: the error is the text the model reads.
    pub(crate) async fn call_text(&self, remote: &str, arguments: Value) -> Result<String, String> {
        let client = self.client().await?;
        let mut params = CallToolRequestParams::new(remote.to_string());
        if let Value::Object(map) = arguments {
            params = params.with_arguments(map);
        }
        match client.call_tool(params).await {
            Ok(result) => {
                let text = render(&result.content, result.structured_content.as_ref());
                if result.is_error == Some(true) { Err(truncate(text)) } else { Ok(truncate(text)) }
            }
            Err(err) => Err(self.failure(&client, &format!("the call to `{remote}`"), err).await),
        }
    }

    pub async fn read_resource(&self, uri: &str) -> Result<String, Error> {
        self.read_text(uri).await.map_err(Error::Mcp)
    }

    pub(crate) async fn read_text(&self, uri: &str) -> Result<String, String> {
        let client = self.client().await?;
        match client.read_resource(ReadResourceRequestParams::new(uri)).await {
            Ok(result) => {
                let contents = serde_json::to_value(&result.contents).unwrap_or_default();
                let parts: Vec<String> = contents.as_array().into_iter().flatten().map(resource_text).collect();
                Ok(truncate(parts.join("\n")))
            }
            Err(err) => Err(self.failure(&client, &format!("reading `{uri}`"), err).await),
        }
    }

    /// A prompt of the server, its messages as `role: text` lines.
    pub async fn get_prompt(&self, name: &str, arguments: serde_json::Map<String, Value>) -> Result<String, Error> {
        let client = self.client().await.map_err(Error::Mcp)?;
        let mut params = GetPromptRequestParams::new(name);
        if !arguments.is_empty() {
            params.arguments = Some(arguments);
        }
        match client.get_prompt(params).await {
            Ok(result) => {
                let lines: Vec<String> = result
                    .messages
                    .iter()
                    .map(|m| {
                        let role = serde_json::to_value(&m.role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                        format!("{role}: {}", render(std::slice::from_ref(&m.content), None))
                    })
                    .collect();
                Ok(lines.join("\n"))
            }
            Err(err) => Err(Error::Mcp(self.failure(&client, &format!("the prompt `{name}`"), err).await)),
        }
    }

    /// Everything the server offers, for `keel mcp list`.
    pub async fn listing(&self) -> Result<Listing, Error> {
        let client = self.client().await.map_err(Error::Mcp)?;
        let info = client.peer_info();
        let tools = match client.list_all_tools().await {
            Ok(tools) => tools,
            Err(err) => return Err(Error::Mcp(self.failure(&client, "listing its tools", err).await)),
        };
        let capabilities = info.as_ref().map(|i| i.capabilities.clone()).unwrap_or_default();
        let resources = if capabilities.resources.is_some() { client.list_all_resources().await.unwrap_or_default() } else { Vec::new() };
        let prompts = if capabilities.prompts.is_some() { client.list_all_prompts().await.unwrap_or_default() } else { Vec::new() };
        Ok(Listing {
            server: self.name.clone(),
            protocol: info.as_ref().map(|i| i.protocol_version.to_string()).unwrap_or_default(),
            implementation: info.as_ref().and_then(|i| i.server_info.as_ref()).map(|s| format!("{} {}", s.name, s.version)),
            tools: tools.iter().map(|t| (t.name.to_string(), t.description.as_deref().unwrap_or_default().to_string())).collect(),
            resources: resources.iter().map(|r| (r.uri.clone(), r.name.clone())).collect(),
            prompts: prompts.iter().map(|p| (p.name.clone(), p.description.clone().unwrap_or_default())).collect(),
        })
    }
}

/// A resource's contents as text (binary ones by size).
fn resource_text(contents: &Value) -> String {
    if let Some(text) = contents.get("text").and_then(Value::as_str) {
        return text.to_string();
    }
    let uri = contents.get("uri").and_then(Value::as_str).unwrap_or_default();
    let mime = contents.get("mimeType").and_then(Value::as_str).unwrap_or("binary");
    let size = contents.get("blob").and_then(Value::as_str).map_or(0, |b| b.len() * 3 / 4);
    format!("[{mime} resource {uri}, about {size} bytes]")
}

/// A tool result's content blocks as text for the model.
fn render(content: &[rmcp::model::ContentBlock], structured: Option<&Value>) -> String {
    let mut parts = Vec::new();
    for block in content {
        let block = serde_json::to_value(block).unwrap_or_default();
        let part = match block.get("type").and_then(Value::as_str) {
            Some("text") => block.get("text").and_then(Value::as_str).unwrap_or_default().to_string(),
            Some(kind @ ("image" | "audio")) => {
                let mime = block.get("mimeType").and_then(Value::as_str).unwrap_or(kind);
                let size = block.get("data").and_then(Value::as_str).map_or(0, |d| d.len() * 3 / 4);
                format!("[{mime} {kind}, about {size} bytes]")
            }
            Some("resource") => resource_text(block.get("resource").unwrap_or(&Value::Null)),
            Some("resource_link") => {
                format!("[resource {} ({})]", block["uri"].as_str().unwrap_or_default(), block["name"].as_str().unwrap_or_default())
            }
            _ => block.to_string(),
        };
        parts.push(part);
    }
    if parts.is_empty()
        && let Some(structured) = structured
    {
        parts.push(structured.to_string());
    }
    parts.join("\n")
}

/// One tool of an MCP server.
struct McpTool {
    server: Arc<McpServer>,
    remote: String,
    def: ToolDef,
}

impl Tool for McpTool {
    fn def(&self) -> ToolDef {
        self.def.clone()
    }

    fn call<'a>(&'a self, arguments: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.server.call_text(&self.remote, arguments))
    }
}

/// `SERVER__read_resource`.
struct ReadResource {
    server: Arc<McpServer>,
    def: ToolDef,
}

impl Tool for ReadResource {
    fn def(&self) -> ToolDef {
        self.def.clone()
    }

    fn call<'a>(&'a self, arguments: Value, _ctx: &'a ToolContext) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let uri = arguments.get("uri").and_then(Value::as_str).ok_or("missing string argument `uri`")?;
            self.server.read_text(uri).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn environment_variables_fill_headers_and_missing_ones_are_named() {
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand("a ${PATH} b").unwrap(), format!("a {path} b"));
        assert_eq!(expand("no vars").unwrap(), "no vars");
        let err = expand("Bearer ${KEEL_TEST_SURELY_UNSET_VAR}").unwrap_err();
        assert!(err.contains("KEEL_TEST_SURELY_UNSET_VAR"), "{err}");
    }
}
