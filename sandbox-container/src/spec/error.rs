//! The one error type of spec generation.

/// Why a container's OCI spec could not be built.
///
/// The variants are chosen for the gRPC edge: [`SpecError::Invalid`] maps to
/// `InvalidArgument`, [`SpecError::NotFound`] to `NotFound`,
/// [`SpecError::FailedPrecondition`] to `FailedPrecondition`, and
/// [`SpecError::Io`] to `Internal` (or `Unknown`). Messages are short, and
/// untrusted strings in them are quoted and truncated (see [`quote`]); the
/// `Io` variant keeps its cause in [`std::error::Error::source`] instead of
/// repeating it in its own message.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The request or the image configuration asks for something invalid or
    /// unsupported.
    #[error("{0}")]
    Invalid(String),
    /// A named user, group, device or seccomp profile does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The host is not set up for the request: a bidirectional mount whose
    /// host path is not on a shared mount, for instance.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A file could not be read (or a host path created) for another
    /// reason.
    #[error("{context}")]
    Io {
        /// What was being done, without the cause.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        SpecError::Invalid(msg.into())
    }

    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        SpecError::NotFound(msg.into())
    }

    pub(crate) fn failed_precondition(msg: impl Into<String>) -> Self {
        SpecError::FailedPrecondition(msg.into())
    }

    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        SpecError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// The longest part of an untrusted string that goes into an error message.
const QUOTE_MAX: usize = 64;

/// Quotes an untrusted string for an error message: control characters
/// escaped, at most [`QUOTE_MAX`] characters kept.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == QUOTE_MAX {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_truncates_and_escapes() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(1000);
        let q = quote(&long);
        assert!(q.len() < 80, "{q}");
        assert!(q.ends_with("...\""));
    }

    #[test]
    fn io_message_does_not_repeat_source() {
        let e = SpecError::io("cannot read /etc/passwd", std::io::Error::other("boom"));
        assert_eq!(e.to_string(), "cannot read /etc/passwd");
        assert!(std::error::Error::source(&e).is_some());
    }
}
