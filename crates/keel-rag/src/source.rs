//! Where documents come from: files and folders on disk (Markdown, text, HTML, source code,
//! PDF text layers; hidden and build folders skipped) and pages or files over HTTP(S), read
//! into [`Document`]s with their title, kind and page starts. What cannot be read is listed
//! with the reason, never dropped in silence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Document, Error, Kind, Result};

/// What [`gather`] found: the documents, what it skipped (path or URL, and why), and the
/// folders it read (each `folder/`, the scope whose vanished files an ingest removes).
#[derive(Debug, Default)]
pub struct Gathered {
    pub docs: Vec<Document>,
    pub skipped: Vec<(String, String)>,
    pub scopes: Vec<String>,
}

/// Reads every document under `paths` (files, folders, `http(s)://` URLs), each with `meta`.
pub async fn gather(paths: &[PathBuf], meta: &BTreeMap<String, String>) -> Result<Gathered> {
    let (urls, paths): (Vec<PathBuf>, Vec<PathBuf>) = paths.iter().cloned().partition(|p| is_url(p));
    let (mut docs, mut skipped, scopes) = documents(&paths, meta)?;
    if !urls.is_empty() {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().map_err(|e| Error::Io(e.to_string()))?;
        for url in &urls {
            let url = url.to_string_lossy();
            match fetch(&client, &url).await {
                Ok(doc) => docs.push(Document { meta: meta.clone(), ..doc }),
                Err(why) => skipped.push((url.into_owned(), why)),
            }
        }
    }
    Ok(Gathered { docs, skipped, scopes })
}

/// What [`documents`] found: the documents, the files skipped (path, why), and the folders read.
type Found = (Vec<Document>, Vec<(String, String)>, Vec<String>);

/// The files under `paths` keel reads, and those it skips (with why).
fn documents(paths: &[PathBuf], meta: &BTreeMap<String, String>) -> Result<Found> {
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    let mut scopes = Vec::new();
    let mut stack: Vec<PathBuf> = Vec::new();
    for path in paths {
        let real = path.canonicalize().map_err(|_| Error::Io(format!("{} does not exist", path.display())))?;
        if real.is_dir() {
            scopes.push(format!("{}/", real.display()));
        }
        stack.push(real);
    }
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') || matches!(name, "node_modules" | "target" | "__pycache__") {
                continue;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            stack.extend(entries.into_iter().rev());
            continue;
        }
        let shown = path.display().to_string();
        let is_pdf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdf"));
        let kind = match Kind::of(&path) {
            Some(kind) => Some(kind),
            None if is_pdf => None,
            None => {
                skipped.push((shown, "not a kind keel reads (markdown, text, HTML, code, PDF)".into()));
                continue;
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                skipped.push((shown, format!("unreadable: {e}")));
                continue;
            }
        };
        let name = path.file_name().and_then(|n| n.to_str()).map(String::from);
        let (text, title, kind, pages) = match read(bytes, kind, name) {
            Ok(read) => read,
            Err(why) => {
                skipped.push((shown, why));
                continue;
            }
        };
        docs.push(Document { id: shown.clone(), source: shown, title, text, kind, meta: meta.clone(), pages });
    }
    Ok((docs, skipped, scopes))
}

/// A document's text, title, layout and page starts from its bytes; `kind` is `None` for a
/// PDF. `Err` says why it is skipped.
fn read(bytes: Vec<u8>, kind: Option<Kind>, name: Option<String>) -> Result<(String, Option<String>, Kind, Vec<usize>), String> {
    let Some(kind) = kind else {
        let (text, pages) = crate::pdf::text(&bytes).map_err(|e| e.to_string())?;
        return Ok((text, name, Kind::Text, pages));
    };
    if bytes.contains(&0) {
        return Err("binary".into());
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let (text, title, kind) = match kind {
        Kind::Html => {
            let (text, title) = crate::chunk::html_to_text(&text);
            (text, title, Kind::Markdown)
        }
        Kind::Markdown => {
            let title = text.lines().find(|l| l.starts_with("# ")).map(|l| l[2..].trim().to_string());
            (text, title, kind)
        }
        _ => (text, name, kind),
    };
    if text.trim().is_empty() {
        return Err("empty".into());
    }
    Ok((text, title, kind, Vec::new()))
}

/// Fetches a page or file over HTTP(S): its kind from the content type (else the URL's
/// extension). `Err` says why it is skipped.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Document, String> {
    let response = client.get(url).send().await.map_err(|e| format!("could not fetch: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()));
    }
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
    let path_part = url.split(['?', '#']).next().unwrap_or(url);
    let by_extension = Kind::of(Path::new(path_part));
    let kind = if content_type.contains("pdf") || path_part.to_lowercase().ends_with(".pdf") {
        None
    } else if content_type.contains("html") {
        Some(Kind::Html)
    } else if content_type.contains("markdown") {
        Some(Kind::Markdown)
    } else {
        Some(by_extension.unwrap_or(Kind::Text))
    };
    let bytes = response.bytes().await.map_err(|e| format!("could not read the body: {e}"))?;
    let name = path_part.rsplit('/').find(|s| !s.is_empty()).map(String::from);
    let (text, title, kind, pages) = read(bytes.to_vec(), kind, name)?;
    Ok(Document { id: url.to_string(), source: url.to_string(), title, text, kind, meta: Default::default(), pages })
}

fn is_url(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with("http://") || p.starts_with("https://"))
}
