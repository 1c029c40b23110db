//! The open-files limit: crius raises its own (a node's worth of pods,
//! streams and registry connections), and its pods' monitors put it back to
//! what crius was started with, so that containers, which inherit the
//! monitor's limits where their spec sets none, get exactly that and not
//! crius's raise.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The environment variable that carries the soft limit crius was started
/// with to a monitor it spawns.
pub(super) const ENV: &str = "CRIUS_NOFILE_SOFT";

static STARTED_WITH: OnceLock<u64> = OnceLock::new();

/// Raises this process's soft RLIMIT_NOFILE to its hard limit, remembering
/// the soft limit it had. Returns (before, now).
pub fn raise() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let before = *STARTED_WITH.get_or_init(|| soft);
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((before, hard))
}

/// The soft limit this process had before [`raise`] (its current one when
/// it never raised it).
pub(super) fn started_with() -> u64 {
    *STARTED_WITH.get_or_init(|| {
        getrlimit(Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024)
    })
}

/// In a monitor: sets the soft limit back to the one crius passed in
/// [`ENV`], if any (the hard limit stays).
pub(super) fn restore_from_env() {
    let Some(soft) = std::env::var(ENV).ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard);
    }
}
