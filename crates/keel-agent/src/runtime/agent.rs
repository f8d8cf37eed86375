//! An agent ready to run: its definition, its tools (one dispatch per kind, see
//! `tools::ToolKind`), its sub-agents and handoff team; and `AgentBuilder` for agents built in
//! Rust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;
use crate::definition::{AgentDef, Approval, Budget, Instructions};
use crate::tools::ToolBox;

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
        let def = crate::tools::handoff_def(name, None);
        self.tools.add(crate::tools::Entry::new(def, crate::tools::ToolKind::Handoff, Approval::Never, None));
        self.handoffs.insert(format!("transfer_to_{name}"), to.def.name.clone());
        let to = Arc::new(to);
        for (member, agent) in &to.team {
            self.team.entry(member.clone()).or_insert_with(|| agent.clone());
        }
        self.team.insert(to.def.name.clone(), to);
    }

    /// The agent of the team named `name` (this one when it is its own name).
    pub(crate) fn member(&self, name: Option<&str>) -> &Agent {
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
    pub(crate) fn load_team(&mut self, path: &Path) -> Result<(), Error> {
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

    pub(crate) fn load_sub_agents(&mut self, depth: usize) -> Result<(), Error> {
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
        self.def.instructions = Instructions::Text(text.into());
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
