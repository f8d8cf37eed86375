//! Running one tool call: the guard's and a human's decisions first, then the one dispatch
//! on the tool's kind (a `Tool` implementation, a handoff, memory, a collection, or a
//! sub-agent run on what is left of the caller's budget), then the step that records it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use keel_core::ToolCall;

use super::{Agent, Flagged, Live, Outcome, RunEvent, RunStatus, Runner, Spent, State, Step};
use crate::Error;
use crate::definition::Budget;
use crate::memory::Memory;
use keel_core::schema;
use crate::tools::{Entry, ToolContext, ToolKind};

/// What was decided about a call before it runs.
#[derive(Debug, Default)]
pub(super) struct Decided {
    /// A human's answer (approved, note), for a call that needed approval.
    pub(super) human: Option<(bool, Option<String>)>,
    /// Why the guard blocked it, when it did.
    pub(super) blocked: Option<String>,
    /// The guard's decision that let it run, recorded in its step.
    pub(super) allowed: Option<keel_guard::Decision>,
}

/// What a call came to, before it is recorded.
#[derive(Debug, Default)]
struct Ran {
    output: String,
    is_error: bool,
    /// The model's arguments did not fit the tool.
    invalid: bool,
    /// The agent the call handed the conversation to.
    handoff: Option<String>,
    /// What a sub-agent spent.
    spent: Option<Spent>,
    /// What running it showed the tool does (a trusted collection reads private data).
    capabilities: Option<keel_guard::Capabilities>,
}

impl Ran {
    fn output(result: Result<String, String>) -> Ran {
        match result {
            Ok(output) => Ran { output, ..Ran::default() },
            Err(output) => Ran { output, is_error: true, ..Ran::default() },
        }
    }

    fn error(output: String) -> Ran {
        Ran { output, is_error: true, ..Ran::default() }
    }

    fn invalid(output: String) -> Ran {
        Ran { output, is_error: true, invalid: true, ..Ran::default() }
    }
}

/// A call that may run: its tool and its parsed, checked arguments.
type Runnable<'a> = (&'a Entry, serde_json::Value);

impl Runner {
    /// Runs one tool call and commits its result; a sub-agent that stops to wait for a human
    /// leaves the call without a result, and the run waits with it.
    pub(super) async fn execute(
        &self,
        live: &Live<'_>,
        agent: &Agent,
        call: &ToolCall,
        decided: Decided,
        remaining: &Budget,
        seen: &keel_guard::Label,
    ) -> Result<Executed, Error> {
        let started = Instant::now();
        let idempotency_key = format!("{}:{}", live.id, call.id);
        let ran = match Runner::runnable(agent, call, &decided) {
            Err(refused) => *refused,
            Ok((entry, arguments)) => {
                let ctx = ToolContext {
                    run_id: live.id.clone(),
                    call_id: call.id.clone(),
                    idempotency_key: idempotency_key.clone(),
                    workspace: agent.workspace.clone(),
                };
                match self.dispatch(live, agent, call, entry, arguments, &ctx, remaining, seen).await? {
                    Dispatched::Ran(ran) => ran,
                    Dispatched::Waiting { run_id, calls } => return Ok(Executed::Waiting { run_id, calls }),
                }
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let capabilities = ran
            .capabilities
            .or_else(|| Runner::capabilities(agent, &call.name))
            .unwrap_or_else(keel_guard::Capabilities::conservative);
        // Untrusted output is scanned once, when it arrives; the finding is part of the step.
        let scan = !ran.is_error && agent.def.guard.detector && capabilities.has(keel_guard::Capability::UntrustedOutput);
        let injection = scan.then(|| keel_guard::detect::Detector::builtin().scan(&ran.output)).filter(|found| found.flagged).map(|found| Flagged {
            score: found.score,
            rule: found.rule.map(str::to_string),
        });
        let step = Step::Tool {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            output: ran.output.clone(),
            is_error: ran.is_error,
            invalid: ran.invalid,
            idempotency_key,
            ms,
            spent: ran.spent,
            handoff: ran.handoff,
            label: Some(keel_guard::Label::tool(&call.name, capabilities)),
            guard: decided.allowed.map(Box::new),
            injection,
        };

        let seq = self.record(live, &step, RunStatus::Running)?;
        self.emit(RunEvent::ToolResult {
            step: seq,
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            output: ran.output,
            is_error: ran.is_error,
            ms,
        });
        Ok(Executed::Step(Box::new(step)))
    }

    /// The tool and the parsed arguments of a call that may run; else what the model is told:
    /// an unknown tool, arguments that do not fit, or a call the guard or a human stopped.
    fn runnable<'a>(agent: &'a Agent, call: &ToolCall, decided: &Decided) -> Result<Runnable<'a>, Box<Ran>> {
        let Some(entry) = agent.tools.get(&call.name) else {
            let known = agent.tools.names();
            return Err(Box::new(Ran::invalid(format!("unknown tool `{}`; the tools are: {}", call.name, known.join(", ")))));
        };
        let arguments = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let value = serde_json::from_str::<serde_json::Value>(arguments)
            .map_err(|e| Box::new(Ran::invalid(format!("invalid arguments: not JSON ({e}); send a JSON object matching the tool's schema"))))?;
        schema::validate(&entry.def.parameters, &value).map_err(|e| Box::new(Ran::invalid(format!("invalid arguments: {e}"))))?;
        if let Some(reason) = &decided.blocked {
            return Err(Box::new(Ran::error(format!("keel's guard blocked this call: {reason}"))));
        }
        if let Some((false, note)) = &decided.human {
            return Err(Box::new(Ran::error(format!("a human denied this call{}", note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()))));
        }
        Ok((entry, value))
    }

    /// Runs a call by its tool's kind: the one place each kind of tool is told apart.
    #[expect(clippy::too_many_arguments, reason = "the run, the call and its budget, each needed by one kind")]
    async fn dispatch(
        &self,
        live: &Live<'_>,
        agent: &Agent,
        call: &ToolCall,
        entry: &Entry,
        arguments: serde_json::Value,
        ctx: &ToolContext,
        remaining: &Budget,
        seen: &keel_guard::Label,
    ) -> Result<Dispatched, Error> {
        let ran = match &entry.kind {
            ToolKind::Code(tool) => match tokio::time::timeout(entry.timeout, tool.call(arguments, ctx)).await {
                Ok(result) => Ran::output(result),
                Err(_) => Ran::error(format!("the tool timed out after {:.1} s", entry.timeout.as_secs_f64())),
            },
            ToolKind::Handoff => match agent.handoffs.get(&call.name) {
                Some(to) => Ran {
                    output: format!("handed over to {to}; {to} carries on the conversation"),
                    handoff: Some(to.clone()),
                    ..Ran::default()
                },
                None => Ran::error(format!("`{}` hands over to no agent of this team", call.name)),
            },
            ToolKind::Memory => match &agent.def.memory {
                Some(spec) => {
                    let memory = Memory { store: &self.store, model: &*self.model, spec, agent: &agent.def.name, user: live.user.as_deref() };
                    Ran::output(memory.call(&call.name, &arguments, &live.id, seen).await)
                }
                None => Ran::error("this agent keeps no memory".into()),
            },
            ToolKind::Collection(collection) => match self.search(collection, &arguments).await {
                Ok((output, trusted)) => {
                    let declared = agent.def.tools.get(&call.name).is_some_and(|spec| spec.capabilities.is_some());
                    let capabilities = (trusted && !declared).then(|| keel_guard::Capabilities::of(&[keel_guard::Capability::PrivateData]));
                    Ran { output, capabilities, ..Ran::default() }
                }
                Err(err) => Ran::error(err),
            },
            ToolKind::Agent => {
                let Some(sub) = agent.sub_agents.get(&call.name) else {
                    return Ok(Dispatched::Ran(Ran::error(format!("the {} agent is not loaded in this run", call.name))));
                };
                let request = arguments["request"].as_str().unwrap_or_default();
                match self.call_agent(live, call, sub, request, remaining).await? {
                    SubResult::Answer((output, is_error), spent) => Ran { output, is_error, spent: Some(spent), ..Ran::default() },
                    SubResult::Waiting { run_id, calls } => return Ok(Dispatched::Waiting { run_id, calls }),
                }
            }
        };
        Ok(Dispatched::Ran(ran))
    }

    /// Searches a collection for a search tool's query: the cited results, and whether the
    /// collection is trusted.
    async fn search(&self, collection: &str, arguments: &serde_json::Value) -> Result<(String, bool), String> {
        match &self.collections {
            Some(collections) => crate::rag::search(collections, collection, arguments, &*self.model).await,
            None => Err("RAG collections are not available to this runner".to_string()),
        }
    }
}

/// What dispatching a call came to.
enum Dispatched {
    Ran(Ran),
    /// A sub-agent's run waits for a human.
    Waiting { run_id: String, calls: Vec<ToolCall> },
}

/// A sub-agent's answer as a tool result: the text, and whether it is an error.
type SubAnswer = (String, bool);

enum SubResult {
    Answer(SubAnswer, Spent),
    /// The sub-agent's run waits for a human.
    Waiting { run_id: String, calls: Vec<ToolCall> },
}

/// What running a call came to.
pub(super) enum Executed {
    Step(Box<Step>),
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
                child.tools.add(entry.clone());
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
