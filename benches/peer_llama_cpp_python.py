"""The peer for `keel bench local`: llama.cpp itself, through llama-cpp-python's bindings to its
C API, on the same GGUF, threads, prompt and token counts as keel, with the same context
settings (llama.cpp's defaults, one sequence per stream). Greedy decoding throughout.

Measures, like keel: prefill and decode tokens/s of one stream after an `n_prompt` prompt, and
the batching gain: tokens/s of one stream and of `streams` streams decoding together in one
llama.cpp batch (each a 32-token prompt, then `n_gen` tokens). Prints one JSON object."""

import json
import sys
import time

import llama_cpp as L
import numpy as np

path, threads, n_prompt, n_gen, streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

L.llama_backend_init()
model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
batch = L.llama_batch_init(512, 0, streams)


def context(n_seq, per_seq):
    params = L.llama_context_default_params()
    params.n_ctx = n_seq * per_seq
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = threads
    return L.llama_init_from_model(model, params)


def decode(ctx, entries):
    """entries: (token, position, sequence, wants_logits); returns each wanted row's index."""
    outputs = []
    for start in range(0, len(entries), 512):
        chunk = entries[start : start + 512]
        batch.n_tokens = len(chunk)
        for i, (token, pos, seq, logits) in enumerate(chunk):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
            if logits:
                outputs.append((seq, i))
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
    return outputs


def greedy(ctx, row):
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, row), shape=(n_vocab,))
    return int(np.argmax(logits))


def tokenize(text):
    raw = text.encode()
    buf = (L.llama_token * (len(raw) + 8))()
    n = L.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    return list(buf[:n])


def generate(ctx, prompts):
    """Prefills every prompt in one batch, then decodes all streams together; returns
    (seconds to the first token, total seconds, tokens generated)."""
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    started = time.perf_counter()
    entries = [(t, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, t in enumerate(p)]
    rows = decode(ctx, entries)
    last = {seq: greedy(ctx, row) for seq, row in rows}
    first = time.perf_counter() - started
    positions = {seq: len(p) for seq, p in enumerate(prompts)}
    generated = len(prompts)
    for _ in range(n_gen - 1):
        rows = decode(ctx, [(last[seq], positions[seq], seq, True) for seq in range(len(prompts))])
        for seq, row in rows:
            last[seq] = greedy(ctx, row)
            positions[seq] += 1
        generated += len(prompts)
    return first, time.perf_counter() - started, generated


tokens = tokenize(" ".join(["the quick brown fox jumps over the lazy dog"] * 200))[:n_prompt]
single = context(1, len(tokens) + n_gen + 64)
generate(single, [tokens[:8]])  # warm-up
first, total, generated = generate(single, [tokens])
prefill_tps, decode_tps = len(tokens) / first, (generated - 1) / (total - first)

short = tokens[:32]
many = context(streams, len(short) + n_gen + 64)
_, total_one, generated_one = generate(many, [short])
_, total_many, generated_many = generate(many, [short] * streams)
print(
    json.dumps(
        {
            "prefill_tps": prefill_tps,
            "decode_tps": decode_tps,
            "n_prompt": len(tokens),
            "single_stream_tps": generated_one / total_one,
            "aggregate_tps": generated_many / total_many,
        }
    )
)
