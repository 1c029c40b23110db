//! Tests of the test-image harness itself: a real `docker-registry`, every
//! test image pushed, and the pushed manifests, configs and layers read back
//! over the distribution HTTP API; plus the busybox rootfs run in a chroot
//! and the crius-testbin personalities run on the host.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::oci_image::{
    self, Compression, Entry, Image, ImageConfigJson, Layer, MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_TAR, MEDIA_TYPE_OCI_MANIFEST, TarEntryInfo,
};
use e2e::registry::{Registry, http_request};
use e2e::test_images::{self, PushedImage};
use serde_json::Value;

const STAGING: &str = "gcr.io/k8s-staging-cri-tools/";

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn by_name(images: &[PushedImage]) -> BTreeMap<&str, &PushedImage> {
    images.iter().map(|i| (i.name.as_str(), i)).collect()
}

/// Manifest JSON of `repo:reference`, checking media type and digest.
fn manifest(url: &str, repo: &str, reference: &str, media_type: &str) -> (Value, String) {
    let m = oci_image::get_manifest(url, repo, reference).expect("get manifest");
    assert_eq!(m.media_type, media_type, "{repo}:{reference}");
    assert_eq!(m.digest, oci_image::sha256_digest(&m.body));
    (json(&m.body), m.digest)
}

fn config(url: &str, repo: &str, manifest: &Value) -> Value {
    let digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    json(&oci_image::get_blob(url, repo, digest).expect("config blob"))
}

fn layer_entries(url: &str, repo: &str, layer: &Value) -> Vec<TarEntryInfo> {
    let digest = layer["digest"].as_str().expect("layer digest");
    let blob = oci_image::get_blob(url, repo, digest).expect("layer blob");
    let compression = match layer["mediaType"].as_str() {
        Some(t) if t.ends_with("gzip") => Compression::Gzip,
        _ => Compression::None,
    };
    let tar = oci_image::decompress(&blob, compression).expect("decompress");
    oci_image::tar_entries(&tar).expect("tar")
}

fn find<'a>(entries: &'a [TarEntryInfo], path: &str) -> &'a TarEntryInfo {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("layer has no {path}"))
}

#[test]
fn push_all_images_and_read_them_back() {
    let registry = Registry::start().expect("start registry");
    let url = registry.url();
    assert_eq!(url, format!("http://{}", registry.host()));
    let started = Instant::now();
    let images = test_images::push_all(&url).expect("push all");
    eprintln!("push_all took {:?}", started.elapsed());

    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, test_images::all_image_names());
    let img = by_name(&images);

    // Repository paths keep the full path, without the registry host.
    let busybox = img[test_images::BUSYBOX];
    assert_eq!(
        (busybox.repo.as_str(), busybox.tag.as_str()),
        ("e2e-test-images/busybox", "1.29-2")
    );
    let tag_test = img["gcr.io/k8s-staging-cri-tools/test-image-tag:test"];
    assert_eq!(tag_test.repo, "k8s-staging-cri-tools/test-image-tag");
    let ecr = img["public.ecr.aws/docker/library/busybox:1.35.0-glibc"];
    assert_eq!(ecr.repo, "docker/library/busybox");
    assert_eq!(ecr.manifest_digest, busybox.manifest_digest);

    // One image, three tags; three images, three digests; pause from both
    // registries is the same image.
    let tags: Vec<&str> = (1..=3)
        .map(|i| {
            img[format!("{STAGING}test-image-tags:{i}").as_str()]
                .manifest_digest
                .as_str()
        })
        .collect();
    assert!(tags.iter().all(|d| *d == tags[0]), "{tags:?}");
    let distinct: Vec<&str> = (1..=3)
        .map(|i| {
            img[format!("{STAGING}test-image-{i}:latest").as_str()]
                .manifest_digest
                .as_str()
        })
        .collect();
    assert_ne!(distinct[0], distinct[1]);
    assert_ne!(distinct[1], distinct[2]);
    assert_ne!(distinct[0], distinct[2]);
    assert_ne!(
        tag_test.manifest_digest,
        img["gcr.io/k8s-staging-cri-tools/test-image-tag:all"].manifest_digest
    );
    assert_eq!(
        img[test_images::PAUSE].manifest_digest,
        img[test_images::PAUSE_OLD_REGISTRY].manifest_digest
    );
    // Everything that is not meant to share must differ.
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in &images {
        groups
            .entry(i.manifest_digest.as_str())
            .or_default()
            .push(&i.name);
    }
    for names in groups.values().filter(|n| n.len() > 1) {
        let shared = names.iter().all(|n| n.contains("test-image-tags:"))
            || names.iter().all(|n| n.contains("/pause:"))
            || names.iter().all(|n| n.contains("busybox:"));
        assert!(shared, "unexpected shared digest: {names:?}");
    }

    // Manifests and configs over HTTP; config User of the user images.
    for (suffix, user) in [
        ("test-image-user-uid:latest", "1002"),
        ("test-image-user-username:latest", "www-data"),
        ("test-image-user-uid-group:latest", "1003:1004"),
        ("test-image-user-username-group:latest", "www-data:1004"),
        ("test-image-predefined-group:latest", "1000"),
    ] {
        let p = img[format!("{STAGING}{suffix}").as_str()];
        let (m, digest) = manifest(&url, &p.repo, &p.tag, MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(digest, p.manifest_digest);
        assert_eq!(m["config"]["digest"], p.config_digest.as_str());
        let c = config(&url, &p.repo, &m);
        assert_eq!(c["config"]["User"], user, "{suffix}");
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(
            c["rootfs"]["diff_ids"].as_array().map(Vec::len),
            Some(p.layers)
        );
    }

    // The busybox layer: busybox with applets, procps, ipcs, their libs.
    let (m, _) = manifest(&url, &busybox.repo, &busybox.tag, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(m["layers"][0]["mediaType"], MEDIA_TYPE_OCI_LAYER_GZIP);
    let c = config(&url, &busybox.repo, &m);
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["sh"]));
    let entries = layer_entries(&url, &busybox.repo, &m["layers"][0]);
    for path in [
        "bin/busybox",
        "bin/sh",
        "bin/ls",
        "bin/top",
        "bin/pidof",
        "bin/ps",
        "usr/bin/pgrep",
        "usr/bin/pkill",
        "usr/bin/ipcs",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libproc2.so.0",
        "etc/passwd",
        "etc/group",
    ] {
        find(&entries, path);
    }
    let sh = find(&entries, "bin/sh");
    let busybox_entry = find(&entries, "bin/busybox");
    // Applets are hardlinks of one file (the first in tar order), not symlinks.
    let primary = |e: &TarEntryInfo| {
        if e.kind == '1' {
            e.link.clone()
        } else {
            e.path.clone()
        }
    };
    assert_eq!(primary(sh), primary(busybox_entry));
    assert_eq!(primary(find(&entries, "bin/ls")), primary(busybox_entry));
    assert_eq!(find(&entries, &primary(busybox_entry)).kind, '0');
    assert_eq!(find(&entries, "bin/ps").kind, '0', "ps is procps's");
    assert_eq!(
        (find(&entries, "tmp").mode, find(&entries, "tmp").kind),
        (0o1777, '5')
    );
    assert!(entries.iter().all(|e| e.uid == 0 && e.gid == 0));
    let passwd = String::from_utf8_lossy(&find(&entries, "etc/passwd").data).into_owned();
    for user in ["root:x:0:0:", "www-data:x:33:33:", "nobody:x:65534:65534:"] {
        assert!(passwd.contains(user), "{passwd}");
    }

    // nonewprivs: setuid-root nnp, USER 1000; shares the base layer.
    let nnp = img[test_images::NONEWPRIVS];
    let (m, _) = manifest(&url, &nnp.repo, &nnp.tag, MEDIA_TYPE_OCI_MANIFEST);
    let (bm, _) = manifest(&url, &busybox.repo, &busybox.tag, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(m["layers"][0]["digest"], bm["layers"][0]["digest"]);
    let e = layer_entries(&url, &nnp.repo, &m["layers"][1]);
    let bin = find(&e, "usr/local/bin/nnp");
    assert_eq!((bin.mode, bin.uid, bin.gid), (0o4755, 0, 0));
    assert_eq!(config(&url, &nnp.repo, &m)["config"]["User"], "1000");

    // nginx: the binary is /usr/sbin/nginx (comm "nginx").
    let nginx = img[test_images::NGINX];
    let (m, _) = manifest(&url, &nginx.repo, &nginx.tag, MEDIA_TYPE_OCI_MANIFEST);
    find(
        &layer_entries(&url, &nginx.repo, &m["layers"][1]),
        "usr/sbin/nginx",
    );

    // crius-test/multilayer: whiteout and opaque dir in the top layer.
    let ml = img[test_images::CRIUS_MULTILAYER];
    let (m, _) = manifest(&url, &ml.repo, &ml.tag, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(m["layers"].as_array().map(Vec::len), Some(4));
    let top = layer_entries(&url, &ml.repo, &m["layers"][3]);
    find(&top, "data/.wh.b");
    find(&top, "data/dir/.wh..wh..opq");
    find(&top, "data/dir/z");

    // crius-test/index: arm64 first, amd64 second, /platform says amd64.
    let ix = img[test_images::CRIUS_INDEX];
    let (index, digest) = manifest(&url, &ix.repo, &ix.tag, MEDIA_TYPE_OCI_INDEX);
    assert_eq!(digest, ix.manifest_digest);
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(index["manifests"][0]["platform"]["variant"], "v8");
    assert_eq!(index["manifests"][1]["platform"]["architecture"], "amd64");
    let amd64 = index["manifests"][1]["digest"].as_str().expect("digest");
    let (m, _) = manifest(&url, &ix.repo, amd64, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(m["config"]["digest"], ix.config_digest.as_str());
    let platform = layer_entries(&url, &ix.repo, &m["layers"][1]);
    assert_eq!(find(&platform, "platform").data, b"amd64\n");
    let arm = index["manifests"][0]["digest"].as_str().expect("digest");
    let (m, _) = manifest(&url, &ix.repo, arm, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(config(&url, &ix.repo, &m)["architecture"], "arm64");

    // crius-test/docker-schema2: Docker media types throughout.
    let d = img[test_images::CRIUS_DOCKER_SCHEMA2];
    let (m, _) = manifest(&url, &d.repo, &d.tag, MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], MEDIA_TYPE_DOCKER_CONFIG);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // crius-test/uncompressed: a plain tar layer.
    let u = img[test_images::CRIUS_UNCOMPRESSED];
    let (m, _) = manifest(&url, &u.repo, &u.tag, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(m["layers"][1]["mediaType"], MEDIA_TYPE_OCI_LAYER_TAR);
    assert_eq!(
        find(
            &layer_entries(&url, &u.repo, &m["layers"][1]),
            "uncompressed"
        )
        .data,
        b"yes\n"
    );

    // pause: a single layer with /pause.
    let p = img[test_images::PAUSE];
    let (m, _) = manifest(&url, "pause", "3.9", MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(p.layers, 1);
    assert_eq!(
        config(&url, "pause", &m)["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );

    // Pushing again (blobs already there) gives the same digests.
    let again = test_images::push_all(&url).expect("push again");
    assert_eq!(again, images);

    // Drop kills and reaps the registry.
    let pid = registry.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(registry);
    let gone = !Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| !c.contains("docker-registry"))
            .unwrap_or(true);
    assert!(gone, "registry process {pid} still there after drop");
    assert!(http_request("GET", &format!("{url}/v2/"), &[], &[]).is_err());
}

#[test]
fn registry_with_basic_auth() {
    let registry = Registry::start_with_basic_auth("crius", "s3cret:pw").expect("start");
    let plain = registry.url();
    let authed = registry.url_with_credentials();
    assert!(authed.contains('@'));
    let resp = http_request("GET", &format!("{plain}/v2/"), &[], &[]).expect("GET");
    assert_eq!(resp.status, 401);
    let resp = http_request("GET", &format!("{authed}/v2/"), &[], &[]).expect("GET");
    assert_eq!(resp.status, 200);

    let layer = Layer::new(vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/hello", "hi\n", 0o644),
    ])
    .build(Compression::Gzip)
    .expect("layer");
    let image = Image::new(vec![layer], ImageConfigJson::default());
    assert!(image.push(&plain, "auth/test", "v1").is_err());
    let pushed = image
        .push(&authed, "auth/test", "v1")
        .expect("push with credentials");
    let m = oci_image::get_manifest(&authed, "auth/test", "v1").expect("get");
    assert_eq!(m.digest, pushed.digest);
}

/// Runs `sh -c script` in `rootfs` with chroot(8) (as `userspec` when
/// given); root only.
fn in_rootfs(rootfs: &Path, userspec: Option<&str>, script: &str) -> (i32, String, String) {
    let mut cmd = Command::new("chroot");
    if let Some(spec) = userspec {
        cmd.arg(format!("--userspec={spec}"));
    }
    let out = cmd
        .arg(rootfs)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .expect("run chroot");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn busybox_rootfs_works_in_a_chroot() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        sandbox_api::testing::skip(
            "test_images::busybox_rootfs_works_in_a_chroot",
            "chroot needs root",
        );
        return;
    }
    let cached = test_images::busybox_rootfs().expect("rootfs");
    // Second call: from the cache, same directory.
    assert_eq!(test_images::busybox_rootfs().expect("rootfs again"), cached);
    // The directory holds exactly the base layer.
    let layer = test_images::busybox_layer().expect("layer");
    assert!(
        Layer::from_dir(&cached)
            .expect("from_dir")
            .to_tar()
            .expect("tar")
            == layer.to_tar().expect("tar"),
        "cached rootfs differs from the base layer"
    );

    // Run in a copy: commands may write (no /dev or /proc is mounted).
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = work.path().join("rootfs");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&cached)
        .arg(&rootfs)
        .status()
        .expect("cp");
    assert!(status.success());

    let (code, out, err) = in_rootfs(
        &rootfs,
        None,
        "echo -n hello; ls -A / >/tmp/ls && hostname >/tmp/h \
         && for c in cat echo sleep top pgrep pkill ps ipcs id ip nc wget pidof mount netstat seq \
         grep touch mkdir chmod find head tail wc env true false test printf stat brctl ping sync; do \
         command -v $c >/tmp/c || echo missing $c; done",
    );
    assert_eq!((code, out.as_str(), err.as_str()), (0, "hello", ""));
    let (_, out, err) = in_rootfs(&rootfs, Some("65534:65534"), "id -nu; id -u");
    assert_eq!(out, "nobody\n65534\n", "{err}");
    let (_, out, err) = in_rootfs(&rootfs, Some("33:33"), "id -nu");
    assert_eq!(out, "www-data\n", "{err}");
    // The dynamically linked procps and util-linux tools find their libraries.
    // (ps itself refuses to run without /proc; the loader's trace mode shows
    // its libraries resolve.)
    let (code, out, err) = in_rootfs(
        &rootfs,
        None,
        "ipcs -m && pgrep --version && LD_TRACE_LOADED_OBJECTS=1 ps && LD_TRACE_LOADED_OBJECTS=1 pkill",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Shared Memory") && out.contains("procps"),
        "{out}{err}"
    );
    assert!(
        out.contains("libproc2.so.0 => /lib/x86_64-linux-gnu/libproc2.so.0"),
        "{out}"
    );
    assert!(!out.contains("not found"), "{out}");
    // The shell looks commands up on disk (critest's MaskedPaths test needs
    // "/bin/sh: ls: Permission denied" when /bin/ls is not executable).
    let (code, _, err) = in_rootfs(&rootfs, None, "PATH=/nonexistent; ls");
    assert_eq!(code, 127, "{err}");
    // Like a /dev/null bind mount over /bin/ls (bin/ls is a hardlink of
    // busybox, so replace the name rather than chmod the shared inode).
    let ls = rootfs.join("bin/ls");
    std::fs::remove_file(&ls).expect("rm ls");
    std::fs::write(&ls, "").expect("write ls");
    std::fs::set_permissions(&ls, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = in_rootfs(&rootfs, None, "ls");
    assert_eq!(
        (code, err.as_str()),
        (126, "/bin/sh: ls: Permission denied\n")
    );
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn testbin_personalities() {
    let bin = test_images::testbin().expect("testbin");
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["nginx", "nnp", "pause"] {
        std::fs::copy(&bin, dir.path().join(name)).expect("copy");
    }

    let out = Command::new(dir.path().join("nnp")).output().expect("nnp");
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("Effective uid: {euid}\n")
    );

    // Port 0: it binds one the kernel picks and says which (no free-port
    // race with other tests).
    let pidfile = dir.path().join("run/nginx.pid");
    let mut nginx = Child(
        Command::new(dir.path().join("nginx"))
            .args(["-g", "daemon off;"])
            .env("CRIUS_TESTBIN_PORT", "0")
            .env("CRIUS_TESTBIN_PIDFILE", &pidfile)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nginx"),
    );
    let mut said = String::new();
    // Kept open until the end: nginx may say more.
    let mut nginx_stderr = std::io::BufReader::new(nginx.0.stderr.take().expect("stderr"));
    std::io::BufRead::read_line(&mut nginx_stderr, &mut said).expect("nginx's first line");
    let port: u16 = said
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {said:?}"));
    let pid = nginx.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match http_request("GET", &format!("http://127.0.0.1:{port}/"), &[], &[]) {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => panic!("nginx never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(resp.status, 200);
    assert!(resp.body_text().contains("nginx"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "nginx");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(String::from_utf8_lossy(&cmdline).contains("nginx: master process"));
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pid file").trim(),
        pid.to_string()
    );
    // SAFETY: signals our own child by PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = nginx.0.wait().expect("wait nginx");
    assert!(status.success(), "{status:?}");

    let mut pause = Child(
        Command::new(dir.path().join("pause"))
            .spawn()
            .expect("pause"),
    );
    // It sits in pause(2) (x86_64 syscall 34), not exited.
    let pid = pause.0.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.starts_with("34 "))
    {
        assert!(
            pause.0.try_wait().expect("try_wait").is_none(),
            "pause exited early"
        );
        assert!(std::time::Instant::now() < deadline, "pause never paused");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signals our own child by PID.
    unsafe { libc::kill(pause.0.id() as i32, libc::SIGINT) };
    assert!(pause.0.wait().expect("wait pause").success());
}
