//! Sentence embeddings in-process: a BERT encoder (all-MiniLM-L6-v2 and its kin) on candle,
//! read straight from `model.safetensors`, with sentence-transformers' mean pooling over the
//! attention mask and L2 normalisation. Batched.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::EngineError;

/// Longest input, in tokens (sentence-transformers' `max_seq_length` for MiniLM).
const MAX_TOKENS: usize = 256;

#[derive(Debug, Deserialize)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

fn two() -> usize {
    2
}

fn eps() -> f64 {
    1e-12
}

fn err(context: &str) -> impl Fn(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError::Load(format!("{context}: {e}"))
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub struct EmbedEngine {
    pub name: String,
    tokenizer: Tokenizer,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    pub dimensions: usize,
    device: Device,
}

impl std::fmt::Debug for EmbedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedEngine").field("name", &self.name).field("dimensions", &self.dimensions).finish()
    }
}

impl EmbedEngine {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from a folder.
    pub fn load(name: &str, folder: &Path) -> Result<EmbedEngine, EngineError> {
        let read = |file: &str| {
            std::fs::read_to_string(folder.join(file))
                .map_err(|e| EngineError::Load(format!("could not read {}: {e}", folder.join(file).display())))
        };
        let config: BertConfig = serde_json::from_str(&read("config.json")?)
            .map_err(|e| EngineError::Load(format!("config.json is not a BERT config: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(folder.join("tokenizer.json"))
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..PaddingParams::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS.min(config.max_position_embeddings), ..TruncationParams::default() }))
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        let device = Device::Cpu;
        let weights = folder.join("model.safetensors");
        let vb = unsafe_free_varbuilder(&weights, &device)?;
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let h = config.hidden_size;
        let load_err = err("model.safetensors");
        let emb = vb.pp("embeddings");
        let word = candle_nn::embedding(config.vocab_size, h, emb.pp("word_embeddings")).map_err(&load_err)?;
        let position = candle_nn::embedding(config.max_position_embeddings, h, emb.pp("position_embeddings")).map_err(&load_err)?;
        let token_type = candle_nn::embedding(config.type_vocab_size, h, emb.pp("token_type_embeddings")).map_err(&load_err)?;
        let embeddings_norm = candle_nn::layer_norm(h, config.layer_norm_eps, emb.pp("LayerNorm")).map_err(&load_err)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for idx in 0..config.num_hidden_layers {
            let layer = vb.pp(format!("encoder.layer.{idx}"));
            let attention = layer.pp("attention");
            layers.push(Layer {
                query: candle_nn::linear(h, h, attention.pp("self.query")).map_err(&load_err)?,
                key: candle_nn::linear(h, h, attention.pp("self.key")).map_err(&load_err)?,
                value: candle_nn::linear(h, h, attention.pp("self.value")).map_err(&load_err)?,
                attention_out: candle_nn::linear(h, h, attention.pp("output.dense")).map_err(&load_err)?,
                attention_norm: candle_nn::layer_norm(h, config.layer_norm_eps, attention.pp("output.LayerNorm")).map_err(&load_err)?,
                intermediate: candle_nn::linear(h, config.intermediate_size, layer.pp("intermediate.dense")).map_err(&load_err)?,
                output: candle_nn::linear(config.intermediate_size, h, layer.pp("output.dense")).map_err(&load_err)?,
                output_norm: candle_nn::layer_norm(h, config.layer_norm_eps, layer.pp("output.LayerNorm")).map_err(&load_err)?,
            });
        }
        Ok(EmbedEngine {
            name: name.to_string(),
            tokenizer,
            word,
            position,
            token_type,
            embeddings_norm,
            layers,
            heads: config.num_attention_heads,
            dimensions: h,
            device,
        })
    }

    /// Embeds any number of texts in batches of `batch`, longest first as sentence-transformers
    /// does (batches of similar length waste little on padding); vectors come back in input
    /// order.
    pub fn embed_many(&self, texts: &[String], batch: usize) -> Result<(Vec<Vec<f32>>, u64), EngineError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&idx| std::cmp::Reverse(texts[idx].len()));
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut n_tokens = 0;
        for chunk in order.chunks(batch.max(1)) {
            let batch_texts: Vec<String> = chunk.iter().map(|&idx| texts[idx].clone()).collect();
            let (batch_vectors, batch_tokens) = self.embed(&batch_texts)?;
            n_tokens += batch_tokens;
            for (&idx, vector) in chunk.iter().zip(batch_vectors) {
                vectors[idx] = vector;
            }
        }
        Ok((vectors, n_tokens))
    }

    /// Embeds texts (one batch); returns unit vectors and the number of tokens read.
    pub fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, u64), EngineError> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let failed = |e: candle_core::Error| EngineError::Failed(format!("embedding failed: {e}"));
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::BadRequest(format!("could not tokenize the input: {e}")))?;
        let n = encodings.len();
        let len = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        let mut n_tokens = 0u64;
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().copied());
            mask.extend(encoding.get_attention_mask().iter().map(|&m| m as f32));
            n_tokens += encoding.get_attention_mask().iter().filter(|&&m| m == 1).count() as u64;
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device).map_err(failed)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device).map_err(failed)?;
        let hidden = self.forward(&ids, &mask).map_err(failed)?;
        // Mean over the real tokens, then unit length.
        let mask3 = mask.unsqueeze(2).map_err(failed)?;
        let summed = hidden.broadcast_mul(&mask3).and_then(|t| t.sum(1)).map_err(failed)?;
        let counts = mask3.sum(1).and_then(|c| c.clamp(1e-9, f64::MAX)).map_err(failed)?;
        let mean = summed.broadcast_div(&counts).map_err(failed)?;
        let norm = mean.sqr().and_then(|t| t.sum_keepdim(1)).and_then(|t| t.sqrt()).and_then(|t| t.clamp(1e-12, f64::MAX)).map_err(failed)?;
        let unit = mean.broadcast_div(&norm).map_err(failed)?;
        Ok((unit.to_vec2::<f32>().map_err(failed)?, n_tokens))
    }

    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, &self.device)?.unsqueeze(0)?.broadcast_as((n, len))?;
        let types = ids.zeros_like()?;
        let mut hidden = self.word.forward(ids)?;
        hidden = (hidden + self.position.forward(&positions)?)?;
        hidden = (hidden + self.token_type.forward(&types)?)?;
        hidden = self.embeddings_norm.forward(&hidden)?;
        // Padding positions get a large negative score before the softmax.
        let bias = ((mask.ones_like()? - mask)? * -1e4)?.unsqueeze(1)?.unsqueeze(1)?;
        let head_dim = self.dimensions / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for layer in &self.layers {
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((n, len, self.heads, head_dim))?.transpose(1, 2)?.contiguous()
            };
            let q = split(layer.query.forward(&hidden)?)?;
            let k = split(layer.key.forward(&hidden)?)?;
            let v = split(layer.value.forward(&hidden)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = weights.matmul(&v)?.transpose(1, 2)?.reshape((n, len, self.dimensions))?;
            let attended = layer.attention_norm.forward(&(layer.attention_out.forward(&context)? + &hidden)?)?;
            let inner = layer.intermediate.forward(&attended)?.gelu_erf()?;
            hidden = layer.output_norm.forward(&(layer.output.forward(&inner)? + attended)?)?;
        }
        Ok(hidden)
    }
}

/// Reads safetensors into memory (no mmap, so no `unsafe`): the MiniLM weights are 90 MB.
fn unsafe_free_varbuilder(path: &Path, device: &Device) -> Result<VarBuilder<'static>, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::Load(format!("could not read {}: {e}", path.display())))?;
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)
        .map_err(|e| EngineError::Load(format!("{} is not a readable safetensors file: {e}", path.display())))
}

