//! The local engine on the real SmolLM2 GGUF, which the test set-up pulled
//! (`keel models pull smollm2-135m`; `scripts/test` does it).

mod hub;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use keel_core::FinishReason;
use keel_local::{ChatEngine, EngineError, EngineOptions, GenEvent, ModelStore, Sampling};
use serde_json::Value;

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("KEEL_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".local/share/keel"));
    home.join("models")
}

fn model_path() -> PathBuf {
    ModelStore::new(models_dir())
        .resolve("smollm2-135m")
        .unwrap_or_else(|err| panic!("{err} (the test set-up pulls it: scripts/test)"))
}

fn engine() -> Arc<ChatEngine> {
    static ENGINE: OnceLock<Arc<ChatEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let options = EngineOptions { slots: 4, context_per_slot: 1024, max_queue: 64, ..EngineOptions::default() };
            ChatEngine::load("smollm2-135m", &model_path(), options).unwrap()
        })
        .clone()
}

fn greedy() -> Sampling {
    Sampling { temperature: Some(0.0), ..Sampling::default() }
}

struct Output {
    text: String,
    finish: FinishReason,
    prompt_tokens: u64,
    completion_tokens: u64,
}

async fn run(engine: &ChatEngine, user: &str, sampling: Sampling, max_tokens: Option<u32>, stop: Vec<String>) -> Output {
    let prompt = engine.render(&[("user".to_string(), user.to_string())]).unwrap();
    let mut events = engine.generate(&prompt, sampling, max_tokens, stop).unwrap();
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            GenEvent::Text(piece) => text.push_str(&piece),
            GenEvent::Done { finish, prompt_tokens, completion_tokens } => {
                return Output { text, finish, prompt_tokens, completion_tokens };
            }
            GenEvent::Failed(message) => panic!("generation failed: {message}"),
        }
    }
    panic!("the engine closed the stream without finishing");
}

#[tokio::test]
async fn answers_with_the_models_own_chat_template() {
    let engine = engine();
    let prompt = engine.render(&[("system".into(), "Be brief.".into()), ("user".into(), "Hi".into())]).unwrap();
    assert!(prompt.contains("<|im_start|>system\nBe brief.<|im_end|>"), "{prompt}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    let out = run(&engine, "What is the capital of France?", greedy(), Some(24), vec![]).await;
    assert!(out.text.contains("Paris"), "{}", out.text);
    assert!(out.prompt_tokens > 5);
    assert!(out.completion_tokens >= 1 && out.completion_tokens <= 24);
}

#[tokio::test]
async fn greedy_decoding_is_deterministic_and_seeds_repeat() {
    let engine = engine();
    let a = run(&engine, "Name three colors.", greedy(), Some(16), vec![]).await;
    let b = run(&engine, "Name three colors.", greedy(), Some(16), vec![]).await;
    assert_eq!(a.text, b.text);
    let seeded = || Sampling { temperature: Some(0.9), seed: Some(42), ..Sampling::default() };
    let c = run(&engine, "Tell me a word.", seeded(), Some(12), vec![]).await;
    let d = run(&engine, "Tell me a word.", seeded(), Some(12), vec![]).await;
    assert_eq!(c.text, d.text);
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_end_the_answer() {
    let engine = engine();
    let out = run(&engine, "Count from one to twenty in words.", greedy(), Some(5), vec![]).await;
    assert_eq!(out.finish, FinishReason::Length);
    assert_eq!(out.completion_tokens, 5);
    let full = run(&engine, "What is the capital of France?", greedy(), Some(24), vec![]).await;
    let stop = "Paris".to_string();
    let cut = run(&engine, "What is the capital of France?", greedy(), Some(24), vec![stop.clone()]).await;
    assert_eq!(cut.finish, FinishReason::StopSequence(Some(stop)));
    assert_eq!(cut.text, full.text[..full.text.find("Paris").unwrap()]);
}

fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value) {
            return Err(format!("{value} not in {options:?}"));
        }
    let kinds: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let ok = kinds.is_empty()
        || kinds.iter().any(|kind| match *kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
    if !ok {
        return Err(format!("{value} is not {kinds:?}"));
    }
    if let Some(n) = value.as_f64() {
        if schema.get("minimum").and_then(Value::as_f64).is_some_and(|min| n < min) {
            return Err(format!("{n} below minimum"));
        }
        if schema.get("maximum").and_then(Value::as_f64).is_some_and(|max| n > max) {
            return Err(format!("{n} above maximum"));
        }
    }
    if let Value::Array(items) = value {
        if schema.get("minItems").and_then(Value::as_u64).is_some_and(|min| (items.len() as u64) < min) {
            return Err("too few items".into());
        }
        if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|max| (items.len() as u64) > max) {
            return Err("too many items".into());
        }
        for item in items {
            validate(item, &schema["items"])?;
        }
    }
    if let Value::Object(map) = value {
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !map.contains_key(required.as_str().unwrap()) {
                return Err(format!("missing {required}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, item) in map {
            match props.and_then(|p| p.get(key)) {
                Some(prop) => validate(item, prop)?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("unexpected property {key}"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn json_schema_output_always_parses_and_validates() {
    let engine = engine();
    let schemas = [
        serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0, "maximum": 100000000}}, "required": ["city", "population"], "additionalProperties": false}),
        serde_json::json!({"type": "object", "properties": {
            "person": {"type": "object", "properties": {"name": {"type": "string"}, "admin": {"type": "boolean"}}, "required": ["name", "admin"], "additionalProperties": false},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
            "nickname": {"type": ["string", "null"]}},
            "required": ["person", "tags", "nickname"], "additionalProperties": false}),
    ];
    for schema in schemas {
        for temperature in [0.0, 1.0] {
            let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).unwrap();
            let sampling = Sampling { temperature: Some(temperature), seed: Some(7), grammar: Some(grammar), ..Sampling::default() };
            let out = run(&engine, "Describe a city as JSON.", sampling, Some(200), vec![]).await;
            let value: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
            validate(&value, &schema).unwrap_or_else(|e| panic!("{e}: {}", out.text));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_decode_together() {
    let engine = engine();
    let mut tasks = Vec::new();
    for idx in 0..6 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            run(&engine, &format!("Say the number {idx}."), greedy(), Some(12), vec![]).await
        }));
    }
    for task in tasks {
        let out = task.await.unwrap();
        assert!(out.completion_tokens >= 1);
    }
}

#[tokio::test]
async fn a_dropped_request_frees_its_slot() {
    let options = EngineOptions { slots: 1, context_per_slot: 512, max_queue: 1, ..EngineOptions::default() };
    let engine = ChatEngine::load("smollm2-135m", &model_path(), options).unwrap();
    let prompt = engine.render(&[("user".into(), "Write a long story.".into())]).unwrap();
    let mut first = engine.generate(&prompt, greedy(), Some(400), vec![]).unwrap();
    assert!(matches!(first.recv().await, Some(GenEvent::Text(_))));
    // One slot busy, one request may wait: the third is refused.
    let waiting = engine.generate(&prompt, greedy(), Some(4), vec![]).unwrap();
    let refused = engine.generate(&prompt, greedy(), Some(4), vec![]);
    assert!(matches!(refused, Err(EngineError::Overloaded(1))), "{refused:?}");
    drop(first);
    let mut waiting = waiting;
    let mut finished = false;
    while let Some(event) = waiting.recv().await {
        if let GenEvent::Done { finish, .. } = event {
            assert_eq!(finish, FinishReason::Length);
            finished = true;
        }
    }
    assert!(finished, "the waiting request got the freed slot");
}

#[tokio::test]
async fn bad_files_and_prompts_get_clear_errors() {
    let dir = std::env::temp_dir().join(format!("keel-local-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    let err = ChatEngine::load("g", &garbage, EngineOptions::default()).unwrap_err().to_string();
    assert!(err.contains("is not a GGUF model file"), "{err}");
    let truncated = dir.join("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let err = ChatEngine::load("t", &truncated, EngineOptions::default()).unwrap_err().to_string();
    assert!(err.contains("may be truncated or corrupt"), "{err}");
    let err = ModelStore::new(&dir).resolve("smollm2-135m").unwrap_err().to_string();
    assert_eq!(err, "model `smollm2-135m` is not on disk; run `keel models pull smollm2-135m`");
    let _ = std::fs::remove_dir_all(&dir);

    let engine = engine();
    let long = "word ".repeat(2000);
    let prompt = engine.render(&[("user".into(), long)]).unwrap();
    let err = engine.generate(&prompt, greedy(), None, vec![]).unwrap_err().to_string();
    assert!(err.contains("the local model's context window is 1024 tokens per request"), "{err}");
}

fn embed_engine(precision: keel_local::Precision) -> keel_local::EmbedEngine {
    let folder = ModelStore::new(models_dir())
        .resolve("all-minilm-l6-v2")
        .unwrap_or_else(|err| panic!("{err} (the test set-up pulls it: scripts/test)"));
    keel_local::EmbedEngine::load_with("all-minilm-l6-v2", &folder, precision).unwrap()
}

/// `f32` agrees with sentence-transformers to rounding; bf16 (where the CPU has it; `f32`
/// again elsewhere) within what rounding the projections' inputs to 8 bits of mantissa costs.
#[test]
fn embeddings_agree_with_sentence_transformers() {
    agree_with_sentence_transformers(keel_local::Precision::F32, 0.99999);
    agree_with_sentence_transformers(keel_local::Precision::Bf16, 0.9999);
}

fn agree_with_sentence_transformers(precision: keel_local::Precision, lowest: f64) {
    let reference: Value =
        serde_json::from_str(include_str!("../../../../tests/data/minilm_reference.json")).unwrap();
    let items = reference["items"].as_array().unwrap();
    assert!(items.len() >= 100);
    let texts: Vec<String> = items.iter().map(|item| item["text"].as_str().unwrap().to_string()).collect();
    let engine = embed_engine(precision);
    assert_eq!(engine.dimensions, 384);
    let mut vectors = Vec::new();
    // Batches of mixed lengths exercise the packing of several sentences into one pass.
    for batch in texts.chunks(17) {
        vectors.extend(engine.embed(batch).unwrap().0);
    }
    // A sentence embeds the same alone as inside a batch.
    let alone = engine.embed(&texts[20..21]).unwrap().0.remove(0);
    let in_batch = &vectors[20];
    let agreement: f32 = alone.iter().zip(in_batch).map(|(a, b)| a * b).sum();
    assert!(agreement > 0.99999, "alone vs in a batch: cosine {agreement}");
    let mut worst = (1.0f64, String::new());
    for (item, ours) in items.iter().zip(&vectors) {
        let theirs: Vec<f64> = item["vector"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let dot: f64 = ours.iter().zip(&theirs).map(|(a, b)| f64::from(*a) * b).sum();
        let norm_ours: f64 = ours.iter().map(|a| f64::from(*a) * f64::from(*a)).sum::<f64>().sqrt();
        let norm_theirs: f64 = theirs.iter().map(|b| b * b).sum::<f64>().sqrt();
        let cosine = dot / (norm_ours * norm_theirs);
        assert!((norm_ours - 1.0).abs() < 1e-4, "vectors are unit length");
        if cosine < worst.0 {
            worst = (cosine, item["text"].as_str().unwrap().chars().take(60).collect());
        }
    }
    assert!(worst.0 >= lowest, "{:?}: lowest cosine {:.6} on {:?}", engine.precision, worst.0, worst.1);
}

#[test]
fn a_broken_embedding_model_folder_gets_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("keel-embed-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = keel_local::EmbedEngine::load("x", &dir).unwrap_err().to_string();
    assert!(err.contains("could not read") && err.contains("config.json"), "{err}");
    let folder = ModelStore::new(models_dir()).resolve("all-minilm-l6-v2").unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(folder.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage").unwrap();
    let err = keel_local::EmbedEngine::load("x", &dir).unwrap_err().to_string();
    assert!(err.contains("not a readable safetensors file") || err.contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsupported_schema_keywords_are_named() {
    let schema = serde_json::json!({"type": "object", "properties": {
        "uniqueItems": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}});
    assert_eq!(
        keel_local::unsupported_keyword(&schema, ""),
        Some(("uniqueItems".to_string(), "/properties/tags".to_string()))
    );
    let fine = serde_json::json!({"type": "object", "properties": {"not": {"type": "string", "enum": ["if", "then"]}}});
    assert_eq!(keel_local::unsupported_keyword(&fine, ""), None);
}
