//! keel-llm's error type: what went wrong talking to a provider, and whether another try
//! (on the same route or the next one) could help.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown model `{alias}`; {}", if known.is_empty() { "no models are configured: add [[models]] to keel.toml".to_string() } else { format!("configured models: [{known}]") })]
    UnknownModel { alias: String, known: String },
    /// The request cannot be served as asked; the client must change it.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("upstream {provider} answered {status}: {message}")]
    Upstream { provider: String, status: u16, message: String, retry_after: Option<Duration> },
    #[error("upstream {provider} timed out waiting for {phase}")]
    Timeout { provider: String, phase: &'static str },
    #[error("could not reach upstream {provider}: {message}")]
    Connect { provider: String, message: String },
    #[error("upstream {provider} sent an answer keel could not read: {message}")]
    BadResponse { provider: String, message: String },
    /// A provider's body or stream event that a decoder could not read (the provider not yet
    /// known; the call path reports it as `BadResponse` or `StreamCut` with the provider).
    #[error("an answer keel could not read: {0}")]
    Unreadable(String),
    #[error("upstream {provider} cut the stream: {message}")]
    StreamCut { provider: String, message: String },
    #[error("provider {provider} has no API key: set the environment variable {env}")]
    MissingKey { provider: String, env: String },
    #[error("provider {provider} does not support {what}")]
    Unsupported { provider: String, what: &'static str },
    /// A local model could not be loaded or failed while running.
    #[error("local model on {provider}: {message}")]
    LocalModel { provider: String, message: String },
    /// A local model's queue is full.
    #[error("{message}")]
    Overloaded { provider: String, message: String },
    #[error("every route of `{alias}` failed; last error: {last}")]
    AllRoutesFailed { alias: String, last: Box<Error> },
}

impl Error {
    /// Worth another try on the same route (after a backoff).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Upstream { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            Error::Timeout { .. } | Error::Connect { .. } | Error::StreamCut { .. } | Error::Overloaded { .. } => true,
            _ => false,
        }
    }

    /// Worth trying the next route: anything but an error the request itself caused.
    pub fn falls_over(&self) -> bool {
        match self {
            Error::Upstream { status, .. } => !matches!(status, 400 | 413 | 422),
            Error::InvalidRequest(_) | Error::UnknownModel { .. } => false,
            _ => true,
        }
    }

    /// The HTTP status a client should see for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::UnknownModel { .. } => 404,
            Error::InvalidRequest(_) | Error::Unsupported { .. } => 400,
            Error::Upstream { status, .. } => match *status {
                400 | 413 | 422 | 429 => *status,
                // Upstream auth problems are keel's configuration, not the client's.
                401 | 403 => 502,
                404 => 502,
                s if s >= 500 => 502,
                _ => 502,
            },
            Error::Timeout { .. } => 504,
            Error::Connect { .. } | Error::BadResponse { .. } | Error::Unreadable(_) | Error::StreamCut { .. } => 502,
            Error::MissingKey { .. } => 500,
            Error::Overloaded { .. } => 503,
            Error::LocalModel { .. } => 500,
            Error::AllRoutesFailed { last, .. } => last.status(),
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Upstream { retry_after, .. } => *retry_after,
            Error::AllRoutesFailed { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// A short machine-readable code, used in error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnknownModel { .. } => "model_not_found",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Upstream { status: 429, .. } => "upstream_rate_limited",
            Error::Upstream { status, .. } if *status < 500 => "upstream_rejected",
            Error::Upstream { .. } => "upstream_error",
            Error::Timeout { .. } => "upstream_timeout",
            Error::Connect { .. } => "upstream_unreachable",
            Error::BadResponse { .. } | Error::Unreadable(_) => "upstream_bad_response",
            Error::StreamCut { .. } => "upstream_stream_cut",
            Error::MissingKey { .. } => "provider_key_missing",
            Error::Unsupported { .. } => "unsupported",
            Error::Overloaded { .. } => "overloaded",
            Error::LocalModel { .. } => "local_model_error",
            Error::AllRoutesFailed { last, .. } => last.code(),
        }
    }
}

/// Removes anything that looks like a credential from text that came from an upstream
/// (some providers echo part of a bad key back in their error messages).
pub fn scrub_secrets(text: &str, key: Option<&str>) -> String {
    let mut out = match key {
        Some(key) if key.len() >= 8 => text.replace(key, "[redacted]"),
        _ => text.to_string(),
    };
    for prefix in ["sk-", "sk_", "AIza", "gsk_", "xai-"] {
        let mut scrubbed = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(prefix) {
            scrubbed.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*'))
                .unwrap_or(tail.len());
            if end >= 16 {
                scrubbed.push_str(prefix);
                scrubbed.push_str("[redacted]");
            } else {
                scrubbed.push_str(&tail[..end]);
            }
            rest = &tail[end..];
        }
        scrubbed.push_str(rest);
        out = scrubbed;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::scrub_secrets;

    #[test]
    fn scrubs_keys() {
        assert_eq!(
            scrub_secrets("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz.", None),
            "Incorrect API key provided: sk-[redacted]."
        );
        assert_eq!(scrub_secrets("bad key mysecretvalue123", Some("mysecretvalue123")), "bad key [redacted]");
        assert_eq!(scrub_secrets("task-runner sk-short", None), "task-runner sk-short");
    }
}
