//! Capabilities: containerd's default set, CRI add / drop (names with or
//! without `CAP_`, any case, `ALL`), privileged containers, and ambient
//! capabilities. The inheritable set is always empty.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::error::{SpecError, quote};

/// A set of capabilities as a bit mask (bit n = capability number n).
pub(crate) type CapMask = u64;

/// Every capability oci-spec knows, by number (as in `linux/capability.h`).
const CAPS: [(u32, &str, Capability); 41] = [
    (0, "CHOWN", Capability::Chown),
    (1, "DAC_OVERRIDE", Capability::DacOverride),
    (2, "DAC_READ_SEARCH", Capability::DacReadSearch),
    (3, "FOWNER", Capability::Fowner),
    (4, "FSETID", Capability::Fsetid),
    (5, "KILL", Capability::Kill),
    (6, "SETGID", Capability::Setgid),
    (7, "SETUID", Capability::Setuid),
    (8, "SETPCAP", Capability::Setpcap),
    (9, "LINUX_IMMUTABLE", Capability::LinuxImmutable),
    (10, "NET_BIND_SERVICE", Capability::NetBindService),
    (11, "NET_BROADCAST", Capability::NetBroadcast),
    (12, "NET_ADMIN", Capability::NetAdmin),
    (13, "NET_RAW", Capability::NetRaw),
    (14, "IPC_LOCK", Capability::IpcLock),
    (15, "IPC_OWNER", Capability::IpcOwner),
    (16, "SYS_MODULE", Capability::SysModule),
    (17, "SYS_RAWIO", Capability::SysRawio),
    (18, "SYS_CHROOT", Capability::SysChroot),
    (19, "SYS_PTRACE", Capability::SysPtrace),
    (20, "SYS_PACCT", Capability::SysPacct),
    (21, "SYS_ADMIN", Capability::SysAdmin),
    (22, "SYS_BOOT", Capability::SysBoot),
    (23, "SYS_NICE", Capability::SysNice),
    (24, "SYS_RESOURCE", Capability::SysResource),
    (25, "SYS_TIME", Capability::SysTime),
    (26, "SYS_TTY_CONFIG", Capability::SysTtyConfig),
    (27, "MKNOD", Capability::Mknod),
    (28, "LEASE", Capability::Lease),
    (29, "AUDIT_WRITE", Capability::AuditWrite),
    (30, "AUDIT_CONTROL", Capability::AuditControl),
    (31, "SETFCAP", Capability::Setfcap),
    (32, "MAC_OVERRIDE", Capability::MacOverride),
    (33, "MAC_ADMIN", Capability::MacAdmin),
    (34, "SYSLOG", Capability::Syslog),
    (35, "WAKE_ALARM", Capability::WakeAlarm),
    (36, "BLOCK_SUSPEND", Capability::BlockSuspend),
    (37, "AUDIT_READ", Capability::AuditRead),
    (38, "PERFMON", Capability::Perfmon),
    (39, "BPF", Capability::Bpf),
    (40, "CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// All capabilities known here.
pub(crate) const ALL_KNOWN: CapMask = (1 << 41) - 1;

/// The bit of one capability.
pub(crate) const fn bit(n: u32) -> CapMask {
    1 << n
}

pub(crate) const CAP_DAC_READ_SEARCH: u32 = 2;
pub(crate) const CAP_SYS_MODULE: u32 = 16;
pub(crate) const CAP_SYS_RAWIO: u32 = 17;
pub(crate) const CAP_SYS_CHROOT: u32 = 18;
pub(crate) const CAP_SYS_PTRACE: u32 = 19;
pub(crate) const CAP_SYS_PACCT: u32 = 20;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_SYS_BOOT: u32 = 22;
pub(crate) const CAP_SYS_NICE: u32 = 23;
pub(crate) const CAP_SYS_TIME: u32 = 25;
pub(crate) const CAP_SYS_TTY_CONFIG: u32 = 26;
pub(crate) const CAP_SYSLOG: u32 = 34;
pub(crate) const CAP_PERFMON: u32 = 38;
pub(crate) const CAP_BPF: u32 = 39;

/// containerd's (and Docker's) default set for a container.
pub(crate) const DEFAULT_CAPS: CapMask = bit(0) // CHOWN
    | bit(1) // DAC_OVERRIDE
    | bit(4) // FSETID
    | bit(3) // FOWNER
    | bit(27) // MKNOD
    | bit(13) // NET_RAW
    | bit(6) // SETGID
    | bit(7) // SETUID
    | bit(31) // SETFCAP
    | bit(8) // SETPCAP
    | bit(10) // NET_BIND_SERVICE
    | bit(18) // SYS_CHROOT
    | bit(5) // KILL
    | bit(29); // AUDIT_WRITE

/// Parses a capability name: `NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin`.
pub(crate) fn parse(name: &str) -> Result<u32, SpecError> {
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPS.iter()
        .find(|(_, n, _)| *n == short)
        .map(|(b, _, _)| *b)
        .ok_or_else(|| SpecError::invalid(format!("unknown capability {}", quote(name))))
}

/// Converts a mask into oci-spec's set.
pub(crate) fn to_set(mask: CapMask) -> Capabilities {
    CAPS.iter()
        .filter(|(b, _, _)| mask & bit(*b) != 0)
        .map(|(_, _, c)| *c)
        .collect()
}

/// Converts oci-spec's set into a mask.
pub(crate) fn from_set(set: &Capabilities) -> CapMask {
    CAPS.iter()
        .filter(|(_, _, c)| set.contains(c))
        .fold(0, |m, (b, _, _)| m | bit(*b))
}

/// Parses a hexadecimal mask as found in `/proc/self/status` (`CapEff:`).
pub(crate) fn parse_hex_mask(hex: &str) -> Option<CapMask> {
    u64::from_str_radix(hex.trim(), 16)
        .ok()
        .map(|m| m & ALL_KNOWN)
}

/// The capability sets of a container: `bounding` is also the effective
/// and permitted set; `ambient` is a subset of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapSets {
    pub bounding: CapMask,
    pub ambient: CapMask,
}

impl CapSets {
    /// The oci-spec form; inheritable is always empty.
    pub(crate) fn to_oci(self) -> LinuxCapabilities {
        let set = to_set(self.bounding);
        let mut caps = LinuxCapabilities::default();
        caps.set_bounding(Some(set.clone()));
        caps.set_effective(Some(set.clone()));
        caps.set_permitted(Some(set));
        caps.set_inheritable(Some(Capabilities::new()));
        caps.set_ambient(Some(to_set(self.ambient)));
        caps
    }
}

fn is_all(s: &str) -> bool {
    s.eq_ignore_ascii_case("ALL")
}

/// Computes the capability sets.
///
/// `host` is what this process may hand out (its effective set): a
/// capability outside it is left out (with a warning when it was asked
/// for by name), as the runtime could not grant it anyway.
/// In containerd's order: `add: [ALL]`, then `drop: [ALL]`, then single
/// adds, then single drops. A privileged container gets all of `host`,
/// whatever it dropped. Ambient capabilities must be in the resulting set.
pub(crate) fn compute(
    caps: Option<&crius_proto::cri::Capability>,
    privileged: bool,
    host: CapMask,
) -> Result<CapSets, SpecError> {
    let mut set = DEFAULT_CAPS & host;
    let mut ambient = 0;
    if let Some(c) = caps {
        if c.add_capabilities.iter().any(|s| is_all(s)) {
            set = host;
        }
        if c.drop_capabilities.iter().any(|s| is_all(s)) {
            set = 0;
        }
        for name in c.add_capabilities.iter().filter(|s| !is_all(s)) {
            let b = parse(name)?;
            if host & bit(b) == 0 {
                tracing::warn!(capability = %name, "capability not held by the runtime; not granted");
                continue;
            }
            set |= bit(b);
        }
        for name in c.drop_capabilities.iter().filter(|s| !is_all(s)) {
            set &= !bit(parse(name)?);
        }
        for name in &c.add_ambient_capabilities {
            let b = parse(name)?;
            ambient |= bit(b);
        }
    }
    if privileged {
        set = host;
    }
    if ambient & !set != 0 {
        return Err(SpecError::invalid(
            "an ambient capability is not in the container's capability set",
        ));
    }
    Ok(CapSets {
        bounding: set,
        ambient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::Capability as CriCaps;

    fn cri(add: &[&str], drop: &[&str]) -> CriCaps {
        CriCaps {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            add_ambient_capabilities: vec![],
        }
    }

    #[test]
    fn table_is_consistent() {
        for (i, (b, _, _)) in CAPS.iter().enumerate() {
            assert_eq!(*b as usize, i);
        }
        assert_eq!(to_set(ALL_KNOWN).len(), 41);
        assert_eq!(to_set(DEFAULT_CAPS).len(), 14);
    }

    #[test]
    fn names_parse_any_case_with_or_without_prefix() {
        assert_eq!(parse("NET_ADMIN").unwrap(), 12);
        assert_eq!(parse("cap_net_admin").unwrap(), 12);
        assert_eq!(parse("Sys_Admin").unwrap(), 21);
        assert!(matches!(
            parse("CAP_CAP_SYS_ADMIN"),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(parse("NOPE"), Err(SpecError::Invalid(_))));
        assert!(matches!(parse(""), Err(SpecError::Invalid(_))));
    }

    #[test]
    fn defaults_add_drop_all() {
        let s = compute(None, false, ALL_KNOWN).unwrap();
        assert_eq!(s.bounding, DEFAULT_CAPS);
        assert_eq!(s.ambient, 0);

        let s = compute(Some(&cri(&["net_admin"], &["CHOWN"])), false, ALL_KNOWN).unwrap();
        assert_eq!(s.bounding, (DEFAULT_CAPS | bit(12)) & !bit(0));

        let s = compute(Some(&cri(&["ALL"], &["CHOWN"])), false, ALL_KNOWN).unwrap();
        assert_eq!(s.bounding, ALL_KNOWN & !bit(0));

        let s = compute(Some(&cri(&["SYS_ADMIN"], &["all"])), false, ALL_KNOWN).unwrap();
        assert_eq!(s.bounding, bit(21));

        assert!(compute(Some(&cri(&["BOGUS"], &[])), false, ALL_KNOWN).is_err());
        assert!(compute(Some(&cri(&[], &["BOGUS"])), false, ALL_KNOWN).is_err());
    }

    #[test]
    fn host_limits_what_is_granted() {
        let host = ALL_KNOWN & !bit(24); // no SYS_RESOURCE, as on this machine
        let s = compute(Some(&cri(&["ALL"], &[])), false, host).unwrap();
        assert_eq!(s.bounding, host);
        let s = compute(Some(&cri(&["SYS_RESOURCE"], &[])), false, host).unwrap();
        assert_eq!(s.bounding, DEFAULT_CAPS);
        let s = compute(None, true, host).unwrap();
        assert_eq!(s.bounding, host);
    }

    #[test]
    fn privileged_ignores_drops() {
        let s = compute(Some(&cri(&[], &["ALL"])), true, ALL_KNOWN).unwrap();
        assert_eq!(s.bounding, ALL_KNOWN);
    }

    #[test]
    fn ambient_only_what_is_asked_and_inheritable_empty() {
        let mut c = cri(&["NET_ADMIN"], &[]);
        c.add_ambient_capabilities = vec!["NET_ADMIN".into()];
        let s = compute(Some(&c), false, ALL_KNOWN).unwrap();
        assert_eq!(s.ambient, bit(12));
        let oci = s.to_oci();
        assert_eq!(oci.inheritable().as_ref().unwrap().len(), 0);
        assert_eq!(oci.ambient().as_ref().unwrap().len(), 1);

        c.add_ambient_capabilities = vec!["SYS_ADMIN".into()];
        assert!(matches!(
            compute(Some(&c), false, ALL_KNOWN),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn hex_masks() {
        assert_eq!(
            parse_hex_mask("000001fffeffffff"),
            Some(ALL_KNOWN & !bit(24))
        );
        assert_eq!(parse_hex_mask("zz"), None);
    }
}
