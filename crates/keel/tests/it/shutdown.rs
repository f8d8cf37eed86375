//! SIGTERM with 10,000 requests in flight: keel stops accepting, lets every request finish,
//! and writes every trace before it exits.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{config, temp_dir};

const IN_FLIGHT: usize = 10_000;

#[expect(unsafe_code, reason = "raising the open-file limit and sending SIGTERM are libc calls")]
fn raise_fd_limit() {
    // SAFETY: plain libc calls on a valid stack struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = libc::rlimit { rlim_cur: 262_144, rlim_max: limit.rlim_max.max(262_144) };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

#[expect(unsafe_code, reason = "sending a signal is a libc call")]
fn sigterm(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_ten_thousand_requests_and_loses_no_trace() {
    raise_fd_limit();
    let dir = temp_dir("shutdown");
    let (upstream, fake) = keel_server::fake::spawn(Some("k".into())).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    std::fs::write(dir.join("keel.toml"), config(&upstream.to_string(), &listen, &[("held", "hold")])).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("serve")
        .current_dir(&dir)
        .env("FAKE_KEY", "k")
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(300)).build().unwrap();
    let url = format!("http://{listen}/v1/chat/completions");
    let started = Instant::now();
    while client.get(format!("http://{listen}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "keel did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for idx in 0..IN_FLIGHT {
        let (client, url, ok) = (client.clone(), url.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({"model": "held", "messages": [{"role": "user", "content": format!("request {idx}")}]});
            let response = client.post(&url).json(&body).send().await.expect("the request reached keel");
            let status = response.status();
            let json: serde_json::Value = response.json().await.expect("a JSON answer");
            assert_eq!(status, 200, "{json}");
            assert_eq!(json["choices"][0]["message"]["content"], format!("echo: request {idx}"));
            ok.fetch_add(1, Ordering::SeqCst);
        }));
    }
    // The provider caps calls to the upstream at 500 (max_concurrency): the rest wait
    // inside keel, and all 10,000 count as in flight on the route.
    let metrics_url = format!("http://{listen}/metrics");
    let gauge = "keel_route_in_flight{alias=\"held\",provider=\"fake\",model=\"hold\"} ";
    let started = Instant::now();
    loop {
        let metrics = client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        let in_flight: usize = metrics.lines().find_map(|l| l.strip_prefix(gauge)).unwrap().parse().unwrap();
        if in_flight == IN_FLIGHT && fake.in_flight.load(Ordering::SeqCst) == 500 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "only {in_flight} of {IN_FLIGHT} requests reached keel's route");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    sigterm(child.id().unwrap());
    // keel stops accepting while the held requests wait.
    let started = Instant::now();
    loop {
        let refused = client.get(format!("http://{listen}/health")).timeout(Duration::from_secs(1)).send().await.is_err();
        if refused {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "keel still accepts connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "keel exited with requests in flight");
    fake.release_held();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), IN_FLIGHT);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("keel exits after draining").unwrap();
    assert!(status.success(), "{status}");

    let store = keel_store::Store::open(&dir.join("keel.db")).unwrap();
    assert_eq!(store.count_traces().unwrap(), IN_FLIGHT as u64, "every request left a trace");
    let _ = std::fs::remove_dir_all(&dir);
}
