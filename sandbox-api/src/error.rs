//! What a sandbox answers when a call fails: a kind the edge maps to a
//! gRPC code in one place, a message a person can act on, and the typed
//! source kept until that mapping.

/// A source error, kept typed for its chain.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request cannot work as asked (a bad config, an option this
    /// sandbox refuses).
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the state is not (a container not
    /// running, a host path not shared).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Something this sandbox does not do (yet).
    #[error("{0}")]
    Unimplemented(String),
    /// The host or the guest failed at `what`.
    #[error("{what}")]
    Internal {
        what: String,
        #[source]
        source: Option<Source>,
    },
}

pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

impl SandboxError {
    /// A failure of `what`, caused by `source`.
    pub fn internal(what: impl Into<String>, source: impl Into<Source>) -> Self {
        SandboxError::Internal {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// A failure of `what` with nothing more to say.
    pub fn bare(what: impl Into<String>) -> Self {
        SandboxError::Internal {
            what: what.into(),
            source: None,
        }
    }

    /// A closure for `map_err`: a failure of `what`.
    pub fn at<E: Into<Source>>(what: &str) -> impl FnOnce(E) -> SandboxError + '_ {
        move |e| SandboxError::internal(what, e)
    }
}

/// The error and its sources, each once, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_each_source_once() {
        let io = std::io::Error::other("disk on fire");
        let e = SandboxError::internal("write config.json", io);
        assert_eq!(chain(&e), "write config.json: disk on fire");
        let e = SandboxError::internal(
            "mount rootfs",
            SandboxError::internal("mount rootfs", std::io::Error::other("EBUSY")),
        );
        assert_eq!(chain(&e), "mount rootfs: EBUSY");
        assert_eq!(chain(&SandboxError::bare("gone")), "gone");
    }
}
