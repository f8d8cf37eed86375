//! The one place errors become HTTP responses, in the error shape of the API the client
//! called: OpenAI's `{"error": {...}}` or Anthropic's `{"type": "error", ...}`.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_llm::{anthropic, openai};

/// Which API's error shape a response takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: &'static str,
    pub format: Format,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>, format: Format) -> ApiError {
        ApiError { status, message: message.into(), code, format, retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>, format: Format) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message, format)
    }

    /// A request the client must fix (400), in OpenAI's shape (keel's own APIs use it).
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad_request("invalid_request", message, Format::OpenAi)
    }

    /// Something the request names that does not exist (404).
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message, Format::OpenAi)
    }

    /// keel failed (500).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message, Format::OpenAi)
    }

    /// A model behind the gateway failed (502).
    pub fn upstream(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message, Format::OpenAi)
    }

    /// A body that could not be read: too large (413, `server.max_body_bytes`), or broken.
    pub fn unreadable_body(rejection: &axum::extract::rejection::BytesRejection, format: Format) -> ApiError {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "request_too_large", "the request body is larger than this server accepts (server.max_body_bytes)", format)
        } else {
            ApiError::new(status, "invalid_body", format!("could not read the request body: {rejection}"), format)
        }
    }

    /// What a trace records when the client left mid-stream (nginx's 499; never sent).
    pub fn client_closed(format: Format) -> ApiError {
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError::new(status, "client_closed", "the client closed the stream before it ended", format)
    }

    pub fn unauthorized(message: impl Into<String>, format: Format) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message, format)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>, format: Format) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message, format)
    }

    /// A store error from keys and teams: a name that does not exist is 404, a refused value
    /// 400 (or 409 for a conflict with what is stored), anything else 500.
    pub fn from_teams(err: &keel_teams::Error) -> ApiError {
        use keel_store::Error as S;
        let (status, code) = match err {
            keel_teams::Error::Store(S::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            keel_teams::Error::Store(S::Invalid(_)) => (StatusCode::CONFLICT, "conflict"),
            keel_teams::Error::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        ApiError::new(status, code, err.to_string(), Format::OpenAi)
    }

    /// A call its key's limits refused: 429 with `Retry-After` for a rate limit, 429
    /// `budget_exceeded` for a budget, 503 when what was spent cannot be read.
    pub fn from_refusal(refusal: &keel_teams::Refusal, format: Format) -> ApiError {
        use keel_teams::Refusal as R;
        let (status, code) = match refusal {
            R::Rate { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
            R::Budget { .. } => (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"),
            R::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "limits_unavailable"),
        };
        let mut error = ApiError::new(status, code, refusal.to_string(), format);
        if let R::Rate { retry_after_ms, .. } = refusal {
            error.retry_after = Some(Duration::from_millis((*retry_after_ms).max(0) as u64));
        }
        error
    }

    pub fn no_route(path: &str, format: Format) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}"), format)
    }

    pub fn method_not_allowed(message: impl Into<String>, format: Format) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message, format)
    }

    /// An agent run's error: a bad definition is the client's, an unknown run is missing, a
    /// run in the wrong state conflicts; the rest is keel's.
    pub fn from_agent(err: &keel_agent::Error) -> ApiError {
        use keel_agent::Error as E;
        let (status, code) = match err {
            E::Definition(_) => (StatusCode::BAD_REQUEST, "invalid_agent"),
            E::Checkpoint(keel_store::Error::NoRun(_)) => (StatusCode::NOT_FOUND, "not_found"),
            E::Finished { .. } | E::NotWaiting { .. } | E::NoSuchCall { .. } => (StatusCode::CONFLICT, "run_state"),
            E::Checkpoint(keel_store::Error::CheckpointFormat { .. }) => (StatusCode::CONFLICT, "checkpoint_format"),
            E::Busy { .. } => (StatusCode::CONFLICT, "run_busy"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        ApiError::new(status, code, err.to_string(), Format::OpenAi)
    }

    /// A collection's error: an unknown collection is missing, a query it cannot answer is
    /// the client's; the rest is keel's.
    pub fn from_rag(err: &keel_rag::Error) -> ApiError {
        use keel_rag::Error as E;
        match err {
            E::NoCollection(_) => ApiError::not_found(err.to_string()),
            E::EmptyQuery | E::ModelMismatch { .. } | E::BadQuery(_) => ApiError::invalid(err.to_string()),
            E::Embed(_) | E::Rerank(_) | E::Answer(_) => ApiError::upstream(err.to_string()),
            _ => ApiError::internal(err.to_string()),
        }
    }

    /// A prompt registry error: an unknown prompt, version or label is missing (404, named),
    /// a missing variable or a bad definition is the client's; the store's is keel's.
    pub fn from_prompt(err: &keel_eval::Error, format: Format) -> ApiError {
        use keel_eval::Error as E;
        match err {
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "prompt_not_found", err.to_string(), format),
            E::MissingVariable(_) => ApiError::bad_request("missing_variable", err.to_string(), format),
            E::Invalid(_) => ApiError::bad_request("invalid_prompt", err.to_string(), format),
            E::Store(keel_store::Error::NotFound(_)) => ApiError::new(StatusCode::NOT_FOUND, "prompt_not_found", err.to_string(), format),
            E::Store(keel_store::Error::Invalid(_)) => ApiError::bad_request("invalid_prompt", err.to_string(), format),
            E::Store(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", err.to_string(), format),
        }
    }

    pub fn from_llm(err: &keel_llm::Error, format: Format) -> ApiError {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError { status, message: err.to_string(), code: err.code(), format, retry_after: err.retry_after() }
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        match self.format {
            Format::OpenAi => openai::error_body(&self.message, self.openai_type(), self.code),
            Format::Anthropic => anthropic::error_body(&self.message, anthropic::error_type(self.status.as_u16())),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// 201 with the JSON of what a request created (the admin API's teams and keys).
pub(crate) fn created(body: serde_json::Value) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}
