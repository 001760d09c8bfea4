//! The error table: every domain error becomes one of these, each knows its gRPC
//! code and the google.rpc details it carries, and each gRPC code has one HTTP
//! status (the mapping grpc-gateway and Envoy use).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The domain that `google.rpc.ErrorInfo` names.
pub const ERROR_DOMAIN: &str = "shopmesh";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// Request fields that break the contract's rules, each named (never empty).
    #[error("{}", describe_violations(.0))]
    InvalidFields(Vec<FieldViolation>),
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("{resource} {id} already exists")]
    AlreadyExists { resource: &'static str, id: String },
    /// The request is well formed but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// As FailedPrecondition, naming each thing that stands in the way
    /// (`google.rpc.PreconditionFailure`).
    #[error("{message}")]
    Precondition {
        message: String,
        violations: Vec<PreconditionViolation>,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` saying when to try again
    /// (the gateway turns it into `Retry-After`).
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Anything unexpected: logged with its cause, reported without it.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One field that breaks a rule: its path (`lines[0].sku`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

fn describe_violations(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("invalid {}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One reason a precondition failed: `kind` (e.g. "STOCK"), `subject` (e.g. a SKU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreconditionViolation {
    pub kind: String,
    pub subject: String,
    pub description: String,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The same error with its field paths under `prefix` (`products[3]` makes
    /// `sku` into `products[3].sku`): for a message that is one of many.
    #[must_use]
    pub fn within(self, prefix: &str) -> Self {
        let under = |field: String| {
            if field.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{field}")
            }
        };
        match self {
            Self::InvalidArgument { field, description } => Self::InvalidArgument {
                field: under(field),
                description,
            },
            Self::InvalidFields(violations) => Self::InvalidFields(
                violations
                    .into_iter()
                    .map(|v| FieldViolation {
                        field: under(v.field),
                        description: v.description,
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::InvalidFields(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::FailedPrecondition(_) | Self::Precondition { .. } => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::ResourceExhausted(_) | Self::Throttled { .. } => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// A stable machine-readable reason for `google.rpc.ErrorInfo`.
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } | Self::InvalidFields(_) => "INVALID_ARGUMENT",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::AlreadyExists { .. } => "ALREADY_EXISTS",
            Self::FailedPrecondition(_) | Self::Precondition { .. } => "FAILED_PRECONDITION",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::ResourceExhausted(_) | Self::Throttled { .. } => "RESOURCE_EXHAUSTED",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason(), ERROR_DOMAIN, HashMap::<String, String>::new());
        match &err {
            ApiError::InvalidArgument { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
            }
            ApiError::InvalidFields(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
            }
            ApiError::NotFound { resource, id } | ApiError::AlreadyExists { resource, id } => {
                details.set_resource_info(*resource, id.clone(), "", err.to_string());
            }
            ApiError::Precondition { violations, .. } => {
                for v in violations {
                    details.add_precondition_failure_violation(
                        v.kind.clone(),
                        v.subject.clone(),
                        v.description.clone(),
                    );
                }
            }
            ApiError::Throttled { retry_after, .. } => {
                details.set_retry_info(Some(*retry_after));
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
            }
            _ => {}
        }
        Status::with_error_details(err.code(), err.to_string(), details)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_transient(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable("database unavailable, retry later".into())
        } else {
            Self::Internal(anyhow::Error::new(err).context("database query failed"))
        }
    }
}

/// The HTTP status for a gRPC code, as grpc-gateway and Envoy map them but for
/// FAILED_PRECONDITION: 409, not 400. A 400 tells a client to fix its request;
/// a refusal for the state of things (short stock, an order past cancelling) is
/// a well-formed request that may succeed once that state changes (RFC 9110
/// §15.5.10), and a client generated from the OpenAPI document must be able to
/// tell the two apart.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = Status::from(ApiError::invalid("email", "must contain '@'"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid email: must contain '@'");
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("bad request detail")
            .field_violations;
        assert_eq!(violations[0].field, "email");
        assert_eq!(
            details.error_info().expect("error info").domain,
            ERROR_DOMAIN
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!("password=hunter2")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn http_table_matches_grpc_gateway_but_for_failed_precondition() {
        let table = [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::FailedPrecondition, 409),
            (Code::Aborted, 409),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Internal, 500),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code), status, "{code:?}");
        }
    }
}
