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

    /// Like `chat`, handing each piece of the answer's text to `on_text` as it arrives.
    fn chat_streamed<'a>(&'a self, request: &'a ChatRequest, on_text: &'a (dyn Fn(&str) + Send + Sync)) -> BoxFuture<'a, Result<Reply, String>> {
        let _ = on_text;
        self.chat(request)
    }

    /// Embeds texts with an embedding model alias (long-term memory).
    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        let _ = texts;
        Box::pin(async move { Err(format!("this model source has no embeddings (asked for `{model}`)")) })
    }
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

    fn chat_streamed<'a>(&'a self, request: &'a ChatRequest, on_text: &'a (dyn Fn(&str) + Send + Sync)) -> BoxFuture<'a, Result<Reply, String>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            let (stream, info) = keel_llm::Router::chat_stream(self, request).await;
            let mut stream = stream.map_err(|e| e.to_string())?;
            let mut collected = keel_core::chat::StreamCollector::default();
            while let Some(event) = stream.next().await {
                let event = event.map_err(|e| e.to_string())?;
                if let keel_core::StreamEvent::TextDelta(text) = &event {
                    on_text(text);
                }
                collected.push(&event);
            }
            let response = collected.into_response();
            let cost_usd = self.prices.cost(&info.model, &response.usage);
            Ok(Reply { response, provider: info.provider, cost_usd })
        })
    }

    fn embed<'a>(&'a self, model: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            let request = keel_core::EmbedRequest { model: model.into(), input: keel_core::EmbedInput::Texts(texts.to_vec()), dimensions: None, user: None };
            let (result, _) = keel_llm::Router::embed(self, &request).await;
            Ok(result.map_err(|e| e.to_string())?.vectors)
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

/// Scripted embeddings: each lower-cased word hashed into one of 256 buckets, so texts that
/// share words are similar. Deterministic, for tests of what the runtime does with vectors.
fn bag_of_words(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; 256];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2) {
        let hash = word.to_lowercase().bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        vector[(hash % 256) as usize] += 1.0;
    }
    vector
}

impl ChatModel for Scripted {
    fn embed<'a>(&'a self, _model: &'a str, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move { Ok(texts.iter().map(|t| bag_of_words(t)).collect()) })
    }

    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<Reply, String>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push(request.clone());
        let next = self.replies.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        Box::pin(async move {
            let response = next.ok_or_else(|| "the scripted model has no answers left".to_string())?;
            Ok(Reply { response, provider: "scripted".into(), cost_usd: Some(0.001) })
        })
    }
}
