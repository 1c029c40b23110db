//! The mount table as `/proc/thread-self/mountinfo` gives it: one parser
//! for every reader (host-path propagation checks, cgroup hierarchies,
//! unmounting what is under a directory).

use std::ffi::OsString;
use std::io::{self, Read as _};
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

/// The mount table of the calling thread's mount namespace: a thread that
/// joined another one (a VM pod's, `sandbox_vm::mount_ns`) reads that
/// one's, where `/proc/self` would give the main thread's.
pub const PATH: &str = "/proc/thread-self/mountinfo";

/// The largest mount table read (a host with many pods has thousands of
/// mounts, a few hundred bytes each).
const MAX_BYTES: u64 = 64 << 20;

/// One mount: `id parent major:minor root mount-point options [optional
/// fields...] - type source super-options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    /// Has a `shared:N` optional field.
    pub shared: bool,
    /// Has a `master:N` optional field.
    pub slave: bool,
    pub fs_type: String,
    /// Superblock options (for cgroup v1, its controllers).
    pub super_options: String,
}

/// Reads and parses this process's mount table, bounded.
pub fn read() -> io::Result<Vec<Mount>> {
    let mut s = String::new();
    std::fs::File::open(PATH)?
        .take(MAX_BYTES)
        .read_to_string(&mut s)?;
    Ok(parse(&s))
}

/// Parses a mount table; malformed lines are left out.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mut fields = left.split(' ');
    let mount_point = unescape(fields.nth(4)?);
    let options = fields.next()?.to_string();
    let (mut shared, mut slave) = (false, false);
    for f in fields {
        shared |= f.starts_with("shared:");
        slave |= f.starts_with("master:");
    }
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let _source = right.next()?;
    let super_options = right.next().unwrap_or_default().to_string();
    Some(Mount {
        mount_point,
        options,
        shared,
        slave,
        fs_type,
        super_options,
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, and tab,
/// newline and backslash) of a mountinfo path.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_escapes_and_optional_fields() {
        let m = parse(
            "36 35 98:0 / /mnt/a\\040b rw,nosuid,relatime shared:1 master:2 - ext4 /dev/root rw\n\
             40 31 0:37 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             garbage\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].options, "rw,nosuid,relatime");
        assert!(m[0].shared && m[0].slave);
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[1].super_options, "rw,cpu,cpuacct");
        assert!(!m[1].shared && !m[1].slave);
        // a "shared:" after the separator is not an optional field
        assert!(!parse("1 0 0:1 / /x rw - shared:1 src rw")[0].shared);
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape(r"/a\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape(r"/end\04"), PathBuf::from(r"/end\04"));
        assert_eq!(unescape(r"/big\777"), PathBuf::from(r"/big\777"));
    }
}
