//! `pull` from a model hub: a minimal hub on loopback that serves the real GGUF with its
//! SHA-256 in `x-linked-etag` and honours `Range`, so resume and checksum are exercised.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use keel_local::{ModelStore, Source};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Hub {
    file: Vec<u8>,
    sha256: String,
    lie_about_checksum: AtomicBool,
    ranged_requests: AtomicUsize,
}

async fn serve(hub: Arc<Hub>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8_lossy(&request).to_lowercase();
                let start = text
                    .lines()
                    .find_map(|line| line.strip_prefix("range: bytes="))
                    .and_then(|range| range.trim().trim_end_matches('-').parse::<usize>().ok());
                let etag = if hub.lie_about_checksum.load(Ordering::SeqCst) { "0".repeat(64) } else { hub.sha256.clone() };
                let (status, body) = match start {
                    Some(start) => {
                        hub.ranged_requests.fetch_add(1, Ordering::SeqCst);
                        ("206 Partial Content", &hub.file[start..])
                    }
                    None => ("200 OK", &hub.file[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nx-linked-etag: \"{etag}\"\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_the_hub_with_resume_and_checksum() {
    let real = super::model_path();
    let file = std::fs::read(&real).unwrap();
    let sha256 = format!("{:x}", Sha256::digest(&file));
    let hub = Arc::new(Hub { file, sha256, lie_about_checksum: AtomicBool::new(false), ranged_requests: AtomicUsize::new(0) });
    let url = serve(hub.clone()).await;
    // SAFETY of the test: no other test in this binary reads KEEL_HUB_URL.
    unsafe_set_env("KEEL_HUB_URL", &url);
    let dir = std::env::temp_dir().join(format!("keel-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = ModelStore::new(&dir);
    let folder = dir.join("smollm2-135m");
    std::fs::create_dir_all(&folder).unwrap();
    // A third of the file from an interrupted pull: the next pull resumes it.
    std::fs::write(folder.join("SmolLM2-135M-Instruct.Q4_1.part"), &hub.file[..hub.file.len() / 3]).unwrap();
    let source = store.pull("smollm2-135m", &mut |_| {}).await.unwrap();
    assert_eq!(source, Source::Hub);
    assert_eq!(hub.ranged_requests.load(Ordering::SeqCst), 1, "the pull resumed with a Range request");
    assert_eq!(std::fs::read(folder.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap(), hub.file);
    assert_eq!(store.pull("smollm2-135m", &mut |_| {}).await.unwrap(), Source::Present);

    // A file that does not match the hub's checksum is refused and removed.
    let _ = std::fs::remove_dir_all(&dir);
    hub.lie_about_checksum.store(true, Ordering::SeqCst);
    unsafe_set_env("KEEL_PYTHON", "/nonexistent/python3");
    let err = store.pull("smollm2-135m", &mut |_| {}).await.unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!folder.join("SmolLM2-135M-Instruct.Q4_1.part").exists());
    assert!(!store.is_present(keel_local::store::catalog("smollm2-135m").unwrap()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[expect(unsafe_code, reason = "std::env::set_var is unsafe in edition 2024; this test binary sets it once")]
fn unsafe_set_env(key: &str, value: &str) {
    // SAFETY: only this test reads or writes these variables.
    unsafe { std::env::set_var(key, value) };
}
