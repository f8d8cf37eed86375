//! The collections under one folder, each opened once and kept open for every later query
//! (the HTTP API and agents' search tools share them); each is searched by one caller at a
//! time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Collection, Error, Result, stored_model};

/// A collection shared between tasks.
pub type Shared = Arc<Mutex<Collection>>;

/// The collections of a folder (`$KEEL_HOME/rag`), opened on first use.
pub struct Collections {
    root: PathBuf,
    open: tokio::sync::Mutex<HashMap<String, Shared>>,
}

impl std::fmt::Debug for Collections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collections").field("root", &self.root).finish()
    }
}

impl Collections {
    pub fn new(root: PathBuf) -> Collections {
        Collections { root, open: tokio::sync::Mutex::default() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The collection `name`, opened (off the async threads) the first time it is asked for.
    pub async fn get(&self, name: &str) -> Result<Shared> {
        let mut open = self.open.lock().await;
        if let Some(collection) = open.get(name) {
            return Ok(collection.clone());
        }
        let model = stored_model(&self.root, name).ok_or_else(|| Error::NoCollection(name.into()))?;
        let (root, owned) = (self.root.clone(), name.to_string());
        let collection = tokio::task::spawn_blocking(move || Collection::open(&root, &owned, &model, false))
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        let collection = Arc::new(Mutex::new(collection));
        open.insert(name.into(), collection.clone());
        Ok(collection)
    }
}
