//! NRI, the Node Resource Interface of containerd and CRI-O, on crius's
//! side: external plugins connect to a Unix socket, register, are
//! configured and synchronized with the pods and containers that exist,
//! then get the lifecycle events they subscribed to and may adjust a
//! container as it is created.
//!
//! - [`wire`]: the socket's framing (a connection multiplexer carrying
//!   ttrpc), pure and unit-tested;
//! - [`api`]: the protocol's messages;
//! - [`plugin`]: one connected plugin;
//! - [`adjust`]: merging the plugins' changes to a container;
//! - [`service`]: the socket, the plugins in order, event delivery;
//! - `testing` (feature `testing`): a plugin for tests.

pub mod adjust;
pub mod api;
pub mod plugin;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use adjust::{AdjustError, Adjustment, BindMount, Propagation, Resources};
pub use plugin::Settings;
pub use service::{Host, Nri, NriError, Scope};
