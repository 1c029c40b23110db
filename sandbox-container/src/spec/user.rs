//! The container's user: uid, gid and supplementary groups, from the CRI
//! security context or the image's `User`, with names resolved from the
//! rootfs's `/etc/passwd` and `/etc/group` (read bounded, inside the rootfs
//! only: see [`super::rootfs`]).

use std::path::Path;

use crius_proto::cri::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};

use super::error::{SpecError, quote};
use super::rootfs::{MAX_ETC_FILE, read_in_root};

/// Ids above this are refused: a uid of 2^32 would wrap to 0 (root) in a
/// 32-bit field, and 2^31 and above are negative in some tools.
pub(crate) const MAX_ID: u64 = (1 << 31) - 1;

/// The longest user or group name accepted.
const MAX_NAME: usize = 256;

/// The resolved user of the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary gids, sorted and without duplicates; includes `gid`.
    pub additional_gids: Vec<u32>,
}

/// A user or a group as written: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    Num(u32),
    Name(String),
}

/// Checks a CRI-provided numeric id.
pub(crate) fn check_id(v: i64, what: &str) -> Result<u32, SpecError> {
    if v < 0 || v as u64 > MAX_ID {
        return Err(SpecError::invalid(format!(
            "{what} {v} is out of range (0 to {MAX_ID})"
        )));
    }
    Ok(v as u32)
}

/// Parses one part of a `User` string: all digits is a number (which must
/// be at most [`MAX_ID`]), a sign or digits-then-garbage is an error, and
/// anything else is a name.
fn parse_part(s: &str, what: &str) -> Result<Id, SpecError> {
    if s.is_empty() {
        return Err(SpecError::invalid(format!("empty {what} in the user")));
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) {
        if body.len() != s.len() {
            return Err(SpecError::invalid(format!("invalid {what} {}", quote(s))));
        }
        return match s.parse::<u64>() {
            Ok(n) if n <= MAX_ID => Ok(Id::Num(n as u32)),
            _ => Err(SpecError::invalid(format!(
                "{what} {} is out of range (0 to {MAX_ID})",
                quote(s)
            ))),
        };
    }
    check_name(s, what)?;
    Ok(Id::Name(s.to_string()))
}

fn check_name(s: &str, what: &str) -> Result<(), SpecError> {
    if s.is_empty()
        || s.len() > MAX_NAME
        || s.chars().any(|c| c == ':' || c == ',' || c.is_control())
    {
        return Err(SpecError::invalid(format!("invalid {what} {}", quote(s))));
    }
    Ok(())
}

/// Parses an image `User`: `user`, `uid`, `user:group`, `uid:gid`,
/// `uid:group`, `user:gid`. Empty means root.
fn parse_user_string(s: &str) -> Result<Option<(Id, Option<Id>)>, SpecError> {
    if s.is_empty() {
        return Ok(None);
    }
    let mut parts = s.splitn(3, ':');
    let user = parts.next().unwrap_or_default();
    let group = parts.next();
    if parts.next().is_some() {
        return Err(SpecError::invalid(format!("invalid user {}", quote(s))));
    }
    let user = parse_part(user, "user")?;
    let group = group.map(|g| parse_part(g, "group")).transpose()?;
    Ok(Some((user, group)))
}

/// An entry of `/etc/passwd` or `/etc/group`, or the name of an entry
/// whose id is invalid (looking that name up is an error, not a miss).
type Parsed<T> = Result<T, String>;

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_num_field(s: &str) -> Option<u32> {
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_ID => Some(n as u32),
        _ => None,
    }
}

fn bad_entry(name: &str, file: &str) -> SpecError {
    SpecError::invalid(format!(
        "invalid id for {} in {file} of the image",
        quote(name)
    ))
}

/// Parses `/etc/passwd`. Lines that are blank, comments or too short are
/// skipped (as libc does); an entry with an invalid id is skipped too, but
/// remembered, so that looking up its name is an error rather than a miss.
fn parse_passwd(data: &[u8]) -> Vec<Parsed<PasswdEntry>> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.splitn(7, ':').collect();
        if f.len() < 4 || f[0].is_empty() {
            continue;
        }
        let entry = match (parse_num_field(f[2]), parse_num_field(f[3])) {
            (Some(uid), Some(gid)) => Ok(PasswdEntry {
                name: f[0].to_string(),
                uid,
                gid,
            }),
            _ => Err(f[0].to_string()),
        };
        out.push(entry);
    }
    out
}

fn parse_group(data: &[u8]) -> Vec<Parsed<GroupEntry>> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.splitn(4, ':').collect();
        if f.len() < 3 || f[0].is_empty() {
            continue;
        }
        let entry = parse_num_field(f[2]).map(|gid| GroupEntry {
            name: f[0].to_string(),
            gid,
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
        });
        out.push(entry.ok_or_else(|| f[0].to_string()));
    }
    out
}

/// `/etc/passwd` and `/etc/group` of the rootfs, each read at most once and
/// only when needed.
struct EtcDb<'a> {
    root: &'a Path,
    passwd: Option<Vec<Parsed<PasswdEntry>>>,
    group: Option<Vec<Parsed<GroupEntry>>>,
}

impl<'a> EtcDb<'a> {
    fn new(root: &'a Path) -> Self {
        EtcDb {
            root,
            passwd: None,
            group: None,
        }
    }

    fn passwd(&mut self) -> Result<&[Parsed<PasswdEntry>], SpecError> {
        if self.passwd.is_none() {
            let data = read_in_root(self.root, "etc/passwd", MAX_ETC_FILE)?;
            self.passwd = Some(data.map(|d| parse_passwd(&d)).unwrap_or_default());
        }
        Ok(self.passwd.as_deref().unwrap_or_default())
    }

    fn group(&mut self) -> Result<&[Parsed<GroupEntry>], SpecError> {
        if self.group.is_none() {
            let data = read_in_root(self.root, "etc/group", MAX_ETC_FILE)?;
            self.group = Some(data.map(|d| parse_group(&d)).unwrap_or_default());
        }
        Ok(self.group.as_deref().unwrap_or_default())
    }

    /// The passwd entry named `name`: NotFound if there is none.
    fn user_by_name(&mut self, name: &str) -> Result<(u32, u32), SpecError> {
        for e in self.passwd()? {
            match e {
                Ok(e) if e.name == name => return Ok((e.uid, e.gid)),
                Err(n) if n == name => return Err(bad_entry(name, "/etc/passwd")),
                _ => {}
            }
        }
        Err(SpecError::not_found(format!(
            "user {} not found in /etc/passwd of the image",
            quote(name)
        )))
    }

    /// The first valid passwd entry with this uid: its name and gid.
    fn user_by_uid(&mut self, uid: u32) -> Result<Option<(String, u32)>, SpecError> {
        Ok(self.passwd()?.iter().find_map(|e| match e {
            Ok(e) if e.uid == uid => Some((e.name.clone(), e.gid)),
            _ => None,
        }))
    }

    fn group_by_name(&mut self, name: &str) -> Result<u32, SpecError> {
        for e in self.group()? {
            match e {
                Ok(e) if e.name == name => return Ok(e.gid),
                Err(n) if n == name => return Err(bad_entry(name, "/etc/group")),
                _ => {}
            }
        }
        Err(SpecError::not_found(format!(
            "group {} not found in /etc/group of the image",
            quote(name)
        )))
    }

    /// The groups listing `user` as a member, except a group named like the
    /// user (its own group), as containerd does.
    fn groups_of(&mut self, user: &str) -> Result<Vec<u32>, SpecError> {
        Ok(self
            .group()?
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .filter(|g| g.name != user && g.members.iter().any(|m| m == user))
            .map(|g| g.gid)
            .collect())
    }
}

/// Resolves the container's user.
///
/// The user comes from `run_as_username`, else `run_as_user`, else the
/// image's `User` (else root); `run_as_group` overrides the group, and is
/// an error without `run_as_user` or `run_as_username` (as containerd, and
/// critest checks it). Names
/// are looked up in the rootfs; an unknown name is NotFound. A numeric uid
/// missing from `/etc/passwd` is allowed, with gid 0 unless a group is
/// given. Supplementary groups: the primary gid, the CRI
/// `supplemental_groups`, and, unless the policy is `Strict`, the groups of
/// `/etc/group` that list the user by name.
pub(crate) fn resolve(
    rootfs: &Path,
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    let run_as_group = sc
        .and_then(|s| s.run_as_group.as_ref())
        .map(|g| check_id(g.value, "run_as_group"))
        .transpose()?;

    let (user, mut group) = match sc {
        Some(s) if !s.run_as_username.is_empty() => {
            check_name(&s.run_as_username, "run_as_username")?;
            (Id::Name(s.run_as_username.clone()), None)
        }
        Some(s) if s.run_as_user.is_some() => {
            let v = s.run_as_user.as_ref().map(|u| u.value).unwrap_or_default();
            (Id::Num(check_id(v, "run_as_user")?), None)
        }
        _ => match parse_user_string(image_user.unwrap_or_default())? {
            Some(parsed) => parsed,
            None => (Id::Num(0), None),
        },
    };
    if let Some(g) = run_as_group {
        let has_user = sc.is_some_and(|s| s.run_as_user.is_some() || !s.run_as_username.is_empty());
        if !has_user {
            return Err(SpecError::invalid("run_as_group requires run_as_user"));
        }
        group = Some(Id::Num(g));
    }

    let strict = match sc.map(|s| SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy))
    {
        None | Some(Ok(SupplementalGroupsPolicy::Merge)) => false,
        Some(Ok(SupplementalGroupsPolicy::Strict)) => true,
        Some(Err(_)) => {
            return Err(SpecError::invalid("unknown supplemental groups policy"));
        }
    };
    let mut cri_groups = Vec::new();
    for g in sc
        .map(|s| s.supplemental_groups.as_slice())
        .unwrap_or_default()
    {
        cri_groups.push(check_id(*g, "supplemental group")?);
    }

    let mut etc = EtcDb::new(rootfs);
    let (uid, passwd_gid, username) = match &user {
        Id::Name(name) => {
            let (uid, gid) = etc.user_by_name(name)?;
            (uid, Some(gid), Some(name.clone()))
        }
        Id::Num(uid) => {
            // Both numeric: no lookup needed unless groups are merged.
            if group.is_none() || !strict {
                match etc.user_by_uid(*uid)? {
                    Some((name, gid)) => (*uid, Some(gid), Some(name)),
                    None => (*uid, None, None),
                }
            } else {
                (*uid, None, None)
            }
        }
    };
    let gid = match &group {
        Some(Id::Num(g)) => *g,
        Some(Id::Name(name)) => etc.group_by_name(name)?,
        None => passwd_gid.unwrap_or(0),
    };

    let mut additional_gids = vec![gid];
    additional_gids.extend(cri_groups);
    if let (false, Some(name)) = (strict, &username) {
        additional_gids.extend(etc.groups_of(name)?);
    }
    additional_gids.sort_unstable();
    additional_gids.dedup();

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_proto::cri::Int64Value;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1::/:/sbin/nologin\n\
        www-data:x:33:33:www:/var/www:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        broken:x:4294967296:0::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        www-data:x:33:\n\
        app:x:1000:app\n\
        wheel:x:10:app,www-data\n\
        extra:x:50000:app\n\
        g1004:x:1004:\n";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn image(root: &Path, user: &str) -> Result<ResolvedUser, SpecError> {
        resolve(root, None, Some(user))
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs();
        let u = image(r.path(), "").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (0, 0, vec![0]));

        let u = image(r.path(), "1002").unwrap();
        assert_eq!((u.uid, u.gid), (1002, 0), "unknown uid: gid 0");

        let u = image(r.path(), "www-data").unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        assert_eq!(u.additional_gids, vec![10, 33]);

        let u = image(r.path(), "1003:1004").unwrap();
        assert_eq!((u.uid, u.gid), (1003, 1004));

        let u = image(r.path(), "www-data:1004").unwrap();
        assert_eq!((u.uid, u.gid), (33, 1004));

        let u = image(r.path(), "1000:g1004").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1004));
        assert_eq!(u.additional_gids, vec![10, 1004, 50000]);

        let u = image(r.path(), "app:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
    }

    #[test]
    fn unknown_names_are_not_found() {
        let r = rootfs();
        assert!(matches!(
            image(r.path(), "nobody"),
            Err(SpecError::NotFound(_))
        ));
        assert!(matches!(
            image(r.path(), "app:nogroup"),
            Err(SpecError::NotFound(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            image(empty.path(), "app"),
            Err(SpecError::NotFound(_))
        ));
        // A numeric user needs no /etc/passwd.
        assert_eq!(image(empty.path(), "1000").unwrap().uid, 1000);
    }

    #[test]
    fn out_of_range_ids_never_become_root() {
        let r = rootfs();
        for bad in [
            "4294967296",
            "2147483648",
            "-1",
            "+0",
            "-0",
            "0:-1",
            "1000:4294967296",
            "99999999999999999999999",
            "a:b:c",
            ":0",
            "0:",
            "broken",
        ] {
            match image(r.path(), bad) {
                Err(SpecError::Invalid(_)) | Err(SpecError::NotFound(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert_eq!(image(r.path(), "2147483647").unwrap().uid, 2147483647);
    }

    fn sc() -> LinuxContainerSecurityContext {
        LinuxContainerSecurityContext::default()
    }

    #[test]
    fn cri_user_overrides_image() {
        let r = rootfs();
        let mut s = sc();
        s.run_as_user = Some(Int64Value { value: 1000 });
        let u = resolve(r.path(), Some(&s), Some("www-data")).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![10, 1000, 50000]);

        s.run_as_group = Some(Int64Value { value: 3000 });
        s.supplemental_groups = vec![4000, 4000];
        let u = resolve(r.path(), Some(&s), None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.additional_gids, vec![10, 3000, 4000, 50000]);

        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        let u = resolve(r.path(), Some(&s), None).unwrap();
        assert_eq!(u.additional_gids, vec![3000, 4000]);

        let mut s = sc();
        s.run_as_username = "www-data".into();
        let u = resolve(r.path(), Some(&s), Some("app")).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));

        // run_as_group alone is an error.
        let mut s = sc();
        s.run_as_group = Some(Int64Value { value: 5 });
        assert!(matches!(
            resolve(r.path(), Some(&s), Some("app")),
            Err(SpecError::Invalid(_))
        ));
        // with a user name it is the primary group
        s.run_as_username = "app".into();
        let u = resolve(r.path(), Some(&s), None).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 5));

        let mut s = sc();
        s.supplemental_groups_policy = 7;
        assert!(resolve(r.path(), Some(&s), None).is_err());
    }

    #[test]
    fn cri_ids_are_range_checked() {
        let r = rootfs();
        for v in [-1, 1 << 31, 1 << 32] {
            let mut s = sc();
            s.run_as_user = Some(Int64Value { value: v });
            assert!(matches!(
                resolve(r.path(), Some(&s), None),
                Err(SpecError::Invalid(_))
            ));
            let mut s = sc();
            s.run_as_user = Some(Int64Value { value: 0 });
            s.run_as_group = Some(Int64Value { value: v });
            assert!(matches!(
                resolve(r.path(), Some(&s), None),
                Err(SpecError::Invalid(_))
            ));
            let mut s = sc();
            s.supplemental_groups = vec![v];
            assert!(matches!(
                resolve(r.path(), Some(&s), None),
                Err(SpecError::Invalid(_))
            ));
        }
    }

    /// A rootfs whose /etc, or /etc/passwd, points at the host's must not
    /// make us read the host's file.
    #[test]
    fn host_passwd_is_never_read() {
        let r = tempfile::tempdir().unwrap();
        symlink("/etc", r.path().join("etc")).unwrap();
        let res = image(r.path(), "root");
        assert!(res.is_err(), "read through /etc -> /etc: {res:?}");

        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        symlink(
            "../../../../../../../etc/passwd",
            r.path().join("etc/passwd"),
        )
        .unwrap();
        let res = image(r.path(), "root");
        assert!(res.is_err(), "read through ../../etc/passwd: {res:?}");

        // An absolute link to the host path of another directory is taken
        // inside the rootfs too.
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("etc")).unwrap();
        symlink("/host/etc/passwd", r.path().join("etc/passwd")).unwrap();
        let res = image(r.path(), "root");
        assert!(matches!(res, Err(SpecError::NotFound(_))), "{res:?}");
    }

    #[test]
    fn huge_passwd_is_refused() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        let f = std::fs::File::create(r.path().join("etc/passwd")).unwrap();
        f.set_len(100 << 20).unwrap();
        assert!(matches!(
            image(r.path(), "root"),
            Err(SpecError::Invalid(_))
        ));
        assert!(matches!(image(r.path(), "0"), Err(SpecError::Invalid(_))));
    }
}
