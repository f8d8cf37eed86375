//! Declared workflows: agents as nodes of a graph over a typed state. Nodes whose inputs are
//! ready run together (fan-out); an edge from several nodes waits for all of them (fan-in);
//! an edge with `when` fires only if its condition holds on the state (conditional edges,
//! loops included). Each step of the graph (a superstep: the nodes that ran, and the state
//! after them) is checkpointed; a node's agent run has an id derived from the workflow run,
//! so after a crash a finished node is reused and an unfinished one resumed, never rerun.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_core::Usage;
use keel_store::{CHECKPOINT_FORMAT, RunRecord, SpanRecord, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::definition::Budget;
use crate::runtime::{Agent, Lease, RunStatus, Runner, run_id};
use keel_core::now_ms;
use crate::Error;
use keel_core::schema;

mod expr;

pub(crate) use expr::Expr;
use expr::Truthy;

/// One name or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    pub fn list(&self) -> Vec<String> {
        match self {
            Names::One(name) => vec![name.clone()],
            Names::Many(names) => names.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The state's fields and their JSON Schemas. An array field collects: a node writing
    /// one item to it appends (how fan-in gathers answers).
    pub state: BTreeMap<String, Value>,
    /// The nodes that run first.
    pub start: Names,
    pub nodes: BTreeMap<String, NodeSpec>,
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
    /// One budget for the whole workflow, shared by every node's agent.
    #[serde(default)]
    pub budget: Budget,
    /// How often one node may run in a workflow run (loops end here at the latest).
    #[serde(default = "ten")]
    pub max_node_visits: u32,
}

fn ten() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The agent file (relative to the workflow file).
    pub agent: PathBuf,
    /// The request the agent gets; `{{field}}` is filled from the state.
    pub input: String,
    /// The state field the agent's answer goes to.
    #[serde(default)]
    pub output: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    pub from: Names,
    pub to: Names,
    /// A condition on the state, e.g. `category == 'refund' and len(notes) > 0`.
    #[serde(default)]
    pub when: Option<String>,
}

/// A workflow ready to run.
pub struct Workflow {
    pub def: WorkflowDef,
    pub base_dir: PathBuf,
    pub agents: BTreeMap<String, Arc<Agent>>,
    conditions: Vec<Option<Expr>>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflow").field("name", &self.def.name).finish()
    }
}

impl Workflow {
    /// Reads and checks a workflow file and the agent files its nodes name.
    pub fn load(path: &Path) -> Result<Workflow, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Definition(format!("could not read {}: {e}", path.display())))?;
        let def: WorkflowDef = toml::from_str(&text).map_err(|e| Error::Definition(format!("{}: {e}", path.display())))?;
        let base_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Workflow::new(def, &base_dir).map_err(|e| match e {
            Error::Definition(msg) => Error::Definition(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn new(def: WorkflowDef, base_dir: &Path) -> Result<Workflow, Error> {
        let bad = |msg: String| Error::Definition(msg);
        let known = |node: &str| def.nodes.contains_key(node);
        for node in def.start.list() {
            if !known(&node) {
                return Err(bad(format!("start names `{node}`, which is not a node")));
            }
        }
        let mut agents = BTreeMap::new();
        for (name, node) in &def.nodes {
            if let Some(field) = &node.output
                && !def.state.contains_key(field)
            {
                return Err(bad(format!("node `{name}` writes `{field}`, which is not a state field")));
            }
            for field in placeholders(&node.input) {
                if !def.state.contains_key(&field) {
                    return Err(bad(format!("node `{name}`: its input uses {{{{{field}}}}}, which is not a state field")));
                }
            }
            let file = if node.agent.is_absolute() { node.agent.clone() } else { base_dir.join(&node.agent) };
            let agent = Agent::load(&file).map_err(|e| bad(format!("node `{name}`: {e}")))?;
            agents.insert(name.clone(), Arc::new(agent));
        }
        let mut conditions = Vec::new();
        for (idx, edge) in def.edges.iter().enumerate() {
            for node in edge.from.list().iter().chain(edge.to.list().iter()) {
                if !known(node) {
                    return Err(bad(format!("edge {}: `{node}` is not a node", idx + 1)));
                }
            }
            let condition = match &edge.when {
                None => None,
                Some(text) => {
                    let expr = Expr::parse(text).map_err(|e| bad(format!("edge {} `when = \"{text}\"`: {e}", idx + 1)))?;
                    for field in expr.fields() {
                        if !def.state.contains_key(&field) {
                            return Err(bad(format!("edge {} `when`: `{field}` is not a state field", idx + 1)));
                        }
                    }
                    Some(expr)
                }
            };
            conditions.push(condition);
        }
        Ok(Workflow { def, base_dir: base_dir.to_path_buf(), agents, conditions })
    }

    /// The state a run starts from: the given inputs, checked against their fields.
    fn initial_state(&self, inputs: &Map<String, Value>) -> Result<Map<String, Value>, Error> {
        let mut state = Map::new();
        for (field, value) in inputs {
            let Some(schema) = self.def.state.get(field) else {
                return Err(Error::Definition(format!("`{field}` is not a state field of {}; they are: {}", self.def.name, self.fields())));
            };
            schema::validate(schema, value).map_err(|e| Error::Definition(format!("state field `{field}`: {e}")))?;
            state.insert(field.clone(), value.clone());
        }
        for (field, schema) in &self.def.state {
            if !state.contains_key(field) && schema["type"] == "array" {
                state.insert(field.clone(), json!([]));
            }
        }
        Ok(state)
    }

    fn fields(&self) -> String {
        self.def.state.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The `{{name}}` placeholders of a template.
fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        out.push(rest[start + 2..start + end].trim().to_string());
        rest = &rest[start + end + 2..];
    }
    out
}

/// A node's input with its `{{field}}` placeholders filled from the state (an unset field
/// is empty; the fields were checked when the workflow was read).
fn render(template: &str, state: &Map<String, Value>) -> String {
    let value = |field: &str| {
        Some(match state.get(field) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        })
    };
    crate::definition::fill(template, value).unwrap_or_else(|_| template.to_string())
}

/// A superstep as checkpointed: what ran, and where the graph stands after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Superstep {
    number: u32,
    ran: Vec<NodeRun>,
    state: Map<String, Value>,
    frontier: Vec<String>,
    /// Per fan-in edge (by index), the source nodes that finished since it last fired.
    arrived: BTreeMap<usize, BTreeSet<String>>,
    visits: BTreeMap<String, u32>,
    spent: Spending,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Spending {
    model_calls: u32,
    usage: Usage,
    cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRun {
    node: String,
    run_id: String,
    output: String,
}

/// How a workflow run ended, or why it paused.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub state: Map<String, Value>,
    /// The answer of the last node that ran.
    pub output: Option<String>,
    pub reason: Option<String>,
    pub supersteps: u32,
    pub model_calls: u32,
    pub usage: Usage,
    pub cost_usd: f64,
}

/// Stored beside a workflow run, so a resume runs the same graph.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    workflow: WorkflowDef,
    base_dir: PathBuf,
}

/// Whether a stored run is a workflow's.
pub fn is_workflow_run(record: &RunRecord) -> bool {
    serde_json::from_str::<Stored>(&record.definition).is_ok()
}

/// The field a node writes, its schema, and the schema asked of its agent (a JSON object
/// `{"value": …}` for a typed field; none for free text).
fn answer_schema(field_schema: &Value) -> Option<Value> {
    // An array field takes one item per answer.
    let wanted = if field_schema["type"] == "array" { field_schema.get("items").cloned().unwrap_or(json!({})) } else { field_schema.clone() };
    let plain_text = wanted["type"] == "string" && wanted.get("enum").is_none() && wanted.get("pattern").is_none();
    if plain_text || wanted.as_object().is_some_and(|o| o.is_empty()) {
        return None;
    }
    Some(json!({"type": "object", "properties": {"value": wanted}, "required": ["value"], "additionalProperties": false}))
}

/// Puts a node's answer into the state: free text as is, typed values from `{"value": …}`
/// (or bare JSON), checked against the field; array fields append.
fn write_answer(state: &mut Map<String, Value>, field: &str, field_schema: &Value, answer: &str) -> Result<(), String> {
    let parsed = serde_json::from_str::<Value>(answer.trim()).ok();
    let wrapped = parsed.as_ref().and_then(Value::as_object).filter(|o| o.len() == 1).and_then(|o| o.get("value")).cloned();
    let value = match (wrapped, answer_schema(field_schema)) {
        (Some(value), _) => value,
        (None, None) => Value::String(answer.trim().to_string()),
        (None, Some(_)) => parsed.unwrap_or_else(|| Value::String(answer.trim().trim_matches('"').to_string())),
    };
    if field_schema["type"] == "array" && !value.is_array() {
        if let Some(items) = field_schema.get("items") {
            schema::validate(items, &value).map_err(|e| format!("its answer does not fit an item of `{field}`: {e}"))?;
        }
        let list = state.entry(field.to_string()).or_insert_with(|| json!([]));
        if let Value::Array(items) = list {
            items.push(value);
        }
        return Ok(());
    }
    schema::validate(field_schema, &value).map_err(|e| format!("its answer does not fit `{field}`: {e}"))?;
    state.insert(field.to_string(), value);
    Ok(())
}

impl Runner {
    /// Starts a run of `workflow` from `inputs` (state fields).
    pub async fn run_workflow(&self, workflow: &Workflow, inputs: &Map<String, Value>) -> Result<WorkflowOutcome, Error> {
        let state = workflow.initial_state(inputs)?;
        let id = run_id();
        let created_ms = now_ms();
        let stored = Stored { workflow: workflow.def.clone(), base_dir: workflow.base_dir.clone() };
        self.store.create_run(&RunRecord {
            id: id.clone(),
            agent: workflow.def.name.clone(),
            created_ms,
            updated_ms: created_ms,
            status: RunStatus::Running.as_str().into(),
            input: Value::Object(inputs.clone()).to_string(),
            output: None,
            reason: None,
            definition: serde_json::to_string(&stored).map_err(|e| Error::Store(e.to_string()))?,
            format: CHECKPOINT_FORMAT,
        })?;
        let at = Superstep { state, frontier: workflow.def.start.list(), ..Superstep::default() };
        self.drive_workflow(workflow, &id, at, 0).await
    }

    /// The workflow a stored run started with (its agent files read again).
    pub fn stored_workflow(&self, run_id: &str) -> Result<Workflow, Error> {
        let (record, _) = self.store.load_run(run_id)?;
        let stored: Stored =
            serde_json::from_str(&record.definition).map_err(|e| Error::Store(format!("run {run_id} is not a workflow run: {e}")))?;
        Workflow::new(stored.workflow, &stored.base_dir)
    }

    /// Continues a workflow run from its last superstep.
    pub async fn resume_workflow(&self, run_id: &str, workflow: &Workflow) -> Result<WorkflowOutcome, Error> {
        let (record, steps) = self.store.load_run(run_id)?;
        if matches!(record.status.as_str(), "completed" | "stopped") {
            return Err(Error::Finished { id: record.id, status: record.status, reason: record.reason.unwrap_or_default() });
        }
        let (at, next_seq) = match steps.last() {
            Some(step) => (
                serde_json::from_str::<Superstep>(&step.data)
                    .map_err(|e| Error::Store(format!("run {run_id}: superstep {} is unreadable: {e}", step.seq)))?,
                step.seq + 1,
            ),
            None => {
                let inputs: Map<String, Value> = serde_json::from_str(&record.input).unwrap_or_default();
                (Superstep { state: workflow.initial_state(&inputs)?, frontier: workflow.def.start.list(), ..Superstep::default() }, 0)
            }
        };
        self.drive_workflow(workflow, run_id, at, next_seq).await
    }

    async fn drive_workflow(&self, workflow: &Workflow, id: &str, at: Superstep, seq: i64) -> Result<WorkflowOutcome, Error> {
        let lease = Lease::take(&self.store, id)?;
        let result = self.drive_supersteps(workflow, id, at, seq).await;
        drop(lease);
        result
    }

    async fn drive_supersteps(&self, workflow: &Workflow, id: &str, mut at: Superstep, mut seq: i64) -> Result<WorkflowOutcome, Error> {
        let started = std::time::Instant::now();
        let start_ms = now_ms();
        let span_id = format!("{id}@{seq}");
        let outcome = loop {
            if at.frontier.is_empty() {
                let output = at.ran.last().map(|r| r.output.clone());
                break self.end_workflow(id, &at, RunStatus::Completed, output, None)?;
            }
            if let Some(node) = at.frontier.iter().find(|n| at.visits.get(*n).copied().unwrap_or(0) >= workflow.def.max_node_visits) {
                let reason = format!("loop: node `{node}` ran max_node_visits = {} times", workflow.def.max_node_visits);
                break self.end_workflow(id, &at, RunStatus::Stopped, None, Some(reason))?;
            }
            let budget = &workflow.def.budget;
            let remaining = Budget {
                max_steps: budget.max_steps.saturating_sub(at.spent.model_calls),
                max_tokens: budget.max_tokens.map(|m| m.saturating_sub(at.spent.usage.total())),
                max_cost_usd: budget.max_cost_usd.map(|m| (m - at.spent.cost_usd).max(0.0)),
                max_seconds: budget.max_seconds,
            };
            if remaining.max_steps == 0 || remaining.max_tokens == Some(0) || remaining.max_cost_usd.is_some_and(|c| c <= 0.0) {
                let reason = format!("budget: the workflow's budget is spent ({} model calls, ${:.4})", at.spent.model_calls, at.spent.cost_usd);
                break self.end_workflow(id, &at, RunStatus::Stopped, None, Some(reason))?;
            }
            // The frontier runs together, each node on what is left of the budget.
            let runs = at.frontier.iter().map(|node| {
                let visit = at.visits.get(node).copied().unwrap_or(0) + 1;
                let child_id = format!("{id}.{node}.{visit}");
                let spec = &workflow.def.nodes[node];
                let request = render(&spec.input, &at.state);
                let schema = spec.output.as_ref().and_then(|field| answer_schema(&workflow.def.state[field]));
                let agent = &workflow.agents[node];
                let parent = (id.to_string(), span_id.clone());
                let remaining = remaining.clone();
                async move {
                    let vars = BTreeMap::new();
                    self.run_child(&child_id, agent, &request, &remaining, &vars, parent, schema).await.map(|o| (node.clone(), o))
                }
            });
            let results = futures_util::future::join_all(runs).await;
            let mut next = Superstep { number: at.number + 1, state: at.state.clone(), arrived: at.arrived.clone(), visits: at.visits.clone(), spent: at.spent.clone(), ..Superstep::default() };
            let mut problem = None;
            for result in results {
                let (node, outcome) = result?;
                next.spent.model_calls += outcome.model_calls;
                next.spent.usage.add(outcome.usage);
                next.spent.cost_usd += outcome.cost_usd;
                match outcome.status {
                    RunStatus::Completed => {
                        let output = outcome.output.unwrap_or_default();
                        if let Some(field) = &workflow.def.nodes[&node].output
                            && let Err(err) = write_answer(&mut next.state, field, &workflow.def.state[field], &output)
                        {
                            problem.get_or_insert((RunStatus::Failed, format!("node `{node}` (run {}): {err}", outcome.run_id)));
                        }
                        *next.visits.entry(node.clone()).or_default() += 1;
                        next.ran.push(NodeRun { node, run_id: outcome.run_id, output });
                    }
                    RunStatus::WaitingApproval => {
                        let calls: Vec<String> = outcome.waiting.iter().map(|c| c.id.clone()).collect();
                        problem.get_or_insert((
                            RunStatus::WaitingApproval,
                            format!(
                                "node `{node}` waits for approval in run {}: keel runs approve {} {}, then keel runs resume {id}",
                                outcome.run_id,
                                outcome.run_id,
                                calls.join(" / ")
                            ),
                        ));
                    }
                    status => {
                        problem.get_or_insert((
                            if status == RunStatus::Stopped { RunStatus::Stopped } else { RunStatus::Failed },
                            format!("node `{node}` {} (run {}): {}", status.as_str(), outcome.run_id, outcome.reason.unwrap_or_default()),
                        ));
                    }
                }
            }
            if let Some((status, reason)) = problem {
                // Nothing of this superstep is committed; finished nodes are reused on resume.
                self.store.set_run_status(id, status.as_str(), None, Some(&reason), now_ms())?;
                break WorkflowOutcome {
                    run_id: id.into(),
                    status,
                    state: at.state.clone(),
                    output: None,
                    reason: Some(reason),
                    supersteps: at.number,
                    model_calls: next.spent.model_calls,
                    usage: next.spent.usage,
                    cost_usd: next.spent.cost_usd,
                };
            }
            next.frontier = self.fire_edges(workflow, &mut next)?;
            let data = serde_json::to_string(&next).map_err(|e| Error::Store(e.to_string()))?;
            self.store.append_step(id, &StepRecord { seq, kind: "superstep".into(), created_ms: now_ms(), data }, RunStatus::Running.as_str(), None)?;
            seq += 1;
            at = next;
        };
        let span = SpanRecord {
            trace_id: id.into(),
            span_id,
            parent_id: None,
            name: format!("invoke_workflow {}", workflow.def.name),
            operation: "invoke_workflow".into(),
            run_id: id.into(),
            start_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            status: if outcome.status == RunStatus::Failed { "error" } else { "ok" }.into(),
            attributes: json!({"keel.workflow.name": workflow.def.name, "keel.run.status": outcome.status.as_str(), "keel.supersteps": outcome.supersteps}).to_string(),
        };
        if let Err(err) = self.store.add_span(&span) {
            tracing::warn!(run = %id, error = %err, "could not record the workflow's span");
        }
        Ok(outcome)
    }

    /// The nodes the next superstep runs: targets of edges whose sources all finished since
    /// the edge last fired and whose condition holds on the new state.
    fn fire_edges(&self, workflow: &Workflow, at: &mut Superstep) -> Result<Vec<String>, Error> {
        let finished: BTreeSet<String> = at.ran.iter().map(|r| r.node.clone()).collect();
        let mut frontier = BTreeSet::new();
        for (idx, edge) in workflow.def.edges.iter().enumerate() {
            let sources = edge.from.list();
            if !sources.iter().any(|s| finished.contains(s)) {
                continue;
            }
            let arrived = at.arrived.entry(idx).or_default();
            arrived.extend(sources.iter().filter(|s| finished.contains(*s)).cloned());
            if !sources.iter().all(|s| arrived.contains(s)) {
                continue;
            }
            at.arrived.remove(&idx);
            let holds = match &workflow.conditions[idx] {
                None => true,
                Some(expr) => expr
                    .eval(&at.state)
                    .map_err(|e| Error::Definition(format!("edge {} `when`: {e}", idx + 1)))?
                    .truthy(),
            };
            if holds {
                frontier.extend(edge.to.list());
            }
        }
        Ok(frontier.into_iter().collect())
    }

    fn end_workflow(&self, id: &str, at: &Superstep, status: RunStatus, output: Option<String>, reason: Option<String>) -> Result<WorkflowOutcome, Error> {
        let state_json = Value::Object(at.state.clone()).to_string();
        self.store.set_run_status(id, status.as_str(), Some(output.as_deref().unwrap_or(&state_json)), reason.as_deref(), now_ms())?;
        Ok(WorkflowOutcome {
            run_id: id.into(),
            status,
            state: at.state.clone(),
            output,
            reason,
            supersteps: at.number,
            model_calls: at.spent.model_calls,
            usage: at.spent.usage,
            cost_usd: at.spent.cost_usd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fill_typed_fields_and_arrays_collect() {
        let mut state = Map::new();
        let category = json!({"type": "string", "enum": ["refund", "other"]});
        write_answer(&mut state, "category", &category, "{\"value\": \"refund\"}").unwrap();
        assert_eq!(state["category"], "refund");
        let err = write_answer(&mut state, "category", &category, "\"spam\"").unwrap_err();
        assert!(err.contains("does not fit `category`"), "{err}");
        let notes = json!({"type": "array", "items": {"type": "string"}});
        write_answer(&mut state, "notes", &notes, "first").unwrap();
        write_answer(&mut state, "notes", &notes, "{\"value\": \"second\"}").unwrap();
        assert_eq!(state["notes"], json!(["first", "second"]));
        write_answer(&mut state, "summary", &json!({"type": "string"}), "  free text  ").unwrap();
        assert_eq!(state["summary"], "free text");
    }
}
