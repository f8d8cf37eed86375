"""The peer for `keel bench ann`: hnswlib on the same GloVe vectors, held-out queries,
ground truth, M, ef_construction and ef values as keel. Reads the row-major unit vectors keel
wrote (base.f32, queries.f32, truth.u32: raw little-endian), builds with every core, searches
on one thread two ways: one batched call for all queries (Python adds nothing per query) and
one `knn_query` call per query (how an application calls it, and how the figures quoted in
keel's issue were taken). Prints one JSON object."""

import json
import sys
import time

import hnswlib
import numpy as np

folder, dim, m, ef_construction = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
efs = [int(x) for x in sys.argv[5].split(",")]
k = int(sys.argv[6])
base = np.fromfile(f"{folder}/base.f32", dtype="<f4").reshape(-1, dim)
queries = np.fromfile(f"{folder}/queries.f32", dtype="<f4").reshape(-1, dim)
truth = np.fromfile(f"{folder}/truth.u32", dtype="<u4").reshape(len(queries), k)

index = hnswlib.Index(space="ip", dim=dim)
index.init_index(max_elements=len(base), ef_construction=ef_construction, M=m, random_seed=100)
started = time.perf_counter()
index.add_items(base, np.arange(len(base)))
build_s = time.perf_counter() - started
index.set_num_threads(1)

points = []
for ef in efs:
    index.set_ef(max(ef, k))
    started = time.perf_counter()
    found, _ = index.knn_query(queries, k=k, num_threads=1)
    elapsed = time.perf_counter() - started
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    started = time.perf_counter()
    for q in queries:
        index.knn_query(q, k=k, num_threads=1)
    per_call = time.perf_counter() - started
    points.append({"ef": ef, "recall": hits / (len(queries) * k), "qps": len(queries) / elapsed, "qps_per_call": len(queries) / per_call})
print(json.dumps({"build_s": build_s, "points": points}))
