//! The agent loop: model call → tool calls (concurrently) → results → again, until a final
//! answer, a pause for approval, or the budget runs out. Every completed step is committed
//! to the store before the loop goes on, and a run is rebuilt from its steps to resume, so a
//! killed process loses at most the step it was in and never repeats a recorded tool call.

mod agent;
mod execute;
mod lease;
mod secure;
mod spans;
mod step;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use keel_core::{ChatRequest, Message, ResponseFormat, Role, ToolCall, now_ms};
use keel_store::{CHECKPOINT_FORMAT, RunRecord, SpanRecord, StepRecord, Store};
use tokio::sync::mpsc::UnboundedSender;

use crate::definition::{Approval, Budget};
use crate::memory::Memory;
use crate::model::ChatModel;
use crate::Error;
use keel_core::schema;

pub use agent::{Agent, AgentBuilder};
use execute::{Decided, Executed};
pub(crate) use lease::Lease;
use lease::LEASE_MS;
use spans::{Live, TraceParent};
pub use step::{Flagged, Outcome, RunEvent, RunStatus, Spent, Step};
use step::{Started, State};

/// Runs agents against a model and a store.
pub struct Runner {
    pub(crate) store: Arc<Store>,
    model: Arc<dyn ChatModel>,
    events: Option<UnboundedSender<RunEvent>>,
    /// The RAG collections search tools query, kept open across calls.
    collections: Option<Arc<keel_rag::Collections>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("store", &self.store.path()).finish()
    }
}

impl Runner {
    pub fn new(store: Arc<Store>, model: Arc<dyn ChatModel>) -> Runner {
        Runner { store, model, events: None, collections: None }
    }

    /// The folder of keel's RAG collections, which tools with a `collection` search.
    pub fn with_rag_root(self, root: std::path::PathBuf) -> Runner {
        self.with_collections(Arc::new(keel_rag::Collections::new(root)))
    }

    /// The collections search tools query (shared with the HTTP API in `keel serve`).
    pub fn with_collections(mut self, collections: Arc<keel_rag::Collections>) -> Runner {
        self.collections = Some(collections);
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
        let mut system = agent.def.render_instructions(vars, &self.store)?;
        let mut remembered = None;
        let user = agent.def.memory.as_ref().and_then(|spec| vars.get(&spec.user_var)).cloned();
        if let Some(spec) = agent.def.memory.as_ref().filter(|spec| spec.recall > 0) {
            let memory = Memory { store: &self.store, model: &*self.model, spec, agent: &agent.def.name, user: user.as_deref() };
            let recalled = memory.search(input, spec.recall).await?;
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
            systems.insert(name.clone(), member.def.render_instructions(vars, &self.store)?);
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
                let seen = state.context.label.clone();
                let runs = todo.iter().map(|call| {
                    let decided = Decided { human: state.approvals.get(&call.id).cloned(), blocked: state.blocked(&call.id), allowed: allowed.remove(&call.id) };
                    self.execute(live, agent, call, decided, &remaining, &seen)
                });
                let mut in_sub_runs = Vec::new();
                for (call, executed) in todo.iter().zip(futures_util::future::join_all(runs).await) {
                    match executed? {
                        Executed::Step(step) => {
                            debug_assert!(matches!(&*step, Step::Tool { call_id, .. } if *call_id == call.id));
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
                    .and_then(|value| schema::validate(schema, &value).map_err(|e| e.to_string()));
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
        Some(entry.capabilities().unwrap_or_else(|| agent.def.capabilities(name)))
    }

    /// The guard's decision on a call whose arguments parse (others fail as invalid anyway).
    fn guard(agent: &Agent, call: &ToolCall, state: &State) -> Option<keel_guard::Decision> {
        let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let value: serde_json::Value = serde_json::from_str(arguments).ok()?;
        let capabilities = Runner::capabilities(agent, &call.name)?;
        Some(agent.def.guard.decide(&call.name, capabilities, &value, &state.context))
    }
}

/// What comes before the recalled facts in a system prompt.
const MEMORY_HEADER: &str = "\n\nWhat you remember from earlier conversations (it may be out of date):\n";

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

pub(crate) fn random() -> u128 {
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
