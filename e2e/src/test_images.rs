//! The images critest and crius's own tests pull, built offline from the
//! host's Debian packages plus one small Rust program, and pushed to a local
//! registry ([`push_all`]).
//!
//! Every image is pushed under its exact repository path with the registry
//! host dropped (`registry.k8s.io/e2e-test-images/busybox:1.29-2` becomes
//! repository `e2e-test-images/busybox`, tag `1.29-2`), so crius reaches
//! them through per-host registry mirrors pointing at the local registry
//! (see [`MIRRORED_HOSTS`]).
//!
//! Contents, and the critest v1.37.0 file (`pkg/validate/...`) each serves:
//!
//! * `registry.k8s.io/e2e-test-images/busybox:1.29-2`, the default image
//!   (`framework/util.go` DefaultLinuxContainerImage; used by container.go,
//!   container_linux.go, pod*.go, networking*.go, streaming*.go,
//!   security_context_linux.go, multi_container_linux.go, nri_linux.go,
//!   apparmor/selinux tests). One layer, the *base layer* shared by the other
//!   images: Debian's dynamic `/bin/busybox` (package busybox; it looks
//!   commands up on disk, which the MaskedPaths test relies on) with every
//!   applet as a hardlink in `/bin` (hardlinks, not symlinks, so masking
//!   `/bin/ls` cannot mask busybox itself), except `ps`; `ps` (`/bin/ps`),
//!   `pgrep`, `pkill` (`/usr/bin`) from procps and `ipcs` (`/usr/bin`) from
//!   util-linux, with the shared libraries `ldd` reports, copied with their
//!   symlinks to the same paths (`/lib/x86_64-linux-gnu`,
//!   `/lib64/ld-linux-x86-64.so.2`). `top` stays busybox's: procps top
//!   exits at once without a terminal, and critest's pause command is
//!   `sh -c top`. `/etc/passwd` and `/etc/group` (root, daemon, bin, sys,
//!   sync, mail, www-data 33, operator, nobody 65534), `/etc/nsswitch.conf`,
//!   `/tmp` and `/var/tmp` 1777, `/root` 0700, `/var/run`, `/var/www`.
//!   Cmd `["sh"]`.
//! * `public.ecr.aws/docker/library/busybox:{1.35.0-glibc,1-uclibc,1,1-glibc,1-musl}`:
//!   the busybox image again (benchmark/image.go listing benchmark).
//! * `registry.k8s.io/e2e-test-images/nginx:1.14-2` (security_context_linux.go
//!   HostPID / PodPID / ContainerPID, networking.go port mapping,
//!   streaming.go port forward): base + `/usr/sbin/nginx` (crius-testbin):
//!   comm `nginx`, cmdline `nginx: master process nginx -g daemon off;`,
//!   writes `/var/run/nginx.pid`, HTTP 200 on :80.
//! * `registry.k8s.io/e2e-test-images/httpd:2.4.39-4` (multi_container_linux.go):
//!   base + `/usr/local/apache2/bin/httpd`: logs a line with "httpd" to
//!   stdout, HTTP 200 on :80; `echo` comes from the base.
//! * `registry.k8s.io/e2e-test-images/nonewprivs:1.3` (security_context_linux.go
//!   NoNewPrivs): base + `/usr/local/bin/nnp`, setuid root (04755, 0:0),
//!   prints `Effective uid: N`; USER 1000.
//! * `gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest`
//!   (streaming_linux.go host-network port forward, consts_linux.go): base +
//!   `/usr/local/bin/hostnet-nginx`, HTTP 200 on :12003.
//! * `gcr.io/k8s-staging-cri-tools/test-image-tag:test`, `:all`,
//!   `test-image-latest:latest`, `test-image-1/-2/-3:latest` (image.go,
//!   image_consistency.go, image_id_consistency.go, image_volume.go; consts.go
//!   lists them): base + `/image-name` holding the name, so all digests
//!   differ; busybox-based since image_volume.go runs `sh -c top` in
//!   test-image-tag:test and executes `/bin/ls` from it.
//! * `gcr.io/k8s-staging-cri-tools/test-image-tags:1/:2/:3` (image.go "same
//!   image, different tags"): ONE image pushed under three tags.
//! * `gcr.io/k8s-staging-cri-tools/test-image-user-uid`, `-user-username`,
//!   `-user-uid-group`, `-user-username-group` (image.go "image status get
//!   image fields"): the base layer with config User `1002`, `www-data`,
//!   `1003:1004`, `www-data:1004`.
//! * `gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest`
//!   (security_context_linux.go SupplementalGroupsPolicy, image_volume.go
//!   subPath `etc`): base + `/etc/passwd` with `default-user` 1000:1000 and
//!   `/etc/group` with `default-user:x:1000:` and
//!   `group-defined-in-image:x:50000:default-user`; USER 1000. (`id -G` of
//!   uid 1000 with supplemental group 1234 prints `1000 1234 50000`.)
//! * `registry.k8s.io/pause:3.9` and `k8s.gcr.io/pause:3.9`
//!   (image.go / image_id_consistency.go "same image from different
//!   registries"): one image, repository `pause`, tag `3.9`: a single layer
//!   with `/pause` (crius-testbin; sleeps until SIGTERM/SIGINT, exits 0,
//!   reaps children); Entrypoint `["/pause"]`, User `65535:65535`.
//! * Not built: `gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2...`
//!   (image.go "public image with digest"): an exact upstream digest that
//!   cannot be reproduced offline.
//!
//! crius's own images (repository `crius-test/...`, tag `latest`):
//!
//! * `crius-test/multilayer`: base + three gzip layers. Layer 1: `/data/a`
//!   (`a1`), `/data/b`, `/data/keep`, `/data/dir/x`, `/data/dir/y`. Layer 2:
//!   `/data/a` (`a2`), `/data/c`. Layer 3: whiteout `/data/.wh.b`,
//!   `/data/dir` made opaque with `.wh..wh..opq`, new `/data/dir/z`. Result:
//!   `/data/{a (a2), c, keep, dir/z}`; no `b`, `dir/x`, `dir/y`.
//! * `crius-test/index`: an OCI index with linux/arm64/v8 first and
//!   linux/amd64 second; each is base + `/platform` (`arm64` / `amd64`).
//! * `crius-test/docker-schema2`: base + `/image-name`, Docker schema 2
//!   manifest and Docker media types.
//! * `crius-test/uncompressed`: base (gzip) + an uncompressed
//!   (`application/vnd.oci.image.layer.v1.tar`) layer with `/image-name` and
//!   `/uncompressed`.
//!
//! Build products are cached under [`cache_dir`] (`/var/tmp/crius-test-images`
//! or `$CRIUS_TEST_IMAGES_CACHE`): the statically linked crius-testbin
//! (`testbin-<hash>/`, keyed by its source, flags and `rustc -vV`; built
//! with `--remap-path-prefix` so rebuilds are identical), gzip blobs
//! (`blobs/`, keyed by diff_id, so the ~15 MB base tar is compressed once),
//! and, when [`busybox_rootfs`] is called, the base layer as a directory
//! (`rootfs-busybox-<hash>/`, keyed by a hash of every file it holds) for
//! chroot tests. The base layer itself is always made from the host files
//! (read fresh each run, ~50 ms), so a damaged cache cannot change it. The
//! same host packages and rustc give the same digests.
//!
//! Host needs (Debian packages): busybox (not busybox-static), procps,
//! util-linux, libc-bin (`ldd`), libc6-dev (static glibc for the testbin),
//! rustc, and docker-registry for the registry itself.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::oci_image::{
    BuiltImage, BuiltIndex, Compression, Entry, Image, ImageConfigJson, Index, Layer, LayerBlob,
    ManifestFormat, Platform,
};

/// The default container image of critest.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// critest's web server image.
pub const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
/// critest's multi-container httpd image.
pub const HTTPD: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
/// critest's NoNewPrivs image.
pub const NONEWPRIVS: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";
/// critest's host-network web server (port 12003).
pub const HOSTNET_NGINX: &str = "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest";
/// The pause image, as critest names it first.
pub const PAUSE: &str = "registry.k8s.io/pause:3.9";
/// The pause image under its old registry name (same digest).
pub const PAUSE_OLD_REGISTRY: &str = "k8s.gcr.io/pause:3.9";
/// crius's whiteout / multi-layer test image.
pub const CRIUS_MULTILAYER: &str = "crius-test/multilayer:latest";
/// crius's OCI index test image (arm64 first, amd64 second).
pub const CRIUS_INDEX: &str = "crius-test/index:latest";
/// crius's Docker schema 2 test image.
pub const CRIUS_DOCKER_SCHEMA2: &str = "crius-test/docker-schema2:latest";
/// crius's uncompressed-layer test image.
pub const CRIUS_UNCOMPRESSED: &str = "crius-test/uncompressed:latest";

const STAGING: &str = "gcr.io/k8s-staging-cri-tools/";

/// Every image critest (validation and benchmark) pulls by name, as
/// `host/path:tag` (`:latest` made explicit), except the digest-pinned
/// `test-image-digest`.
pub const CRITEST_IMAGES: &[&str] = &[
    BUSYBOX,
    NGINX,
    HTTPD,
    NONEWPRIVS,
    HOSTNET_NGINX,
    "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
    "gcr.io/k8s-staging-cri-tools/test-image-tag:all",
    "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-3:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
    "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
    "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
    "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest",
    PAUSE,
    PAUSE_OLD_REGISTRY,
    "public.ecr.aws/docker/library/busybox:1.35.0-glibc",
    "public.ecr.aws/docker/library/busybox:1-uclibc",
    "public.ecr.aws/docker/library/busybox:1",
    "public.ecr.aws/docker/library/busybox:1-glibc",
    "public.ecr.aws/docker/library/busybox:1-musl",
];

/// crius's own test images (no registry host: pull them as
/// `<registry host>/crius-test/...`).
pub const CRIUS_TEST_IMAGES: &[&str] = &[
    CRIUS_MULTILAYER,
    CRIUS_INDEX,
    CRIUS_DOCKER_SCHEMA2,
    CRIUS_UNCOMPRESSED,
];

/// The critest image that cannot be made offline (exact upstream digest).
pub const NOT_REPRODUCIBLE: &[&str] = &[
    "gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf",
];

/// Registry hosts whose images [`push_all`] serves: point a mirror for each
/// at the local registry.
pub const MIRRORED_HOSTS: &[&str] = &["registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws"];

/// Every name [`push_all`] pushes, critest's first.
pub fn all_image_names() -> Vec<&'static str> {
    CRITEST_IMAGES
        .iter()
        .chain(CRIUS_TEST_IMAGES)
        .copied()
        .collect()
}

/// One pushed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The full original name, e.g. `registry.k8s.io/pause:3.9`.
    pub name: String,
    /// Repository in the local registry, e.g. `pause`.
    pub repo: String,
    /// Tag, e.g. `3.9`.
    pub tag: String,
    /// `sha256:` digest of the manifest (the index for `crius-test/index`).
    pub manifest_digest: String,
    /// `sha256:` digest of the config, i.e. the image ID a runtime reports
    /// (for an index: the linux/amd64 entry's).
    pub config_digest: String,
    /// Number of layers (for an index: of the linux/amd64 entry).
    pub layers: usize,
}

/// Splits `[host/]path[:tag]` into (host, repository path, tag). The first
/// component is a host when it has a `.` or `:` or is `localhost` (Docker's
/// rule); the tag defaults to `latest`.
pub fn split_name(name: &str) -> io::Result<(Option<String>, String, String)> {
    if name.contains('@') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: digest references are not pushed"),
        ));
    }
    let (host, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    };
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (rest, "latest"),
    };
    if repo.is_empty() || tag.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad image name {name:?}"),
        ));
    }
    Ok((host, repo.to_owned(), tag.to_owned()))
}

// ---------------------------------------------------------------------------
// Cache and build inputs
// ---------------------------------------------------------------------------

/// Environment variable overriding [`cache_dir`].
pub const CACHE_ENV: &str = "CRIUS_TEST_IMAGES_CACHE";

/// Bumped whenever the generated contents change.
const GENERATOR_VERSION: &str = "crius-test-images v1";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The testbin source, embedded so the harness binary does not depend on
/// the source tree's location.
const TESTBIN_SOURCE: &str = include_str!("../testbin/main.rs");

/// `$CRIUS_TEST_IMAGES_CACHE` or `/var/tmp/crius-test-images`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/crius-test-images"))
}

fn short_hash(h: Sha256) -> String {
    hex::encode(h.finalize())[..16].to_owned()
}

fn run_output(cmd: &mut Command) -> io::Result<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Builds (once per source and compiler) the static crius-testbin and
/// returns its path: `<cache>/testbin-<hash>/crius-testbin`.
pub fn testbin() -> io::Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = run_output(Command::new(&rustc).arg("-vV"))?;
    let flags = [
        "--edition",
        "2024",
        "-O",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "strip=symbols",
        "--crate-name",
        "crius_testbin",
    ];
    let mut h = Sha256::new();
    h.update(TESTBIN_SOURCE.as_bytes());
    h.update(&version);
    h.update(flags.join(" ").as_bytes());
    h.update(b" --remap-path-prefix=<build dir>=/crius-testbin");
    let dir = cache_dir().join(format!("testbin-{}", short_hash(h)));
    let bin = dir.join("crius-testbin");
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(cache_dir())?;
    let tmp = tempfile::Builder::new()
        .prefix(".testbin-")
        .tempdir_in(cache_dir())?;
    let src = tmp.path().join("main.rs");
    std::fs::write(&src, TESTBIN_SOURCE)?;
    // Embedded source paths (panic locations) must not depend on the
    // temporary directory, or two builds would differ.
    let mut remap = std::ffi::OsString::from("--remap-path-prefix=");
    remap.push(tmp.path());
    remap.push("=/crius-testbin");
    run_output(
        Command::new(&rustc)
            .args(flags)
            .arg(remap)
            .arg("-o")
            .arg(tmp.path().join("crius-testbin"))
            .arg(&src)
            .current_dir(tmp.path()),
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("building crius-testbin (needs rustc and libc6-dev's static glibc): {e}"),
        )
    })?;
    publish_dir(tmp, &dir)?;
    Ok(bin)
}

/// Renames a finished temp dir into place; losing a race to another
/// process that built the same thing is fine.
fn publish_dir(tmp: tempfile::TempDir, dest: &Path) -> io::Result<()> {
    let path = tmp.keep();
    match std::fs::rename(&path, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(e)
        }
    }
}

/// One node of the busybox rootfs plan.
#[derive(Debug, Clone)]
enum Node {
    Dir(u32),
    File(Arc<Vec<u8>>, u32),
    Symlink(String),
    Hardlink(String),
}

/// Host binaries of the base layer: (image path, host candidates).
const HOST_BINARIES: &[(&str, &[&str])] = &[
    ("bin/busybox", &["/bin/busybox", "/usr/bin/busybox"]),
    ("bin/ps", &["/bin/ps", "/usr/bin/ps"]),
    ("usr/bin/pgrep", &["/usr/bin/pgrep", "/bin/pgrep"]),
    ("usr/bin/pkill", &["/usr/bin/pkill", "/bin/pkill"]),
    ("usr/bin/ipcs", &["/usr/bin/ipcs", "/bin/ipcs"]),
];

/// busybox applets not linked into /bin because another package provides
/// them (procps ps).
const APPLETS_REPLACED: &[&str] = &["ps"];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
sync:x:4:100:sync:/bin:/bin/sync\n\
mail:x:8:8:mail:/var/spool/mail:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
operator:x:37:37:Operator:/var:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
adm:x:4:\n\
tty:x:5:\n\
disk:x:6:\n\
wheel:x:10:root\n\
mail:x:12:\n\
www-data:x:33:\n\
operator:x:37:\n\
staff:x:50:\n\
users:x:100:\n\
nogroup:x:65534:\n";

const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n\
networks: files\nprotocols: files\nservices: files\n";

fn find_host(candidates: &[&str]) -> io::Result<PathBuf> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "none of {candidates:?} exists on the host (needs Debian packages busybox, procps, util-linux)"
                ),
            )
        })
}

/// Paths of the shared objects `ldd` lists for `bin` (the loader included).
fn ldd(bin: &Path) -> io::Result<Vec<String>> {
    let out = run_output(Command::new("ldd").arg(bin)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "ldd {} failed ({e}); the base image needs dynamically linked binaries \
                 (Debian's busybox, not busybox-static)",
                bin.display()
            ),
        )
    })?;
    let text = String::from_utf8_lossy(&out);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(path.to_owned());
        } else if line.contains("not found") {
            return Err(io::Error::other(format!(
                "ldd {}: missing library: {line}",
                bin.display()
            )));
        }
    }
    if !libs.iter().any(|l| l.contains("ld-linux")) {
        return Err(io::Error::other(format!(
            "{} is not dynamically linked (ldd found no loader); install Debian's busybox, not busybox-static",
            bin.display()
        )));
    }
    Ok(libs)
}

/// Adds `host_path` (a library as ldd names it) to the plan at the same path,
/// following its symlink chain.
fn add_library(plan: &mut BTreeMap<String, Node>, host_path: &str) -> io::Result<()> {
    let mut current = PathBuf::from(host_path);
    for _ in 0..16 {
        let rel = current
            .to_str()
            .map(|s| s.trim_start_matches('/').to_owned())
            .ok_or_else(|| io::Error::other(format!("non-UTF-8 path {current:?}")))?;
        if plan.contains_key(&rel) {
            return Ok(());
        }
        add_parent_dirs(plan, &rel);
        let meta = std::fs::symlink_metadata(&current)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&current)?;
            let target_str = target
                .to_str()
                .ok_or_else(|| io::Error::other(format!("non-UTF-8 link in {current:?}")))?
                .to_owned();
            plan.insert(rel, Node::Symlink(target_str));
            current = match current.parent() {
                Some(dir) if target.is_relative() => dir.join(&target),
                _ => target,
            };
        } else {
            let data = std::fs::read(&current)?;
            plan.insert(
                rel,
                Node::File(Arc::new(data), meta.permissions().mode() & 0o7777),
            );
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "symlink chain too long at {host_path}"
    )))
}

fn add_parent_dirs(plan: &mut BTreeMap<String, Node>, rel: &str) {
    let mut prefix = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        plan.entry(prefix.clone()).or_insert(Node::Dir(0o755));
    }
}

/// The busybox rootfs as a plan (image path -> node), from the host's files.
fn busybox_plan() -> io::Result<BTreeMap<String, Node>> {
    let mut plan = BTreeMap::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("lib", 0o755),
        ("lib64", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("run", 0o755),
        ("sbin", 0o755),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/lib", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
        ("var/run", 0o755),
        ("var/spool", 0o755),
        ("var/spool/mail", 0o755),
        ("var/tmp", 0o1777),
        ("var/www", 0o755),
    ] {
        plan.insert(dir.to_owned(), Node::Dir(mode));
    }
    for (name, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/nsswitch.conf", NSSWITCH),
    ] {
        plan.insert(
            name.to_owned(),
            Node::File(Arc::new(text.as_bytes().to_vec()), 0o644),
        );
    }
    let mut libs = BTreeSet::new();
    for (image_path, candidates) in HOST_BINARIES {
        let host = find_host(candidates)?;
        libs.extend(ldd(&host)?);
        let data = std::fs::read(&host)?;
        plan.insert((*image_path).to_owned(), Node::File(Arc::new(data), 0o755));
    }
    for lib in &libs {
        add_library(&mut plan, lib)?;
    }
    let busybox = find_host(HOST_BINARIES[0].1)?;
    let list = run_output(Command::new(&busybox).arg("--list"))?;
    for applet in String::from_utf8_lossy(&list).lines() {
        let applet = applet.trim();
        if applet.is_empty()
            || applet.contains('/')
            || applet == "busybox"
            || APPLETS_REPLACED.contains(&applet)
        {
            continue;
        }
        let path = format!("bin/{applet}");
        plan.entry(path)
            .or_insert_with(|| Node::Hardlink("bin/busybox".to_owned()));
    }
    Ok(plan)
}

fn plan_hash(plan: &BTreeMap<String, Node>) -> String {
    let mut h = Sha256::new();
    h.update(GENERATOR_VERSION.as_bytes());
    for (path, node) in plan {
        h.update(path.as_bytes());
        h.update([0]);
        match node {
            Node::Dir(m) => h.update(format!("d{m:o}")),
            Node::File(d, m) => {
                h.update(format!("f{m:o}"));
                h.update(Sha256::digest(d.as_slice()));
            }
            Node::Symlink(t) => h.update(format!("l{t}")),
            Node::Hardlink(t) => h.update(format!("h{t}")),
        }
        h.update([0]);
    }
    short_hash(h)
}

fn materialize(plan: &BTreeMap<String, Node>, root: &Path) -> io::Result<()> {
    // BTreeMap order puts "a" before "a/b", so parents exist first, and
    // "bin/busybox" exists before the hardlinks are made (second pass).
    for (path, node) in plan {
        let dest = root.join(path);
        match node {
            Node::Dir(_) => std::fs::create_dir_all(&dest)?,
            Node::File(data, mode) => {
                std::fs::write(&dest, data.as_slice())?;
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))?;
            }
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &dest)?,
            Node::Hardlink(_) => {}
        }
    }
    for (path, node) in plan {
        match node {
            Node::Hardlink(target) => std::fs::hard_link(root.join(target), root.join(path))?,
            // Modes last, so read-only dirs (proc, sys) were writable above.
            Node::Dir(mode) => {
                std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(*mode))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Component-wise path order, the order of [`Layer::to_tar`].
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// The base layer straight from the plan (not from the materialized
/// directory, so nothing done to the cached rootfs can change it). Hardlink
/// groups get their first path in tar order as the file, like
/// [`Layer::from_dir`] does, so both give the same tar.
fn plan_layer(plan: &BTreeMap<String, Node>) -> io::Result<Layer> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (path, node) in plan {
        if let Node::Hardlink(target) = node {
            groups.entry(target.as_str()).or_default().push(path);
        }
    }
    let mut entries = Vec::new();
    for (path, node) in plan {
        match node {
            Node::Dir(mode) => entries.push(Entry::dir(path, *mode)),
            Node::Symlink(target) => entries.push(Entry::symlink(path, target)),
            Node::File(..) | Node::Hardlink(_) => {}
        }
    }
    for (path, node) in plan {
        let Node::File(data, mode) = node else {
            continue;
        };
        let mut group: Vec<&str> = vec![path];
        group.extend(groups.get(path.as_str()).into_iter().flatten());
        group.sort_by(|a, b| path_order(a, b));
        let first = group[0];
        entries.push(Entry::file_shared(first, data.clone(), *mode));
        for other in &group[1..] {
            let mut link = Entry::hardlink(other, first);
            link.mode = *mode;
            entries.push(link);
        }
    }
    for (path, node) in plan {
        if let Node::Hardlink(target) = node
            && !matches!(plan.get(target), Some(Node::File(..)))
        {
            return Err(io::Error::other(format!(
                "hardlink {path} -> {target}: target is not a file of the rootfs"
            )));
        }
    }
    Ok(Layer::new(entries))
}

/// The busybox base layer (uncompressed entries), built from the host's
/// files; the same host packages give the same tar.
pub fn busybox_layer() -> io::Result<Layer> {
    plan_layer(&busybox_plan()?)
}

/// Builds (once per set of host files) the busybox rootfs as a directory,
/// `<cache>/rootfs-busybox-<hash>`, with the contents of the base layer (for
/// chroot tests and inspection; treat it as read-only and copy it before
/// running anything in it). The layer itself is made from the host files,
/// not from this directory.
pub fn busybox_rootfs() -> io::Result<PathBuf> {
    let plan = busybox_plan()?;
    let dir = cache_dir().join(format!("rootfs-busybox-{}", plan_hash(&plan)));
    if dir.join("bin/busybox").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_dir())?;
    let tmp = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(cache_dir())?;
    materialize(&plan, tmp.path())?;
    // TempDir is created 0700: give the rootfs root the usual 0755.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    publish_dir(tmp, &dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------
// Image definitions
// ---------------------------------------------------------------------------

/// What gets pushed under a set of names.
enum Built {
    Image(BuiltImage),
    Index(BuiltIndex),
}

struct Builder {
    blobs: PathBuf,
    base: LayerBlob,
    testbin: Arc<Vec<u8>>,
}

impl Builder {
    fn new() -> io::Result<Builder> {
        let blobs = cache_dir().join("blobs");
        let base = busybox_layer()?
            .with_comment("busybox + procps + util-linux ipcs from the host's Debian packages")
            .build_cached(Compression::Gzip, &blobs)?;
        let testbin = Arc::new(std::fs::read(testbin()?)?);
        Ok(Builder {
            blobs,
            base,
            testbin,
        })
    }

    fn layer(&self, comment: &str, entries: Vec<Entry>) -> io::Result<LayerBlob> {
        Layer::new(entries)
            .with_comment(comment)
            .build_cached(Compression::Gzip, &self.blobs)
    }

    fn bin(&self, path: &str, mode: u32) -> Entry {
        Entry::file_shared(path, self.testbin.clone(), mode)
    }

    fn config(cmd: &[&str]) -> ImageConfigJson {
        ImageConfigJson {
            env: vec![PATH_ENV.to_owned()],
            cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            ..Default::default()
        }
    }

    fn ports(mut config: ImageConfigJson, ports: &[&str]) -> ImageConfigJson {
        for p in ports {
            config
                .exposed_ports
                .insert((*p).to_owned(), Default::default());
        }
        config
    }

    /// base + `/image-name` holding `name`, Cmd sh.
    fn named(&self, name: &str) -> io::Result<Image> {
        let layer = self.layer(
            &format!("image name {name}"),
            vec![Entry::file("image-name", format!("{name}\n"), 0o644)],
        )?;
        Ok(Image::new(
            vec![self.base.clone(), layer],
            Self::config(&["sh"]),
        ))
    }

    fn busybox(&self) -> Image {
        Image::new(vec![self.base.clone()], Self::config(&["sh"]))
    }

    fn with_user(&self, user: &str) -> Image {
        let mut image = self.busybox();
        image.config.user = Some(user.to_owned());
        image
    }

    fn nginx(&self) -> io::Result<Image> {
        let layer = self.layer(
            "nginx stand-in (crius-testbin)",
            vec![
                self.bin("usr/sbin/nginx", 0o755),
                Entry::dir("usr/share/nginx", 0o755),
                Entry::dir("usr/share/nginx/html", 0o755),
                Entry::file(
                    "usr/share/nginx/html/index.html",
                    "<h1>Welcome to nginx!</h1>\n",
                    0o644,
                ),
            ],
        )?;
        let mut config = Self::ports(Self::config(&["nginx", "-g", "daemon off;"]), &["80/tcp"]);
        config.stop_signal = Some("SIGTERM".to_owned());
        Ok(Image::new(vec![self.base.clone(), layer], config))
    }

    fn httpd(&self) -> io::Result<Image> {
        let layer = self.layer(
            "httpd stand-in (crius-testbin)",
            vec![
                Entry::dir("usr/local/apache2", 0o755),
                Entry::dir("usr/local/apache2/bin", 0o755),
                self.bin("usr/local/apache2/bin/httpd", 0o755),
                Entry::dir("usr/local/apache2/htdocs", 0o755),
                Entry::file(
                    "usr/local/apache2/htdocs/index.html",
                    "<html><body><h1>It works!</h1></body></html>\n",
                    0o644,
                ),
            ],
        )?;
        let mut config = Self::ports(
            Self::config(&["/usr/local/apache2/bin/httpd", "-DFOREGROUND"]),
            &["80/tcp"],
        );
        config.env = vec![
            "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                .to_owned(),
            "HTTPD_PREFIX=/usr/local/apache2".to_owned(),
        ];
        config.working_dir = Some("/usr/local/apache2".to_owned());
        Ok(Image::new(vec![self.base.clone(), layer], config))
    }

    fn nonewprivs(&self) -> io::Result<Image> {
        let layer = self.layer(
            "setuid-root nnp (crius-testbin)",
            vec![self.bin("usr/local/bin/nnp", 0o4755).owner(0, 0)],
        )?;
        let mut config = Self::config(&["/usr/local/bin/nnp"]);
        config.user = Some("1000".to_owned());
        Ok(Image::new(vec![self.base.clone(), layer], config))
    }

    fn hostnet_nginx(&self) -> io::Result<Image> {
        let layer = self.layer(
            "hostnet web server on 12003 (crius-testbin)",
            vec![self.bin("usr/local/bin/hostnet-nginx", 0o755)],
        )?;
        let config = Self::ports(
            Self::config(&["/usr/local/bin/hostnet-nginx"]),
            &["12003/tcp"],
        );
        Ok(Image::new(vec![self.base.clone(), layer], config))
    }

    fn predefined_group(&self) -> io::Result<Image> {
        let passwd =
            format!("{PASSWD}default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n");
        let group =
            format!("{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n");
        let layer = self.layer(
            "default-user 1000 in group-defined-in-image 50000",
            vec![
                Entry::file("etc/passwd", passwd, 0o644),
                Entry::file("etc/group", group, 0o644),
                Entry::dir("home/default-user", 0o755).owner(1000, 1000),
            ],
        )?;
        let mut config = Self::config(&["sh"]);
        config.user = Some("1000".to_owned());
        Ok(Image::new(vec![self.base.clone(), layer], config))
    }

    fn pause(&self) -> io::Result<Image> {
        let layer = self.layer("pause (crius-testbin)", vec![self.bin("pause", 0o755)])?;
        let config = ImageConfigJson {
            user: Some("65535:65535".to_owned()),
            env: vec![PATH_ENV.to_owned()],
            entrypoint: Some(vec!["/pause".to_owned()]),
            working_dir: Some("/".to_owned()),
            ..Default::default()
        };
        Ok(Image::new(vec![layer], config))
    }

    fn multilayer(&self) -> io::Result<Image> {
        let l1 = self.layer(
            "multilayer 1",
            vec![
                Entry::dir("data", 0o755),
                Entry::file("data/a", "a1\n", 0o644),
                Entry::file("data/b", "b\n", 0o644),
                Entry::file("data/keep", "keep\n", 0o644),
                Entry::dir("data/dir", 0o755),
                Entry::file("data/dir/x", "x\n", 0o644),
                Entry::file("data/dir/y", "y\n", 0o644),
            ],
        )?;
        let l2 = self.layer(
            "multilayer 2",
            vec![
                Entry::file("data/a", "a2\n", 0o644),
                Entry::file("data/c", "c\n", 0o644),
            ],
        )?;
        let l3 = self.layer(
            "multilayer 3: whiteout data/b, opaque data/dir",
            vec![
                Entry::whiteout("data/b"),
                Entry::dir("data/dir", 0o755),
                Entry::opaque("data/dir"),
                Entry::file("data/dir/z", "z\n", 0o644),
            ],
        )?;
        Ok(Image::new(
            vec![self.base.clone(), l1, l2, l3],
            Self::config(&["sh"]),
        ))
    }

    fn index(&self) -> io::Result<Index> {
        let mut images = Vec::new();
        for (arch, variant) in [("arm64", Some("v8")), ("amd64", None)] {
            let layer = self.layer(
                &format!("platform {arch}"),
                vec![Entry::file("platform", format!("{arch}\n"), 0o644)],
            )?;
            images.push(
                Image::new(vec![self.base.clone(), layer], Self::config(&["sh"]))
                    .with_platform(Platform::linux(arch, variant)),
            );
        }
        Ok(Index::new(images))
    }

    fn docker_schema2(&self) -> io::Result<Image> {
        Ok(self
            .named(CRIUS_DOCKER_SCHEMA2)?
            .with_format(ManifestFormat::Docker))
    }

    fn uncompressed(&self) -> io::Result<Image> {
        let layer = Layer::new(vec![
            Entry::file("image-name", format!("{CRIUS_UNCOMPRESSED}\n"), 0o644),
            Entry::file("uncompressed", "yes\n", 0o644),
        ])
        .with_comment("uncompressed layer")
        .build(Compression::None)?;
        Ok(Image::new(
            vec![self.base.clone(), layer],
            Self::config(&["sh"]),
        ))
    }

    /// Every image with the names it is pushed under.
    fn all(&self) -> io::Result<Vec<(Vec<&'static str>, Built)>> {
        let image = |i: Image| -> io::Result<Built> { Ok(Built::Image(i.build()?)) };
        let mut out: Vec<(Vec<&'static str>, Built)> = vec![
            (
                vec![
                    BUSYBOX,
                    "public.ecr.aws/docker/library/busybox:1.35.0-glibc",
                    "public.ecr.aws/docker/library/busybox:1-uclibc",
                    "public.ecr.aws/docker/library/busybox:1",
                    "public.ecr.aws/docker/library/busybox:1-glibc",
                    "public.ecr.aws/docker/library/busybox:1-musl",
                ],
                image(self.busybox())?,
            ),
            (vec![NGINX], image(self.nginx()?)?),
            (vec![HTTPD], image(self.httpd()?)?),
            (vec![NONEWPRIVS], image(self.nonewprivs()?)?),
            (vec![HOSTNET_NGINX], image(self.hostnet_nginx()?)?),
        ];
        for name in [
            "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
            "gcr.io/k8s-staging-cri-tools/test-image-tag:all",
            "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-3:latest",
        ] {
            out.push((vec![name], image(self.named(name)?)?));
        }
        out.push((
            vec![
                "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
            ],
            image(self.named(&format!("{STAGING}test-image-tags"))?)?,
        ));
        for (name, user) in [
            (
                "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
                "1002",
            ),
            (
                "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest",
                "www-data",
            ),
            (
                "gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest",
                "1003:1004",
            ),
            (
                "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
                "www-data:1004",
            ),
        ] {
            out.push((vec![name], image(self.with_user(user))?));
        }
        out.push((
            vec!["gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest"],
            image(self.predefined_group()?)?,
        ));
        out.push((vec![PAUSE, PAUSE_OLD_REGISTRY], image(self.pause()?)?));
        out.push((vec![CRIUS_MULTILAYER], image(self.multilayer()?)?));
        out.push((vec![CRIUS_INDEX], Built::Index(self.index()?.build()?)));
        out.push((vec![CRIUS_DOCKER_SCHEMA2], image(self.docker_schema2()?)?));
        out.push((vec![CRIUS_UNCOMPRESSED], image(self.uncompressed()?)?));
        Ok(out)
    }
}

/// Builds every image and pushes it to the registry at `registry_url`
/// (`http://127.0.0.1:PORT`, optionally with `user:pass@`), returning one
/// entry per name of [`all_image_names`], in that order.
pub fn push_all(registry_url: &str) -> io::Result<Vec<PushedImage>> {
    let builder = Builder::new()?;
    let mut by_name: BTreeMap<&'static str, PushedImage> = BTreeMap::new();
    for (names, built) in builder.all()? {
        // Group tags by repository so shared repos (pause) push once.
        let mut repos: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for name in &names {
            let (_, repo, tag) = split_name(name)?;
            let tags = repos.entry(repo).or_default();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let (digest, config_digest, layers) = match &built {
            Built::Image(b) => (
                b.manifest_digest.clone(),
                b.config_digest.clone(),
                b.layers.len(),
            ),
            Built::Index(b) => {
                let amd64 = b
                    .manifests
                    .iter()
                    .find(|m| m.platform.architecture == "amd64")
                    .ok_or_else(|| io::Error::other("index without a linux/amd64 entry"))?;
                (
                    b.digest.clone(),
                    amd64.config_digest.clone(),
                    amd64.layers.len(),
                )
            }
        };
        for (repo, tags) in &repos {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            match &built {
                Built::Image(b) => b.push(registry_url, repo, &tags),
                Built::Index(b) => b.push(registry_url, repo, &tags),
            }
            .map_err(|e| io::Error::new(e.kind(), format!("pushing {repo}: {e}")))?;
        }
        for name in names {
            let (_, repo, tag) = split_name(name)?;
            by_name.insert(
                name,
                PushedImage {
                    name: name.to_owned(),
                    repo,
                    tag,
                    manifest_digest: digest.clone(),
                    config_digest: config_digest.clone(),
                    layers,
                },
            );
        }
    }
    all_image_names()
        .into_iter()
        .map(|name| {
            by_name
                .remove(name)
                .ok_or_else(|| io::Error::other(format!("no image defined for {name}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names() {
        let s = |n| split_name(n).expect("split");
        assert_eq!(
            s(BUSYBOX),
            (
                Some("registry.k8s.io".into()),
                "e2e-test-images/busybox".into(),
                "1.29-2".into()
            )
        );
        assert_eq!(
            s("gcr.io/k8s-staging-cri-tools/test-image-latest"),
            (
                Some("gcr.io".into()),
                "k8s-staging-cri-tools/test-image-latest".into(),
                "latest".into()
            )
        );
        assert_eq!(s(PAUSE).1, s(PAUSE_OLD_REGISTRY).1);
        assert_eq!(
            s(CRIUS_INDEX),
            (None, "crius-test/index".into(), "latest".into())
        );
        assert_eq!(s("localhost:5000/a/b").1, "a/b");
        assert!(split_name(NOT_REPRODUCIBLE[0]).is_err());
    }

    #[test]
    fn names_are_unique() {
        let names = all_image_names();
        let set: BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len());
    }
}
