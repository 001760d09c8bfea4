//! Errors as REST clients see them: the HTTP status grpc-gateway and Envoy use for
//! each gRPC code, and a `google.rpc.Status` JSON body with the details the
//! service attached.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::{ErrorDetail, StatusExt};

/// `google.rpc.Status` as JSON, with the matching HTTP status.
#[derive(Debug)]
pub struct RestError {
    pub http: StatusCode,
    pub body: Value,
    pub retry_after: Option<u64>,
    pub allow: Option<String>,
    /// Answer with `Connection: close` (a body left unread on the wire).
    pub close_connection: bool,
}

impl RestError {
    pub fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            http,
            body: json!({ "code": code as i32, "message": message.into(), "details": [] }),
            retry_after: None,
            allow: None,
            close_connection: false,
        }
    }

    /// A share of a `SharedBudget` refused: 429 when the client holds its whole
    /// share, 503 when everyone together holds the whole resource; either way
    /// with `Retry-After: 1`. The words say what was exhausted.
    pub fn budget_refused(
        refusal: shop_platform::budget::Refusal,
        client_words: impl Into<String>,
        total_words: impl Into<String>,
    ) -> Self {
        use shop_platform::budget::Refusal;
        let mut err = match refusal {
            Refusal::Client => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::ResourceExhausted,
                client_words,
            ),
            Refusal::Total => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                total_words,
            ),
        };
        err.retry_after = Some(1);
        err
    }

    /// 400 naming the field, with a BadRequest detail.
    pub fn bad_request(field: &str, description: &str) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            format!("invalid {field}: {description}"),
        );
        err.body["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "field": field, "description": description }],
        }]);
        err
    }

    /// What a backend call failed with. A status the backend sent maps by its code;
    /// one that tonic made from a broken connection (a reset or an HTTP/2 error while
    /// the backend drains) maps to 503 UNAVAILABLE, which clients may retry, rather
    /// than to the 500 its INTERNAL or UNKNOWN code would give.
    pub fn from_backend(status: &tonic::Status) -> Self {
        if shop_platform::grpc::broken_connection(status) {
            // The transport's words (addresses, HTTP/2 errors) are for the log, not the client.
            tracing::warn!(error = %status.message(), "backend connection failed");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "backend unavailable, retry later",
            );
        }
        Self::from_status(status)
    }

    pub fn from_status(status: &tonic::Status) -> Self {
        let http = StatusCode::from_u16(shop_platform::error::http_status(status.code()))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = Self::new(http, status.code(), status.message());
        let details = status.get_error_details_vec();
        // RetryInfo becomes Retry-After (whole seconds, rounded up) as well as a detail.
        err.retry_after = details.iter().find_map(|d| match d {
            ErrorDetail::RetryInfo(r) => r
                .retry_delay
                .map(|d| d.as_secs_f64().ceil().max(1.0) as u64),
            _ => None,
        });
        err.body["details"] = Value::Array(details.iter().filter_map(detail_json).collect());
        err
    }
}

fn detail_json(detail: &ErrorDetail) -> Option<Value> {
    Some(match detail {
        ErrorDetail::BadRequest(b) => json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": b.field_violations.iter()
                .map(|v| json!({ "field": v.field, "description": v.description })).collect::<Vec<_>>(),
        }),
        ErrorDetail::PreconditionFailure(p) => json!({
            "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
            "violations": p.violations.iter()
                .map(|v| json!({ "type": v.r#type, "subject": v.subject, "description": v.description }))
                .collect::<Vec<_>>(),
        }),
        ErrorDetail::ResourceInfo(r) => json!({
            "@type": "type.googleapis.com/google.rpc.ResourceInfo",
            "resourceType": r.resource_type, "resourceName": r.resource_name,
            "owner": r.owner, "description": r.description,
        }),
        ErrorDetail::ErrorInfo(i) => json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": i.reason, "domain": i.domain, "metadata": i.metadata,
        }),
        ErrorDetail::RetryInfo(r) => json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": r.retry_delay.map(|d| format!("{}s", d.as_secs_f64())),
        }),
        _ => return None,
    })
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = (self.http, axum::Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_backend_connection_is_503_and_a_backend_error_keeps_its_code() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let err = RestError::from_backend(&broken);
        assert_eq!(err.http, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.body["code"], Code::Unavailable as i32);
        assert!(
            err.body["message"]
                .as_str()
                .is_some_and(|m| m == "backend unavailable, retry later"),
            "{}",
            err.body
        );

        let sent = tonic::Status::internal("invariant broken");
        assert_eq!(
            RestError::from_backend(&sent).http,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let sent = tonic::Status::not_found("no such order");
        assert_eq!(RestError::from_backend(&sent).http, StatusCode::NOT_FOUND);
    }

    #[test]
    fn retry_info_becomes_retry_after() {
        let status = tonic::Status::from(shop_platform::ApiError::Throttled {
            message: "too many failed sign-ins".into(),
            retry_after: std::time::Duration::from_millis(2_500),
        });
        let err = RestError::from_backend(&status);
        assert_eq!(err.http, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.retry_after, Some(3));
    }
}
