//! Sysctls: only namespaced ones, with names and values checked so that a
//! value can never smuggle in another sysctl (the CRI-O `+` injection,
//! CVE-2022-0811) and a name can never climb out of its namespace.

use std::collections::HashMap;

use super::error::{SpecError, quote};

/// The longest sysctl name accepted.
const MAX_NAME: usize = 256;
/// The longest sysctl value accepted (a write to /proc/sys is one page).
const MAX_VALUE: usize = 4096;

/// The IPC-namespaced sysctls outside `fs.mqueue.`.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
];

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Ipc,
    Net,
}

fn namespace_of(name: &str) -> Option<Ns> {
    if IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.") {
        Some(Ns::Ipc)
    } else if name.starts_with("net.") {
        Some(Ns::Net)
    } else {
        None
    }
}

/// Checks a sysctl name: `[A-Za-z0-9_.-/]`, no empty component, and no
/// component that becomes `.` or `..` once written as a `/proc/sys` path
/// (where `.` and `/` swap places).
fn check_name(name: &str) -> Result<(), SpecError> {
    let bad = || SpecError::invalid(format!("invalid sysctl name {}", quote(name)));
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    {
        return Err(bad());
    }
    for component in name.split('.') {
        // Within a dotted component, '/' stands for a literal '.' in the
        // /proc/sys path component: "a/b" is "a.b", "/" is ".", "//" is "..".
        if component.is_empty() || component.bytes().all(|b| b == b'/') {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > MAX_VALUE
        || value
            .chars()
            .any(|c| matches!(c, '+' | '=' | '\n' | '\r' | '\0') || (c.is_control() && c != '\t'))
    {
        return Err(SpecError::invalid(format!(
            "invalid value for sysctl {}",
            quote(name)
        )));
    }
    Ok(())
}

/// Validates the pod's sysctls and returns them for the spec.
///
/// Only namespaced sysctls are accepted: the IPC ones
/// (`kernel.shm_rmid_forced`, `kernel.shmmax`, `kernel.shmall`,
/// `kernel.shmmni`, `kernel.msgmax`, `kernel.msgmnb`, `kernel.msgmni`,
/// `kernel.sem`, `fs.mqueue.*`), which need a private IPC namespace, and
/// `net.*`, which needs a private network namespace. UTS sysctls are not
/// accepted (the hostname comes from the pod config). Values may not
/// contain `+`, `=`, newlines, NUL or other control characters.
pub fn validate_sysctls(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::with_capacity(sysctls.len());
    for (name, value) in sysctls {
        check_name(name)?;
        check_value(name, value)?;
        match namespace_of(name) {
            None => {
                return Err(SpecError::invalid(format!(
                    "sysctl {} is not namespaced",
                    quote(name)
                )));
            }
            Some(Ns::Net) if host_network => {
                return Err(SpecError::invalid(format!(
                    "sysctl {} needs a private network namespace",
                    quote(name)
                )));
            }
            Some(Ns::Ipc) if host_ipc => {
                return Err(SpecError::invalid(format!(
                    "sysctl {} needs a private IPC namespace",
                    quote(name)
                )));
            }
            Some(_) => {}
        }
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, value: &str) -> Result<HashMap<String, String>, SpecError> {
        validate_sysctls(
            &HashMap::from([(name.to_string(), value.to_string())]),
            false,
            false,
        )
    }

    #[test]
    fn namespaced_accepted() {
        for (n, v) in [
            ("kernel.shm_rmid_forced", "1"),
            ("kernel.sem", "250 32000 100 128"),
            ("kernel.msgmax", "8192"),
            ("fs.mqueue.msg_max", "10"),
            ("net.ipv4.ip_local_port_range", "1024\t65000"),
            ("net.ipv4.conf.eth0/100.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "1"),
        ] {
            assert_eq!(
                one(n, v).unwrap().get(n).map(String::as_str),
                Some(v),
                "{n}"
            );
        }
    }

    #[test]
    fn not_namespaced_refused() {
        for n in [
            "kernel.core_pattern",
            "kernel.hostname",
            "kernel.domainname",
            "vm.overcommit_memory",
            "fs.file-max",
            "kernel.shm_rmid_forced_x",
        ] {
            assert!(matches!(one(n, "1"), Err(SpecError::Invalid(_))), "{n}");
        }
    }

    #[test]
    fn injection_refused() {
        for v in [
            "1+kernel.core_pattern=|/tmp/x",
            "1=2",
            "1\nkernel.core_pattern=x",
            "1\0",
            "+",
            "\r",
            &"1".repeat(5000),
        ] {
            assert!(
                matches!(one("kernel.shm_rmid_forced", v), Err(SpecError::Invalid(_))),
                "{v:?}"
            );
        }
        for n in [
            "net.//.//.kernel.core_pattern",
            "net.ipv4..x",
            "net./",
            "net.ipv4.*",
            "net.ipv4.conf.eth0 .forwarding",
            "net.ipv4.x=y",
            "NET..",
            "",
        ] {
            assert!(matches!(one(n, "1"), Err(SpecError::Invalid(_))), "{n:?}");
        }
    }

    #[test]
    fn host_namespaces() {
        let s = HashMap::from([("net.ipv4.tcp_syncookies".to_string(), "1".to_string())]);
        assert!(validate_sysctls(&s, true, false).is_err());
        assert!(validate_sysctls(&s, false, true).is_ok());
        let s = HashMap::from([("kernel.shmmax".to_string(), "1".to_string())]);
        assert!(validate_sysctls(&s, false, true).is_err());
        let s = HashMap::from([("fs.mqueue.queues_max".to_string(), "1".to_string())]);
        assert!(validate_sysctls(&s, false, true).is_err());
        assert!(validate_sysctls(&s, true, false).is_ok());
    }
}
