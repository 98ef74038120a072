//! The connector's error type and the one place that decides each failure's
//! [`ErrorKind`], so the runtime's retry policy never reads message text.
//!
//! Start at [`Error::kind`]. A Prometheus error answer is classified by its `errorType`
//! ([`classify_error_type`]), an HTTP failure without one by its status ([`classify_status`]),
//! and a failure below HTTP by what reqwest says happened ([`classify_request`]).
//! [`Error::into_action_error`] flattens an error and its causes into the [`ActionError`] the
//! runtime journals.

use std::error::Error as _;

use firebreak_connector::{ActionError, ErrorKind};

/// Why a Prometheus action failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured Prometheus URL is unusable.
    #[error("invalid prometheus url {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    /// The script passed arguments that do not fit the action's parameters.
    #[error("invalid arguments for prom::{action}")]
    InvalidArgs {
        action: String,
        #[source]
        source: serde_json::Error,
    },
    /// A parameter parsed but its value makes no sense (an unknown operator, a bad duration).
    #[error("invalid argument {param} for prom::{action}: {reason}")]
    InvalidValue {
        action: &'static str,
        param: &'static str,
        reason: String,
    },
    /// The runtime asked for an action this connector does not have.
    #[error("unknown action prom::{0}")]
    UnknownAction(String),
    /// Prometheus answered `{"status":"error", ...}`: its own message, as it said it.
    #[error("{what}: {error_type}: {message}")]
    Prometheus {
        what: String,
        /// The HTTP status the error came with.
        status: u16,
        /// Prometheus's `errorType` (`bad_data`, `execution`, `timeout`, ...).
        error_type: String,
        message: String,
    },
    /// An HTTP error status without a Prometheus error body (a proxy in front of it, a wrong
    /// URL path).
    #[error("{what}: http status {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        what: String,
        status: u16,
        /// The start of the body, for people.
        body: String,
    },
    /// The request could not be sent or its answer not read (connection refused, reset,
    /// timed out).
    #[error("{what}")]
    Request {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// Prometheus answered success with a body that is not what its API documents.
    #[error("{what}: unexpected answer from prometheus")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The answer is larger than the connector reads (see `Api::with_max_body`).
    #[error("{what}: the answer is larger than {limit} bytes; narrow the query")]
    TooLarge { what: String, limit: usize },
    /// A check's query returned a result type a check cannot compare (a range vector, a string).
    #[error("{what}: {reason}")]
    Unusable { what: String, reason: String },
}

impl Error {
    pub(crate) fn invalid(
        action: &'static str,
        param: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidValue {
            action,
            param,
            reason: reason.into(),
        }
    }

    /// The engine's classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidBaseUrl { .. }
            | Error::InvalidArgs { .. }
            | Error::InvalidValue { .. }
            | Error::UnknownAction(_)
            | Error::Decode { .. }
            | Error::TooLarge { .. }
            | Error::Unusable { .. } => ErrorKind::Permanent,
            Error::Prometheus {
                status, error_type, ..
            } => classify_error_type(error_type).unwrap_or_else(|| classify_status(*status)),
            Error::Status { status, .. } => classify_status(*status),
            Error::Request { source, .. } => classify_request(source),
        }
    }

    /// The message for people: this error followed by its causes, `: `-separated, each
    /// cause once.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = c.source();
        }
        message
    }

    /// Converts to the runtime's error type.
    pub fn into_action_error(self) -> ActionError {
        ActionError::new(self.kind(), self.message())
    }
}

impl From<Error> for ActionError {
    fn from(e: Error) -> Self {
        e.into_action_error()
    }
}

/// Classifies Prometheus's `errorType` (see `web/api/v1/api.go`); `None` for a type this
/// version does not know, which is then classified by HTTP status.
///
/// `bad_data` (unparsable PromQL, bad parameters) and `execution` (a query that cannot be
/// evaluated, e.g. many-to-many matching) fail the same way again: Permanent. `timeout` is
/// the server's query timeout: Timeout. `canceled`, `internal` and `unavailable` are the
/// server's own trouble: Transient. `not_found`: NotFound.
pub fn classify_error_type(error_type: &str) -> Option<ErrorKind> {
    Some(match error_type {
        "bad_data" | "execution" => ErrorKind::Permanent,
        "timeout" => ErrorKind::Timeout,
        "canceled" | "internal" | "unavailable" => ErrorKind::Transient,
        "not_found" => ErrorKind::NotFound,
        _ => return None,
    })
}

/// Classifies an HTTP error status: 429 and 5xx Transient (an overloaded or restarting
/// Prometheus, a proxy without a backend), 401/403 Denied (an auth proxy refused us), any
/// other status Permanent (a wrong URL path will not fix itself).
pub fn classify_status(status: u16) -> ErrorKind {
    match status {
        429 | 500..=599 => ErrorKind::Transient,
        401 | 403 => ErrorKind::Denied,
        _ => ErrorKind::Permanent,
    }
}

/// Classifies a failure below HTTP: our per-request timeout is Timeout; a refused or reset
/// connection and a body cut short are Transient; anything else (building the request) is
/// Permanent.
pub fn classify_request(error: &reqwest::Error) -> ErrorKind {
    if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_connect() || error.is_request() || error.is_body() {
        ErrorKind::Transient
    } else if let Some(status) = error.status() {
        classify_status(status.as_u16())
    } else {
        ErrorKind::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_map_to_kinds() {
        let cases = [
            ("bad_data", ErrorKind::Permanent),
            ("execution", ErrorKind::Permanent),
            ("timeout", ErrorKind::Timeout),
            ("canceled", ErrorKind::Transient),
            ("internal", ErrorKind::Transient),
            ("unavailable", ErrorKind::Transient),
            ("not_found", ErrorKind::NotFound),
        ];
        for (error_type, kind) in cases {
            assert_eq!(classify_error_type(error_type), Some(kind), "{error_type}");
        }
        assert_eq!(classify_error_type("something_new"), None);
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (429, ErrorKind::Transient),
            (500, ErrorKind::Transient),
            (502, ErrorKind::Transient),
            (503, ErrorKind::Transient),
            (401, ErrorKind::Denied),
            (403, ErrorKind::Denied),
            (400, ErrorKind::Permanent),
            (404, ErrorKind::Permanent),
            (422, ErrorKind::Permanent),
        ];
        for (status, kind) in cases {
            assert_eq!(classify_status(status), kind, "{status}");
        }
    }

    #[test]
    fn an_unknown_error_type_falls_back_to_the_status() {
        let e = |status| Error::Prometheus {
            what: "query".into(),
            status,
            error_type: "brand_new".into(),
            message: "m".into(),
        };
        assert_eq!(e(503).kind(), ErrorKind::Transient);
        assert_eq!(e(400).kind(), ErrorKind::Permanent);
    }

    #[test]
    fn prometheus_message_is_kept_verbatim() {
        let e = Error::Prometheus {
            what: "prom::query `sum(`".into(),
            status: 400,
            error_type: "bad_data".into(),
            message: "1:5: parse error: unclosed left parenthesis".into(),
        }
        .into_action_error();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(
            e.message,
            "prom::query `sum(`: bad_data: 1:5: parse error: unclosed left parenthesis"
        );
    }

    #[test]
    fn invalid_arguments_name_the_cause() {
        let source = serde_json::from_str::<u8>("\"x\"").unwrap_err();
        let e = Error::InvalidArgs {
            action: "check".into(),
            source,
        }
        .into_action_error();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(
            e.message
                .starts_with("invalid arguments for prom::check: invalid type"),
            "{}",
            e.message
        );
    }
}
