//! The keel binary as a user runs it: real processes, real signals, real files.

mod agents;
mod cli;
mod evals;
mod keys;
mod layout;
mod mcp;
mod prompts;
mod shutdown;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn keel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.env_remove("KEEL_CONFIG").env("NO_COLOR", "1");
    command
}

pub fn run(args: &[&str], dir: &Path) -> Output {
    keel().args(args).current_dir(dir).env("KEEL_HOME", dir.join("home")).output().unwrap()
}

/// A child process killed when the test ends, pass or panic, so no `keel serve` outlives it.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config with one OpenAI-kind provider at `upstream` and aliases for `models`.
pub fn config(upstream: &str, listen: &str, models: &[(&str, &str)]) -> String {
    let mut out = format!(
        "[server]\nlisten = \"{listen}\"\ndrain_timeout_s = 120\n\n[store]\npath = \"keel.db\"\n\n[providers.fake]\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\napi_key_env = \"FAKE_KEY\"\nmax_concurrency = 500\n"
    );
    for (alias, model) in models {
        out.push_str(&format!("\n[[models]]\nname = \"{alias}\"\nroutes = [{{ provider = \"fake\", model = \"{model}\" }}]\n"));
    }
    out
}
