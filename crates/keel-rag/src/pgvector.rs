//! Vectors in PostgreSQL with pgvector, for collections that outgrow one machine: one table
//! per collection (`keel_rag_NAME`: chunk id, vector) with an HNSW index on inner product,
//! and the generation it holds in `keel_rag_generations`, checked against the collection's
//! at open like the embedded index.
//!
//! The connection lives on its own thread ([`Worker`]).

use tokio_postgres::{Client, NoTls};

use crate::worker::{Address, Worker};

/// The environment variable holding the connection string (`host=/run/pg user=keel
/// dbname=keel`, or a `postgresql://` URL), so no secret is written in a file.
pub const URL_ENV: &str = "KEEL_RAG_POSTGRES_URL";

static ADDRESS: Address = Address::new(URL_ENV);

/// Sets the connection string for this process (over [`URL_ENV`]); `None` goes back to it.
pub fn set_url(url: Option<&str>) {
    ADDRESS.set(url);
}

/// The connection string: the one set, else [`URL_ENV`].
pub fn url() -> Option<String> {
    ADDRESS.get()
}

pub struct PgVectors {
    worker: Worker<Client>,
    table: String,
    collection: String,
    dim: usize,
}

fn vector_text(v: &[f32]) -> String {
    let mut out = String::with_capacity(v.len() * 10 + 2);
    out.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&x.to_string());
    }
    out.push(']');
    out
}

impl PgVectors {
    /// Connects and makes the collection's table and index if they are missing.
    pub fn connect(url: &str, collection: &str, dim: usize) -> crate::Result<PgVectors> {
        let url = url.to_string();
        let worker = Worker::spawn(format!("keel-pgvector-{collection}"), move |runtime| {
            let (client, connection) = runtime.block_on(tokio_postgres::connect(&url, NoTls)).map_err(|e| format!("could not connect to PostgreSQL: {e}"))?;
            runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("the PostgreSQL connection closed: {e}");
                }
            });
            Ok(client)
        })
        .map_err(crate::Error::Index)?;
        let pg = PgVectors { worker, table: format!("\"keel_rag_{collection}\""), collection: collection.to_string(), dim };
        let (table, index) = (pg.table.clone(), format!("\"keel_rag_{collection}_hnsw\""));
        let m = crate::vectors::CONNECTIVITY;
        let efc = crate::vectors::EXPANSION_ADD;
        pg.call(move |rt, client| {
            rt.block_on(client.batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS vector;
                 CREATE TABLE IF NOT EXISTS keel_rag_generations (collection text PRIMARY KEY, generation bigint NOT NULL);
                 CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, embedding vector({dim}) NOT NULL);
                 CREATE INDEX IF NOT EXISTS {index} ON {table} USING hnsw (embedding vector_ip_ops) WITH (m = {m}, ef_construction = {efc});"
            )))
            .map_err(|e| format!("could not set up pgvector: {e}"))
        })?;
        Ok(pg)
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&tokio::runtime::Runtime, &Client) -> Result<T, String> + Send + 'static) -> crate::Result<T> {
        self.worker.call(f).map_err(crate::Error::Index)
    }

    /// The generation the table holds (`None`: never saved).
    pub fn generation(&self) -> crate::Result<Option<u64>> {
        let collection = self.collection.clone();
        self.call(move |rt, client| {
            let row = rt.block_on(client.query_opt("SELECT generation FROM keel_rag_generations WHERE collection = $1", &[&collection])).map_err(|e| e.to_string())?;
            Ok(row.map(|r| r.get::<_, i64>(0) as u64))
        })
    }

    /// How many vectors the table holds.
    pub fn count(&self) -> crate::Result<usize> {
        let table = self.table.clone();
        self.call(move |rt, client| {
            let row = rt.block_on(client.query_one(&format!("SELECT count(*) FROM {table}"), &[])).map_err(|e| e.to_string())?;
            Ok(row.get::<_, i64>(0) as usize)
        })
    }

    /// Adds or replaces vectors.
    pub fn add(&self, items: &[(i64, &[f32])]) -> crate::Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(crate::Error::Index(format!("a {}-dimension vector in a {}-dimension index", v.len(), self.dim)));
        }
        let table = self.table.clone();
        for part in items.chunks(500) {
            let ids: Vec<i64> = part.iter().map(|(id, _)| *id).collect();
            let vectors: Vec<String> = part.iter().map(|(_, v)| vector_text(v)).collect();
            let table = table.clone();
            self.call(move |rt, client| {
                let sql = format!(
                    "INSERT INTO {table} (id, embedding) SELECT id, e::vector FROM unnest($1::bigint[], $2::text[]) AS u(id, e)
                     ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding"
                );
                rt.block_on(client.execute(&sql, &[&ids, &vectors])).map(|_| ()).map_err(|e| format!("pgvector insert: {e}"))
            })?;
        }
        Ok(())
    }

    pub fn remove(&self, ids: &[i64]) -> crate::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (table, ids) = (self.table.clone(), ids.to_vec());
        self.call(move |rt, client| {
            rt.block_on(client.execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&ids])).map(|_| ()).map_err(|e| format!("pgvector delete: {e}"))
        })
    }

    /// Empties the table (before a rebuild).
    pub fn clear(&self) -> crate::Result<()> {
        let table = self.table.clone();
        self.call(move |rt, client| rt.block_on(client.batch_execute(&format!("TRUNCATE {table}"))).map_err(|e| e.to_string()))
    }

    /// The `k` nearest chunks by inner product, best first; `allow` keeps only those ids (the
    /// index scan goes on until it has `k` of them: pgvector's iterative scan).
    pub fn search(&self, query: &[f32], k: usize, ef: usize, allow: Option<Vec<i64>>) -> crate::Result<Vec<(i64, f64)>> {
        let (table, vector) = (self.table.clone(), vector_text(query));
        self.call(move |rt, client| {
            rt.block_on(async {
                client.batch_execute(&format!("SET hnsw.ef_search = {}; SET hnsw.iterative_scan = relaxed_order", ef.clamp(1, 1000))).await?;
                let k = k as i64;
                match allow {
                    None => {
                        let sql = format!("SELECT id, (embedding <#> ($1::text)::vector) FROM {table} ORDER BY embedding <#> ($1::text)::vector LIMIT $2");
                        client.query(&sql, &[&vector, &k]).await
                    }
                    Some(ids) => {
                        let sql = format!(
                            "SELECT id, (embedding <#> ($1::text)::vector) FROM {table} WHERE id = ANY($3) ORDER BY embedding <#> ($1::text)::vector LIMIT $2"
                        );
                        client.query(&sql, &[&vector, &k, &ids]).await
                    }
                }
            })
            .map_err(|e| format!("pgvector search: {e}"))
            .map(|rows| {
                // `<#>` is the negative inner product; relaxed order is sorted here.
                let mut out: Vec<(i64, f64)> = rows.iter().map(|r| (r.get::<_, i64>(0), -r.get::<_, f64>(1))).collect();
                out.sort_by(|a, b| b.1.total_cmp(&a.1));
                out
            })
        })
    }

    /// Records the generation the table now holds.
    pub fn save(&self, generation: u64) -> crate::Result<()> {
        let collection = self.collection.clone();
        self.call(move |rt, client| {
            let generation = generation as i64;
            rt.block_on(client.execute(
                "INSERT INTO keel_rag_generations (collection, generation) VALUES ($1, $2) ON CONFLICT (collection) DO UPDATE SET generation = excluded.generation",
                &[&collection, &generation],
            ))
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    }
}
