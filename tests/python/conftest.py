"""Starts a fake upstream and a real `keel serve` in front of it, for the official SDKs."""

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEEL = os.environ.get("KEEL_BIN", str(ROOT / "target" / "debug" / "keel"))
UPSTREAM_KEY = "sk-upstream-test-key-0123456789"
MASTER_KEY = "keel-test-master-key"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
master_key_env = "KEEL_TEST_MASTER"

[store]
path = "keel.db"

[providers.oa]
kind = "openai"
base_url = "http://{upstream}/v1"
api_key_env = "UPSTREAM_KEY"

[providers.an]
kind = "anthropic"
base_url = "http://{upstream}"
api_key_env = "UPSTREAM_KEY"

[providers.ge]
kind = "gemini"
base_url = "http://{upstream}"
api_key_env = "UPSTREAM_KEY"

[[models]]
name = "oa"
routes = [{{ provider = "oa", model = "gpt-4o-mini" }}]

[[models]]
name = "an"
routes = [{{ provider = "an", model = "claude-haiku-4-5" }}]

[[models]]
name = "ge"
routes = [{{ provider = "ge", model = "gemini-2.5-flash" }}]

[[models]]
name = "fallback"
retry_base_ms = 5
routes = [{{ provider = "oa", model = "fail-500" }}, {{ provider = "an", model = "claude-haiku-4-5" }}]

[[models]]
name = "broken"
retries = 0
routes = [{{ provider = "oa", model = "fail-500" }}]

[providers.local]
kind = "local"
slots = 4
context_tokens = 1024

[[models]]
name = "local"
routes = [{{ provider = "local", model = "smollm2-135m" }}]

[[models]]
name = "local-embed"
routes = [{{ provider = "local", model = "all-minilm-l6-v2" }}]

[[models]]
name = "embed"
routes = [{{ provider = "oa", model = "text-embedding-3-small" }}]

# The coding agents' models: the fake's `shell` model drives their shell tool; the local
# model gets a long context for their long prompts.
[[models]]
name = "claude-sonnet-4-5"
routes = [{{ provider = "an", model = "claude-shell" }}]

[[models]]
name = "codex"
routes = [{{ provider = "oa", model = "gpt-5-shell" }}]

[providers.local-long]
kind = "local"
slots = 1
context_tokens = 8192
max_output_tokens = 256

[[models]]
name = "local-long"
routes = [{{ provider = "local-long", model = "smollm2-135m" }}]
"""


@pytest.fixture(scope="session")
def keel_server():
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="keel-sdk-"))
    upstream = subprocess.Popen(
        [KEEL, "fake-upstream", "--listen", "127.0.0.1:0", "--key", UPSTREAM_KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = upstream.stdout.readline().strip()
    assert line.startswith("listening on "), line
    upstream_addr = line.removeprefix("listening on ")
    port = free_port()
    (workdir / "keel.toml").write_text(CONFIG.format(port=port, upstream=upstream_addr))
    env = dict(os.environ, UPSTREAM_KEY=UPSTREAM_KEY, KEEL_TEST_MASTER=MASTER_KEY, KEEL_LOG="warn")
    env.pop("KEEL_CONFIG", None)
    log = open(workdir / "serve.log", "w")
    server = subprocess.Popen([KEEL, "serve"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("keel serve did not start: " + (workdir / "serve.log").read_text())
    yield {"base": base, "workdir": workdir}
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0, (workdir / "serve.log").read_text()
    upstream.kill()
    upstream.wait()
    log.close()
    serve_log = (workdir / "serve.log").read_text()
    assert UPSTREAM_KEY not in serve_log and MASTER_KEY not in serve_log, "a secret reached the log"
