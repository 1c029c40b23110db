//! The files and mounts of a pod made on the host: the hostname, hosts and
//! resolv.conf files bind-mounted into its containers, and its /dev/shm
//! tmpfs.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crius_proto::cri::{DnsConfig, PodSandboxConfig};
use nix::mount::MsFlags;

/// Creates a directory (and parents) with `mode`.
pub fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// resolv.conf from the pod's DNS config, or the host's when it has none.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> io::Result<String> {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            for srv in &d.servers {
                s.push_str(&format!("nameserver {}\n", one_line(srv)));
            }
            if !d.searches.is_empty() {
                s.push_str(&format!(
                    "search {}\n",
                    d.searches
                        .iter()
                        .map(|x| one_line(x))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            if !d.options.is_empty() {
                s.push_str(&format!(
                    "options {}\n",
                    d.options
                        .iter()
                        .map(|x| one_line(x))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            Ok(s)
        }
        _ => match fs::read_to_string("/etc/resolv.conf") {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        },
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The hosts file of a pod.
pub fn hosts(hostname: &str, ips: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The most bytes a hostname may have (the kernel's HOST_NAME_MAX).
const HOST_NAME_MAX: usize = 64;

/// The pod's hostname: the configured one, else the host's (as containerd
/// does). A hostname the kernel would refuse is an error a person can act on.
pub fn hostname(config: &PodSandboxConfig) -> Result<String, String> {
    let h = if config.hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .map_err(|e| format!("read the host's hostname: {e}"))?
    } else {
        config.hostname.clone()
    };
    if h.is_empty() || h.len() > HOST_NAME_MAX || h.contains(['\0', '\n', '\r', '/']) {
        return Err(format!(
            "pod hostname {:?} is not valid: 1 to {HOST_NAME_MAX} bytes, no NUL, newline or '/'",
            h.chars().take(80).collect::<String>()
        ));
    }
    Ok(h)
}

/// Mounts a 64 MiB tmpfs for the pod's /dev/shm.
pub fn mount_shm(target: &Path) -> nix::Result<()> {
    nix::mount::mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config_cannot_inject_lines() {
        let d = DnsConfig {
            servers: vec!["198.18.0.10".into()],
            searches: vec!["a.svc".into(), "b\nnameserver 6.6.6.6".into()],
            options: vec!["ndots:5".into()],
        };
        let s = resolv_conf(Some(&d)).unwrap();
        assert_eq!(s.lines().count(), 3, "{s}");
        assert!(s.starts_with("nameserver 198.18.0.10\n"));
        assert!(s.contains("options ndots:5"));
    }
}
