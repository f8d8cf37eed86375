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
