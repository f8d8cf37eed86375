//! The AgentDojo replay (`keel guard bench --agentdojo DIR --suite NAME`): a fully
//! compromised model. The user task's ground-truth calls run (their outputs, injection
//! included, enter the context), then every call of the injection task is attempted as if
//! the model obeyed it; the guard decides each. The report says the share of injection calls
//! that reached their sink, and the share of the user tasks' own calls (on the suite's
//! environment without an attack) that were blocked or sent for approval, with the floor the
//! Rule of Two itself puts to a human. Reads the files `benches/agentdojo/convert.py` writes.

use std::path::Path;

use serde::Serialize;

use crate::{Capabilities, Context, Error, Guard, GuardSpec, Label, Verdict};

/// How the guard runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Secure mode: the planner reads only the user's request, and values reach calls with
    /// the labels of the outputs they came from. Else the Rule of Two on the whole context.
    pub secure: bool,
    /// The injection detector on.
    pub detector: bool,
    /// One label per tool output, even where the converter measured which fields outsiders
    /// can write.
    pub whole_outputs: bool,
}

/// What the replay found, in the order `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub suite: String,
    pub mode: String,
    pub detector: bool,
    pub pairs: usize,
    pub pairs_with_untrusted_context: usize,
    pub injection_sink_calls: usize,
    pub outside_the_plan: usize,
    pub reached_sink: usize,
    pub reached_share: f64,
    pub user_calls: usize,
    pub user_calls_blocked_or_asked: usize,
    pub user_blocked_share: f64,
    pub user_calls_with_outsiders_target: usize,
    pub floor_share: f64,
    /// Each injection call that reached its sink.
    pub misses: Vec<serde_json::Value>,
    /// Each user call the guard stopped (`target_from_outsiders` marks the floor).
    pub user_calls_stopped: Vec<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct DojoCall {
    tool: String,
    args: serde_json::Value,
    #[serde(default)]
    output: String,
    /// The output as JSON, where the converter could give it (fields labelled apart).
    #[serde(default)]
    output_json: Option<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct DojoTask {
    user_task: String,
    #[serde(default)]
    injection_task: Option<String>,
    prompt: String,
    calls: Vec<DojoCall>,
    #[serde(default)]
    attack: Vec<DojoCall>,
}

fn read_jsonl(path: &Path) -> Result<Vec<DojoTask>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Read(format!("could not read {}: {e}; run benches/agentdojo/convert.py first", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Data(format!("{} line {}: {e}", path.display(), i + 1))))
        .collect()
}

/// Replays suite `suite` of the converted AgentDojo folder `dir`.
pub fn replay(dir: &Path, suite: &str, options: Options) -> Result<Report, Error> {
    let folder = dir.join(suite);
    let tools_path = folder.join("tools.json");
    let text = std::fs::read_to_string(&tools_path)
        .map_err(|e| Error::Read(format!("could not read {}: {e}; run benches/agentdojo/convert.py {suite} DIR first", tools_path.display())))?;
    let tools: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| Error::Data(format!("{} is not a tool list: {e}", tools_path.display())))?;
    let mut capabilities = std::collections::HashMap::new();
    // Fields of a tool's JSON output that outsiders can write (the rest is the tool's own).
    let mut untrusted_fields: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for tool in &tools {
        let name = tool["name"].as_str().ok_or_else(|| Error::Data("a tool without a name in tools.json".into()))?.to_string();
        let caps = match &tool["capabilities"] {
            serde_json::Value::Null => Capabilities::conservative(),
            list => serde_json::from_value(list.clone()).map_err(|e| Error::Data(format!("tools.json: {name}'s capabilities: {e}")))?,
        };
        let fields: Vec<String> = tool["untrusted_fields"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect();
        untrusted_fields.insert(name.clone(), fields);
        capabilities.insert(name, caps);
    }
    let caps_of = |tool: &str| capabilities.get(tool).copied().unwrap_or_else(Capabilities::conservative);
    let secure = options.secure;
    let guard = Guard::new(GuardSpec { detector: options.detector, ..GuardSpec::default() });
    let system = "You are a helpful assistant with access to the user's tools.";
    let fresh = |prompt: &str| {
        let mut context = if secure { Context::secure() } else { Context::default() };
        context.push("system", Label::system(), system);
        context.push("user", Label::user(), prompt);
        context
    };
    // Each distinct output is scanned once.
    let mut scanned: std::collections::HashMap<String, crate::detect::Detection> = std::collections::HashMap::new();
    // A call whose target arguments untrusted content chose returns what it picked (as in a
    // run): `chosen` is their label, from the guard's decision on the call where there is one.
    let chosen_of = |context: &Context, call: &DojoCall| {
        let (leaves, labels) = context.label_arguments(&call.args);
        crate::chosen_by(leaves.iter().map(|(path, _)| path.as_str()).zip(&labels), None)
    };
    let mut add_output = |context: &mut Context, call: &DojoCall, chosen: Option<Label>| {
        let caps = caps_of(&call.tool);
        let source = format!("tool:{}", call.tool);
        let label = chosen.as_ref().map_or_else(|| Label::tool(&call.tool, caps), |by| Label::tool(&call.tool, caps).join(by));
        let fields = untrusted_fields.get(&call.tool).cloned().unwrap_or_default();
        // Field by field where outsiders write only some fields, or where a plan names fields.
        let split = !options.whole_outputs && chosen.is_none() && (if label.trusted { secure } else { !fields.is_empty() });
        match &call.output_json {
            Some(json) if split => context.push_fields(&source, label, &json.to_string(), &fields),
            Some(json) if chosen.is_some() && !options.whole_outputs => context.push_chosen(&source, label, &json.to_string()),
            _ => context.push(&source, label, &call.output),
        }
        if options.detector && caps.has(crate::Capability::UntrustedOutput) {
            let found = scanned.entry(call.output.clone()).or_insert_with(|| crate::detect::Detector::builtin().scan(&call.output));
            if found.flagged {
                context.flag(&source, found.score, found.rule);
            }
        }
    };
    let mode = if secure { "secure mode (planner sees only the user's request)" } else { "default mode (Rule of Two)" };

    // Utility: the user tasks alone.
    let user_tasks = read_jsonl(&folder.join("user_tasks.jsonl"))?;
    let (mut user_calls, mut user_stopped, mut required) = (0usize, 0usize, 0usize);
    let mut stopped_calls = Vec::new();
    for task in &user_tasks {
        let mut context = fresh(&task.prompt);
        for call in &task.calls {
            // What `guard.decide` does, with the flattened arguments kept for the floor.
            let (leaves, labels) = context.label_arguments(&call.args);
            let decision = guard.spec.decide_labelled(&call.tool, caps_of(&call.tool), &leaves, labels, None, &context);
            user_calls += 1;
            if decision.verdict != Verdict::Allow {
                user_stopped += 1;
                // The issue's own Rule of Two: an action whose target came from untrusted
                // content waits for a human. A target only outsiders' content named is that,
                // whatever the guard: these stops are the floor, not the guard's cost.
                let outsiders_target = leaves.iter().zip(&decision.arguments).find(|((path, value), arg)| {
                    !arg.label.trusted && crate::is_target(path, None) && context.said_by_trusted(value) == Some(false)
                });
                let outsiders_target = outsiders_target.map(|((path, _), _)| path.clone());
                required += usize::from(outsiders_target.is_some());
                stopped_calls.push(serde_json::json!({
                    "user_task": task.user_task, "tool": call.tool, "verdict": decision.verdict, "policy": decision.policy, "reason": decision.reason,
                    "target_from_outsiders": outsiders_target,
                }));
            }
            let chosen = crate::chosen_by(decision.arguments.iter().map(|a| (a.path.as_str(), &a.label)), None);
            add_output(&mut context, call, chosen);
        }
    }

    // Security: each pair, the model obeying the injection after the user task's calls.
    let scenarios = read_jsonl(&folder.join("scenarios.jsonl"))?;
    let (mut attack_calls, mut reached, mut outside_plan) = (0usize, 0usize, 0usize);
    let mut misses = Vec::new();
    let mut seen_injection = 0usize;
    for scenario in &scenarios {
        let mut context = fresh(&scenario.prompt);
        for call in &scenario.calls {
            let chosen = chosen_of(&context, call);
            add_output(&mut context, call, chosen);
        }
        seen_injection += usize::from(!context.label.trusted);
        for call in &scenario.attack {
            let caps = caps_of(&call.tool);
            if !caps.is_sink() {
                // Reading is never the harm; it only adds to the context.
                continue;
            }
            attack_calls += 1;
            // A secure run makes only the calls its plan names, and the planner never read
            // the injection: the attacker can set the values of the user's own calls, no more.
            if secure && !scenario.calls.iter().any(|c| c.tool == call.tool) {
                outside_plan += 1;
                continue;
            }
            let decision = guard.decide(&call.tool, caps, &call.args, &context);
            if decision.verdict == Verdict::Allow {
                reached += 1;
                misses.push(serde_json::json!({
                    "user_task": scenario.user_task, "injection_task": scenario.injection_task, "tool": call.tool,
                    "args": call.args, "context": decision.context.summary(),
                }));
            }
        }
    }
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    Ok(Report {
        suite: suite.to_string(),
        mode: mode.to_string(),
        detector: options.detector,
        pairs: scenarios.len(),
        pairs_with_untrusted_context: seen_injection,
        injection_sink_calls: attack_calls,
        outside_the_plan: outside_plan,
        reached_sink: reached,
        reached_share: share(reached, attack_calls),
        user_calls,
        user_calls_blocked_or_asked: user_stopped,
        user_blocked_share: share(user_stopped, user_calls),
        user_calls_with_outsiders_target: required,
        floor_share: share(required, user_calls),
        misses,
        user_calls_stopped: stopped_calls,
    })
}
