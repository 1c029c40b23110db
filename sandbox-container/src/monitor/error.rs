//! The error type of the monitor's public API (spawn, client, config).

use std::time::Duration;

use crius_proto::monitor::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Local I/O failed; `context` says what was being done.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// `monitor.json` is missing a field or has a bad value.
    #[error("monitor config: {0}")]
    Config(String),
    /// The monitor did not start; the message is what it reported.
    #[error("monitor did not start: {0}")]
    Spawn(String),
    /// The monitor sent something that is not a valid answer.
    #[error("monitor protocol: {0}")]
    Protocol(String),
    /// The monitor did not answer in time (the connection is dropped).
    #[error("monitor did not answer within {0:?}")]
    Timeout(Duration),
    /// The monitor answered with an error.
    #[error("{message}")]
    Remote { kind: ErrorKind, message: String },
}

impl MonitorError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MonitorError::Io {
            context: context.into(),
            source,
        }
    }

    /// The protocol error kind, for a [`MonitorError::Remote`] error.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        match self {
            MonitorError::Remote { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}
