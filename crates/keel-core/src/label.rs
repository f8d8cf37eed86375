//! Information-flow labels, shared by every layer that stores or moves a labelled value
//! (the guard decides on them; runs, memories and traces keep them): where a value came from,
//! whether an outsider could have written it, who may read it, and what a tool does
//! (its [`Capabilities`]). No IO.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Who may read a value: everyone, or only the named principals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readers {
    Public,
    Only(BTreeSet<String>),
}

impl Readers {
    fn meet(&self, other: &Readers) -> Readers {
        match (self, other) {
            (Readers::Public, r) | (r, Readers::Public) => r.clone(),
            (Readers::Only(a), Readers::Only(b)) => Readers::Only(a.intersection(b).cloned().collect()),
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Readers::Only(_))
    }
}

/// Provenance and readers of a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// `user`, `system`, `tool:NAME`: every source that went into the value.
    pub sources: BTreeSet<String>,
    /// False once anything an outsider could write went into the value.
    pub trusted: bool,
    pub readers: Readers,
}

impl Label {
    /// What the user typed: trusted, readable by anyone the user talks to.
    pub fn user() -> Label {
        Label { sources: ["user".to_string()].into(), trusted: true, readers: Readers::Public }
    }

    pub fn system() -> Label {
        Label { sources: ["system".to_string()].into(), trusted: true, readers: Readers::Public }
    }

    /// A tool's output, by what the tool declares.
    pub fn tool(name: &str, capabilities: Capabilities) -> Label {
        Label {
            sources: [format!("tool:{name}")].into(),
            trusted: !capabilities.has(Capability::UntrustedOutput),
            readers: if capabilities.has(Capability::PrivateData) { Readers::Only(["user".to_string()].into()) } else { Readers::Public },
        }
    }

    /// Nothing yet: the identity of [`Label::join`].
    pub fn empty() -> Label {
        Label { sources: BTreeSet::new(), trusted: true, readers: Readers::Public }
    }

    /// A value made from both: every source, trusted only if both are, readable by whoever
    /// may read both.
    pub fn join(&self, other: &Label) -> Label {
        Label {
            sources: self.sources.union(&other.sources).cloned().collect(),
            trusted: self.trusted && other.trusted,
            readers: self.readers.meet(&other.readers),
        }
    }

    pub fn is_private(&self) -> bool {
        self.readers.is_private()
    }

    /// `trusted · public · user, tool:contacts`, for terminals.
    pub fn summary(&self) -> String {
        let readers = match &self.readers {
            Readers::Public => "public".to_string(),
            Readers::Only(who) => format!("private to {}", who.iter().cloned().collect::<Vec<_>>().join(", ")),
        };
        let sources: Vec<&str> = self.sources.iter().map(String::as_str).collect();
        format!("{} · {readers} · from {}", if self.trusted { "trusted" } else { "untrusted" }, if sources.is_empty() { "nothing".into() } else { sources.join(", ") })
    }
}

/// What a tool does, as far as information flow goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Returns data only the user should see (files, mail, accounts, documents).
    PrivateData,
    /// Returns content an outsider could have written (web pages, inbound mail, shared docs).
    UntrustedOutput,
    /// Sends something out of the machine (a request, a message, a post).
    External,
    /// Changes something (writes a file, pays, books, deletes).
    ChangesState,
}

impl Capability {
    pub const ALL: [Capability; 4] = [Capability::PrivateData, Capability::UntrustedOutput, Capability::External, Capability::ChangesState];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Capability::PrivateData => "private_data",
            Capability::UntrustedOutput => "untrusted_output",
            Capability::External => "external",
            Capability::ChangesState => "changes_state",
        }
    }
}

/// A set of [`Capability`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const NONE: Capabilities = Capabilities(0);

    pub fn of(list: &[Capability]) -> Capabilities {
        Capabilities(list.iter().fold(0, |bits, c| bits | c.bit()))
    }

    pub fn has(self, capability: Capability) -> bool {
        self.0 & capability.bit() != 0
    }

    pub fn list(self) -> Vec<Capability> {
        Capability::ALL.into_iter().filter(|c| self.has(*c)).collect()
    }

    /// A sink: a call whose arguments leave the run or change the world.
    pub fn is_sink(self) -> bool {
        self.has(Capability::External) || self.has(Capability::ChangesState)
    }

    /// What keel assumes of a tool that declares nothing (MCP tools, commands): it returns
    /// untrusted content and has an external effect.
    pub fn conservative() -> Capabilities {
        Capabilities::of(&[Capability::UntrustedOutput, Capability::External])
    }
}

impl Serialize for Capabilities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.list().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Capabilities {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Capabilities, D::Error> {
        Ok(Capabilities::of(&Vec::<Capability>::deserialize(d)?))
    }
}
