//! The agent loop: model call → tool calls (concurrently) → results → again, until a final
//! answer, a pause for approval, or the budget runs out. Every completed step is committed
//! to the store before the loop goes on, and a run is rebuilt from its steps to resume, so a
//! killed process loses at most the step it was in and never repeats a recorded tool call.

mod secure;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use keel_core::{ChatRequest, ChatResponse, Message, ResponseFormat, Role, ToolCall, Usage};
use keel_store::{CHECKPOINT_FORMAT, RunRecord, SpanRecord, StepRecord, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::definition::{AgentDef, Approval, Budget};
use crate::memory::Memory;
use crate::model::ChatModel;
use crate::tools::{ToolBox, ToolContext};
use crate::{Error, schema};

/// An agent ready to run: its definition, its tools and its workspace.
pub struct Agent {
    pub def: AgentDef,
    pub tools: ToolBox,
    pub workspace: PathBuf,
    /// Where command tools run (the agent file's folder).
    pub base_dir: PathBuf,
    /// Agents this one calls as tools, by tool name.
    pub sub_agents: BTreeMap<String, Arc<Agent>>,
    /// Handoff tools (`transfer_to_NAME`) and the agent (by name) each hands over to.
    pub handoffs: BTreeMap<String, String>,
    /// Every agent a run of this one can be handed over to, by name (a handoff's handoffs
    /// included); held by the agent a run starts with.
    pub team: BTreeMap<String, Arc<Agent>>,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
}

/// How deep agents may call agents that call agents.
const MAX_AGENT_DEPTH: usize = 4;

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.def.name).field("tools", &self.tools).finish()
    }
}

impl Agent {
    /// The agent a definition describes, with its built-in and command tools.
    pub fn new(def: AgentDef, base_dir: &Path) -> Agent {
        let workspace = def.workspace.clone().unwrap_or_else(|| base_dir.join("workspace"));
        let tools = ToolBox::from_definition(&def, base_dir);
        Agent { def, tools, workspace, base_dir: base_dir.to_path_buf(), sub_agents: BTreeMap::new(), handoffs: BTreeMap::new(), team: BTreeMap::new(), file: None }
    }

    /// Lets this agent hand the conversation over to `to` (a Rust-built agent; files name
    /// theirs under `[handoffs]`).
    pub fn add_handoff(&mut self, name: &str, to: Agent) {
        let description = format!("Hand the conversation over to the {name} agent.");
        let def = keel_core::ToolDef {
            name: format!("transfer_to_{name}"),
            description: Some(format!("{description} It takes over from here and answers the user.")),
            parameters: serde_json::json!({"type": "object", "properties": {"reason": {"type": "string"}}, "additionalProperties": false}),
            strict: None,
        };
        self.tools.insert(Arc::new(crate::tools::AgentTool::from_def(def)), Approval::Never, None);
        self.handoffs.insert(format!("transfer_to_{name}"), to.def.name.clone());
        let to = Arc::new(to);
        for (member, agent) in &to.team {
            self.team.entry(member.clone()).or_insert_with(|| agent.clone());
        }
        self.team.insert(to.def.name.clone(), to);
    }

    /// The agent of the team named `name` (this one when it is its own name).
    fn member(&self, name: Option<&str>) -> &Agent {
        match name {
            Some(name) if name != self.def.name => self.team.get(name).map_or(self, |a| a.as_ref()),
            _ => self,
        }
    }

    /// Reads an agent file, and the agent files its tools name.
    pub fn load(path: &Path) -> Result<Agent, Error> {
        Agent::load_at_depth(path, 0, true)
    }

    /// Reads an agent file with its sub-agents, and with its handoff team when `team`.
    fn load_at_depth(path: &Path, depth: usize, team: bool) -> Result<Agent, Error> {
        let def = AgentDef::load(path)?;
        let base_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let mut agent = Agent::new(def, &base_dir);
        agent.file = Some(path.to_path_buf());
        agent.load_sub_agents(depth)?;
        if team {
            agent.load_team(path)?;
        }
        Ok(agent)
    }

    /// Loads every agent reachable through handoffs (cycles welcome: B may hand back to A).
    fn load_team(&mut self, path: &Path) -> Result<(), Error> {
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let mut seen: BTreeMap<PathBuf, String> = BTreeMap::from([(canonical(path), self.def.name.clone())]);
        let mut queue: Vec<(PathBuf, AgentDef)> = vec![(self.base_dir.clone(), self.def.clone())];
        let mut team: BTreeMap<String, Agent> = BTreeMap::new();
        let mut links: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        while let Some((base, def)) = queue.pop() {
            for (name, spec) in &def.handoffs {
                let file = if spec.agent.is_absolute() { spec.agent.clone() } else { base.join(&spec.agent) };
                let key = canonical(&file);
                let target = match seen.get(&key) {
                    Some(target) => target.clone(),
                    None => {
                        let member = Agent::load_at_depth(&file, 1, false).map_err(|e| Error::Definition(format!("handoff `{name}`: {e}")))?;
                        let target = member.def.name.clone();
                        if target == self.def.name || team.contains_key(&target) {
                            return Err(Error::Definition(format!("handoff `{name}`: two agents of the team are named `{target}`")));
                        }
                        seen.insert(key, target.clone());
                        queue.push((member.base_dir.clone(), member.def.clone()));
                        team.insert(target.clone(), member);
                        target
                    }
                };
                links.entry(def.name.clone()).or_default().insert(format!("transfer_to_{name}"), target);
            }
        }
        self.handoffs = links.remove(&self.def.name).unwrap_or_default();
        for (name, mut member) in team {
            member.handoffs = links.remove(&name).unwrap_or_default();
            self.team.insert(name, Arc::new(member));
        }
        Ok(())
    }

    fn load_sub_agents(&mut self, depth: usize) -> Result<(), Error> {
        for (name, spec) in &self.def.tools {
            let Some(file) = &spec.agent else { continue };
            if depth + 1 > MAX_AGENT_DEPTH {
                return Err(Error::Definition(format!(
                    "tool `{name}`: agents call agents more than {MAX_AGENT_DEPTH} deep (is there a cycle?)"
                )));
            }
            let path = if file.is_absolute() { file.clone() } else { self.base_dir.join(file) };
            let sub = Agent::load_at_depth(&path, depth + 1, true).map_err(|e| Error::Definition(format!("tool `{name}`: {e}")))?;
            self.sub_agents.insert(name.clone(), Arc::new(sub));
        }
        Ok(())
    }
}

/// One checkpointed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// A model call: the exact request keel sent and the answer it got.
    Model {
        request: Box<ChatRequest>,
        response: Box<ChatResponse>,
        provider: String,
        cost_usd: Option<f64>,
        ms: f64,
        /// Secure mode: `planner`, or `quarantine:STEP` for a quarantined read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    /// A finished tool call.
    Tool {
        call_id: String,
        name: String,
        arguments: String,
        output: String,
        is_error: bool,
        /// The model's arguments did not fit the tool (not JSON, wrong shape, unknown tool).
        #[serde(default)]
        invalid: bool,
        idempotency_key: String,
        ms: f64,
        /// What a sub-agent behind this tool spent, charged to this run's budget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spent: Option<Spent>,
        /// The agent this call handed the conversation to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handoff: Option<String>,
        /// Where the output came from and who may read it (the guard's label).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<keel_guard::Label>,
        /// The guard's decision that let the call run (one that stopped it is a step of its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guard: Option<Box<keel_guard::Decision>>,
        /// What the injection detector flagged in untrusted output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        injection: Option<Flagged>,
    },
    /// The guard's decision on a call that it stopped: ask a human, or deny.
    Guard { call_id: String, decision: keel_guard::Decision },
    /// A human's decision on a call that needed approval.
    Approval { call_id: String, approved: bool, note: Option<String> },
}

/// The injection detector's finding on a tool's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flagged {
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::Model { .. } => "model",
            Step::Tool { .. } => "tool",
            Step::Approval { .. } => "approval",
            Step::Guard { .. } => "guard",
        }
    }
}

/// What a sub-agent's run spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub run_id: String,
    pub model_calls: u32,
    pub usage: Usage,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    WaitingApproval,
    Completed,
    Failed,
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::WaitingApproval => "waiting_approval",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
        }
    }
}

/// How a run ended, or why it paused.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub run_id: String,
    pub status: RunStatus,
    pub output: Option<String>,
    pub reason: Option<String>,
    /// Calls waiting for a human (status `waiting_approval`).
    pub waiting: Vec<ToolCall>,
    pub usage: Usage,
    pub cost_usd: f64,
    pub model_calls: u32,
}

/// What a run reports while it goes, for terminals and SSE.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    Started { run_id: String, agent: String, resumed: bool },
    /// A piece of the model's answer as it is written (only when events are watched).
    Delta { text: String },
    ModelCall { step: i64, text: String, tool_calls: Vec<ToolCall>, usage: Usage, cost_usd: Option<f64>, ms: f64 },
    ToolResult { step: i64, call_id: String, name: String, arguments: String, output: String, is_error: bool, ms: f64 },
    /// A recorded result reused on resume instead of running the call again.
    ToolReused { call_id: String, name: String },
    WaitingApproval { call_id: String, name: String, arguments: String },
    /// The guard's decision on a call, before it runs.
    Guard { step: i64, call_id: String, name: String, verdict: keel_guard::Verdict, policy: String, reason: String },
    Finished { status: RunStatus, output: Option<String>, reason: Option<String> },
}

/// What a run started with, stored beside it so a resume runs the same agent.
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    def: AgentDef,
    /// The system prompt as sent, recalled memories included.
    system: String,
    /// The user the run serves (long-term memory), from the run's variables.
    #[serde(default)]
    user: Option<String>,
    /// The facts recalled into the system prompt, and their label together.
    #[serde(default)]
    memory: Option<(String, keel_guard::Label)>,
    /// The system prompts of the agents the run can be handed to, by name.
    #[serde(default)]
    systems: BTreeMap<String, String>,
    /// The agent file the run started from.
    #[serde(default)]
    file: Option<PathBuf>,
    base_dir: PathBuf,
    workspace: PathBuf,
}

impl Started {
    fn of(record: &RunRecord) -> Result<Started, Error> {
        serde_json::from_str(&record.definition)
            .map_err(|e| Error::Store(format!("run {}: the stored agent definition is unreadable: {e}", record.id)))
    }
}

/// The run rebuilt from its steps.
#[derive(Debug, Default)]
struct State {
    messages: Vec<Message>,
    model_calls: u32,
    usage: Usage,
    cost_usd: f64,
    active_ms: f64,
    pending: Vec<ToolCall>,
    results: HashMap<String, (String, bool, bool)>,
    approvals: HashMap<String, (bool, Option<String>)>,
    invalid_streak: u32,
    /// The last turn's calls (name and arguments) and how many turns in a row made them.
    last_calls: Vec<(String, String)>,
    repeat_streak: u32,
    last_text: Option<String>,
    /// The agent the conversation was handed to last (none: the one the run started with).
    active: Option<String>,
    /// What the run has seen, labelled, for the guard.
    context: keel_guard::Context,
    /// The guard's verdicts by call, with the reason.
    verdicts: HashMap<String, (keel_guard::Verdict, String)>,
    /// Secure mode: the planner's conversation (system, user, its attempts and what was wrong
    /// with them), the plan once one is valid, and each finished step's value and label.
    planner: Vec<Message>,
    plan: Option<secure::Plan>,
    plan_error: Option<String>,
    /// (value, label, the fields of it outsiders write).
    values: HashMap<String, secure::Value>,
    /// Secure mode: quarantined reads whose answer did not fit, by step.
    read_errors: HashMap<String, String>,
    /// The agent's tool names (secure mode checks plans against them).
    tools: Vec<String>,
    /// Tools whose JSON output is untrusted only in some fields, with those fields.
    untrusted_fields: HashMap<String, Vec<String>>,
    /// Tools that declare which arguments choose where they act (`targets = [...]`).
    targets: HashMap<String, Vec<String>>,
}

impl State {
    /// A run's state before its first step, for the agent that runs it.
    /// `memory`: the facts recalled into the system prompt, labelled by where they came from.
    fn for_agent(system: &str, input: &str, agent: &Agent, memory: Option<&(String, keel_guard::Label)>) -> State {
        let mut state = State::default();
        if agent.def.mode == crate::definition::Mode::Secure {
            state.context = keel_guard::Context::secure();
        }
        state.untrusted_fields =
            agent.def.tools.iter().filter_map(|(name, spec)| spec.untrusted_fields.clone().map(|fields| (name.clone(), fields))).collect();
        state.targets = agent.def.tools.iter().filter_map(|(name, spec)| spec.targets.clone().map(|targets| (name.clone(), targets))).collect();
        state.push_start(system, input);
        if let Some((facts, label)) = memory {
            state.context.push("memory", label.clone(), facts);
        }
        if agent.def.mode == crate::definition::Mode::Default {
            return state;
        }
        state.tools = agent.tools.names().into_iter().map(String::from).collect();
        state.planner = vec![
            Message::text(Role::System, secure::planner_prompt(system, &agent.tools.defs())),
            Message::text(Role::User, input),
        ];
        state
    }

    /// The system prompt and the user's message: the first two things a run sees. Recalled
    /// facts are in the system prompt the model reads, but their label is where they came
    /// from (a `memory` item), not the system's.
    fn push_start(&mut self, system: &str, input: &str) {
        let state = self;
        if !system.trim().is_empty() {
            state.messages.push(Message::text(Role::System, system));
            let own = system.find(MEMORY_HEADER).map_or(system, |at| &system[..at]);
            state.context.push("system", keel_guard::Label::system(), own);
        }
        state.messages.push(Message::text(Role::User, input));
        state.context.push("user", keel_guard::Label::user(), input);
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Model { response, cost_usd, ms, role: Some(role), .. } => {
                self.model_calls += 1;
                self.usage.add(response.usage);
                self.cost_usd += cost_usd.unwrap_or(0.0);
                self.active_ms += ms;
                // Whatever calls these answers hold are never made.
                let cut = response.finish_reason == keel_core::FinishReason::Length;
                self.apply_secure(role, &response.message.text_content(), cut);
            }
            Step::Model { response, cost_usd, ms, .. } => {
                self.settle();
                self.model_calls += 1;
                self.usage.add(response.usage);
                self.cost_usd += cost_usd.unwrap_or(0.0);
                self.active_ms += ms;
                let text = response.message.text_content();
                if !text.trim().is_empty() {
                    self.last_text = Some(text);
                }
                self.messages.push(response.message.clone());
                self.pending = response.message.tool_calls.clone();
            }
            Step::Tool { call_id, name, output, is_error, invalid, ms, spent, handoff, label, injection, guard, .. } => {
                self.active_ms += ms;
                // Runs recorded before labels count their tools' output as untrusted.
                let mut label = label.clone().unwrap_or_else(|| keel_guard::Label::tool(name, keel_guard::Capabilities::conservative()));
                if let Some(flag) = injection {
                    self.context.flag(&format!("tool:{name}"), flag.score, flag.rule.as_deref());
                }
                let mut fields = self.untrusted_fields.get(name).cloned().unwrap_or_default();
                // A tool asked for what untrusted content named (a file, a contact, a search)
                // returns what that content picked: its output carries the label of those
                // target arguments, every field of it.
                let plan_id = call_id.strip_prefix(secure::CALL_PREFIX);
                let targets = self.targets.get(name).map(Vec::as_slice);
                let chosen = guard
                    .as_ref()
                    .and_then(|decision| keel_guard::chosen_by(decision.arguments.iter().map(|a| (a.path.as_str(), &a.label)), targets))
                    .or_else(|| plan_id.and_then(|id| self.plan.as_ref()?.step(id)).and_then(|step| secure::chosen_by(step, &self.values, &self.context.control, targets)));
                if let Some(by) = &chosen {
                    label = label.join(by);
                    fields.clear();
                }
                if let Some(id) = plan_id.filter(|_| !is_error) {
                    let value = serde_json::from_str(output).unwrap_or_else(|_| serde_json::Value::String(output.clone()));
                    self.values.insert(id.to_string(), (value, label.clone(), fields.clone()));
                }
                if chosen.is_some() {
                    self.context.push_chosen(&format!("tool:{name}"), label, output);
                } else {
                    self.context.push_fields(&format!("tool:{name}"), label, output, &fields);
                }
                if let Some(to) = handoff {
                    self.active = Some(to.clone());
                }
                if let Some(spent) = spent {
                    self.model_calls += spent.model_calls;
                    self.usage.add(spent.usage);
                    self.cost_usd += spent.cost_usd;
                }
                self.results.insert(call_id.clone(), (output.clone(), *is_error, *invalid));
            }
            Step::Approval { call_id, approved, note } => {
                self.approvals.insert(call_id.clone(), (*approved, note.clone()));
            }
            Step::Guard { call_id, decision } => {
                self.verdicts.insert(call_id.clone(), (decision.verdict, format!("{} (policy {})", decision.reason, decision.policy)));
            }
        }
    }

    /// Applies a run's stored steps in order; returns the state and the next step number.
    fn replay(mut self, run_id: &str, steps: &[StepRecord]) -> Result<(State, i64), Error> {
        let mut next_seq = 0;
        for step in steps {
            let parsed: Step = serde_json::from_str(&step.data)
                .map_err(|e| Error::Store(format!("run {run_id}: step {} is unreadable: {e}", step.seq)))?;
            self.apply(&parsed);
            next_seq = step.seq + 1;
        }
        Ok((self, next_seq))
    }

    /// Puts the results of the pending calls after their assistant message, in call order.
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut all_invalid = true;
        let calls: Vec<(String, String)> = self.pending.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
        self.repeat_streak = if calls == self.last_calls { self.repeat_streak + 1 } else { 1 };
        self.last_calls = calls;
        for call in std::mem::take(&mut self.pending) {
            let (output, is_error, invalid) =
                self.results.get(&call.id).cloned().unwrap_or_else(|| ("no result was recorded for this call".into(), true, false));
            all_invalid &= invalid;
            let mut message = Message::text(Role::Tool, output);
            message.tool_call_id = Some(call.id.clone());
            message.name = Some(call.name.clone());
            message.is_error = is_error;
            self.messages.push(message);
        }
        self.invalid_streak = if all_invalid { self.invalid_streak + 1 } else { 0 };
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs agents against a model and a store.
pub struct Runner {
    pub(crate) store: Arc<Store>,
    model: Arc<dyn ChatModel>,
    events: Option<UnboundedSender<RunEvent>>,
    /// Where RAG collections live, for search tools.
    rag_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("store", &self.store.path()).finish()
    }
}

/// One run in progress (this process's stretch of it).
struct Live<'a> {
    id: String,
    agent: &'a Agent,
    next_seq: AtomicI64,
    /// The trace its spans go in: its own id, or its caller's trace for a sub-agent.
    trace_id: String,
    /// This stretch's `invoke_agent` span, and the span it hangs under (a caller's tool call).
    span_id: String,
    parent_span: Option<String>,
    started: Instant,
    start_ms: i64,
    resumed: bool,
    /// The user the run serves, for long-term memory.
    user: Option<String>,
    /// Handoff targets' system prompts.
    systems: BTreeMap<String, String>,
}

/// Where a run's spans go: (trace id, parent span id).
type TraceParent = Option<(String, String)>;

impl<'a> Live<'a> {
    fn new(id: String, agent: &'a Agent, next_seq: i64, parent: TraceParent, resumed: bool, user: Option<String>, systems: BTreeMap<String, String>) -> Live<'a> {
        let (trace_id, parent_span) = match parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (id.clone(), None),
        };
        Live {
            span_id: format!("{id}@{next_seq}"),
            id,
            agent,
            next_seq: AtomicI64::new(next_seq),
            trace_id,
            parent_span,
            started: Instant::now(),
            start_ms: now_ms(),
            resumed,
            user,
            systems,
        }
    }

    fn span(&self, span_id: String, name: String, operation: &str, start_ms: i64, duration_ms: f64, ok: bool, attributes: serde_json::Value) -> SpanRecord {
        SpanRecord {
            trace_id: self.trace_id.clone(),
            span_id,
            parent_id: Some(self.span_id.clone()),
            name,
            operation: operation.into(),
            run_id: self.id.clone(),
            start_ms,
            duration_ms,
            status: if ok { "ok" } else { "error" }.into(),
            attributes: attributes.to_string(),
        }
    }

    /// The `chat` or `execute_tool` span of a step.
    fn span_of(&self, seq: i64, step: &Step) -> Option<SpanRecord> {
        let now = now_ms();
        match step {
            Step::Model { request, response, provider, cost_usd, ms, role } => Some(self.span(
                format!("{}:{seq}", self.id),
                format!("chat {}", request.model),
                "chat",
                now - *ms as i64,
                *ms,
                true,
                serde_json::json!({
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": request.model,
                    "gen_ai.response.model": response.model,
                    "gen_ai.provider.name": provider,
                    "gen_ai.usage.input_tokens": response.usage.input_tokens,
                    "gen_ai.usage.output_tokens": response.usage.output_tokens,
                    "gen_ai.response.finish_reasons": [response.finish_reason],
                    "keel.cost_usd": cost_usd,
                    "keel.secure.role": role,
                    "keel.step": seq,
                }),
            )),
            Step::Tool { call_id, name, is_error, invalid, ms, guard, label, .. } => Some(self.span(
                format!("{}:{call_id}", self.id),
                format!("execute_tool {name}"),
                "execute_tool",
                now - *ms as i64,
                *ms,
                !is_error,
                serde_json::json!({
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": name,
                    "gen_ai.tool.call.id": call_id,
                    "keel.tool.invalid_arguments": invalid,
                    "keel.guard.verdict": guard.as_ref().map(|d| d.verdict),
                    "keel.guard.policy": guard.as_ref().map(|d| &d.policy),
                    "keel.guard.arguments": guard.as_ref().map(|d| &d.arguments),
                    "keel.guard.output_label": label,
                    "keel.step": seq,
                }),
            )),
            Step::Guard { call_id, decision } => Some(self.span(
                format!("{}:{call_id}:guard", self.id),
                format!("guard {}", decision.tool),
                "guard",
                now,
                0.0,
                decision.verdict != keel_guard::Verdict::Deny,
                serde_json::json!({
                    "gen_ai.tool.name": decision.tool,
                    "gen_ai.tool.call.id": call_id,
                    "keel.guard.verdict": decision.verdict,
                    "keel.guard.policy": decision.policy,
                    "keel.guard.reason": decision.reason,
                    "keel.guard.capabilities": decision.capabilities,
                    "keel.guard.context": decision.context,
                    "keel.guard.arguments": decision.arguments,
                    "keel.step": seq,
                }),
            )),
            Step::Approval { .. } => None,
        }
    }
}

impl Runner {
    pub fn new(store: Arc<Store>, model: Arc<dyn ChatModel>) -> Runner {
        Runner { store, model, events: None, rag_root: None }
    }

    /// The folder of keel's RAG collections, which tools with a `collection` search.
    pub fn with_rag_root(mut self, root: std::path::PathBuf) -> Runner {
        self.rag_root = Some(root);
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Sends every [`RunEvent`] to `events` as it happens.
    pub fn with_events(mut self, events: UnboundedSender<RunEvent>) -> Runner {
        self.events = Some(events);
        self
    }

    fn emit(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Starts a run of `agent` on `input`.
    pub async fn start(&self, agent: &Agent, input: &str, vars: &BTreeMap<String, String>) -> Result<Outcome, Error> {
        self.start_as(run_id(), agent, input, vars, None).await
    }

    async fn start_as(&self, id: String, agent: &Agent, input: &str, vars: &BTreeMap<String, String>, parent: TraceParent) -> Result<Outcome, Error> {
        let mut system = agent.def.render_instructions(vars)?;
        let mut remembered = None;
        let user = agent.def.memory.as_ref().and_then(|spec| vars.get(&spec.user_var)).cloned();
        if let Some(spec) = agent.def.memory.as_ref().filter(|spec| spec.recall > 0) {
            let memory = Memory { store: &self.store, model: &*self.model, spec, agent: &agent.def.name, user: user.as_deref() };
            let recalled = memory.search(input, spec.recall).await.map_err(Error::Definition)?;
            if !recalled.is_empty() {
                let mut facts = String::new();
                for fact in &recalled {
                    facts.push_str(&format!("- {} [{}]\n", fact.memory.text, fact.memory.id));
                }
                system.push_str(MEMORY_HEADER);
                system.push_str(&facts);
                remembered = Some((facts, crate::memory::recalled_label(&recalled)));
            }
        }
        std::fs::create_dir_all(&agent.workspace)
            .map_err(|e| Error::Definition(format!("could not create the workspace {}: {e}", agent.workspace.display())))?;
        let mut systems = BTreeMap::new();
        for (name, member) in &agent.team {
            systems.insert(name.clone(), member.def.render_instructions(vars)?);
        }
        let created_ms = now_ms();
        let started = Started {
            def: agent.def.clone(),
            system: system.clone(),
            user: user.clone(),
            memory: remembered.clone(),
            systems,
            file: agent.file.clone(),
            base_dir: agent.base_dir.clone(),
            workspace: agent.workspace.clone(),
        };
        let owner = Lease::owner();
        self.store.create_leased_run(&RunRecord {
            id: id.clone(),
            agent: agent.def.name.clone(),
            created_ms,
            updated_ms: created_ms,
            status: RunStatus::Running.as_str().into(),
            input: input.into(),
            output: None,
            reason: None,
            definition: serde_json::to_string(&started).map_err(|e| Error::Store(e.to_string()))?,
            format: CHECKPOINT_FORMAT,
        }, Some(&owner), Some(created_ms + LEASE_MS))?;
        let lease = Lease::held(&self.store, &id, owner);
        self.emit(RunEvent::Started { run_id: id.clone(), agent: agent.def.name.clone(), resumed: false });
        let live = Live::new(id, agent, 0, parent, false, user, started.systems);
        self.drive(&live, State::for_agent(&system, input, agent, remembered.as_ref()), Some(lease)).await
    }

    /// The agent a stored run started with (built-in and command tools; Rust tools are the
    /// caller's to add back).
    pub fn stored_agent(&self, run_id: &str) -> Result<Agent, Error> {
        let (record, _) = self.store.load_run(run_id)?;
        let started = Started::of(&record)?;
        let mut agent = Agent::new(started.def, &started.base_dir);
        agent.workspace = started.workspace;
        agent.load_sub_agents(0)?;
        if let Some(file) = started.file.filter(|_| !agent.def.handoffs.is_empty()) {
            // The handoff team is read again from its files.
            agent.load_team(&file)?;
        }
        Ok(agent)
    }

    /// Continues a run from its last completed step: recorded tool results are reused,
    /// never run again. A run that failed on its model (an upstream down, a key revoked) can
    /// be resumed once the cause is fixed; completed and stopped runs are over.
    pub async fn resume(&self, run_id: &str, agent: &Agent) -> Result<Outcome, Error> {
        self.resume_in(run_id, agent, None).await
    }

    async fn resume_in(&self, run_id: &str, agent: &Agent, parent: TraceParent) -> Result<Outcome, Error> {
        let (record, steps) = self.store.load_run(run_id)?;
        match record.status.as_str() {
            "completed" | "stopped" => {
                return Err(Error::Finished { id: record.id, status: record.status, reason: record.reason.unwrap_or_default() });
            }
            _ => {}
        }
        let started = Started::of(&record)?;
        let (state, next_seq) = State::for_agent(&started.system, &record.input, agent, started.memory.as_ref()).replay(run_id, &steps)?;
        for call in &state.pending {
            if state.results.contains_key(&call.id) {
                self.emit(RunEvent::ToolReused { call_id: call.id.clone(), name: call.name.clone() });
            }
        }
        self.emit(RunEvent::Started { run_id: record.id.clone(), agent: record.agent.clone(), resumed: true });
        let parent = match parent {
            Some(parent) => Some(parent),
            None => self.store.trace_of_run(run_id)?.filter(|trace| trace != run_id).map(|trace| (trace, String::new())),
        };
        let live = Live::new(record.id, agent, next_seq, parent, true, started.user, started.systems);
        self.drive(&live, state, None).await
    }

    /// Records a human's decision on a call a run is waiting for.
    pub fn decide(&self, run_id: &str, call_id: &str, approved: bool, note: Option<String>) -> Result<(), Error> {
        let (record, steps) = self.store.load_run(run_id)?;
        if record.status != RunStatus::WaitingApproval.as_str() {
            return Err(Error::NotWaiting { id: record.id, status: record.status });
        }
        let (state, seq) = State::default().replay(run_id, &steps)?;
        let open: Vec<&ToolCall> = state.pending.iter().filter(|c| !state.results.contains_key(&c.id)).collect();
        let waiting: Vec<&ToolCall> = open.iter().copied().filter(|c| !state.approvals.contains_key(&c.id)).collect();
        // A secure plan's step waits on its guard step alone (it is in no model's answer).
        let plan_step_waits = call_id.starts_with(secure::CALL_PREFIX)
            && state.verdicts.get(call_id).is_some_and(|(v, _)| *v == keel_guard::Verdict::Ask)
            && !state.results.contains_key(call_id)
            && !state.approvals.contains_key(call_id);
        if !plan_step_waits && !waiting.iter().any(|c| c.id == call_id) {
            // The call may be a sub-agent's: its run is this run's id and the calling call's.
            let mut ids: Vec<String> = Vec::new();
            for call in &open {
                let child = format!("{run_id}.{}", call.id);
                match self.decide(&child, call_id, approved, note.clone()) {
                    Ok(()) => return Ok(()),
                    Err(Error::NoSuchCall { waiting, .. }) => ids.extend(waiting.split(", ").filter(|w| !w.is_empty()).map(String::from)),
                    Err(_) => {}
                }
            }
            ids.splice(0..0, waiting.iter().filter(|c| !self.is_sub_agent_call(run_id, c)).map(|c| c.id.clone()));
            return Err(Error::NoSuchCall { id: record.id, call: call_id.into(), waiting: ids.join(", ") });
        }
        let step = Step::Approval { call_id: call_id.into(), approved, note };
        self.store.append_step(
            run_id,
            &StepRecord { seq, kind: step.kind().into(), created_ms: now_ms(), data: serde_json::to_string(&step).map_err(|e| Error::Store(e.to_string()))? },
            RunStatus::WaitingApproval.as_str(),
            None,
        )?;
        Ok(())
    }

    /// Whether a call of a run is a sub-agent's that is waiting (its run exists and waits).
    fn is_sub_agent_call(&self, run_id: &str, call: &ToolCall) -> bool {
        self.store.load_run(&format!("{run_id}.{}", call.id)).is_ok_and(|(record, _)| record.status == RunStatus::WaitingApproval.as_str())
    }

    fn record(&self, live: &Live<'_>, step: &Step, status: RunStatus) -> Result<i64, Error> {
        let seq = live.next_seq.fetch_add(1, Ordering::SeqCst);
        let data = serde_json::to_string(step).map_err(|e| Error::Store(e.to_string()))?;
        let span = live.span_of(seq, step);
        self.store.append_step(&live.id, &StepRecord { seq, kind: step.kind().into(), created_ms: now_ms(), data }, status.as_str(), span.as_ref())?;
        Ok(seq)
    }

    fn end(&self, live: &Live<'_>, state: &State, status: RunStatus, output: Option<String>, reason: Option<String>) -> Result<Outcome, Error> {
        self.store.set_run_status(&live.id, status.as_str(), output.as_deref(), reason.as_deref(), now_ms())?;
        self.emit(RunEvent::Finished { status, output: output.clone(), reason: reason.clone() });
        Ok(Outcome {
            run_id: live.id.clone(),
            status,
            output,
            reason,
            waiting: Vec::new(),
            usage: state.usage,
            cost_usd: state.cost_usd,
            model_calls: state.model_calls,
        })
    }

    /// What is left of the run's budget, as a budget for a sub-agent.
    fn remaining(agent: &Agent, state: &State) -> Budget {
        let budget = &agent.def.budget;
        Budget {
            max_steps: budget.max_steps.saturating_sub(state.model_calls),
            max_tokens: budget.max_tokens.map(|max| max.saturating_sub(state.usage.total())),
            max_cost_usd: budget.max_cost_usd.map(|max| (max - state.cost_usd).max(0.0)),
            max_seconds: budget.max_seconds.map(|max| (max - state.active_ms / 1000.0).max(0.0)),
        }
    }

    /// Why the run may not make another model call, if it may not.
    fn over_budget(agent: &Agent, state: &State) -> Option<String> {
        let budget = &agent.def.budget;
        if state.model_calls >= budget.max_steps {
            return Some(format!("budget: max_steps = {} reached ({} model calls)", budget.max_steps, state.model_calls));
        }
        if let Some(max) = budget.max_tokens
            && state.usage.total() >= max
        {
            return Some(format!("budget: max_tokens = {max} reached ({} tokens used)", state.usage.total()));
        }
        if let Some(max) = budget.max_cost_usd
            && state.cost_usd >= max
        {
            return Some(format!("budget: max_cost_usd = {max} reached (${:.4} spent)", state.cost_usd));
        }
        if let Some(max) = budget.max_seconds
            && state.active_ms / 1000.0 >= max
        {
            return Some(format!("budget: max_seconds = {max} reached ({:.1} s in model calls and tools)", state.active_ms / 1000.0));
        }
        None
    }

    /// Runs the loop under the run's lease, then records this stretch of the run as its
    /// `invoke_agent` span.
    async fn drive(&self, live: &Live<'_>, state: State, lease: Option<Lease>) -> Result<Outcome, Error> {
        let lease = match lease {
            Some(lease) => lease,
            None => Lease::take(&self.store, &live.id)?,
        };
        let result = match live.agent.def.mode {
            crate::definition::Mode::Default => self.drive_steps(live, state).await,
            crate::definition::Mode::Secure => self.drive_secure(live, state).await,
        };
        let (ok, status, reason) = match &result {
            Ok(outcome) => (!matches!(outcome.status, RunStatus::Failed), outcome.status.as_str(), outcome.reason.clone()),
            Err(err) => (false, "error", Some(err.to_string())),
        };
        let span = SpanRecord {
            trace_id: live.trace_id.clone(),
            span_id: live.span_id.clone(),
            parent_id: live.parent_span.clone().filter(|p| !p.is_empty()),
            name: format!("invoke_agent {}", live.agent.def.name),
            operation: "invoke_agent".into(),
            run_id: live.id.clone(),
            start_ms: live.start_ms,
            duration_ms: live.started.elapsed().as_secs_f64() * 1000.0,
            status: if ok { "ok" } else { "error" }.into(),
            attributes: serde_json::json!({
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": live.agent.def.name,
                "gen_ai.request.model": live.agent.def.model,
                "keel.run.id": live.id,
                "keel.run.status": status,
                "keel.run.reason": reason,
                "keel.run.resumed": live.resumed,
            })
            .to_string(),
        };
        lease.close(&span);
        result
    }

    async fn drive_steps(&self, live: &Live<'_>, mut state: State) -> Result<Outcome, Error> {
        // The budget is the run's, whoever holds the conversation.
        let root = live.agent;
        loop {
            let agent = root.member(state.active.as_deref());
            if let Err(err) = agent.tools.connect().await {
                return self.end(live, &state, RunStatus::Failed, state.last_text.clone(), Some(err));
            }
            if !state.pending.is_empty() {
                // The guard decides every call before anything runs.
                let undecided: Vec<ToolCall> =
                    state.pending.iter().filter(|call| !state.results.contains_key(&call.id) && !state.verdicts.contains_key(&call.id)).cloned().collect();
                // Allowed calls carry their decision into their result's step (one write, not
                // two); a call the guard stops gets a step of its own before anything runs.
                let mut allowed: HashMap<String, keel_guard::Decision> = HashMap::new();
                for call in undecided {
                    let Some(decision) = Runner::guard(agent, &call, &state) else { continue };
                    let event = |step| RunEvent::Guard {
                        step,
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        verdict: decision.verdict,
                        policy: decision.policy.clone(),
                        reason: decision.reason.clone(),
                    };
                    if decision.verdict == keel_guard::Verdict::Allow {
                        self.emit(event(live.next_seq.load(Ordering::SeqCst)));
                        allowed.insert(call.id.clone(), decision);
                        continue;
                    }
                    let step = Step::Guard { call_id: call.id.clone(), decision: decision.clone() };
                    let seq = self.record(live, &step, RunStatus::Running)?;
                    self.emit(event(seq));
                    state.apply(&step);
                }
                let waiting: Vec<ToolCall> = state
                    .pending
                    .iter()
                    .filter(|call| {
                        !state.results.contains_key(&call.id)
                            && !state.approvals.contains_key(&call.id)
                            // A call the guard denies is not put to a human: it fails.
                            && state.verdicts.get(&call.id).is_none_or(|(v, _)| *v != keel_guard::Verdict::Deny)
                            && (agent.tools.get(&call.name).is_some_and(|entry| entry.approval == Approval::Required)
                                || state.verdicts.get(&call.id).is_some_and(|(v, _)| *v == keel_guard::Verdict::Ask))
                    })
                    .cloned()
                    .collect();
                // Calls that need no decision run now; the rest wait for a human.
                let todo: Vec<ToolCall> = state
                    .pending
                    .iter()
                    .filter(|call| !state.results.contains_key(&call.id) && !waiting.iter().any(|w| w.id == call.id))
                    .cloned()
                    .collect();
                let remaining = Runner::remaining(root, &state);
                let blocked = |call: &ToolCall| match state.verdicts.get(&call.id) {
                    Some((keel_guard::Verdict::Deny, reason)) => Some(reason.clone()),
                    _ => None,
                };
                let seen = state.context.label.clone();
                let runs = todo.iter().map(|call| {
                    let decided = allowed.remove(&call.id);
                    self.execute(live, agent, call, state.approvals.get(&call.id).cloned(), blocked(call), decided, &remaining, &seen)
                });
                let mut in_sub_runs = Vec::new();
                for (call, executed) in todo.iter().zip(futures_util::future::join_all(runs).await) {
                    match executed? {
                        Executed::Step(step) => {
                            debug_assert!(matches!(&step, Step::Tool { call_id, .. } if *call_id == call.id));
                            state.apply(&step);
                        }
                        Executed::Waiting { run_id, calls } => in_sub_runs.push((call.name.clone(), run_id, calls)),
                    }
                }
                if !waiting.is_empty() || !in_sub_runs.is_empty() {
                    self.store.set_run_status(&live.id, RunStatus::WaitingApproval.as_str(), None, None, now_ms())?;
                    for call in &waiting {
                        self.emit(RunEvent::WaitingApproval { call_id: call.id.clone(), name: call.name.clone(), arguments: call.arguments.clone() });
                    }
                    let mut what: Vec<String> = waiting.iter().map(|c| c.name.clone()).collect();
                    for (agent, run_id, calls) in &in_sub_runs {
                        let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
                        what.push(format!("{} in the {agent} agent's run {run_id}", names.join(", ")));
                    }
                    // A sub-agent's waiting calls are decided through this run too.
                    let waiting: Vec<ToolCall> = waiting.into_iter().chain(in_sub_runs.into_iter().flat_map(|(_, _, calls)| calls)).collect();
                    return Ok(Outcome {
                        run_id: live.id.clone(),
                        status: RunStatus::WaitingApproval,
                        output: state.last_text.clone(),
                        reason: Some(format!("waiting for approval of {}", what.join(", "))),
                        waiting,
                        usage: state.usage,
                        cost_usd: state.cost_usd,
                        model_calls: state.model_calls,
                    });
                }
                state.settle();
                if state.invalid_streak >= agent.def.max_invalid_tool_calls {
                    let reason = format!("the model made invalid tool calls {} times in a row", state.invalid_streak);
                    return self.end(live, &state, RunStatus::Stopped, state.last_text.clone(), Some(reason));
                }
                if state.repeat_streak >= agent.def.max_repeated_turns.max(2) {
                    let (name, _) = &state.last_calls[0];
                    let reason = format!("loop: the model made the same call ({name}) {} turns in a row", state.repeat_streak);
                    return self.end(live, &state, RunStatus::Stopped, state.last_text.clone(), Some(reason));
                }
            }
            // A handoff may have changed who speaks: the next request is theirs.
            let agent = root.member(state.active.as_deref());
            if let Some(reason) = Runner::over_budget(root, &state) {
                return self.end(live, &state, RunStatus::Stopped, state.last_text.clone(), Some(reason));
            }
            let mut messages = trim(&state.messages, agent.def.max_context_tokens);
            if let Some(system) = state.active.as_ref().and_then(|name| live.systems.get(name)) {
                match messages.first_mut() {
                    Some(first) if first.role == Role::System => *first = Message::text(Role::System, system),
                    _ => messages.insert(0, Message::text(Role::System, system)),
                }
            }
            if let Err(err) = agent.tools.connect().await {
                return self.end(live, &state, RunStatus::Failed, state.last_text.clone(), Some(err));
            }
            let tool_choice = match &agent.def.first_tool {
                Some(first) if state.model_calls == 0 && first == "any" => Some(keel_core::ToolChoice::Required),
                Some(first) if state.model_calls == 0 => Some(keel_core::ToolChoice::Function(first.clone())),
                _ => None,
            };
            let request = ChatRequest {
                model: agent.def.model.clone(),
                messages,
                tool_choice,
                tools: agent.tools.defs(),
                temperature: agent.def.temperature,
                max_tokens: agent.def.max_tokens,
                response_format: agent.def.output_schema.as_ref().map(|schema| ResponseFormat::JsonSchema {
                    name: "final_answer".into(),
                    schema: schema.clone(),
                    strict: Some(true),
                }),
                ..ChatRequest::default()
            };
            let started = Instant::now();
            let reply = match &self.events {
                // Watched: the answer streams out as it is written.
                Some(events) => {
                    let on_text = |text: &str| {
                        let _ = events.send(RunEvent::Delta { text: text.to_string() });
                    };
                    self.model.chat_streamed(&request, &on_text).await
                }
                None => self.model.chat(&request).await,
            };
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    return self.end(live, &state, RunStatus::Failed, state.last_text.clone(), Some(format!("the model call failed: {err}")));
                }
            };
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let step = Step::Model { request: Box::new(request), response: Box::new(reply.response.clone()), provider: reply.provider, cost_usd: reply.cost_usd, ms, role: None };
            let seq = self.record(live, &step, RunStatus::Running)?;
            state.apply(&step);
            let message = &reply.response.message;
            self.emit(RunEvent::ModelCall {
                step: seq,
                text: message.text_content(),
                tool_calls: message.tool_calls.clone(),
                usage: reply.response.usage,
                cost_usd: reply.cost_usd,
                ms,
            });
            if !message.tool_calls.is_empty() {
                continue;
            }
            let answer = message.text_content();
            if let Some(schema) = &agent.def.output_schema {
                let checked = serde_json::from_str::<serde_json::Value>(&answer)
                    .map_err(|e| format!("it is not JSON: {e}"))
                    .and_then(|value| schema::validate(schema, &value));
                if let Err(err) = checked {
                    return self.end(live, &state, RunStatus::Failed, Some(answer), Some(format!("the final answer does not match output_schema: {err}")));
                }
            }
            return self.end(live, &state, RunStatus::Completed, Some(answer), None);
        }
    }

    /// What a tool does: as the tool declares it (tools built in Rust), else as the agent file
    /// says or keel knows; `None` for a tool the agent does not have.
    fn capabilities(agent: &Agent, name: &str) -> Option<keel_guard::Capabilities> {
        let entry = agent.tools.get(name)?;
        Some(entry.tool.capabilities().unwrap_or_else(|| agent.def.capabilities(name)))
    }

    /// The guard's decision on a call whose arguments parse (others fail as invalid anyway).
    fn guard(agent: &Agent, call: &ToolCall, state: &State) -> Option<keel_guard::Decision> {
        let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let value: serde_json::Value = serde_json::from_str(arguments).ok()?;
        let capabilities = Runner::capabilities(agent, &call.name)?;
        Some(agent.def.guard.decide(&call.name, capabilities, &value, &state.context))
    }

    /// Runs one tool call and commits its result; a sub-agent that stops to wait for a human
    /// leaves the call without a result, and the run waits with it.
    async fn execute(
        &self,
        live: &Live<'_>,
        agent: &Agent,
        call: &ToolCall,
        decision: Option<(bool, Option<String>)>,
        blocked: Option<String>,
        allowed: Option<keel_guard::Decision>,
        remaining: &Budget,
        seen: &keel_guard::Label,
    ) -> Result<Executed, Error> {
        let mut capabilities = Runner::capabilities(agent, &call.name).unwrap_or_else(keel_guard::Capabilities::conservative);
        let started = Instant::now();
        let mut handoff = None;
        let idempotency_key = format!("{}:{}", live.id, call.id);
        let mut spent = None;
        let (output, is_error, invalid) = match agent.tools.get(&call.name) {
            None => {
                let known = agent.tools.names();
                (format!("unknown tool `{}`; the tools are: {}", call.name, known.join(", ")), true, true)
            }
            Some(entry) => {
                let def = entry.tool.def();
                let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
                match serde_json::from_str::<serde_json::Value>(arguments) {
                    Err(e) => (format!("invalid arguments: not JSON ({e}); send a JSON object matching the tool's schema"), true, true),
                    Ok(value) => match schema::validate(&def.parameters, &value) {
                        Err(e) => (format!("invalid arguments: {e}"), true, true),
                        Ok(()) => match decision {
                            _ if blocked.is_some() => {
                                (format!("keel's guard blocked this call: {}", blocked.unwrap_or_default()), true, false)
                            }
                            Some((false, note)) => {
                                (format!("a human denied this call{}", note.map(|n| format!(": {n}")).unwrap_or_default()), true, false)
                            }
                            _ if agent.handoffs.contains_key(&call.name) => {
                                let to = agent.handoffs[&call.name].clone();
                                handoff = Some(to.clone());
                                (format!("handed over to {to}; {to} carries on the conversation"), false, false)
                            }
                            _ if agent.def.memory.is_some() && crate::memory::TOOLS.contains(&call.name.as_str()) => {
                                let spec = agent.def.memory.as_ref().expect("checked above");
                                let memory = Memory { store: &self.store, model: &*self.model, spec, agent: &agent.def.name, user: live.user.as_deref() };
                                match memory.call(&call.name, &value, &live.id, seen).await {
                                    Ok(output) => (output, false, false),
                                    Err(err) => (err, true, false),
                                }
                            }
                            _ if agent.def.tools.get(&call.name).is_some_and(|spec| spec.collection.is_some()) => {
                                let collection = agent.def.tools[&call.name].collection.as_deref().expect("checked above");
                                let result = match &self.rag_root {
                                    Some(root) => crate::rag::search(root, collection, &value, &*self.model).await,
                                    None => Err("RAG collections are not available to this runner".to_string()),
                                };
                                match result {
                                    Ok((output, trusted)) => {
                                        if trusted && agent.def.tools[&call.name].capabilities.is_none() {
                                            capabilities = keel_guard::Capabilities::of(&[keel_guard::Capability::PrivateData]);
                                        }
                                        (output, false, false)
                                    }
                                    Err(err) => (err, true, false),
                                }
                            }
                            _ if agent.sub_agents.contains_key(&call.name) => {
                                let sub = agent.sub_agents[&call.name].clone();
                                let request = value["request"].as_str().unwrap_or_default().to_string();
                                match self.call_agent(live, call, &sub, &request, remaining).await? {
                                    SubResult::Answer(result, child) => {
                                        spent = Some(child);
                                        (result.0, result.1, false)
                                    }
                                    SubResult::Waiting { run_id, calls } => return Ok(Executed::Waiting { run_id, calls }),
                                }
                            }
                            _ => {
                                let ctx = ToolContext {
                                    run_id: live.id.clone(),
                                    call_id: call.id.clone(),
                                    idempotency_key: idempotency_key.clone(),
                                    workspace: agent.workspace.clone(),
                                };
                                match tokio::time::timeout(entry.timeout, entry.tool.call(value, &ctx)).await {
                                    Ok(Ok(output)) => (output, false, false),
                                    Ok(Err(err)) => (err, true, false),
                                    Err(_) => (format!("the tool timed out after {:.1} s", entry.timeout.as_secs_f64()), true, false),
                                }
                            }
                        },
                    },
                }
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        // Untrusted output is scanned once, when it arrives; the finding is part of the step.
        let scan = !is_error && agent.def.guard.detector && capabilities.has(keel_guard::Capability::UntrustedOutput);
        let injection = scan.then(|| keel_guard::detect::Detector::builtin().scan(&output)).filter(|found| found.flagged).map(|found| Flagged {
            score: found.score,
            rule: found.rule.map(str::to_string),
        });
        let step = Step::Tool {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            output: output.clone(),
            is_error,
            invalid,
            idempotency_key,
            ms,
            spent,
            handoff,
            label: Some(keel_guard::Label::tool(&call.name, capabilities)),
            guard: allowed.map(Box::new),
            injection,
        };

        let seq = self.record(live, &step, RunStatus::Running)?;
        self.emit(RunEvent::ToolResult {
            step: seq,
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            output,
            is_error,
            ms,
        });
        Ok(Executed::Step(step))
    }
}

/// What comes before the recalled facts in a system prompt.
const MEMORY_HEADER: &str = "\n\nWhat you remember from earlier conversations (it may be out of date):\n";

/// How long a run's lease lasts without renewal, and how often it is renewed.
const LEASE_MS: i64 = 30_000;
const LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(10);

/// The right to drive one run: two processes resuming the same run at once would both run
/// its pending tool calls. Held in the store with an expiry, renewed while the run goes on;
/// a holder on this machine whose process is gone is passed over at once.
pub(crate) struct Lease {
    store: Arc<Store>,
    run_id: String,
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
    /// Given back already (with the drive's span).
    closed: bool,
}

fn host() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

/// Whether a lease holder (`host:pid:token`) is a process of this machine that has ended.
fn holder_is_gone(holder: &str) -> bool {
    let mut parts = holder.splitn(3, ':');
    let (Some(holder_host), Some(pid)) = (parts.next(), parts.next()) else { return true };
    holder_host == host() && !Path::new("/proc").join(pid).exists() && Path::new("/proc/self").exists()
}

impl Lease {
    /// A new lease holder's name: this machine, this process, and this drive.
    pub(crate) fn owner() -> String {
        format!("{}:{}:{:x}", host(), std::process::id(), random() as u64)
    }

    pub(crate) fn take(store: &Arc<Store>, run_id: &str) -> Result<Lease, Error> {
        let owner = Lease::owner();
        let now = now_ms();
        if let Some(holder) = store.acquire_lease(run_id, &owner, now, now + LEASE_MS, &holder_is_gone)? {
            return Err(Error::Busy { id: run_id.into(), holder });
        }
        Ok(Lease::held(store, run_id, owner))
    }

    /// A lease taken when the run was created (`Store::create_leased_run`).
    pub(crate) fn held(store: &Arc<Store>, run_id: &str, owner: String) -> Lease {
        let renewer = {
            let (store, run_id, owner) = (store.clone(), run_id.to_string(), owner.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LEASE_RENEW);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(err) = store.renew_lease(&run_id, &owner, now_ms() + LEASE_MS) {
                        tracing::warn!(run = %run_id, error = %err, "could not renew the run's lease");
                    }
                }
            })
        };
        Lease { store: store.clone(), run_id: run_id.into(), owner, renewer, closed: false }
    }

    /// Gives the lease back and records the drive's span, in one write.
    pub(crate) fn close(mut self, span: &SpanRecord) {
        self.renewer.abort();
        self.closed = true;
        if let Err(err) = self.store.close_drive(&self.run_id, &self.owner, span) {
            tracing::warn!(run = %self.run_id, error = %err, "could not record the run's span and give its lease back");
        }
    }
}

/// Given back when the drive ends, however it ends (a task cancelled mid-run included).
impl Drop for Lease {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.renewer.abort();
        if let Err(err) = self.store.release_lease(&self.run_id, &self.owner) {
            tracing::warn!(run = %self.run_id, error = %err, "could not release the run's lease");
        }
    }
}

/// A sub-agent's answer as a tool result: the text, and whether it is an error.
type SubAnswer = (String, bool);

enum SubResult {
    Answer(SubAnswer, Spent),
    /// The sub-agent's run waits for a human.
    Waiting { run_id: String, calls: Vec<ToolCall> },
}

/// What running a call came to.
enum Executed {
    Step(Step),
    Waiting { run_id: String, calls: Vec<ToolCall> },
}

impl Runner {
    /// Runs a sub-agent for a tool call, on what is left of the caller's budget. Its run id is
    /// the caller's run and call, so after a crash the same sub-run is resumed, not restarted.
    fn call_agent<'a>(
        &'a self,
        live: &'a Live<'_>,
        call: &'a ToolCall,
        sub: &'a Arc<Agent>,
        request: &'a str,
        remaining: &'a Budget,
    ) -> futures_util::future::BoxFuture<'a, Result<SubResult, Error>> {
        Box::pin(async move {
            let child_id = format!("{}.{}", live.id, call.id);
            // The sub-run's spans hang under this tool call's span, in the caller's trace.
            let parent = (live.trace_id.clone(), format!("{}:{}", live.id, call.id));
            // The sub-agent serves the same user.
            let mut vars = BTreeMap::new();
            if let (Some(spec), Some(user)) = (&sub.def.memory, &live.user) {
                vars.insert(spec.user_var.clone(), user.clone());
            }
            let outcome = self.run_child(&child_id, sub, request, remaining, &vars, parent, None).await?;
            if outcome.status == RunStatus::WaitingApproval {
                return Ok(SubResult::Waiting { run_id: child_id, calls: outcome.waiting });
            }
            let spent = Spent { run_id: child_id.clone(), model_calls: outcome.model_calls, usage: outcome.usage, cost_usd: outcome.cost_usd };
            let answer = outcome.output.clone().unwrap_or_default();
            let result = match outcome.status {
                RunStatus::Completed => (answer, false),
                RunStatus::Stopped => (format!("the {} agent stopped ({}); its partial answer: {answer}", call.name, outcome.reason.unwrap_or_default()), true),
                RunStatus::Failed | RunStatus::Running | RunStatus::WaitingApproval => {
                    (format!("the {} agent failed: {}", call.name, outcome.reason.unwrap_or_default()), true)
                }
            };
            Ok(SubResult::Answer(result, spent))
        })
    }

    /// Runs `sub` as the run `child_id` on what is left of a budget: started if new, resumed
    /// if it was cut off, and its recorded outcome reused if it already ended, so a caller
    /// that crashed never runs it twice. `output_schema` overrides the agent's own.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_child<'a>(
        &'a self,
        child_id: &'a str,
        sub: &'a Arc<Agent>,
        request: &'a str,
        remaining: &'a Budget,
        vars: &'a BTreeMap<String, String>,
        parent: (String, String),
        output_schema: Option<serde_json::Value>,
    ) -> futures_util::future::BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            let child_id = child_id.to_string();
            let mut child = Agent::new(sub.def.clone(), &sub.base_dir);
            child.workspace = sub.workspace.clone();
            child.sub_agents = sub.sub_agents.clone();
            child.handoffs = sub.handoffs.clone();
            child.team = sub.team.clone();
            // Tools added in Rust to the sub-agent come along.
            for entry in sub.tools.tools.values() {
                child.tools.insert(entry.tool.clone(), entry.approval, Some(entry.timeout.as_secs_f64()));
            }
            // The sub-agent's MCP servers stay connected across its runs.
            child.tools.mcp = sub.tools.mcp.clone();
            if output_schema.is_some() {
                child.def.output_schema = output_schema;
            }
            let own = &sub.def.budget;
            child.def.budget = Budget {
                max_steps: own.max_steps.min(remaining.max_steps.max(1)),
                max_tokens: min_opt(own.max_tokens, remaining.max_tokens),
                max_cost_usd: min_opt(own.max_cost_usd, remaining.max_cost_usd),
                max_seconds: min_opt(own.max_seconds, remaining.max_seconds),
            };
            let outcome = match self.store.load_run(&child_id) {
                Ok((record, steps)) if record.status == "completed" || record.status == "stopped" => {
                    let (state, _) = State::default().replay(&child_id, &steps)?;
                    Outcome {
                        run_id: child_id.clone(),
                        status: if record.status == "completed" { RunStatus::Completed } else { RunStatus::Stopped },
                        output: record.output,
                        reason: record.reason,
                        waiting: Vec::new(),
                        usage: state.usage,
                        cost_usd: state.cost_usd,
                        model_calls: state.model_calls,
                    }
                }
                Ok(_) => self.resume_in(&child_id, &child, Some(parent)).await?,
                Err(keel_store::Error::NoRun(_)) => self.start_as(child_id.clone(), &child, request, vars, Some(parent)).await?,
                Err(err) => return Err(err.into()),
            };
            Ok(outcome)
        })
    }
}

fn min_opt<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a < b { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Tokens a message costs, estimated (about four characters a token, plus framing).
fn estimate(message: &Message) -> u64 {
    let calls: usize = message.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum();
    ((message.text_content().len() + calls) as u64).div_ceil(4) + 4
}

/// The conversation to send under `limit` tokens: the system prompt and the request stay;
/// the oldest turns go first, each turn whole (an assistant message with its tool results),
/// so no tool result is ever sent without the call it answers; a note says what went.
pub fn trim(messages: &[Message], limit: Option<u64>) -> Vec<Message> {
    let Some(limit) = limit else { return messages.to_vec() };
    let total: u64 = messages.iter().map(estimate).sum();
    if total <= limit {
        return messages.to_vec();
    }
    // The head: system prompt(s) and the first user message.
    let head_len = messages.iter().position(|m| m.role == Role::User).map_or(0, |i| i + 1);
    let (head, rest) = messages.split_at(head_len);
    // Turns: each starts at an assistant or user message; tool results join the turn before.
    let mut turns: Vec<&[Message]> = Vec::new();
    let mut start = 0;
    for idx in 1..=rest.len() {
        if idx == rest.len() || rest[idx].role != Role::Tool {
            turns.push(&rest[start..idx]);
            start = idx;
        }
    }
    let budget = limit.saturating_sub(head.iter().map(estimate).sum::<u64>() + 16);
    let mut kept: Vec<&[Message]> = Vec::new();
    let mut used = 0;
    // Newest first; the latest turn is always kept.
    for turn in turns.iter().rev() {
        let cost: u64 = turn.iter().map(estimate).sum();
        if !kept.is_empty() && used + cost > budget {
            break;
        }
        used += cost;
        kept.push(turn);
    }
    kept.reverse();
    let dropped: usize = turns.len() - kept.len();
    let mut out = head.to_vec();
    if dropped > 0 {
        let n_messages: usize = turns[..dropped].iter().map(|t| t.len()).sum();
        out.push(Message::text(Role::User, format!("[{n_messages} earlier messages of this conversation were left out to fit the context]")));
    }
    out.extend(kept.into_iter().flatten().cloned());
    out
}

/// A new run id: time-ordered, so runs list in the order they started.
pub(crate) fn run_id() -> String {
    format!("run_{}", &keel_core::time_ordered_id(now_ms() as u64, random()).replace('-', "")[..20])
}

fn random() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let high = hasher.finish();
    hasher.write_u64(high);
    (u128::from(high) << 64) | u128::from(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::{estimate, trim};
    use keel_core::{Message, Role, ToolCall};

    fn call(id: &str) -> Message {
        let mut m = Message::text(Role::Assistant, "");
        m.tool_calls = vec![ToolCall { id: id.into(), name: "search".into(), arguments: format!("{{\"q\":\"{}\"}}", "x".repeat(40)) }];
        m
    }

    fn result(id: &str) -> Message {
        let mut m = Message::text(Role::Tool, "r".repeat(200));
        m.tool_call_id = Some(id.into());
        m
    }

    #[test]
    fn trimming_drops_whole_turns_oldest_first() {
        let mut messages = vec![Message::text(Role::System, "be brief"), Message::text(Role::User, "find things")];
        for i in 0..6 {
            messages.push(call(&format!("c{i}")));
            messages.push(result(&format!("c{i}")));
            messages.push(result(&format!("c{i}")));
        }
        let full: u64 = messages.iter().map(estimate).sum();
        assert_eq!(trim(&messages, None).len(), messages.len());
        assert_eq!(trim(&messages, Some(full)).len(), messages.len());
        let trimmed = trim(&messages, Some(full / 2));
        assert_eq!(trimmed[0].text_content(), "be brief");
        assert_eq!(trimmed[1].text_content(), "find things");
        assert!(trimmed[2].text_content().contains("earlier messages of this conversation were left out"));
        assert!(trimmed.iter().map(estimate).sum::<u64>() <= full / 2 + 30);
        // Every tool result still follows the call it answers.
        let mut open: Vec<String> = Vec::new();
        for m in &trimmed[3..] {
            match m.role {
                Role::Assistant => open = m.tool_calls.iter().map(|c| c.id.clone()).collect(),
                Role::Tool => assert!(open.contains(m.tool_call_id.as_ref().unwrap()), "orphaned result"),
                _ => {}
            }
        }
        assert_eq!(trimmed.last().unwrap().tool_call_id.as_deref(), Some("c5"));
        // Even a tiny limit keeps the latest turn whole.
        let tiny = trim(&messages, Some(10));
        assert_eq!(tiny.len(), 2 + 1 + 3);
    }
}

/// Builds an agent in Rust, as an agent file would describe it.
///
/// ```ignore
/// let agent = Agent::builder("helper", "gpt-4o")
///     .instructions("Be brief.")
///     .builtin("read_file")
///     .tool(my_tool)
///     .max_steps(8)
///     .build()?;
/// ```
pub struct AgentBuilder {
    def: AgentDef,
    base_dir: PathBuf,
    tools: Vec<(Arc<dyn crate::Tool>, Approval, Option<f64>)>,
    handoffs: Vec<(String, Agent)>,
    agents: Vec<(String, String, Agent)>,
}

impl Agent {
    pub fn builder(name: &str, model: &str) -> AgentBuilder {
        let def = AgentDef::parse(&format!("name = {name:?}\nmodel = {model:?}\ninstructions = \"\"\n")).unwrap_or_else(|_| {
            AgentDef::parse("name = \"agent\"\nmodel = \"local\"\ninstructions = \"\"\n").expect("a minimal agent parses")
        });
        let mut def = def;
        def.name = name.into();
        AgentBuilder { def, base_dir: PathBuf::from("."), tools: Vec::new(), handoffs: Vec::new(), agents: Vec::new() }
    }
}

impl AgentBuilder {
    /// The system prompt; `{{name}}` placeholders are filled from the run's variables.
    pub fn instructions(mut self, text: &str) -> Self {
        self.def.instructions = text.into();
        self
    }

    pub fn description(mut self, text: &str) -> Self {
        self.def.description = Some(text.into());
        self
    }

    /// The folder file tools and `shell` work in (default: `./workspace`).
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.def.workspace = Some(dir.into());
        self
    }

    pub fn budget(mut self, budget: Budget) -> Self {
        self.def.budget = budget;
        self
    }

    pub fn max_steps(mut self, steps: u32) -> Self {
        self.def.budget.max_steps = steps;
        self
    }

    /// A built-in tool by name (`read_file`, `write_file`, `list_dir`, `shell`, …), with its
    /// settings.
    pub fn builtin_with(mut self, name: &str, spec: crate::ToolSpec) -> Self {
        self.def.tools.insert(name.into(), spec);
        self
    }

    pub fn builtin(self, name: &str) -> Self {
        self.builtin_with(name, crate::ToolSpec::default())
    }

    /// A tool written in Rust.
    pub fn tool(mut self, tool: Arc<dyn crate::Tool>) -> Self {
        self.tools.push((tool, Approval::Never, None));
        self
    }

    /// A tool written in Rust whose calls wait for a human's approval.
    pub fn tool_needing_approval(mut self, tool: Arc<dyn crate::Tool>) -> Self {
        self.tools.push((tool, Approval::Required, None));
        self
    }

    pub fn mcp(mut self, name: &str, spec: crate::McpServerSpec) -> Self {
        self.def.mcp.insert(name.into(), spec);
        self
    }

    pub fn memory(mut self, spec: crate::MemorySpec) -> Self {
        self.def.memory = Some(spec);
        self
    }

    /// A JSON Schema the final answer must satisfy.
    pub fn output_schema(mut self, schema: serde_json::Value) -> Self {
        self.def.output_schema = Some(schema);
        self
    }

    pub fn temperature(mut self, temperature: f64) -> Self {
        self.def.temperature = Some(temperature);
        self
    }

    /// Lets the model hand the conversation to `to` (`transfer_to_NAME`).
    pub fn handoff(mut self, name: &str, to: Agent) -> Self {
        self.handoffs.push((name.into(), to));
        self
    }

    /// Another agent as a tool `name`: it answers a request on this run's budget.
    pub fn agent_tool(mut self, name: &str, description: &str, agent: Agent) -> Self {
        self.agents.push((name.into(), description.into(), agent));
        self
    }

    /// The agent, checked as an agent file would be.
    pub fn build(self) -> Result<Agent, Error> {
        let AgentBuilder { mut def, base_dir, tools, handoffs, agents } = self;
        for (name, description, _) in &agents {
            def.tools.insert(name.clone(), crate::ToolSpec { description: Some(description.clone()), agent: Some(PathBuf::from(format!("{name}.toml"))), ..Default::default() });
        }
        def.check().map_err(Error::Definition)?;
        let mut agent = Agent::new(def, &base_dir);
        for (tool, approval, timeout) in tools {
            agent.tools.insert(tool, approval, timeout);
        }
        for (name, _, sub) in agents {
            agent.sub_agents.insert(name, Arc::new(sub));
        }
        for (name, to) in handoffs {
            agent.add_handoff(&name, to);
        }
        Ok(agent)
    }
}
