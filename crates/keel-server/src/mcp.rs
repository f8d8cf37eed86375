//! keel as an MCP server: every agent `keel serve` (or `keel mcp serve`) knows is a tool
//! that runs it on a request and answers with its final output. Served over stdio and over
//! Streamable HTTP at `/mcp`; MCP 2026-07-28 clients and 2025-11-25 ones both work.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_agent::RunStatus;
use rmcp::ErrorData as McpError;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult, PaginatedRequestParams,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use crate::agents::Agents;

/// The agents as MCP tools.
#[derive(Clone)]
pub struct AgentTools {
    agents: Arc<Agents>,
}

impl AgentTools {
    pub fn new(agents: Arc<Agents>) -> AgentTools {
        AgentTools { agents }
    }

    /// The Streamable HTTP endpoint, to mount at `/mcp`.
    pub fn http_service(self) -> StreamableHttpService<AgentTools, LocalSessionManager> {
        StreamableHttpService::new(move || Ok(self.clone()), Arc::default(), StreamableHttpServerConfig::default())
    }

    fn tool(name: &str, agent: &keel_agent::Agent) -> Tool {
        let description = agent.def.description.clone().unwrap_or_else(|| format!("Run the {name} agent on a request and get its answer."));
        let schema = json!({
            "type": "object",
            "properties": {
                "request": {"type": "string", "description": "What to ask the agent, in full"},
                "vars": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "Values for the {{placeholders}} in the agent's instructions"
                }
            },
            "required": ["request"],
            "additionalProperties": false
        });
        let Value::Object(schema) = schema else { unreachable!("a JSON object literal") };
        Tool::new(name.to_string(), description, schema)
    }
}

fn text(text: impl Into<String>) -> Vec<ContentBlock> {
    vec![ContentBlock::text(text.into())]
}

impl rmcp::ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("keel", env!("CARGO_PKG_VERSION")))
            .with_instructions("Each tool runs one of keel's agents on a request, with its own tools and budget, and returns its answer.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.agents.agents.iter().map(|(name, agent)| AgentTools::tool(name, agent)).collect()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(agent) = self.agents.agents.get(request.name.as_ref()) else {
            let known: Vec<&str> = self.agents.agents.keys().map(String::as_str).collect();
            return Err(McpError::invalid_params(format!("no agent is named `{}`; the agents are: {}", request.name, known.join(", ")), None));
        };
        let arguments = request.arguments.unwrap_or_default();
        let Some(input) = arguments.get("request").and_then(Value::as_str) else {
            return Err(McpError::invalid_params("`request` (a string) is required", None));
        };
        let mut vars = BTreeMap::new();
        if let Some(given) = arguments.get("vars").and_then(Value::as_object) {
            for (key, value) in given {
                let value = value.as_str().map_or_else(|| value.to_string(), String::from);
                vars.insert(key.clone(), value);
            }
        }
        let runner = self.agents.runner();
        // The run goes on in its own task: a client that disconnects does not cut it mid-step.
        let agent = agent.clone();
        let input = input.to_string();
        let outcome = tokio::spawn(async move { runner.start(&agent, &input, &vars).await })
            .await
            .map_err(|e| McpError::internal_error(format!("the run stopped unexpectedly: {e}"), None))?
            .map_err(|e| McpError::invalid_params(e.to_string(), None))?;
        let output = outcome.output.clone().unwrap_or_default();
        let result = match outcome.status {
            RunStatus::Completed => match serde_json::from_str::<Value>(&output) {
                Ok(value) if agent_has_schema(&self.agents, request.name.as_ref()) => CallToolResult::structured(value),
                _ => CallToolResult::success(text(output)),
            },
            RunStatus::WaitingApproval => {
                let calls: Vec<String> = outcome.waiting.iter().map(|c| format!("{} ({})", c.name, c.id)).collect();
                CallToolResult::success(text(format!(
                    "Run {} is waiting for a human to approve {}; it goes on after `keel runs approve {} CALL` (or the HTTP API).",
                    outcome.run_id,
                    calls.join(", "),
                    outcome.run_id
                )))
            }
            RunStatus::Stopped | RunStatus::Failed | RunStatus::Running => CallToolResult::error(text(format!(
                "run {} {}: {}{}",
                outcome.run_id,
                outcome.status.as_str(),
                outcome.reason.unwrap_or_default(),
                if output.is_empty() { String::new() } else { format!("\npartial answer: {output}") }
            ))),
        };
        Ok(result.into())
    }
}

fn agent_has_schema(agents: &Agents, name: &str) -> bool {
    agents.agents.get(name).is_some_and(|a| a.def.output_schema.is_some())
}
