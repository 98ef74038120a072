//! The connector's error type and the one function that classifies Kubernetes API failures
//! into the engine's [`ErrorKind`]s.
//!
//! Start at [`classify`]: it decides retryability from status codes and error types, never
//! from message text. [`Error::into_action_error`] flattens an error and its causes into the
//! [`ActionError`] the runtime journals.

use std::error::Error as _;

use firebreak_connector::{ActionError, ErrorKind};

/// Why a Kubernetes action failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script passed arguments that do not fit the action's parameters.
    #[error("invalid arguments for k8s::{action}")]
    InvalidArgs {
        action: String,
        #[source]
        source: serde_json::Error,
    },
    /// A parameter parsed but its value makes no sense (empty selector, negative replicas, ...).
    #[error("invalid argument {param} for k8s::{action}: {reason}")]
    InvalidValue {
        action: &'static str,
        param: &'static str,
        reason: String,
    },
    /// The runtime asked for an action this connector does not have.
    #[error("unknown action k8s::{0}")]
    UnknownAction(String),
    /// A request to the API server failed.
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The cluster is in a state where the action cannot proceed (nothing to roll back to, a
    /// paused Deployment, a changed object). The kind says what the runtime should do.
    #[error("{message}")]
    Refused { kind: ErrorKind, message: String },
    /// A wait did not finish in time.
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    /// Watching the API server failed in a way the watcher does not recover from.
    #[error("watch failed: {what}")]
    Watch {
        what: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
}

impl Error {
    /// Wraps a kube error with what we were doing.
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { what, source }
    }

    pub(crate) fn refused(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Refused {
            kind,
            message: message.into(),
        }
    }

    /// An error the engine's types produced (a journaled intent that does not parse).
    pub(crate) fn from_action(e: ActionError) -> Self {
        Error::Refused {
            kind: e.kind,
            message: e.message,
        }
    }

    /// The engine's classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgs { .. } | Error::InvalidValue { .. } | Error::UnknownAction(_) => {
                ErrorKind::Permanent
            }
            Error::Api { source, .. } => classify(source),
            Error::Refused { kind, .. } => *kind,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Watch { source, .. } => match source {
                kube::runtime::watcher::Error::InitialListFailed(e)
                | kube::runtime::watcher::Error::WatchStartFailed(e)
                | kube::runtime::watcher::Error::WatchFailed(e) => classify(e),
                _ => ErrorKind::Transient,
            },
        }
    }

    /// The message for people: this error followed by its causes, `: `-separated.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            let text = c.to_string();
            // kube's Api error prints the Status twice (Display and Debug); the Status message
            // alone is what a person needs.
            let text = match c.downcast_ref::<kube::Error>() {
                Some(kube::Error::Api(status)) if !status.message.is_empty() => {
                    status.message.clone()
                }
                _ => text,
            };
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            if matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(_))) {
                break;
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

/// Classifies a kube-rs failure.
///
/// API answers go by HTTP status: 404 NotFound; 409 Conflict (a stale resourceVersion, or
/// AlreadyExists); 401/403 Denied; 408/504 Timeout; 429 and 5xx Transient; any other 4xx
/// Permanent. Failures below HTTP (connect, TLS handshake, a reset stream) are Transient, or
/// Timeout when an I/O timeout is among the causes. Errors building or decoding requests are
/// Permanent: sending the same thing again will not help.
pub fn classify(error: &kube::Error) -> ErrorKind {
    match error {
        kube::Error::Api(status) => classify_status(status.code),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            if has_io_timeout(error) {
                ErrorKind::Timeout
            } else {
                ErrorKind::Transient
            }
        }
        kube::Error::Auth(_) => ErrorKind::Denied,
        _ => ErrorKind::Permanent,
    }
}

/// Classifies an HTTP status code from the API server.
pub fn classify_status(code: u16) -> ErrorKind {
    match code {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        401 | 403 => ErrorKind::Denied,
        408 | 504 => ErrorKind::Timeout,
        429 => ErrorKind::Transient,
        500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

fn has_io_timeout(error: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        let mut s = kube::core::Status::failure(message, reason);
        s.code = code;
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn api_statuses_map_to_kinds() {
        let cases = [
            (404, "NotFound", ErrorKind::NotFound),
            (409, "Conflict", ErrorKind::Conflict),
            (409, "AlreadyExists", ErrorKind::Conflict),
            (401, "Unauthorized", ErrorKind::Denied),
            (403, "Forbidden", ErrorKind::Denied),
            (408, "Timeout", ErrorKind::Timeout),
            (504, "Timeout", ErrorKind::Timeout),
            (429, "TooManyRequests", ErrorKind::Transient),
            (500, "InternalError", ErrorKind::Transient),
            (503, "ServiceUnavailable", ErrorKind::Transient),
            (400, "BadRequest", ErrorKind::Permanent),
            (415, "UnsupportedMediaType", ErrorKind::Permanent),
            (422, "Invalid", ErrorKind::Permanent),
        ];
        for (code, reason, kind) in cases {
            assert_eq!(
                classify(&status(code, reason, "x")),
                kind,
                "{code} {reason}"
            );
        }
    }

    #[test]
    fn io_failures_are_transient_or_timeout() {
        let reset = kube::Error::ReadEvents(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert_eq!(classify(&reset), ErrorKind::Transient);
        let timed_out =
            kube::Error::ReadEvents(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(classify(&timed_out), ErrorKind::Timeout);
        let service = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "deadline",
        )));
        assert_eq!(classify(&service), ErrorKind::Timeout);
        let refused = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(classify(&refused), ErrorKind::Transient);
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e = serde_json::from_str::<u8>("x").unwrap_err();
        assert_eq!(classify(&kube::Error::SerdeError(e)), ErrorKind::Permanent);
    }

    #[test]
    fn action_error_carries_the_status_message_once() {
        let e = Error::api("getting deployment prod/web")(status(
            404,
            "NotFound",
            "deployments.apps \"web\" not found",
        ));
        let a = e.into_action_error();
        assert_eq!(a.kind, ErrorKind::NotFound);
        assert_eq!(
            a.message,
            "getting deployment prod/web: deployments.apps \"web\" not found"
        );
    }
}
