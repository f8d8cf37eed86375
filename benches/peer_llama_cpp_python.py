"""The peer for `keel bench local`: the same GGUF, threads, prompt and token counts through
llama-cpp-python (llama.cpp's own kernels). Prints one JSON object."""

import json
import sys
import time

from llama_cpp import Llama

path, threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512, verbose=False)
words = " ".join(["the quick brown fox jumps over the lazy dog"] * 200)
tokens = llm.tokenize(words.encode(), add_bos=True)[:n_prompt]
llm.reset()
started = time.perf_counter()
llm.eval(tokens)
prefill = time.perf_counter() - started
token = tokens[-1]
started = time.perf_counter()
for _ in range(n_gen):
    token = llm.sample(temp=0.0)
    llm.eval([token])
decode = time.perf_counter() - started
print(json.dumps({"prefill_tps": len(tokens) / prefill, "decode_tps": n_gen / decode, "n_prompt": len(tokens)}))
