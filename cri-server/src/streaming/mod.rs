//! The streaming server behind CRI Exec, Attach and PortForward:
//! single-use URLs on an HTTP endpoint (`server`), SPDY/3.1 (`spdy`) and
//! WebSocket (`ws`) sessions, and the Kubernetes subprotocols spoken over
//! them (`exec`, `portforward`); a session quiet for too long ends
//! (`idle`).

mod exec;
mod idle;
mod portforward;
mod server;
pub mod spdy;
mod ws;

pub use exec::StdioCall;
pub use portforward::PortForwardCall;
pub use server::{Pending, StreamServer};
