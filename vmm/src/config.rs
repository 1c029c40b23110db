//! What one VMM process runs: its command line, parsed and checked before
//! anything is created. Paths are opened once at start; nothing the guest
//! says ever names a path.

use std::path::PathBuf;

use clap::Parser;

/// crius-vmm: runs one microVM on KVM until the guest shuts down.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct VmmConfig {
    /// The guest kernel: an uncompressed ELF vmlinux with a PVH entry.
    #[arg(long)]
    pub kernel: PathBuf,
    /// The initramfs (cpio), loaded at the top of guest RAM.
    #[arg(long)]
    pub initramfs: PathBuf,
    /// Appended to the kernel command line the VMM builds.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub vcpus: u8,
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u64,
    /// The serial console's log (created, or truncated).
    #[arg(long)]
    pub console: PathBuf,
    /// The vsock backend's Unix socket (must not exist); guest connections
    /// to host port P go to `<vsock>_<P>`.
    #[arg(long)]
    pub vsock: PathBuf,
    /// The guest's vsock context ID.
    #[arg(long, default_value_t = 3)]
    pub vsock_cid: u64,
    /// A disk: `rw:PATH` or `ro:PATH`, in /dev/vdX order.
    #[arg(long = "disk", value_parser = parse_disk)]
    pub disks: Vec<DiskArg>,
    /// A virtio-net interface on a new TAP of this name.
    #[arg(long, requires = "mac")]
    pub tap: Option<String>,
    /// The interface's MAC address.
    #[arg(long, requires = "tap")]
    pub mac: Option<String>,
    /// A virtio-fs device: `TAG:SOCKET`, the tag the guest mounts and the
    /// vhost-user socket of the virtiofsd that serves it (listening).
    #[arg(long = "fs", value_parser = parse_fs)]
    pub fs: Vec<FsArg>,
    /// Do not install the seccomp filter (for debugging).
    #[arg(long)]
    pub no_seccomp: bool,
}

#[derive(Debug, Clone)]
pub struct DiskArg {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct FsArg {
    pub tag: String,
    pub socket: PathBuf,
}

fn parse_fs(s: &str) -> Result<FsArg, String> {
    let (tag, socket) = s
        .split_once(':')
        .filter(|(t, p)| !t.is_empty() && !p.is_empty())
        .ok_or_else(|| format!("fs {s:?}: want TAG:SOCKET"))?;
    if tag.len() > crate::devices::virtio::fs::MAX_TAG {
        return Err(format!(
            "fs tag {tag:?}: at most {} bytes",
            crate::devices::virtio::fs::MAX_TAG
        ));
    }
    Ok(FsArg {
        tag: tag.into(),
        socket: socket.into(),
    })
}

fn parse_disk(s: &str) -> Result<DiskArg, String> {
    let (mode, path) = s
        .split_once(':')
        .ok_or_else(|| format!("disk {s:?}: want rw:PATH or ro:PATH"))?;
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        _ => return Err(format!("disk {s:?}: want rw:PATH or ro:PATH")),
    };
    if path.is_empty() {
        return Err("disk: empty path".into());
    }
    Ok(DiskArg {
        path: path.into(),
        read_only,
    })
}

/// What the VMM puts on every kernel command line before the caller's
/// part: the serial console, a reboot that ends the VM (triple fault), and
/// no probing for hardware that is not there.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 i8042.noaux i8042.nokbd";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_are_checked() {
        let c = VmmConfig::try_parse_from([
            "crius-vmm",
            "--kernel",
            "/k",
            "--initramfs",
            "/i",
            "--console",
            "/c",
            "--vsock",
            "/v",
            "--disk",
            "ro:/a,b",
            "--disk",
            "rw:/c",
            "--fs",
            "layers:/vm/fs0.sock",
        ])
        .unwrap();
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.fs[0].tag, "layers");
        assert_eq!(c.fs[0].socket, PathBuf::from("/vm/fs0.sock"));
        assert!(c.disks[0].read_only);
        assert_eq!(c.disks[0].path, PathBuf::from("/a,b"));
        assert!(!c.disks[1].read_only);
        for bad in [
            &["--disk", "xx:/a"][..],
            &["--disk", "/a"],
            &["--vcpus", "0"],
            &["--tap", "t0"],
            &["--fs", "/a.sock"],
            &["--fs", ":/a.sock"],
            &["--fs", "t:"],
            &["--fs", &format!("{}:/a", "x".repeat(37))],
        ] {
            let mut args = vec![
                "crius-vmm",
                "--kernel",
                "/k",
                "--initramfs",
                "/i",
                "--console",
                "/c",
                "--vsock",
                "/v",
            ];
            args.extend_from_slice(bad);
            assert!(VmmConfig::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
