"""The peer for `keel bench embed`: sentence-transformers (PyTorch, CPU) on the same model
folder, sentences and batch size. Prints one JSON object."""

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
from sentence_transformers import SentenceTransformer  # noqa: E402

folder, batch, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
texts = json.load(open(path))
model = SentenceTransformer(folder, device="cpu")
model.encode(texts[:batch], batch_size=batch)  # warm-up
started = time.perf_counter()
model.encode(texts, batch_size=batch, normalize_embeddings=True)
elapsed = time.perf_counter() - started
print(json.dumps({"sentences_per_s": len(texts) / elapsed, "n": len(texts)}))
