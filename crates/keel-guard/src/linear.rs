//! Logistic regression over hashed sparse features: how keel's small in-process classifiers
//! (the injection detector, the name tagger) are trained, and the one-byte weights they ship
//! as. Deterministic: the same examples give the same weights on every machine.

/// How training goes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    pub l2: f32,
}

impl Default for TrainOptions {
    fn default() -> TrainOptions {
        TrainOptions { epochs: 12, learning_rate: 0.5, l2: 1e-5 }
    }
}

/// A 64-bit finaliser: every input bit reaches every output bit.
pub(crate) fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A 64-bit hash of bytes under a seed (one seed per kind of feature).
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(word)).wrapping_add(chunk.len() as u64);
    }
    mix(h)
}

/// The probability a model (weights, bias) gives one example's features.
pub(crate) fn probability(weights: &[f32], bias: f32, features: &[(u32, f32)]) -> f32 {
    let z = bias + features.iter().map(|(k, v)| weights[*k as usize] * v).sum::<f32>();
    1.0 / (1.0 + (-z).exp())
}

/// Trains a logistic regression (AdaGrad, classes weighted to balance, a fixed shuffle) on
/// (features, 0 or 1) pairs over `1 << bits` weights; returns the weights and the bias.
pub(crate) fn train(data: &[(Vec<(u32, f32)>, f32)], bits: u32, options: &TrainOptions) -> (Vec<f32>, f32) {
    let positives = data.iter().filter(|(_, y)| *y > 0.5).count().max(1) as f32;
    let negatives = (data.len() as f32 - positives).max(1.0);
    let weight_of = |y: f32| if y > 0.5 { data.len() as f32 / (2.0 * positives) } else { data.len() as f32 / (2.0 * negatives) };
    let (mut weights, mut bias) = (vec![0.0f32; 1 << bits], 0.0f32);
    let mut squares = vec![1e-8f32; 1 << bits];
    let mut bias_square = 1e-8f32;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..options.epochs {
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &i in &order {
            let (x, y) = &data[i];
            let g = (probability(&weights, bias, x) - y) * weight_of(*y);
            for &(k, v) in x {
                let k = k as usize;
                let grad = g * v + options.l2 * weights[k];
                squares[k] += grad * grad;
                weights[k] -= options.learning_rate * grad / squares[k].sqrt();
            }
            bias_square += g * g;
            bias -= options.learning_rate * g / bias_square.sqrt();
        }
    }
    (weights, bias)
}

/// Weights as one signed byte each and the scale that reads them back (weight = byte × scale).
pub(crate) fn quantise(weights: &[f32]) -> (f32, Vec<u8>) {
    let scale = weights.iter().fold(0.0f32, |m, w| m.max(w.abs())).max(1e-9) / 127.0;
    (scale, weights.iter().map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8 as u8).collect())
}

pub(crate) fn dequantise(bytes: &[u8], scale: f32) -> Vec<f32> {
    bytes.iter().map(|b| *b as i8 as f32 * scale).collect()
}

/// A model as stored: `magic`, `bits`, then bias, threshold and scale (little-endian `f32`),
/// then one signed byte per weight.
pub(crate) fn write_model(magic: &[u8; 8], bits: u32, [bias, threshold, scale]: [f32; 3], weights: impl ExactSizeIterator<Item = u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(weights.len() + 24);
    out.extend_from_slice(magic);
    out.extend_from_slice(&bits.to_le_bytes());
    for value in [bias, threshold, scale] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend(weights);
    out
}

/// Reads what [`write_model`] wrote: ([bias, threshold, scale], the weight bytes); `what`
/// names the model in errors.
pub(crate) fn read_model<'a>(bytes: &'a [u8], magic: &[u8; 8], bits: u32, what: &str) -> Result<([f32; 3], &'a [u8]), String> {
    let header = 8 + 4 + 12;
    if bytes.len() < header || &bytes[..8] != magic {
        return Err(format!("not a keel {what} model (bad magic)"));
    }
    let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    let stored = u32::from_le_bytes(word(8));
    if stored != bits || bytes.len() != header + (1 << stored) {
        return Err(format!("the {what} model has {} bytes of weights for {stored} bits; keel reads {bits}", bytes.len().saturating_sub(header)));
    }
    Ok(([12, 16, 20].map(|at| f32::from_le_bytes(word(at))), &bytes[header..]))
}
