//! A prompt definition: a text or a list of chat messages with Jinja templating
//! (`{{ var }}`, `{% if %}`, `{% for %}`), message placeholders that slot a whole
//! conversation in, and the config a call made with it uses (model alias, sampling, output
//! format, tools). Read from TOML, YAML or JSON; stored as JSON.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptDef {
    /// A text prompt: rendered, it is one user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A chat prompt: messages and placeholders in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<PromptMessage>,
    #[serde(default, skip_serializing_if = "PromptConfig::is_empty")]
    pub config: PromptConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptMessage {
    /// A variable holding a list of messages (OpenAI's shape), slotted in as they are.
    Placeholder { placeholder: String },
    Message { role: String, content: String },
}

/// What a call made with the prompt uses unless the request says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// The model alias to call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// OpenAI's `response_format` (`{"type": "json_schema", "json_schema": {...}}` or
    /// `{"type": "json_object"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Function tools in OpenAI's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

impl PromptConfig {
    fn is_empty(&self) -> bool {
        *self == PromptConfig::default()
    }

    /// The config as request fields (OpenAI's names), in a fixed order.
    pub fn fields(&self) -> Vec<(&'static str, Value)> {
        let mut fields = Vec::new();
        let mut put = |key, value: Option<Value>| {
            if let Some(value) = value {
                fields.push((key, value));
            }
        };
        put("model", self.model.clone().map(Value::String));
        put("temperature", self.temperature.map(Value::from));
        put("top_p", self.top_p.map(Value::from));
        put("max_tokens", self.max_tokens.map(Value::from));
        put("stop", self.stop.clone().map(Value::from));
        put("response_format", self.response_format.clone());
        put("tools", self.tools.clone().map(Value::Array));
        put("tool_choice", self.tool_choice.clone());
        fields
    }
}

/// The format of a prompt file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format a file name says (`.toml`, `.yaml`/`.yml`, `.json`), if it says one.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase())?;
        match ext.as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

impl PromptDef {
    /// Reads a definition in `format`; with none, JSON, then TOML, then YAML (stdin).
    pub fn parse(text: &str, format: Option<Format>) -> Result<PromptDef> {
        let def: PromptDef = match format {
            Some(Format::Json) => serde_json::from_str(text).map_err(|e| Error::Invalid(format!("not a prompt (JSON): {e}")))?,
            Some(Format::Toml) => toml::from_str(text).map_err(|e| Error::Invalid(format!("not a prompt (TOML): {e}")))?,
            Some(Format::Yaml) => serde_yaml_ng::from_str(text).map_err(|e| Error::Invalid(format!("not a prompt (YAML): {e}")))?,
            None => {
                let trimmed = text.trim_start();
                if trimmed.starts_with('{') {
                    return PromptDef::parse(text, Some(Format::Json));
                }
                match toml::from_str::<PromptDef>(text) {
                    Ok(def) => def,
                    Err(toml_err) => serde_yaml_ng::from_str(text).map_err(|yaml_err| {
                        Error::Invalid(format!("not a prompt in TOML ({toml_err}) nor in YAML ({yaml_err})"))
                    })?,
                }
            }
        };
        def.check()?;
        Ok(def)
    }

    /// Reads a stored definition (JSON, written by [`PromptDef::to_json`]).
    pub fn from_json(text: &str) -> Result<PromptDef> {
        PromptDef::parse(text, Some(Format::Json))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One of `text` and `messages`, known roles, and templates that compile.
    fn check(&self) -> Result<()> {
        match (&self.text, self.messages.is_empty()) {
            (Some(_), false) => return Err(Error::Invalid("a prompt has `text` or `messages`, not both".into())),
            (None, true) => return Err(Error::Invalid("a prompt needs `text` or `messages`".into())),
            _ => {}
        }
        for message in &self.messages {
            if let PromptMessage::Message { role, .. } = message
                && !matches!(role.as_str(), "system" | "developer" | "user" | "assistant")
            {
                return Err(Error::Invalid(format!("role `{role}`: a prompt message is system, developer, user or assistant")));
            }
        }
        let env = environment();
        for (index, template) in self.templates().enumerate() {
            env.template_from_str(template).map_err(|e| Error::Invalid(format!("template {}: {}", index + 1, describe(&e))))?;
        }
        Ok(())
    }

    fn templates(&self) -> impl Iterator<Item = &str> {
        self.text.as_deref().into_iter().chain(self.messages.iter().filter_map(|m| match m {
            PromptMessage::Message { content, .. } => Some(content.as_str()),
            PromptMessage::Placeholder { .. } => None,
        }))
    }

    /// Every variable the prompt reads, placeholders included, by name.
    pub fn variables(&self) -> BTreeSet<String> {
        let env = environment();
        let mut names = BTreeSet::new();
        for template in self.templates() {
            if let Ok(compiled) = env.template_from_str(template) {
                names.extend(compiled.undeclared_variables(false));
            }
        }
        for message in &self.messages {
            if let PromptMessage::Placeholder { placeholder } = message {
                names.insert(placeholder.clone());
            }
        }
        names
    }

    /// The messages (OpenAI's shape: `{"role", "content"}`) the prompt renders to with
    /// `vars`. A variable it reads that `vars` lacks is an error naming it.
    pub fn render(&self, vars: &Map<String, Value>) -> Result<Vec<Value>> {
        self.compile()?.render(vars)
    }

    /// The prompt with its templates compiled once, to render many times (an eval's cells).
    pub fn compile(&self) -> Result<Compiled<'_>> {
        let mut env = environment();
        for template in self.templates() {
            // A template is named by its own text: equal texts are one template.
            env.add_template(template, template).map_err(|e| Error::Invalid(describe(&e)))?;
        }
        Ok(Compiled { def: self, env, variables: self.variables() })
    }
}

/// A [`PromptDef`] with its templates compiled.
pub struct Compiled<'d> {
    def: &'d PromptDef,
    env: Environment<'d>,
    variables: BTreeSet<String>,
}

impl std::fmt::Debug for Compiled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("def", self.def).finish_non_exhaustive()
    }
}

impl Compiled<'_> {
    /// As [`PromptDef::render`].
    pub fn render(&self, vars: &Map<String, Value>) -> Result<Vec<Value>> {
        let missing: Vec<&String> = self.variables.iter().filter(|name| !vars.contains_key(*name)).collect();
        if !missing.is_empty() {
            let names = missing.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
            return Err(Error::MissingVariable(format!("the prompt needs variable{} {names}", if missing.len() > 1 { "s" } else { "" })));
        }
        let context = minijinja::Value::from_serialize(vars);
        let render = |template: &str| -> Result<String> {
            let compiled = self.env.get_template(template).map_err(|e| Error::Invalid(describe(&e)))?;
            compiled.render(&context).map_err(|e| Error::MissingVariable(describe(&e)))
        };
        if let Some(text) = &self.def.text {
            return Ok(vec![serde_json::json!({"role": "user", "content": render(text)?})]);
        }
        let mut out = Vec::new();
        for message in &self.def.messages {
            match message {
                PromptMessage::Message { role, content } => out.push(serde_json::json!({"role": role, "content": render(content)?})),
                PromptMessage::Placeholder { placeholder } => match &vars[placeholder] {
                    Value::Array(messages) if messages.iter().all(|m| m.get("role").is_some_and(Value::is_string)) => {
                        out.extend(messages.iter().cloned());
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "variable `{placeholder}` fills a placeholder: it must be a list of messages with a `role`"
                        )));
                    }
                },
            }
        }
        Ok(out)
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

/// A template error with its line, as a user should read it.
fn describe(err: &minijinja::Error) -> String {
    let mut text = err.detail().map_or_else(|| err.kind().to_string(), str::to_string);
    if let Some(line) = err.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn renders_variables_conditionals_loops_and_placeholders() {
        let def = PromptDef::parse(
            r#"
messages = [
  { role = "system", content = "You help {{ company }} customers.{% if vip %} Be extra kind.{% endif %}" },
  { placeholder = "history" },
  { role = "user", content = "{% for item in items %}- {{ item }}\n{% endfor %}" },
]
[config]
model = "fast"
temperature = 0.2
"#,
            Some(Format::Toml),
        )
        .unwrap();
        assert_eq!(def.variables().into_iter().collect::<Vec<_>>(), ["company", "history", "items", "vip"]);
        let messages = def
            .render(&vars(json!({
                "company": "Acme", "vip": true, "items": ["a", "b"],
                "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            })))
            .unwrap();
        assert_eq!(
            Value::Array(messages),
            json!([
                {"role": "system", "content": "You help Acme customers. Be extra kind."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "- a\n- b\n"},
            ])
        );
        assert_eq!(def.config.fields()[0], ("model", json!("fast")));
    }

    #[test]
    fn missing_variables_and_bad_definitions_are_named() {
        let def = PromptDef::parse("text: 'Hello {{ name }}, about {{ topic }}'", Some(Format::Yaml)).unwrap();
        let err = def.render(&vars(json!({"name": "Ada"}))).unwrap_err();
        assert!(matches!(&err, Error::MissingVariable(text) if text.contains("`topic`")), "{err}");
        let ok = def.render(&vars(json!({"name": "Ada", "topic": "tea"}))).unwrap();
        assert_eq!(ok, [json!({"role": "user", "content": "Hello Ada, about tea"})]);
        for (text, says) in [
            (r#"{"text": "a", "messages": [{"role": "user", "content": "b"}]}"#, "not both"),
            (r#"{"config": {}}"#, "needs `text` or `messages`"),
            (r#"{"messages": [{"role": "robot", "content": "b"}]}"#, "role `robot`"),
            (r#"{"text": "{% if x %}unclosed"}"#, "template 1"),
            (r#"{"text": "a", "config": {"temprature": 1}}"#, "temprature"),
        ] {
            let err = PromptDef::parse(text, None).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
        let def = PromptDef::parse(r#"{"messages": [{"placeholder": "chat"}]}"#, None).unwrap();
        assert!(def.render(&vars(json!({"chat": "not a list"}))).is_err());
    }
}
