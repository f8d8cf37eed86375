//! Vectors in Qdrant (the `qdrant-client` crate, gRPC): one Qdrant collection per keel
//! collection (`keel_rag_NAME`, dot product, HNSW with keel's M and ef_construction), points
//! keyed by chunk id, and the generation it holds as the payload of a point in
//! `keel_rag_generations`, checked against the collection's at open like the other engines.

use std::collections::HashMap;

use qdrant_client::Qdrant;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::value::Kind;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, DeletePointsBuilder, Distance, Filter, GetPointsBuilder, HnswConfigDiffBuilder, PointStruct,
    PointsIdsList, SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder,
};

use crate::worker::{Address, Worker};

/// The environment variable holding Qdrant's gRPC URL (e.g. `http://localhost:6334`).
pub const URL_ENV: &str = "KEEL_RAG_QDRANT_URL";

/// The Qdrant collection holding each keel collection's generation.
const GENERATIONS: &str = "keel_rag_generations";

static ADDRESS: Address = Address::new(URL_ENV);

/// Sets the URL for this process (over [`URL_ENV`]); `None` goes back to it.
pub fn set_url(url: Option<&str>) {
    ADDRESS.set(url);
}

/// The URL: the one set, else [`URL_ENV`].
pub fn url() -> Option<String> {
    ADDRESS.get()
}

pub struct QdrantVectors {
    worker: Worker<Qdrant>,
    name: String,
    collection: String,
    dim: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("Qdrant: {e}")
}

/// A stable point id for a collection's generation record.
fn generation_point(collection: &str) -> u64 {
    collection.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl QdrantVectors {
    fn call<T: Send + 'static>(&self, f: impl FnOnce(&tokio::runtime::Runtime, &Qdrant) -> Result<T, String> + Send + 'static) -> crate::Result<T> {
        self.worker.call(f).map_err(crate::Error::Index)
    }

    /// Connects and makes the Qdrant collections if they are missing.
    pub fn connect(url: &str, collection: &str, dim: usize) -> crate::Result<QdrantVectors> {
        let url = url.to_string();
        let worker = Worker::spawn(format!("keel-qdrant-{collection}"), move |_| Qdrant::from_url(&url).build().map_err(|e| format!("could not connect to Qdrant: {e}")))
            .map_err(crate::Error::Index)?;
        let name = format!("keel_rag_{collection}");
        let qdrant = QdrantVectors { worker, name: name.clone(), collection: collection.to_string(), dim };
        qdrant.call(move |rt, client| {
            rt.block_on(async {
                if !client.collection_exists(&name).await.map_err(|e| format!("could not reach Qdrant: {e}"))? {
                    let hnsw = HnswConfigDiffBuilder::default().m(crate::vectors::CONNECTIVITY as u64).ef_construct(crate::vectors::EXPANSION_ADD as u64);
                    let vectors = VectorParamsBuilder::new(dim as u64, Distance::Dot);
                    client.create_collection(CreateCollectionBuilder::new(&name).vectors_config(vectors).hnsw_config(hnsw)).await.map_err(err)?;
                }
                if !client.collection_exists(GENERATIONS).await.map_err(err)? {
                    client.create_collection(CreateCollectionBuilder::new(GENERATIONS).vectors_config(VectorParamsBuilder::new(1, Distance::Dot))).await.map_err(err)?;
                }
                Ok(())
            })
        })?;
        Ok(qdrant)
    }

    /// The generation the Qdrant collection holds (`None`: never saved).
    pub fn generation(&self) -> crate::Result<Option<u64>> {
        let point = generation_point(&self.collection);
        self.call(move |rt, client| {
            let found = rt.block_on(client.get_points(GetPointsBuilder::new(GENERATIONS, vec![point.into()]).with_payload(true))).map_err(err)?;
            Ok(found.result.first().and_then(|p| match p.payload.get("generation").and_then(|v| v.kind.as_ref()) {
                Some(Kind::IntegerValue(g)) => Some(*g as u64),
                _ => None,
            }))
        })
    }

    pub fn add(&self, items: &[(i64, &[f32])]) -> crate::Result<()> {
        if let Some((_, v)) = items.iter().find(|(_, v)| v.len() != self.dim) {
            return Err(crate::Error::Index(format!("a {}-dimension vector in a {}-dimension index", v.len(), self.dim)));
        }
        for part in items.chunks(256) {
            let points: Vec<PointStruct> = part.iter().map(|(id, v)| PointStruct::new(*id as u64, v.to_vec(), HashMap::<String, Value>::new())).collect();
            let name = self.name.clone();
            self.call(move |rt, client| rt.block_on(client.upsert_points(UpsertPointsBuilder::new(name, points).wait(true))).map(|_| ()).map_err(err))?;
        }
        Ok(())
    }

    pub fn remove(&self, ids: &[i64]) -> crate::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (name, ids) = (self.name.clone(), ids.iter().map(|id| (*id as u64).into()).collect());
        self.call(move |rt, client| {
            rt.block_on(client.delete_points(DeletePointsBuilder::new(name).points(PointsIdsList { ids }).wait(true))).map(|_| ()).map_err(err)
        })
    }

    /// Empties the Qdrant collection (before a rebuild): dropped and made again.
    pub fn clear(&self) -> crate::Result<()> {
        let (name, dim) = (self.name.clone(), self.dim);
        self.call(move |rt, client| {
            rt.block_on(async {
                client.delete_collection(&name).await.map_err(err)?;
                let hnsw = HnswConfigDiffBuilder::default().m(crate::vectors::CONNECTIVITY as u64).ef_construct(crate::vectors::EXPANSION_ADD as u64);
                client.create_collection(CreateCollectionBuilder::new(&name).vectors_config(VectorParamsBuilder::new(dim as u64, Distance::Dot)).hnsw_config(hnsw)).await.map_err(err)?;
                Ok(())
            })
        })
    }

    /// The `k` nearest chunks by inner product, best first; `allow` keeps only those ids
    /// (filtered inside Qdrant's HNSW search).
    pub fn search(&self, query: &[f32], k: usize, ef: usize, allow: Option<Vec<i64>>) -> crate::Result<Vec<(i64, f64)>> {
        let (name, query) = (self.name.clone(), query.to_vec());
        self.call(move |rt, client| {
            let mut request = SearchPointsBuilder::new(name, query, k as u64).params(SearchParamsBuilder::default().hnsw_ef(ef as u64));
            if let Some(ids) = allow {
                request = request.filter(Filter::must([Condition::has_id(ids.into_iter().map(|id| id as u64))]));
            }
            let found = rt.block_on(client.search_points(request)).map_err(err)?;
            Ok(found
                .result
                .iter()
                .filter_map(|p| match p.id.as_ref().and_then(|id| id.point_id_options.as_ref()) {
                    Some(PointIdOptions::Num(id)) => Some((*id as i64, f64::from(p.score))),
                    _ => None,
                })
                .collect())
        })
    }

    /// Records the generation the Qdrant collection now holds.
    pub fn save(&self, generation: u64) -> crate::Result<()> {
        let point = generation_point(&self.collection);
        let collection = self.collection.clone();
        self.call(move |rt, client| {
            let payload: HashMap<String, Value> = HashMap::from([
                ("collection".to_string(), Value { kind: Some(Kind::StringValue(collection)) }),
                ("generation".to_string(), Value { kind: Some(Kind::IntegerValue(generation as i64)) }),
            ]);
            let record = PointStruct::new(point, vec![0.0f32], payload);
            rt.block_on(client.upsert_points(UpsertPointsBuilder::new(GENERATIONS, vec![record]).wait(true))).map(|_| ()).map_err(err)
        })
    }
}
