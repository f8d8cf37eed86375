//! One loaded GGUF chat model and the thread that runs it: requests take sequence slots in
//! one llama.cpp context and decode together (continuous batching); prompts are fed in
//! chunks between decode steps; requests beyond the slots wait in a bounded queue.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};

use keel_core::FinishReason;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    let backend = BACKEND.get_or_init(|| {
        let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
        if std::env::var_os("KEEL_LLAMA_LOG").is_none() {
            backend.void_logs();
        }
        Ok(backend)
    });
    backend.as_ref().map_err(|e| EngineError::Load(format!("could not start llama.cpp: {e}")))
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the local model is busy: {0} requests are already waiting; try again shortly")]
    Overloaded(usize),
    #[error("the local model failed: {0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub threads: i32,
    /// Sequences decoded together.
    pub slots: usize,
    /// Context window of each sequence, in tokens (capped by the model's training context).
    pub context_per_slot: u32,
    /// Most tokens in one llama.cpp batch.
    pub batch: u32,
    /// Requests that may wait for a slot; more get an "overloaded" error.
    pub max_queue: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
        EngineOptions { threads, slots: 8, context_per_slot: 2048, batch: 512, max_queue: 64 }
    }
}

/// How to pick tokens; `None` fields take llama.cpp's server defaults.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub seed: Option<u32>,
    /// A GBNF grammar every output must match.
    pub grammar: Option<String>,
    /// Keep generating past end-of-generation tokens (benchmarks want fixed lengths).
    pub ignore_eos: bool,
}

#[derive(Debug)]
pub enum GenEvent {
    Text(String),
    Done { finish: FinishReason, prompt_tokens: u64, completion_tokens: u64 },
    Failed(String),
}

struct Job {
    tokens: Vec<LlamaToken>,
    sampling: Sampling,
    max_tokens: u32,
    stop: Vec<String>,
    events: UnboundedSender<GenEvent>,
}

/// A loaded chat model.
pub struct ChatEngine {
    pub name: String,
    model: Arc<LlamaModel>,
    template: Option<LlamaChatTemplate>,
    jobs: Sender<Job>,
    queued: Arc<AtomicUsize>,
    options: EngineOptions,
    context_per_slot: u32,
}

impl std::fmt::Debug for ChatEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEngine").field("name", &self.name).field("options", &self.options).finish()
    }
}

/// Checks that a file is a GGUF before llama.cpp sees it, so a wrong or truncated file gets
/// a clear message rather than a crash deep in the loader.
fn check_gguf(path: &Path) -> Result<(), EngineError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)
        .map_err(|e| EngineError::Load(format!("could not open model file {}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|_| EngineError::Load(format!("{} is too short to be a GGUF model", path.display())))?;
    if &magic != b"GGUF" {
        return Err(EngineError::Load(format!("{} is not a GGUF model file (wrong magic bytes)", path.display())));
    }
    Ok(())
}

impl ChatEngine {
    /// Loads a GGUF file and starts its decode thread.
    pub fn load(name: &str, path: &Path, options: EngineOptions) -> Result<Arc<ChatEngine>, EngineError> {
        check_gguf(path)?;
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
            EngineError::Load(format!("llama.cpp could not load {} ({e}); the file may be truncated or corrupt", path.display()))
        })?;
        let model = Arc::new(model);
        let template = model.chat_template(None).ok();
        let context_per_slot = options.context_per_slot.min(model.n_ctx_train().max(1));
        let (jobs, receiver) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        {
            let model = model.clone();
            let queued = queued.clone();
            let options = options.clone();
            std::thread::Builder::new()
                .name(format!("keel-llama-{name}"))
                .spawn(move || run(&model, backend, &options, context_per_slot, &receiver, &queued, &ready_tx))
                .map_err(|e| EngineError::Load(format!("could not start the decode thread: {e}")))?;
        }
        ready_rx.recv().map_err(|_| EngineError::Load("the decode thread stopped".into()))??;
        Ok(Arc::new(ChatEngine { name: name.to_string(), model, template, jobs, queued, options, context_per_slot }))
    }

    pub fn context_per_slot(&self) -> u32 {
        self.context_per_slot
    }

    /// Renders messages `(role, content)` with the model's own chat template.
    pub fn render(&self, messages: &[(String, String)]) -> Result<String, EngineError> {
        let chat = messages
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::BadRequest(format!("a message cannot be passed to the model: {e}")))?;
        let template = match &self.template {
            Some(template) => template.clone(),
            None => LlamaChatTemplate::new("chatml").map_err(|e| EngineError::Failed(e.to_string()))?,
        };
        self.model
            .apply_chat_template(&template, &chat, true)
            .map_err(|e| EngineError::Failed(format!("the model's chat template failed: {e}")))
    }

    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Queues a generation; events arrive on the returned channel. Dropping the receiver
    /// stops the generation and frees its slot.
    pub fn generate(
        &self,
        prompt: &str,
        sampling: Sampling,
        max_tokens: Option<u32>,
        stop: Vec<String>,
    ) -> Result<UnboundedReceiver<GenEvent>, EngineError> {
        self.generate_tokens(self.tokenize(prompt), sampling, max_tokens, stop)
    }

    /// Like `generate`, from prompt tokens.
    pub fn generate_tokens(
        &self,
        tokens: Vec<LlamaToken>,
        sampling: Sampling,
        max_tokens: Option<u32>,
        stop: Vec<String>,
    ) -> Result<UnboundedReceiver<GenEvent>, EngineError> {
        let window = self.context_per_slot as usize;
        if tokens.len() + 1 >= window {
            return Err(EngineError::BadRequest(format!(
                "the prompt is {} tokens; the local model's context window is {window} tokens per request",
                tokens.len()
            )));
        }
        let room = (window - tokens.len() - 1) as u32;
        let max_tokens = max_tokens.map_or(room, |n| n.min(room)).max(1);
        if self.queued.load(Ordering::SeqCst) >= self.options.max_queue {
            return Err(EngineError::Overloaded(self.options.max_queue));
        }
        let (events, receiver) = unbounded_channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.jobs
            .send(Job { tokens, sampling, max_tokens, stop, events })
            .map_err(|_| EngineError::Failed("the decode thread has stopped".into()))?;
        Ok(receiver)
    }
}

struct Slot {
    seq: i32,
    job: Job,
    sampler: LlamaSampler,
    /// Kept apart from `sampler`: checking one sampled token against the grammar is far
    /// cheaper than masking the whole vocabulary, which is needed only when it fails.
    grammar: Option<LlamaSampler>,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    n_past: i32,
    last: Option<LlamaToken>,
    logits_at: Option<i32>,
    generated: u32,
    bytes: Vec<u8>,
    held: String,
}

fn build_grammar(model: &LlamaModel, sampling: &Sampling) -> Result<Option<LlamaSampler>, String> {
    match &sampling.grammar {
        None => Ok(None),
        Some(grammar) => LlamaSampler::grammar(model, grammar, "root")
            .map(Some)
            .map_err(|e| format!("the grammar is not valid: {e}")),
    }
}

fn build_sampler(sampling: &Sampling) -> LlamaSampler {
    let mut chain = Vec::new();
    let temperature = sampling.temperature.unwrap_or(0.8);
    if temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        chain.push(LlamaSampler::top_k(sampling.top_k.unwrap_or(40)));
        chain.push(LlamaSampler::top_p(sampling.top_p.unwrap_or(0.95), 1));
        chain.push(LlamaSampler::min_p(0.05, 1));
        chain.push(LlamaSampler::temp(temperature));
        chain.push(LlamaSampler::dist(sampling.seed.unwrap_or_else(rand_seed)));
    }
    LlamaSampler::chain_simple(chain)
}

/// Samples the next token of a slot, honouring its grammar the way llama.cpp's own server
/// does: sample freely, keep the token if the grammar allows it, else resample from the
/// grammar-masked distribution.
fn sample(slot: &mut Slot, ctx: &llama_cpp_2::context::LlamaContext<'_>, idx: i32) -> LlamaToken {
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    let Some(grammar) = slot.grammar.as_mut() else {
        return slot.sampler.sample(ctx, idx);
    };
    let mut candidates = ctx.token_data_array_ith(idx);
    candidates.apply_sampler(&mut slot.sampler);
    let mut token = candidates.selected_token();
    if let Some(free) = token {
        let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(free, 1.0, 0.0)], false);
        grammar.apply(&mut single);
        if single.data[0].logit() == f32::NEG_INFINITY {
            token = None;
        }
    }
    let token = match token {
        Some(token) => token,
        None => {
            let mut candidates = ctx.token_data_array_ith(idx);
            grammar.apply(&mut candidates);
            candidates.apply_sampler(&mut slot.sampler);
            candidates.selected_token().unwrap_or_else(|| candidates.sample_token_greedy())
        }
    };
    grammar.accept(token);
    slot.sampler.accept(token);
    token
}

fn rand_seed() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// The longest suffix of `text` that could still grow into one of `stops`.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for stop in stops {
        for len in (1..stop.len()).rev() {
            if len <= text.len() && text.is_char_boundary(text.len() - len) && stop.starts_with(&text[text.len() - len..]) {
                keep = keep.max(len);
                break;
            }
        }
    }
    keep
}

impl Slot {
    /// Takes new bytes of output; returns the finish reason if a stop sequence matched.
    fn push_bytes(&mut self, piece: &[u8]) -> Option<FinishReason> {
        self.bytes.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(text) => text.len(),
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(_) => {
                let text = String::from_utf8_lossy(&self.bytes).into_owned();
                self.bytes.clear();
                self.held.push_str(&text);
                return self.flush_text();
            }
        };
        let text = String::from_utf8(self.bytes.drain(..valid).collect()).unwrap_or_default();
        self.held.push_str(&text);
        self.flush_text()
    }

    fn flush_text(&mut self) -> Option<FinishReason> {
        let hit = self.job.stop.iter().filter_map(|stop| self.held.find(stop.as_str()).map(|pos| (pos, stop.clone()))).min();
        if let Some((pos, stop)) = hit {
            let text: String = self.held.drain(..pos).collect();
            self.held.clear();
            self.send_text(text);
            return Some(FinishReason::StopSequence(Some(stop)));
        }
        let keep = held_back(&self.held, &self.job.stop);
        let cut = self.held.len() - keep;
        let text: String = self.held.drain(..cut).collect();
        self.send_text(text);
        None
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.job.events.send(GenEvent::Text(text));
        }
    }

    fn finish(mut self, finish: FinishReason) {
        if !matches!(finish, FinishReason::StopSequence(_)) {
            let rest = std::mem::take(&mut self.held) + &String::from_utf8_lossy(&self.bytes);
            self.send_text(rest);
        }
        let _ = self.job.events.send(GenEvent::Done {
            finish,
            prompt_tokens: self.job.tokens.len() as u64,
            completion_tokens: u64::from(self.generated),
        });
    }
}

/// Flash attention: `KEEL_FLASH_ATTN=on|off|auto` (default auto, llama.cpp's own default:
/// on this CPU it measured faster prefill and batched decode, single-stream decode on par).
fn flash_attention() -> llama_cpp_sys_2::llama_flash_attn_type {
    match std::env::var("KEEL_FLASH_ATTN").as_deref() {
        Ok("on") => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        Ok("off") => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        _ => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
    }
}

fn run(
    model: &LlamaModel,
    backend: &LlamaBackend,
    options: &EngineOptions,
    context_per_slot: u32,
    jobs: &Receiver<Job>,
    queued: &AtomicUsize,
    ready: &Sender<Result<(), EngineError>>,
) {
    let n_slots = options.slots.max(1);
    let n_ctx = context_per_slot * n_slots as u32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(options.batch)
        .with_n_ubatch(options.batch)
        .with_n_seq_max(n_slots as u32)
        .with_n_threads(options.threads)
        .with_n_threads_batch(options.threads)
        .with_flash_attention_policy(flash_attention());
    let mut ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(err) => {
            let _ = ready.send(Err(EngineError::Load(format!("could not create a llama.cpp context: {err}"))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(options.batch as usize, n_slots as i32);
    let mut slots: Vec<Option<Slot>> = (0..n_slots).map(|_| None).collect();
    loop {
        // Admit waiting jobs into free slots; block only when nothing is running.
        while let Some(free) = slots.iter().position(Option::is_none) {
            let idle = slots.iter().all(Option::is_none);
            let job = if idle {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            queued.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                continue;
            }
            match build_grammar(model, &job.sampling) {
                Ok(grammar) => {
                    let sampler = build_sampler(&job.sampling);
                    let seq = free as i32;
                    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
                    slots[free] = Some(Slot {
                        seq,
                        job,
                        sampler,
                        grammar,
                        fed: 0,
                        n_past: 0,
                        last: None,
                        logits_at: None,
                        generated: 0,
                        bytes: Vec::new(),
                        held: String::new(),
                    });
                }
                Err(message) => {
                    let _ = job.events.send(GenEvent::Failed(message));
                }
            }
        }
        // A client that went away frees its slot.
        for entry in &mut slots {
            if entry.as_ref().is_some_and(|slot| slot.job.events.is_closed()) {
                let slot = entry.take().expect("checked above");
                let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
            }
        }
        batch.clear();
        let mut budget = options.batch as usize;
        // Decoding sequences first (one token each), then prompt chunks in the room left.
        for slot in slots.iter_mut().flatten() {
            slot.logits_at = None;
            if let Some(token) = slot.last {
                if budget == 0 {
                    continue;
                }
                if batch.add(token, slot.n_past, &[slot.seq], true).is_ok() {
                    slot.logits_at = Some(batch.n_tokens() - 1);
                    slot.n_past += 1;
                    budget -= 1;
                }
            }
        }
        for slot in slots.iter_mut().flatten() {
            if slot.last.is_some() || budget == 0 {
                continue;
            }
            let remaining = slot.job.tokens.len() - slot.fed;
            let take = remaining.min(budget);
            for offset in 0..take {
                let idx = slot.fed + offset;
                let is_last = idx + 1 == slot.job.tokens.len();
                if batch.add(slot.job.tokens[idx], idx as i32, &[slot.seq], is_last).is_err() {
                    break;
                }
                if is_last {
                    slot.logits_at = Some(batch.n_tokens() - 1);
                }
            }
            slot.fed += take;
            slot.n_past = slot.fed as i32;
            budget -= take;
        }
        if batch.n_tokens() == 0 {
            continue;
        }
        if let Err(err) = ctx.decode(&mut batch) {
            for entry in &mut slots {
                if let Some(slot) = entry.take() {
                    let _ = slot.job.events.send(GenEvent::Failed(format!("decoding failed: {err}")));
                    let _ = ctx.clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                }
            }
            continue;
        }
        for entry in &mut slots {
            let Some(slot) = entry.as_mut() else { continue };
            let Some(idx) = slot.logits_at else { continue };
            let token = sample(slot, &ctx, idx);
            let finish = if vocab.is_eog(token) && !slot.job.sampling.ignore_eos {
                Some(FinishReason::Stop)
            } else {
                slot.generated += 1;
                slot.last = Some(token);
                let piece = vocab.token_to_piece(token, false, None);
                match slot.push_bytes(&piece) {
                    Some(stop) => Some(stop),
                    None if slot.generated >= slot.job.max_tokens => Some(FinishReason::Length),
                    None if slot.n_past as u32 + 1 >= context_per_slot => Some(FinishReason::Length),
                    None => None,
                }
            };
            if let Some(finish) = finish {
                let slot = entry.take().expect("slot is active");
                let seq = slot.seq;
                slot.finish(finish);
                let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_what_could_become_a_stop_sequence() {
        let stops = vec!["</end>".to_string(), "STOP".to_string()];
        assert_eq!(held_back("hello </e", &stops), 3);
        assert_eq!(held_back("hello ST", &stops), 2);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("é", &stops), 0);
    }
}
