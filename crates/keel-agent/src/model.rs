//! The model behind an agent: keel's gateway router (every call routed, retried and priced
//! like any other), or a scripted model that replays answers for deterministic tests.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use keel_core::{ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Role, ToolCall, Usage};

/// A model's answer with where it came from.
#[derive(Debug, Clone)]
pub struct Reply {
    pub response: ChatResponse,
    pub provider: String,
    pub cost_usd: Option<f64>,
}

pub trait ChatModel: Send + Sync {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>>;
}

impl ChatModel for keel_llm::Router {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>> {
        Box::pin(async move {
            let (result, info) = keel_llm::Router::chat(self, request).await;
            let response = result.map_err(|e| e.to_string())?;
            let cost_usd = self.prices.cost(&info.model, &response.usage);
            Ok(Reply { response, provider: info.provider, cost_usd })
        })
    }
}

/// Replays a script of answers in order and keeps every request it was sent.
#[derive(Debug, Default)]
pub struct Scripted {
    replies: Mutex<VecDeque<ChatResponse>>,
    pub requests: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    pub fn new(replies: impl IntoIterator<Item = ChatResponse>) -> Scripted {
        Scripted { replies: Mutex::new(replies.into_iter().collect()), requests: Mutex::new(Vec::new()) }
    }

    /// An answer in words.
    pub fn text(text: &str) -> ChatResponse {
        response(Message::text(Role::Assistant, text), FinishReason::Stop)
    }

    /// An answer that calls tools: `(call id, tool name, arguments)`.
    pub fn calls(calls: &[(&str, &str, serde_json::Value)]) -> ChatResponse {
        let mut message = Message::new(Role::Assistant, Vec::<ContentPart>::new());
        message.tool_calls = calls
            .iter()
            .map(|(id, name, arguments)| ToolCall { id: id.to_string(), name: name.to_string(), arguments: arguments.to_string() })
            .collect();
        response(message, FinishReason::ToolCalls)
    }

    /// How many answers are left.
    pub fn remaining(&self) -> usize {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn response(message: Message, finish_reason: FinishReason) -> ChatResponse {
    ChatResponse {
        id: "scripted".into(),
        model: "scripted".into(),
        message,
        finish_reason,
        usage: Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
    }
}

impl ChatModel for Scripted {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push(request.clone());
        let next = self.replies.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        Box::pin(async move {
            let response = next.ok_or_else(|| "the scripted model has no answers left".to_string())?;
            Ok(Reply { response, provider: "scripted".into(), cost_usd: Some(0.001) })
        })
    }
}
