//! The one place where errors become gRPC statuses.

use image_store::LayerError;
use image_store::registry::RegistryError;
use sandbox_api::SandboxError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
    /// A valid request for something crius does not do yet.
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Image(#[from] image_store::Error),
    #[error("state store")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sandbox(#[from] sandbox_api::SandboxError),
    /// An NRI plugin refused an event, or asked for a change crius cannot
    /// make.
    #[error(transparent)]
    Nri(#[from] nri::NriError),
}

pub use sandbox_api::error::chain;

fn code(e: &Error) -> Code {
    use image_store::Error as I;
    match e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) | Error::Store(_) => Code::Internal,
        Error::Nri(n) => match n {
            nri::NriError::Listen { .. } => Code::Internal,
            _ => Code::FailedPrecondition,
        },
        Error::Sandbox(s) => match s {
            SandboxError::InvalidArgument(_) => Code::InvalidArgument,
            SandboxError::NotFound(_) => Code::NotFound,
            SandboxError::FailedPrecondition(_) => Code::FailedPrecondition,
            SandboxError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            SandboxError::Unimplemented(_) => Code::Unimplemented,
            SandboxError::Internal { .. } => Code::Internal,
        },
        Error::Image(i) => match i {
            I::Reference(_) => Code::InvalidArgument,
            I::NotFound(_) => Code::NotFound,
            I::Registry(r) => match r {
                RegistryError::NotFound { .. } => Code::NotFound,
                RegistryError::Unauthorized { .. } => Code::Unauthenticated,
                RegistryError::Unreachable { .. } => Code::Unavailable,
                RegistryError::BadResponse { .. } => Code::Unknown,
                RegistryError::BadEndpoint(_) => Code::FailedPrecondition,
            },
            I::Layer { source, .. } => match &**source {
                LayerError::Download(RegistryError::Unreachable { .. }) | LayerError::Removed => {
                    Code::Unavailable
                }
                LayerError::NoSpace(_) => Code::ResourceExhausted,
                _ => Code::InvalidArgument,
            },
            I::BadImage { .. } => Code::InvalidArgument,
            I::InUse { .. } => Code::FailedPrecondition,
            I::Io { .. } | I::Db(_) => Code::Internal,
        },
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(code(&e), chain(&e))
    }
}

/// The answer of an RPC that crius does not implement yet.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by crius yet"))
}
