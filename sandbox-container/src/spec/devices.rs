//! Devices: the CRI devices (read from the host with `stat`) and the
//! device cgroup rules (deny all, then the default allow list, then the
//! requested devices; allow everything for a privileged container).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use crius_proto::cri::Device as CriDevice;
use nix::sys::stat::{major, minor};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::error::{SpecError, quote};
use super::mounts::clean_container_path;

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(typ);
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// The device cgroup rules every container gets: deny all, then `mknod`
/// of any device, and the standard devices runc creates (null, zero, full,
/// random, urandom, tty, ptmx and the pty slaves).
pub(crate) fn default_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    let mut rules = vec![
        rule(false, None, None, None, "rwm"),
        rule(true, Some(C), None, None, "m"),
        rule(true, Some(B), None, None, "m"),
    ];
    for (maj, min) in [
        (1, Some(3)), // /dev/null
        (1, Some(5)), // /dev/zero
        (1, Some(7)), // /dev/full
        (1, Some(8)), // /dev/random
        (1, Some(9)), // /dev/urandom
        (5, Some(0)), // /dev/tty
        (5, Some(2)), // /dev/ptmx
        (136, None),  // /dev/pts/*
    ] {
        rules.push(rule(true, Some(C), Some(maj), min, "rwm"));
    }
    rules
}

/// Normalizes CRI device permissions: a non-empty subset of `rwm`, written
/// in that order. Empty means `rwm`.
fn permissions(p: &str) -> Result<String, SpecError> {
    if p.is_empty() {
        return Ok("rwm".into());
    }
    if !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(SpecError::invalid(format!(
            "invalid device permissions {}",
            quote(p)
        )));
    }
    Ok(['r', 'w', 'm']
        .into_iter()
        .filter(|c| p.contains(*c))
        .collect())
}

/// The devices and device cgroup rules of a container.
pub(crate) struct Devices {
    pub devices: Vec<LinuxDevice>,
    pub rules: Vec<LinuxDeviceCgroup>,
}

/// Builds the container's devices. Each CRI device's host path is `stat`ed
/// (following symlinks): a missing one is NotFound, one that is not a
/// character or block device (a directory included) is Invalid.
pub(crate) fn build(cri: &[CriDevice], privileged: bool) -> Result<Devices, SpecError> {
    let mut rules = if privileged {
        vec![rule(true, None, None, None, "rwm")]
    } else {
        default_rules()
    };
    let mut devices = Vec::with_capacity(cri.len());
    for d in cri {
        let path = clean_container_path(&d.container_path, "device container path")?;
        if path == "/" {
            return Err(SpecError::invalid("invalid device container path \"/\""));
        }
        if !d.host_path.starts_with('/') || d.host_path.contains('\0') {
            return Err(SpecError::invalid(format!(
                "device host path {} is not absolute",
                quote(&d.host_path)
            )));
        }
        let access = permissions(&d.permissions)?;
        let md = match std::fs::metadata(&d.host_path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpecError::not_found(format!(
                    "device {} not found",
                    quote(&d.host_path)
                )));
            }
            Err(e) => {
                return Err(SpecError::io(
                    format!("cannot stat device {}", quote(&d.host_path)),
                    e,
                ));
            }
        };
        let ft = md.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(SpecError::invalid(format!(
                "{} is not a device",
                quote(&d.host_path)
            )));
        };
        let rdev = md.rdev();
        let (maj, min) = (major(rdev) as i64, minor(rdev) as i64);
        let mut dev = LinuxDevice::default();
        dev.set_path(PathBuf::from(&path));
        dev.set_typ(typ);
        dev.set_major(maj);
        dev.set_minor(min);
        dev.set_file_mode(Some(md.mode() & 0o7777));
        dev.set_uid(Some(md.uid()));
        dev.set_gid(Some(md.gid()));
        devices.push(dev);
        if !privileged {
            rules.push(rule(true, Some(typ), Some(maj), Some(min), &access));
        }
    }
    Ok(Devices { devices, rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(host: &str, ctr: &str, perms: &str) -> CriDevice {
        CriDevice {
            host_path: host.into(),
            container_path: ctr.into(),
            permissions: perms.into(),
        }
    }

    #[test]
    fn default_rules_deny_first() {
        let r = default_rules();
        assert!(!r[0].allow());
        assert_eq!(r[0].typ(), None);
        assert_eq!(r[0].access().as_deref(), Some("rwm"));
        assert!(r[1..].iter().all(|r| r.allow()));
        assert!(
            r.iter()
                .any(|r| r.major() == Some(1) && r.minor() == Some(3))
        );
        assert!(
            r.iter()
                .any(|r| r.major() == Some(136) && r.minor().is_none())
        );
    }

    #[test]
    fn a_host_device() {
        let d = build(&[dev("/dev/null", "/dev/mynull", "rw")], false).unwrap();
        assert_eq!(d.devices.len(), 1);
        let n = &d.devices[0];
        assert_eq!(n.path(), &PathBuf::from("/dev/mynull"));
        assert_eq!(n.typ(), LinuxDeviceType::C);
        assert_eq!((n.major(), n.minor()), (1, 3));
        let last = d.rules.last().unwrap();
        assert_eq!((last.major(), last.minor()), (Some(1), Some(3)));
        assert_eq!(last.access().as_deref(), Some("rw"));
    }

    #[test]
    fn privileged_allows_all() {
        let d = build(&[], true).unwrap();
        assert_eq!(d.rules.len(), 1);
        assert!(d.rules[0].allow());
        assert_eq!(d.rules[0].typ(), None);
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            build(&[dev("/dev/does-not-exist-crius", "/dev/x", "rwm")], false),
            Err(SpecError::NotFound(_))
        ));
        assert!(matches!(
            build(&[dev("/dev", "/dev/x", "rwm")], false),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            build(&[dev("/dev/null", "/dev/x", "rwx")], false),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            build(&[dev("/dev/null", "../x", "r")], false),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(
            build(&[dev("dev/null", "/dev/x", "r")], false),
            Err(SpecError::Invalid(_))
        ));
        assert_eq!(permissions("mwr").unwrap(), "rwm");
        assert_eq!(permissions("").unwrap(), "rwm");
    }
}
