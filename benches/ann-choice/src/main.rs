//! Which HNSW crate keel uses, decided by this measurement: usearch and hnsw_rs on
//! GloVe-6B-50d (400,000 × 50, cosine), the last 1,000 words held out as queries, both built
//! with M = 16 and ef_construction = 200, searched on one thread at the same ef values;
//! recall@10 against brute force, and queries per second.
//!
//! cargo run --release -- PATH/glove_6B_50d_emb.npy

use std::time::Instant;

use anndists::dist::DistDot;
use hnsw_rs::hnsw::Hnsw;

const QUERIES: usize = 1_000;
const K: usize = 10;
const EFS: [usize; 5] = [20, 40, 80, 160, 320];

/// A column-major float32 `.npy` file as row-major rows.
fn load(path: &str) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).expect("read the .npy file");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let (n, d) = (dims[0], dims[1]);
    let data: Vec<f32> = bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let fortran = header.contains("'fortran_order': True");
    let mut rows = vec![0f32; n * d];
    for i in 0..n {
        for j in 0..d {
            rows[i * d + j] = if fortran { data[j * n + i] } else { data[i * d + j] };
        }
    }
    for row in rows.chunks_mut(d) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    (n, d, rows)
}

fn recall(found: &[Vec<u64>], truth: &[Vec<u64>]) -> f64 {
    let hits: usize = found.iter().zip(truth).map(|(f, t)| f.iter().filter(|id| t.contains(id)).count()).sum();
    hits as f64 / (truth.len() * K) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: ann-choice PATH.npy [usearch-f32|usearch-bf16|usearch-f16|usearch-i8|hnsw_rs]...");
    let wanted: Vec<&str> = if args.len() > 2 { args[2..].iter().map(String::as_str).collect() } else { vec!["usearch-f32", "hnsw_rs"] };
    let (n, d, rows) = load(path);
    let base = n - QUERIES;
    let (data, queries) = rows.split_at(base * d);
    eprintln!("{base} vectors, {QUERIES} queries, {d} dimensions");
    let truth: Vec<Vec<u64>> = queries
        .chunks(d)
        .map(|q| {
            let mut scored: Vec<(f32, u64)> = data.chunks(d).enumerate().map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), i as u64)).collect();
            scored.select_nth_unstable_by(K - 1, |a, b| b.0.total_cmp(&a.0));
            scored[..K].iter().map(|(_, i)| *i).collect()
        })
        .collect();

    for (name, quantization) in [("usearch-f32", usearch::ScalarKind::F32), ("usearch-bf16", usearch::ScalarKind::BF16), ("usearch-f16", usearch::ScalarKind::F16), ("usearch-i8", usearch::ScalarKind::I8)] {
        if !wanted.contains(&name) {
            continue;
        }
    let options = usearch::IndexOptions {
        dimensions: d,
        metric: usearch::MetricKind::IP,
        quantization,
        connectivity: 16,
        expansion_add: 200,
        expansion_search: 64,
        multi: false,
    };
    let index = usearch::Index::new(&options).unwrap();
    index.reserve(base).unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for t in 0..threads {
            let (index, data) = (&index, data);
            s.spawn(move || {
                for (i, v) in data.chunks(d).enumerate().skip(t).step_by(threads) {
                    index.add(i as u64, v).unwrap();
                }
            });
        }
    });
    println!("{name}  build {:.1} s", started.elapsed().as_secs_f64());
    for ef in EFS {
        index.change_expansion_search(ef);
        let started = Instant::now();
        let found: Vec<Vec<u64>> = queries.chunks(d).map(|q| index.search(q, K).unwrap().keys).collect();
        let qps = QUERIES as f64 / started.elapsed().as_secs_f64();
        println!("{name}  ef {ef:>3}  recall@10 {:.3}  {qps:>8.0} QPS", recall(&found, &truth));
    }
    }

    if !wanted.contains(&"hnsw_rs") {
        return;
    }
    let hnsw: Hnsw<f32, DistDot> = Hnsw::new(16, base, 16, 200, DistDot);
    let started = Instant::now();
    let owned: Vec<Vec<f32>> = data.chunks(d).map(<[f32]>::to_vec).collect();
    let refs: Vec<(&Vec<f32>, usize)> = owned.iter().enumerate().map(|(i, v)| (v, i)).collect();
    hnsw.parallel_insert(&refs);
    println!("hnsw_rs  build {:.1} s", started.elapsed().as_secs_f64());
    for ef in EFS {
        let started = Instant::now();
        let found: Vec<Vec<u64>> = queries.chunks(d).map(|q| hnsw.search(q, K, ef).iter().map(|n| n.d_id as u64).collect()).collect();
        let qps = QUERIES as f64 / started.elapsed().as_secs_f64();
        println!("hnsw_rs  ef {ef:>3}  recall@10 {:.3}  {qps:>8.0} QPS", recall(&found, &truth));
    }
}
