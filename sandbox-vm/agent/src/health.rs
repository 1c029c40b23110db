//! The `Health` request: the protocol and agent versions, the kernel
//! release and the time since boot.

use crius_proto::agent::{AGENT_PROTOCOL_VERSION, Response};

pub fn health() -> Response {
    Response::Health {
        version: AGENT_PROTOCOL_VERSION,
        agent: crate::VERSION.to_owned(),
        kernel: kernel_release(),
        uptime_ms: uptime_ms().unwrap_or(0),
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    match nix::sys::utsname::uname() {
        Ok(uts) => uts.release().to_string_lossy().into_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The first field of `/proc/uptime` (seconds, with two decimals) in ms.
fn uptime_ms() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    parse_uptime(&text)
}

fn parse_uptime(text: &str) -> Option<u64> {
    let secs = text.split_whitespace().next()?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
    let whole: u64 = whole.parse().ok()?;
    // Up to three decimals, right-padded: "5" -> 500 ms, "25" -> 250 ms.
    let mut ms = 0u64;
    for (i, place) in [100, 10, 1].into_iter().enumerate() {
        if let Some(d) = frac.as_bytes().get(i) {
            ms += u64::from(char::from(*d).to_digit(10)?) * place;
        }
    }
    whole.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_parses() {
        assert_eq!(parse_uptime("12.34 56.78\n"), Some(12_340));
        assert_eq!(parse_uptime("7 1"), Some(7_000));
        assert_eq!(parse_uptime("0.5 0"), Some(500));
        assert_eq!(parse_uptime("x 1"), None);
        assert_eq!(parse_uptime(""), None);
    }
}
