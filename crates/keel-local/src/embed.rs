//! Sentence embeddings in-process: a BERT encoder (all-MiniLM-L6-v2 and its kin) read straight
//! from `model.safetensors`, with sentence-transformers' mean pooling and L2 normalisation.
//!
//! The encoder works on plain `f32` buffers. A batch is packed: the sentences' tokens are laid
//! end to end with no padding, so every projection is one matrix multiplication over exactly
//! the real tokens (with the bias folded in), and attention runs per sentence on its own rows.
//! Element-wise steps (residual + layer norm, GELU, softmax) are single fused passes, split
//! across threads by rows.

use std::ops::Range;
use std::path::Path;

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

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
    #[serde(default = "gelu")]
    hidden_act: String,
}

fn two() -> usize {
    2
}

fn eps() -> f64 {
    1e-12
}

fn gelu() -> String {
    "gelu".into()
}

/// How the encoder's projections multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `f32` throughout.
    F32,
    /// Projections in bfloat16 with `f32` sums (AVX-512 BF16); the rest in `f32`.
    Bf16,
}

impl Precision {
    /// bf16 where the CPU has AVX-512 BF16, unless `KEEL_EMBED_PRECISION=f32` asks for `f32`.
    pub fn best() -> Precision {
        let asked = std::env::var("KEEL_EMBED_PRECISION").unwrap_or_default();
        if asked.eq_ignore_ascii_case("f32") || !bf16_supported() { Precision::F32 } else { Precision::Bf16 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn bf16_supported() -> bool {
    crate::bf16::supported()
}

#[cfg(not(target_arch = "x86_64"))]
fn bf16_supported() -> bool {
    false
}

/// A linear layer stored input-major (`inputs × outputs`, row-major) for `x · W`.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    /// The weights packed for the bf16 kernel, when the encoder runs in bf16 (the `f32` ones
    /// are then dropped).
    #[cfg(target_arch = "x86_64")]
    packed: Option<crate::bf16::Packed>,
}

impl Dense {
    fn new(weight: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize) -> Dense {
        Dense {
            weight,
            bias,
            inputs,
            outputs,
            #[cfg(target_arch = "x86_64")]
            packed: None,
        }
    }

    /// Packs the weights for `precision` (a layer whose shape the bf16 kernel does not take
    /// stays in `f32`).
    fn prepare(&mut self, precision: Precision) {
        #[cfg(target_arch = "x86_64")]
        if precision == Precision::Bf16 {
            self.packed = crate::bf16::Packed::pack(&self.weight, self.inputs, self.outputs);
            if self.packed.is_some() {
                self.weight = Vec::new();
            }
        }
        let _ = precision;
    }

    /// `out (rows × outputs) = bias + x (rows × inputs) · W`.
    fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.packed {
            return packed.forward(x, rows, &self.bias, out);
        }
        out.clear();
        out.reserve(rows * self.outputs);
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        let dst = Matrix { rows, cols: self.outputs, row_stride: self.outputs, col_stride: 1, offset: 0 };
        let lhs = Matrix { rows, cols: self.inputs, row_stride: self.inputs, col_stride: 1, offset: 0 };
        let rhs = Matrix { rows: self.inputs, cols: self.outputs, row_stride: self.outputs, col_stride: 1, offset: 0 };
        matmul((out, dst), (x, lhs), (&self.weight, rhs), true, rayon::current_num_threads());
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// `x = norm(x + residual)`, row by row, rows spread over threads.
    fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        let width = self.gamma.len();
        let rows = x.par_chunks_mut(width);
        let norm = |row: &mut [f32]| {
            let n = row.len() as f32;
            let mean = lanes(row, 0.0, |acc, v| acc + v, |a, b| a + b) / n;
            let var = lanes(row, 0.0, |acc, v| acc + (v - mean) * (v - mean), |a, b| a + b) / n;
            let scale = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * scale * g + b;
            }
        };
        match residual {
            Some(residual) => rows.zip(residual.par_chunks(width)).for_each(|(row, res)| {
                for (v, r) in row.iter_mut().zip(res) {
                    *v += r;
                }
                norm(row);
            }),
            None => rows.for_each(norm),
        }
    }
}

struct Layer {
    /// Query, key and value in one projection (`hidden` → `3 × hidden`), the query columns
    /// already scaled by `1/sqrt(head_dim)`.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

pub struct EmbedEngine {
    pub name: String,
    tokenizer: Tokenizer,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    intermediate: usize,
    pub dimensions: usize,
    pub precision: Precision,
}

impl std::fmt::Debug for EmbedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedEngine").field("name", &self.name).field("dimensions", &self.dimensions).field("precision", &self.precision).finish()
    }
}

/// Named tensors of a safetensors file, read as `f32`.
struct Weights<'a> {
    tensors: SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        let full = format!("{}{name}", self.prefix);
        let bad = |why: String| EngineError::Load(format!("model.safetensors: `{full}` {why}"));
        let view = self.tensors.tensor(&full).map_err(|_| bad("is missing".into()))?;
        if view.shape() != shape {
            return Err(bad(format!("has shape {:?}, the config says {shape:?}", view.shape())));
        }
        let bytes = view.data();
        match view.dtype() {
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            Dtype::F16 => Ok(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::BF16 => Ok(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            other => Err(bad(format!("is stored as {other:?}; keel reads F32, F16 and BF16 weights"))),
        }
    }

    /// A linear layer, transposed from PyTorch's `outputs × inputs` to `inputs × outputs`.
    fn dense(&self, name: &str, inputs: usize, outputs: usize) -> Result<Dense, EngineError> {
        let torch = self.get(&format!("{name}.weight"), &[outputs, inputs])?;
        Ok(Dense::new(transpose(&torch, outputs, inputs), self.get(&format!("{name}.bias"), &[outputs])?, inputs, outputs))
    }

    fn norm(&self, name: &str, width: usize, eps: f64) -> Result<LayerNorm, EngineError> {
        Ok(LayerNorm {
            gamma: self.get(&format!("{name}.weight"), &[width])?,
            beta: self.get(&format!("{name}.bias"), &[width])?,
            eps: eps as f32,
        })
    }

    /// Query, key and value stacked side by side into one `h × 3h` projection.
    fn fused_qkv(&self, name: &str, h: usize, scale: f32) -> Result<Dense, EngineError> {
        let q = self.dense(&format!("{name}.query"), h, h)?;
        let k = self.dense(&format!("{name}.key"), h, h)?;
        let v = self.dense(&format!("{name}.value"), h, h)?;
        let mut weight = Vec::with_capacity(h * 3 * h);
        for row in 0..h {
            weight.extend(q.weight[row * h..(row + 1) * h].iter().map(|w| w * scale));
            weight.extend_from_slice(&k.weight[row * h..(row + 1) * h]);
            weight.extend_from_slice(&v.weight[row * h..(row + 1) * h]);
        }
        let bias = q.bias.iter().map(|b| b * scale).chain(k.bias).chain(v.bias).collect();
        Ok(Dense::new(weight, bias, h, 3 * h))
    }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

impl EmbedEngine {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from a folder, to run
    /// at [`Precision::best`].
    pub fn load(name: &str, folder: &Path) -> Result<EmbedEngine, EngineError> {
        EmbedEngine::load_with(name, folder, Precision::best())
    }

    /// [`EmbedEngine::load`] at a chosen precision (bf16 falls back to `f32` on a CPU without
    /// AVX-512 BF16).
    pub fn load_with(name: &str, folder: &Path, precision: Precision) -> Result<EmbedEngine, EngineError> {
        let precision = if bf16_supported() { precision } else { Precision::F32 };
        let read = |file: &str| {
            std::fs::read(folder.join(file))
                .map_err(|e| EngineError::Load(format!("could not read {}: {e}", folder.join(file).display())))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| EngineError::Load(format!("config.json is not a BERT config: {e}")))?;
        if config.hidden_act != "gelu" {
            return Err(EngineError::Load(format!("config.json: activation `{}` is not supported (keel runs `gelu`)", config.hidden_act)));
        }
        let h = config.hidden_size;
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            return Err(EngineError::Load(format!("config.json: {h} hidden units do not split into {} heads", config.num_attention_heads)));
        }
        let mut tokenizer = Tokenizer::from_file(folder.join("tokenizer.json"))
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS.min(config.max_position_embeddings), ..TruncationParams::default() }))
            .map_err(|e| EngineError::Load(format!("tokenizer.json: {e}")))?;
        let bytes = read("model.safetensors")?;
        let tensors = SafeTensors::deserialize(&bytes)
            .map_err(|e| EngineError::Load(format!("{} is not a readable safetensors file: {e}", folder.join("model.safetensors").display())))?;
        let prefix = if tensors.tensor("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
        let w = Weights { tensors, prefix };
        let eps = config.layer_norm_eps;
        let scale = 1.0 / ((h / config.num_attention_heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for idx in 0..config.num_hidden_layers {
            let l = format!("encoder.layer.{idx}");
            let mut layer = Layer {
                qkv: w.fused_qkv(&format!("{l}.attention.self"), h, scale)?,
                attention_out: w.dense(&format!("{l}.attention.output.dense"), h, h)?,
                attention_norm: w.norm(&format!("{l}.attention.output.LayerNorm"), h, eps)?,
                intermediate: w.dense(&format!("{l}.intermediate.dense"), h, config.intermediate_size)?,
                output: w.dense(&format!("{l}.output.dense"), config.intermediate_size, h)?,
                output_norm: w.norm(&format!("{l}.output.LayerNorm"), h, eps)?,
            };
            for dense in [&mut layer.qkv, &mut layer.attention_out, &mut layer.intermediate, &mut layer.output] {
                dense.prepare(precision);
            }
            layers.push(layer);
        }
        Ok(EmbedEngine {
            name: name.to_string(),
            tokenizer,
            word: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: w.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type: w.get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            embeddings_norm: w.norm("embeddings.LayerNorm", h, eps)?,
            layers,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            dimensions: h,
            precision,
        })
    }

    /// Embeds any number of texts in batches of `batch`, longest first as sentence-transformers
    /// does (sentences of similar length share a batch, which keeps the attention work even
    /// across threads); vectors come back in input order.
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
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::BadRequest(format!("could not tokenize the input: {e}")))?;
        let mut spans = Vec::with_capacity(encodings.len());
        let mut ids = Vec::new();
        for encoding in &encodings {
            let start = ids.len();
            ids.extend_from_slice(encoding.get_ids());
            spans.push(start..ids.len());
        }
        let hidden = self.forward(&ids, &spans)?;
        let h = self.dimensions;
        let vectors = spans
            .iter()
            .map(|span| {
                let mut mean = vec![0.0f32; h];
                for row in hidden[span.start * h..span.end * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let count = span.len().max(1) as f32;
                mean.iter_mut().for_each(|m| *m /= count);
                let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect();
        Ok((vectors, ids.len() as u64))
    }

    /// The encoder over packed token ids; returns the last hidden state (`tokens × hidden`).
    fn forward(&self, ids: &[u32], spans: &[Range<usize>]) -> Result<Vec<f32>, EngineError> {
        let h = self.dimensions;
        let rows = ids.len();
        let vocab = self.word.len() / h;
        let mut hidden = Vec::with_capacity(rows * h);
        for span in spans {
            for (position, &id) in ids[span.clone()].iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(EngineError::Failed(format!("token id {id} is outside the model's vocabulary of {vocab}")));
                }
                let word = &self.word[id * h..(id + 1) * h];
                let pos = &self.position[position * h..(position + 1) * h];
                hidden.extend(word.iter().zip(pos).zip(&self.token_type[..h]).map(|((w, p), t)| w + p + t));
            }
        }
        self.embeddings_norm.apply(&mut hidden, None);
        let (mut qkv, mut context, mut attended, mut inner) = (Vec::new(), vec![0.0; rows * h], Vec::new(), Vec::new());
        for layer in &self.layers {
            layer.qkv.forward(&hidden, rows, &mut qkv);
            self.attention(&qkv, spans, &mut context);
            layer.attention_out.forward(&context, rows, &mut attended);
            layer.attention_norm.apply(&mut attended, Some(&hidden));
            layer.intermediate.forward(&attended, rows, &mut inner);
            inner.par_chunks_mut(self.intermediate).for_each(|row| row.iter_mut().for_each(|v| *v = gelu_erf(*v)));
            layer.output.forward(&inner, rows, &mut hidden);
            layer.output_norm.apply(&mut hidden, Some(&attended));
        }
        Ok(hidden)
    }

    /// Self-attention of each sentence over its own tokens, all heads, into `context`.
    fn attention(&self, qkv: &[f32], spans: &[Range<usize>], context: &mut [f32]) {
        let h = self.dimensions;
        let head_dim = h / self.heads;
        let mut outputs = Vec::with_capacity(spans.len());
        let mut rest = context;
        for span in spans {
            let (mine, tail) = rest.split_at_mut(span.len() * h);
            outputs.push((span.clone(), mine));
            rest = tail;
        }
        outputs.into_par_iter().for_each(|(span, out)| {
            let len = span.len();
            let mut scores = vec![0.0f32; len * len];
            let qkv_rows = 3 * h;
            for head in 0..self.heads {
                let at = |part: usize| span.start * qkv_rows + part * h + head * head_dim;
                // scores = Q · Kᵀ (the query is pre-scaled).
                let q = Matrix { rows: len, cols: head_dim, row_stride: qkv_rows, col_stride: 1, offset: at(0) };
                let kt = Matrix { rows: head_dim, cols: len, row_stride: 1, col_stride: qkv_rows, offset: at(1) };
                let dst = Matrix { rows: len, cols: len, row_stride: len, col_stride: 1, offset: 0 };
                matmul((&mut scores, dst), (qkv, q), (qkv, kt), false, 1);
                for row in scores.chunks_exact_mut(len) {
                    softmax(row);
                }
                // context[:, head] = softmax(scores) · V
                let p = Matrix { rows: len, cols: len, row_stride: len, col_stride: 1, offset: 0 };
                let v = Matrix { rows: len, cols: head_dim, row_stride: qkv_rows, col_stride: 1, offset: at(2) };
                let dst = Matrix { rows: len, cols: head_dim, row_stride: h, col_stride: 1, offset: head * head_dim };
                matmul((out, dst), (&scores, p), (qkv, v), false, 1);
            }
        });
    }
}

/// Where a matrix sits inside a slice: element `(r, c)` is at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
struct Matrix {
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    offset: usize,
}

impl Matrix {
    /// Panics unless every element lies inside a slice of `len` values.
    fn check(&self, len: usize) {
        let last = self.offset + (self.rows.max(1) - 1) * self.row_stride + (self.cols.max(1) - 1) * self.col_stride;
        assert!(self.rows == 0 || self.cols == 0 || last < len, "matrix outside its buffer");
    }
}

/// `dst = [dst +] lhs · rhs` on the `gemm` crate's kernels (AVX-512/AVX2/FMA, chosen at run
/// time), over `threads` threads.
#[allow(unsafe_code)]
fn matmul(dst: (&mut [f32], Matrix), lhs: (&[f32], Matrix), rhs: (&[f32], Matrix), accumulate: bool, threads: usize) {
    let ((d, dm), (l, lm), (r, rm)) = (dst, lhs, rhs);
    assert!(dm.rows == lm.rows && dm.cols == rm.cols && lm.cols == rm.rows, "matrix shapes do not match");
    dm.check(d.len());
    lm.check(l.len());
    rm.check(r.len());
    let parallelism = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `check` proved every element each matrix describes lies inside its slice, and
    // `dst` is a unique borrow, so it aliases neither input; the strides fit in `isize`
    // because they index inside those slices.
    unsafe {
        gemm::gemm(
            dm.rows,
            dm.cols,
            lm.cols,
            d.as_mut_ptr().add(dm.offset),
            dm.col_stride as isize,
            dm.row_stride as isize,
            accumulate,
            l.as_ptr().add(lm.offset),
            lm.col_stride as isize,
            lm.row_stride as isize,
            r.as_ptr().add(rm.offset),
            rm.col_stride as isize,
            rm.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A reduction over sixteen independent lanes, then across them: a single running value
/// would chain every step on the one before and keep the loop from vectorising.
#[inline]
fn lanes(xs: &[f32], init: f32, step: impl Fn(f32, f32) -> f32, merge: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = step(*a, *v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, v| step(a, *v));
    acc.into_iter().fold(tail, merge)
}

fn softmax(row: &mut [f32]) {
    let max = lanes(row, f32::NEG_INFINITY, f32::max, f32::max);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / lanes(row, 0.0, |acc, v| acc + v, |a, b| a + b);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `e^x` in single precision without branches (Cephes' polynomial after reducing by
/// powers of two), so loops over it vectorise. Relative error about 1e-7.
#[inline]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut y = 1.987_569_1e-4_f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// GELU with the exact error function, as BERT's `gelu`: `x/2 · (1 + erf(x/√2))`, erf after
/// Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline]
fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let erf = (1.0 - poly * exp(-a * a)).copysign(z);
    0.5 * x * (1.0 + erf)
}

#[cfg(test)]
mod tests {
    use super::{exp, gelu_erf, transpose};

    #[test]
    fn exp_is_close_to_the_standard_library() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (ours, std) = (exp(x), x.exp());
            assert!(((ours - std) / std).abs() < 1e-6, "exp({x}) = {ours}, expected {std}");
        }
    }

    #[test]
    fn gelu_matches_the_erf_definition() {
        // Reference values of x/2 · (1 + erf(x/√2)).
        for (x, expected) in [(-3.0f32, -0.004_049_86), (-1.0, -0.158_655_25), (0.0, 0.0), (0.5, 0.345_731_36), (1.0, 0.841_344_7), (3.0, 2.995_95)] {
            assert!((gelu_erf(x) - expected).abs() < 1e-6, "gelu({x}) = {}, expected {expected}", gelu_erf(x));
        }
    }

    #[test]
    fn transposes() {
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
