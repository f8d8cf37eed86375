//! What a run is made of: its checkpointed `Step`s, its status and outcome, the events it
//! reports, and the `State` rebuilt by replaying its steps (which is how a run resumes).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use keel_core::{ChatRequest, ChatResponse, Message, Role, ToolCall, Usage};
use keel_store::{RunRecord, StepRecord};
use serde::{Deserialize, Serialize};

use super::{Agent, MEMORY_HEADER, secure};
use crate::Error;
use crate::definition::AgentDef;

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
    pub(crate) fn kind(&self) -> &'static str {
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
pub(crate) struct Started {
    pub(crate) def: AgentDef,
    /// The system prompt as sent, recalled memories included.
    pub(crate) system: String,
    /// The user the run serves (long-term memory), from the run's variables.
    #[serde(default)]
    pub(crate) user: Option<String>,
    /// The facts recalled into the system prompt, and their label together.
    #[serde(default)]
    pub(crate) memory: Option<(String, keel_guard::Label)>,
    /// The system prompts of the agents the run can be handed to, by name.
    #[serde(default)]
    pub(crate) systems: BTreeMap<String, String>,
    /// The agent file the run started from.
    #[serde(default)]
    pub(crate) file: Option<PathBuf>,
    pub(crate) base_dir: PathBuf,
    pub(crate) workspace: PathBuf,
}

impl Started {
    pub(crate) fn of(record: &RunRecord) -> Result<Started, Error> {
        serde_json::from_str(&record.definition)
            .map_err(|e| Error::Store(format!("run {}: the stored agent definition is unreadable: {e}", record.id)))
    }
}

/// The run rebuilt from its steps.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) messages: Vec<Message>,
    pub(crate) model_calls: u32,
    pub(crate) usage: Usage,
    pub(crate) cost_usd: f64,
    pub(crate) active_ms: f64,
    pub(crate) pending: Vec<ToolCall>,
    pub(crate) results: HashMap<String, (String, bool, bool)>,
    pub(crate) approvals: HashMap<String, (bool, Option<String>)>,
    pub(crate) invalid_streak: u32,
    /// The last turn's calls (name and arguments) and how many turns in a row made them.
    pub(crate) last_calls: Vec<(String, String)>,
    pub(crate) repeat_streak: u32,
    pub(crate) last_text: Option<String>,
    /// The agent the conversation was handed to last (none: the one the run started with).
    pub(crate) active: Option<String>,
    /// What the run has seen, labelled, for the guard.
    pub(crate) context: keel_guard::Context,
    /// The guard's verdicts by call, with the reason.
    pub(crate) verdicts: HashMap<String, (keel_guard::Verdict, String)>,
    /// Secure mode: the planner's conversation (system, user, its attempts and what was wrong
    /// with them), the plan once one is valid, and each finished step's value and label.
    pub(crate) planner: Vec<Message>,
    pub(crate) plan: Option<secure::Plan>,
    pub(crate) plan_error: Option<String>,
    /// (value, label, the fields of it outsiders write).
    pub(crate) values: HashMap<String, secure::Value>,
    /// Secure mode: quarantined reads whose answer did not fit, by step.
    pub(crate) read_errors: HashMap<String, String>,
    /// The agent's tool names (secure mode checks plans against them).
    pub(crate) tools: Vec<String>,
    /// Tools whose JSON output is untrusted only in some fields, with those fields.
    pub(crate) untrusted_fields: HashMap<String, Vec<String>>,
    /// Tools that declare which arguments choose where they act (`targets = [...]`).
    pub(crate) targets: HashMap<String, Vec<String>>,
}

impl State {
    /// A run's state before its first step, for the agent that runs it.
    /// `memory`: the facts recalled into the system prompt, labelled by where they came from.
    pub(crate) fn for_agent(system: &str, input: &str, agent: &Agent, memory: Option<&(String, keel_guard::Label)>) -> State {
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
    pub(crate) fn push_start(&mut self, system: &str, input: &str) {
        let state = self;
        if !system.trim().is_empty() {
            state.messages.push(Message::text(Role::System, system));
            let own = system.find(MEMORY_HEADER).map_or(system, |at| &system[..at]);
            state.context.push("system", keel_guard::Label::system(), own);
        }
        state.messages.push(Message::text(Role::User, input));
        state.context.push("user", keel_guard::Label::user(), input);
    }

    pub(crate) fn apply(&mut self, step: &Step) {
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
    pub(crate) fn replay(mut self, run_id: &str, steps: &[StepRecord]) -> Result<(State, i64), Error> {
        let mut next_seq = 0;
        for step in steps {
            let parsed: Step = serde_json::from_str(&step.data)
                .map_err(|e| Error::Store(format!("run {run_id}: step {} is unreadable: {e}", step.seq)))?;
            self.apply(&parsed);
            next_seq = step.seq + 1;
        }
        Ok((self, next_seq))
    }

    /// Why the guard blocked a call, when it denied it.
    pub(crate) fn blocked(&self, call_id: &str) -> Option<String> {
        match self.verdicts.get(call_id) {
            Some((keel_guard::Verdict::Deny, reason)) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Puts the results of the pending calls after their assistant message, in call order.
    pub(crate) fn settle(&mut self) {
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
