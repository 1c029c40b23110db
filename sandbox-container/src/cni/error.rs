//! Errors of the CNI caller.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while loading a network config or running its plugins.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `.conflist`, `.conf` or `.json` file in any conf dir: the node's
    /// network is not set up yet (CRI `NetworkReady=false`).
    #[error("no network config found in {}", paths(dirs))]
    NoConfig { dirs: Vec<PathBuf> },

    /// Config files exist but none is valid; this is the first one.
    #[error("network config {}", path.display())]
    InvalidConfig {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },

    /// The plugin binary named by a `type` is in none of the bin dirs.
    #[error("plugin {plugin:?} not found in {}", paths(dirs))]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },

    /// The plugin could not be started.
    #[error("plugin {plugin:?} {command}: cannot run {}", binary.display())]
    Spawn {
        plugin: String,
        command: &'static str,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Waiting for the plugin or talking to it over its pipes failed.
    #[error("plugin {plugin:?} {command}: cannot wait for it")]
    Wait {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The plugin ran past the timeout; it was killed (with its process
    /// group) and reaped.
    #[error("plugin {plugin:?} {command} timed out after {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },

    /// The plugin failed and said why in a CNI error object.
    #[error("plugin {plugin:?} {command} failed")]
    Plugin {
        plugin: String,
        command: &'static str,
        #[source]
        source: PluginError,
    },

    /// The plugin failed without a CNI error object on stdout.
    #[error(
        "plugin {plugin:?} {command} failed ({status}){}",
        output_suffix(output)
    )]
    PluginExit {
        plugin: String,
        command: &'static str,
        status: String,
        /// The end of its stderr (or stdout when stderr was empty).
        output: String,
    },

    /// The plugin succeeded but its stdout is not a CNI result.
    #[error("plugin {plugin:?} {command} returned an invalid result")]
    InvalidResult {
        plugin: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The plugin wrote more than we are willing to read.
    #[error("plugin {plugin:?} {command} wrote more than {limit} bytes")]
    OutputTooLarge {
        plugin: String,
        command: &'static str,
        limit: usize,
    },

    /// A field of the [`PodNetwork`](super::PodNetwork) or the options cannot
    /// be passed to a plugin.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        why: &'static str,
    },

    /// CHECK for a pod that has no cached ADD result.
    #[error("no network attachment cached for {container_id} on {ifname}")]
    NotAttached {
        container_id: String,
        ifname: String,
    },

    /// CHECK on a network whose `cniVersion` predates CHECK (0.4.0).
    #[error("network {network:?} has cniVersion {version}, which has no CHECK")]
    CheckUnsupported { network: String, version: String },

    /// Reading, writing or removing a cached result failed.
    #[error("CNI cache {}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A cached result file exists but cannot be used for CHECK.
    #[error("CNI cache {} is not readable", path.display())]
    CorruptCache {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Why one network config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    #[error("{0} is not a JSON object")]
    NotObject(&'static str),
    #[error("{0:?} is missing or not a string")]
    Missing(&'static str),
    #[error(
        "network name {0:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
    )]
    BadName(String),
    #[error(
        "cniVersion {0:?} is not supported (supported: {supported})",
        supported = super::config::SUPPORTED_VERSIONS.join(", ")
    )]
    UnsupportedVersion(String),
    #[error("\"disableCheck\" is not a boolean")]
    BadDisableCheck,
    #[error("\"plugins\" is missing or empty")]
    NoPlugins,
    #[error("plugin {index} has no \"type\"")]
    MissingType { index: usize },
    #[error("plugin type {0:?} is not a plain file name")]
    BadType(String),
}

/// The error object a plugin prints on stdout when it fails
/// (`{"code": N, "msg": "...", "details": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl PluginError {
    /// Well-known code 3: "container unknown or does not exist", after which
    /// the spec says the runtime needs no cleanup.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// Well-known code 11: "try again later".
    pub const TRY_AGAIN_LATER: u32 = 11;
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.msg.is_empty() {
            "no message"
        } else {
            &self.msg
        })?;
        if !self.details.is_empty() && self.details != self.msg {
            write!(f, "; {}", self.details)?;
        }
        write!(f, " (code {})", self.code)
    }
}

impl std::error::Error for PluginError {}

fn paths(dirs: &[PathBuf]) -> String {
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    list.join(", ")
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}
