//! Seccomp: which profile a container gets (CRI `seccomp`, else the
//! deprecated `seccomp_profile_path`), our RuntimeDefault profile, and
//! Localhost profiles read from the node (Docker's JSON format, which is
//! a superset of the OCI one).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crius_proto::cri::{LinuxContainerSecurityContext, security_profile::ProfileType};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::HostLimits;
use super::caps::{self, CapMask, bit};
use super::error::{SpecError, quote};
use super::seccomp_default;

/// The largest Localhost profile read.
pub(crate) const MAX_PROFILE: u64 = 1 << 20;

/// The profile a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Nothing asked.
    Unset,
    /// Explicitly unconfined.
    Unconfined,
    /// Our default profile.
    RuntimeDefault,
    /// A profile file on the node.
    Localhost(PathBuf),
}

fn localhost_path(reference: &str, root: &Path) -> Result<PathBuf, SpecError> {
    if reference.is_empty() || reference.contains('\0') {
        return Err(SpecError::invalid(
            "seccomp localhost profile reference is empty",
        ));
    }
    let p = Path::new(reference);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(SpecError::invalid(format!(
            "seccomp profile {} escapes the profile root",
            quote(reference)
        )));
    }
    Ok(root.join(p))
}

/// Reads which profile the container asks for: the `seccomp` field when
/// present, else the deprecated `seccomp_profile_path` (`runtime/default`,
/// `docker/default`, `unconfined`, `localhost/<path>`, or empty).
pub(crate) fn choose(
    sc: Option<&LinuxContainerSecurityContext>,
    profile_root: &Path,
) -> Result<Choice, SpecError> {
    let Some(sc) = sc else {
        return Ok(Choice::Unset);
    };
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Choice::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Choice::Unconfined),
            Ok(ProfileType::Localhost) => Ok(Choice::Localhost(localhost_path(
                &p.localhost_ref,
                profile_root,
            )?)),
            Err(_) => Err(SpecError::invalid("unknown seccomp profile type")),
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" => Ok(Choice::Unset),
        "unconfined" => Ok(Choice::Unconfined),
        "runtime/default" | "docker/default" => Ok(Choice::RuntimeDefault),
        _ => match path.strip_prefix("localhost/") {
            Some(rest) => Ok(Choice::Localhost(localhost_path(rest, profile_root)?)),
            None => Err(SpecError::invalid(format!(
                "unsupported seccomp profile {}",
                quote(path)
            ))),
        },
    }
}

/// The seccomp filter of a container, or `None` for unconfined.
///
/// Unset is unconfined unless `unset_is_default`. A privileged container
/// gets no filter at all, whatever it names (containerd does the same, and
/// critest checks that a Localhost profile is ignored when privileged).
pub(crate) fn build(
    choice: &Choice,
    privileged: bool,
    unset_is_default: bool,
    caps: CapMask,
    host: &HostLimits,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    if privileged {
        return Ok(None);
    }
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::Unset if !unset_is_default => Ok(None),
        Choice::Unset | Choice::RuntimeDefault => seccomp_default::profile(caps).map(Some),
        Choice::Localhost(path) => {
            let data = read_profile(path)?;
            parse_profile(&data, caps, host).map(Some)
        }
    }
}

fn read_profile(path: &Path) -> Result<Vec<u8>, SpecError> {
    let not_found = || {
        SpecError::not_found(format!(
            "seccomp profile {} not found",
            quote(&path.to_string_lossy())
        ))
    };
    let file = match File::options()
        .read(true)
        .custom_flags(open_flags())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(SpecError::io("cannot open the seccomp profile", e)),
    };
    let md = file
        .metadata()
        .map_err(|e| SpecError::io("cannot stat the seccomp profile", e))?;
    let ft = md.file_type();
    if !ft.is_file() || ft.is_fifo() {
        return Err(SpecError::invalid(
            "the seccomp profile is not a regular file",
        ));
    }
    if md.len() > MAX_PROFILE {
        return Err(SpecError::invalid(format!(
            "the seccomp profile is larger than {MAX_PROFILE} bytes"
        )));
    }
    let mut buf = Vec::new();
    file.take(MAX_PROFILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SpecError::io("cannot read the seccomp profile", e))?;
    if buf.len() as u64 > MAX_PROFILE {
        return Err(SpecError::invalid(format!(
            "the seccomp profile is larger than {MAX_PROFILE} bytes"
        )));
    }
    Ok(buf)
}

/// Opening flags for a profile: never block on a FIFO, never become a
/// controlling terminal.
fn open_flags() -> i32 {
    (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileJson {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMapJson>>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    listener_path: Option<PathBuf>,
    #[serde(default)]
    listener_metadata: Option<String>,
    #[serde(default)]
    syscalls: Option<Vec<SyscallJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMapJson {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallJson {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<ArgJson>>,
    #[serde(default)]
    includes: Option<FilterJson>,
    #[serde(default)]
    excludes: Option<FilterJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgJson {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FilterJson {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

/// Converts a string into one of oci-spec's enums through its serde names.
fn from_name<T: DeserializeOwned>(s: &str, what: &str) -> Result<T, SpecError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| SpecError::invalid(format!("unknown seccomp {what} {}", quote(s))))
}

/// The Go name of the host architecture, as Docker profiles write it in
/// `includes.arches`.
fn native_go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()
        .map(|m| {
            let digits: String = m.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some((major, minor))
}

fn holds(caps: CapMask, name: &str) -> bool {
    caps::parse(name).is_ok_and(|b| caps & bit(b) != 0)
}

/// Whether a rule of a Docker profile applies here.
fn applies(sc: &SyscallJson, caps: CapMask, host: &HostLimits) -> Result<bool, SpecError> {
    let arch = native_go_arch();
    if let Some(inc) = &sc.includes {
        if !inc.caps.iter().all(|c| holds(caps, c)) {
            return Ok(false);
        }
        if !inc.arches.is_empty() && !inc.arches.iter().any(|a| a == arch) {
            return Ok(false);
        }
        if let Some(min) = &inc.min_kernel {
            let min = parse_kernel(min)
                .ok_or_else(|| SpecError::invalid(format!("invalid minKernel {}", quote(min))))?;
            if host.kernel.is_some_and(|k| k < min) {
                return Ok(false);
            }
        }
    }
    if let Some(exc) = &sc.excludes {
        if exc.caps.iter().any(|c| holds(caps, c)) {
            return Ok(false);
        }
        if exc.arches.iter().any(|a| a == arch) {
            return Ok(false);
        }
        if let Some(min) = &exc.min_kernel {
            let min = parse_kernel(min)
                .ok_or_else(|| SpecError::invalid(format!("invalid minKernel {}", quote(min))))?;
            if host.kernel.is_none_or(|k| k >= min) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Parses a Localhost profile (Docker's JSON format, or plain OCI).
pub(crate) fn parse_profile(
    data: &[u8],
    caps: CapMask,
    host: &HostLimits,
) -> Result<LinuxSeccomp, SpecError> {
    let p: ProfileJson = serde_json::from_slice(data)
        .map_err(|_| SpecError::invalid("the seccomp profile is not valid JSON"))?;
    let mut out = LinuxSeccomp::default();
    out.set_default_action(from_name::<LinuxSeccompAction>(
        &p.default_action,
        "action",
    )?);
    out.set_default_errno_ret(p.default_errno_ret);

    let mut arches: Vec<Arch> = Vec::new();
    if p.architectures.as_ref().is_some_and(|a| !a.is_empty())
        && p.arch_map.as_ref().is_some_and(|a| !a.is_empty())
    {
        return Err(SpecError::invalid(
            "the seccomp profile has both architectures and archMap",
        ));
    }
    for a in p.architectures.iter().flatten() {
        arches.push(from_name(a, "architecture")?);
    }
    let native = seccomp_default::primary_arch();
    for m in p.arch_map.iter().flatten() {
        let a: Arch = from_name(&m.architecture, "architecture")?;
        if native == Some(a) {
            arches.push(a);
            for s in &m.sub_architectures {
                arches.push(from_name(s, "architecture")?);
            }
        }
    }
    if !arches.is_empty() {
        out.set_architectures(Some(arches));
    }
    if let Some(flags) = &p.flags {
        let flags = flags
            .iter()
            .map(|f| from_name::<LinuxSeccompFilterFlag>(f, "flag"))
            .collect::<Result<Vec<_>, _>>()?;
        if !flags.is_empty() {
            out.set_flags(Some(flags));
        }
    }
    out.set_listener_path(p.listener_path);
    out.set_listener_metadata(p.listener_metadata);

    let mut calls = Vec::new();
    for sc in p.syscalls.iter().flatten() {
        if !applies(sc, caps, host)? {
            continue;
        }
        let mut names = sc.names.clone();
        if let Some(n) = &sc.name {
            names.push(n.clone());
        }
        if names.is_empty() {
            return Err(SpecError::invalid("a seccomp rule names no system call"));
        }
        if names
            .iter()
            .any(|n| n.is_empty() || n.len() > 64 || n.contains('\0'))
        {
            return Err(SpecError::invalid(
                "a seccomp rule has an invalid system call name",
            ));
        }
        let mut call = LinuxSyscall::default();
        call.set_names(names);
        call.set_action(from_name(&sc.action, "action")?);
        call.set_errno_ret(sc.errno_ret);
        if let Some(args) = &sc.args {
            let mut out_args = Vec::with_capacity(args.len());
            for a in args {
                if a.index > 5 {
                    return Err(SpecError::invalid("a seccomp argument index is above 5"));
                }
                let mut b = LinuxSeccompArgBuilder::default()
                    .index(a.index as usize)
                    .value(a.value)
                    .op(from_name::<LinuxSeccompOperator>(&a.op, "operator")?);
                if a.value_two != 0 {
                    b = b.value_two(a.value_two);
                }
                out_args.push(
                    b.build()
                        .map_err(|_| SpecError::invalid("invalid seccomp argument"))?,
                );
            }
            if !out_args.is_empty() {
                call.set_args(Some(out_args));
            }
        }
        calls.push(call);
    }
    if !calls.is_empty() {
        out.set_syscalls(Some(calls));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::caps::{CAP_SYS_ADMIN, DEFAULT_CAPS};
    use crius_proto::cri::SecurityProfile;

    fn with_profile(t: ProfileType, r: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp: Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        }
    }

    #[allow(deprecated)]
    fn with_path(p: &str) -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext {
            seccomp_profile_path: p.into(),
            ..Default::default()
        }
    }

    #[test]
    fn choices() {
        let root = Path::new("/var/lib/kubelet/seccomp");
        assert_eq!(choose(None, root).unwrap(), Choice::Unset);
        assert_eq!(
            choose(Some(&with_profile(ProfileType::RuntimeDefault, "")), root).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&with_profile(ProfileType::Unconfined, "")), root).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choose(
                Some(&with_profile(ProfileType::Localhost, "/abs/p.json")),
                root
            )
            .unwrap(),
            Choice::Localhost("/abs/p.json".into())
        );
        assert_eq!(
            choose(
                Some(&with_profile(ProfileType::Localhost, "a/p.json")),
                root
            )
            .unwrap(),
            Choice::Localhost(root.join("a/p.json"))
        );
        assert!(
            choose(
                Some(&with_profile(ProfileType::Localhost, "../p.json")),
                root
            )
            .is_err()
        );
        assert!(choose(Some(&with_profile(ProfileType::Localhost, "")), root).is_err());

        assert_eq!(choose(Some(&with_path("")), root).unwrap(), Choice::Unset);
        assert_eq!(
            choose(Some(&with_path("unconfined")), root).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choose(Some(&with_path("runtime/default")), root).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&with_path("docker/default")), root).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&with_path("localhost//x/p.json")), root).unwrap(),
            Choice::Localhost("/x/p.json".into())
        );
        assert!(matches!(
            choose(Some(&with_path("/x/p.json")), root),
            Err(SpecError::Invalid(_))
        ));
    }

    #[test]
    fn unset_unconfined_and_privileged() {
        let h = HostLimits::default();
        assert!(
            build(&Choice::Unset, false, false, DEFAULT_CAPS, &h)
                .unwrap()
                .is_none()
        );
        assert!(
            build(&Choice::Unset, false, true, DEFAULT_CAPS, &h)
                .unwrap()
                .is_some()
        );
        assert!(
            build(&Choice::Unconfined, false, true, DEFAULT_CAPS, &h)
                .unwrap()
                .is_none()
        );
        let d = build(&Choice::RuntimeDefault, false, false, DEFAULT_CAPS, &h)
            .unwrap()
            .unwrap();
        assert_eq!(d.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(
            build(&Choice::RuntimeDefault, true, false, DEFAULT_CAPS, &h)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn localhost_missing_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let c = Choice::Localhost(dir.path().join("nope.json"));
        let err = build(&c, false, false, DEFAULT_CAPS, &HostLimits::default()).unwrap_err();
        assert!(matches!(err, SpecError::NotFound(_)), "{err}");
        // a privileged container ignores it, as containerd does
        assert!(
            build(&c, true, false, DEFAULT_CAPS, &HostLimits::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn localhost_profile_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["sethostname","chmod"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .unwrap();
        let p = build(
            &Choice::Localhost(path),
            false,
            false,
            DEFAULT_CAPS,
            &HostLimits::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
        let calls = p.syscalls().as_ref().unwrap();
        assert_eq!(calls[0].names(), &["sethostname", "chmod"]);
        assert_eq!(calls[0].errno_ret(), Some(1));
    }

    #[test]
    fn docker_format_filters() {
        let json = br#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
            ],
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "x"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["old"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
                {"name": "single", "action": "SCMP_ACT_ALLOW"}
            ]
        }"#;
        let host = HostLimits {
            kernel: Some((6, 1)),
            ..HostLimits::default()
        };
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .flat_map(|s| s.names().clone())
                .collect()
        };
        let p = parse_profile(json, DEFAULT_CAPS, &host).unwrap();
        assert_eq!(names(&p), ["read", "clone", "ptrace", "single"]);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(p.architectures().as_ref().unwrap().len(), 3);
        let p = parse_profile(json, DEFAULT_CAPS | bit(CAP_SYS_ADMIN), &host).unwrap();
        assert_eq!(names(&p), ["read", "mount", "ptrace", "single"]);
    }

    #[test]
    fn bad_profiles() {
        let h = HostLimits::default();
        for bad in [
            &b"not json"[..],
            br#"{"defaultAction":"SCMP_ACT_BOGUS"}"#,
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ALLOW"}]}"#,
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ALLOW","args":[{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
            br#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_NOPE"]}"#,
        ] {
            assert!(matches!(parse_profile(bad, DEFAULT_CAPS, &h), Err(SpecError::Invalid(_))));
        }
    }

    #[test]
    fn large_profile_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        File::create(&path)
            .unwrap()
            .set_len(MAX_PROFILE + 1)
            .unwrap();
        assert!(matches!(read_profile(&path), Err(SpecError::Invalid(_))));
    }
}
