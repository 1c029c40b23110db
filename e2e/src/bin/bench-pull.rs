//! `bench-pull`: cold `PullImage` of a ~200 MB, five-layer image, crius
//! against Debian's containerd 1.6, both served by the same local registry.
//!
//! ```text
//! cargo run --release -p e2e --bin bench-pull -- [--rounds N] [--crius PATH]
//!     [--containerd PATH] [--settle SECS] [--crius-parallel-layers N]
//!     [--restart-crius] [--crius-before PATH]
//! ```
//!
//! 1. Starts a local `docker-registry` ([`e2e::registry::Registry`]) and
//!    pushes `bench/big:latest`: one gzip layer per host directory of
//!    [`LAYER_DIRS`] (installed Debian packages), built deterministically by
//!    [`e2e::oci_image`]. Compressed blobs are cached in [`CACHE_DIR`], so
//!    reruns only re-read the directories and re-hash the tars.
//! 2. Starts the release crius ([`e2e::crius::Crius`], `log_level = "warn"`)
//!    and, per round, a fresh containerd (own root, state, socket, generated
//!    version 2 config with a CRI registry mirror for the local registry and
//!    the overlayfs snapshotter; no CNI).
//! 3. Each round first makes both stores cold: crius gets `RemoveImage` and
//!    must then report (almost) zero bytes in `ImageFsInfo`; containerd,
//!    whose garbage collection is lazy, is restarted on an empty root (the
//!    previous one is deleted). Then it `sync(2)`s and waits `--settle`
//!    seconds (65 by default, see [`settle`]: freshly deleted inodes make
//!    file creation on this host's journal-less ext4 slow). Then it pulls
//!    once per runtime, alternating which goes first. Before each pull it
//!    calls `sync(2)` again (so no pull pays for writing back the previous
//!    one's dirty pages) and waits until the shared host's CPUs are nearly
//!    idle. Only the `PullImage` RPC is timed (wall clock), together with
//!    the CPU time the runtime process used meanwhile and the CPU time used
//!    by the rest of the host (minus the registry and this program).
//! 4. Prints per-round times, the medians and the ratio containerd / crius;
//!    exits nonzero if any pull failed.
//!
//! `--restart-crius` also restarts crius (same root) before each of its
//! pulls, as containerd is, to show that a warm process is not what makes
//! the difference; `--crius-parallel-layers N` sets crius's
//! `[image] parallel_layers`. `--crius-before PATH` also measures an
//! earlier crius binary in the same rounds (its own root), for before and
//! after figures.
//!
//! The host's page cache is never dropped: the registry's blobs are warm in
//! it for both runtimes alike. Every child process gets `PR_SET_PDEATHSIG`
//! and is started from the main thread, so none outlives the benchmark;
//! they are stopped by PID.

use e2e::bench::{
    block_on, clk_tck, default_crius, host_busy_secs, median, nproc, toml_str, unmount_under,
};
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::{
    ImageFsInfoRequest, ImageSpec, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use e2e::crius::{Crius, die_with_parent};
use e2e::oci_image::{Compression, Entry, EntryKind, Image, ImageConfigJson, Layer, human_size};
use e2e::registry::Registry;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: bench-pull [--rounds N (default 5)] [--crius PATH] \
                     [--containerd PATH] [--crius-parallel-layers N] [--restart-crius] \
                     [--settle SECS (default 65)] [--crius-before PATH]\n\
                     --settle SECS              wait after emptying the stores, before the pulls\n\
                     --crius-parallel-layers N  sets crius's [image] parallel_layers\n\
                     --restart-crius            restarts crius (same root) before each pull, \
                     as containerd is";

/// The image's layers, bottom first: host directories of installed Debian
/// packages (Debian 12), stored in the image under the same path.
const LAYER_DIRS: &[(&str, &str)] = &[
    ("/usr/lib/gcc/x86_64-linux-gnu/12", "gcc-12, g++-12, cpp-12"),
    ("/usr/lib/x86_64-linux-gnu/perl/5.36.0", "libperl5.36"),
    ("/usr/share/perl/5.36.0", "perl-modules-5.36"),
    ("/usr/lib/git-core", "git"),
    ("/usr/share/i18n", "locales"),
];

/// Compressed layer blobs, keyed by diff_id (see `Layer::build_cached`).
const CACHE_DIR: &str = "/var/tmp/crius-bench-cache";

const REPO: &str = "bench/big";
const TAG: &str = "latest";

/// Longest a single `PullImage` may take before the round counts as failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// `ImageFsInfo` used bytes that still count as an empty crius store
/// (the metadata database and empty directories).
const EMPTY_STORE_BYTES: u64 = 1 << 20;

struct Args {
    rounds: usize,
    crius: PathBuf,
    containerd: PathBuf,
    crius_parallel_layers: Option<usize>,
    restart_crius: bool,
    settle: u64,
    crius_before: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut rounds = 5usize;
    let mut crius = None;
    let mut containerd = PathBuf::from("/usr/bin/containerd");
    let mut parallel = None;
    let mut restart_crius = false;
    let mut settle = 65u64;
    let mut crius_before = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        if name == "--restart-crius" {
            restart_crius = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--rounds" => {
                let v = value()?;
                rounds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--rounds wants a positive number, got {v:?}"))?;
            }
            "--crius" => crius = Some(PathBuf::from(value()?)),
            "--crius-before" => crius_before = Some(PathBuf::from(value()?)),
            "--settle" => {
                let v = value()?;
                settle = v
                    .parse()
                    .map_err(|_| format!("--settle wants seconds, got {v:?}"))?;
            }
            "--containerd" => containerd = PathBuf::from(value()?),
            "--crius-parallel-layers" => {
                let v = value()?;
                parallel = Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--crius-parallel-layers wants a positive number, got {v:?}")
                })?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let crius = match crius {
        Some(p) => p,
        None => default_crius(),
    };
    if !crius.is_file() {
        return Err(format!(
            "crius binary {} not found: build it with `cargo build --release -p cri-server \
             --bin crius` or pass --crius PATH",
            crius.display()
        ));
    }
    if !containerd.is_file() {
        return Err(format!(
            "containerd binary {} not found: install Debian's containerd (scripts/setup) or \
             pass --containerd PATH",
            containerd.display()
        ));
    }
    Ok(Args {
        rounds,
        crius,
        containerd,
        crius_parallel_layers: parallel,
        restart_crius,
        settle,
        crius_before,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("bench-pull: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: still single-threaded: no runtime, registry or helper thread
    // exists yet, so nothing reads the environment concurrently.
    unsafe {
        // Crius::start runs $CRIUS_BIN; RUST_LOG would override log_level.
        std::env::set_var("CRIUS_BIN", &args.crius);
        std::env::remove_var("RUST_LOG");
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-pull: some pulls failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-pull: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole benchmark; `Ok(false)` when a pull failed.
fn run(args: &Args) -> Res<bool> {
    let registry = Registry::start()?;
    let info = build_and_push(&registry)?;
    let image = format!("{}/{REPO}:{TAG}", registry.host());
    println!("image {image}: {}", info.summary());
    println!("machine: {} cores (nproc)", nproc());

    let mut crius = start_crius(&args.crius, &registry, args.crius_parallel_layers)?;
    println!(
        "crius {} (pid {})",
        args.crius.display(),
        crius.pid().unwrap_or(0)
    );
    let mut before = match &args.crius_before {
        Some(bin) => {
            let c = start_crius(bin, &registry, args.crius_parallel_layers)?;
            println!(
                "crius-before {} (pid {})",
                bin.display(),
                c.pid().unwrap_or(0)
            );
            Some(c)
        }
        None => None,
    };
    let mut containerd = Containerd::new(&args.containerd, &registry)?;

    let mut rows: Vec<Row> = Vec::new();
    let mut ok = true;
    let mut kinds = vec![Runtime::Crius, Runtime::Containerd];
    if before.is_some() {
        kinds.push(Runtime::CriusBefore);
    }
    for round in 0..args.rounds {
        // Each runtime goes first in turn.
        let mut order = kinds.clone();
        order.rotate_left(round % kinds.len());
        let mut row = Row {
            first: order[0],
            crius: None,
            containerd: None,
            crius_before: None,
        };
        // Every store is emptied first, then left to settle, then pulled.
        let mut cold_c = cold_crius(&mut crius, args.restart_crius, &image);
        let mut cold_d = cold_containerd(&mut containerd);
        let mut cold_b = match before.as_mut() {
            Some(b) => cold_crius(b, args.restart_crius, &image),
            None => Ok(()),
        };
        settle(args.settle);
        for &rt_kind in &order {
            let res = match rt_kind {
                Runtime::Crius => std::mem::replace(&mut cold_c, Ok(()))
                    .and_then(|()| pull_crius(&crius, &image, registry.pid())),
                Runtime::Containerd => std::mem::replace(&mut cold_d, Ok(()))
                    .and_then(|()| pull_containerd(&containerd, &image, registry.pid())),
                Runtime::CriusBefore => match before.as_ref() {
                    Some(b) => std::mem::replace(&mut cold_b, Ok(()))
                        .and_then(|()| pull_crius(b, &image, registry.pid())),
                    None => continue,
                },
            };
            match res {
                Ok(p) => {
                    println!(
                        "round {round} {:<10} {:>6.2} s  cpu {:>5.2} s (sys {:>5.2} s)  \
                         rest of host cpu {:>5.2} s  \
                         (waited {:.0} s for quiet; after: {} unpacked, {} on disk)",
                        rt_kind.name(),
                        p.secs,
                        p.cpu,
                        p.sys,
                        p.others_cpu,
                        p.waited,
                        human_size(p.unpacked_bytes),
                        human_size(p.disk_bytes)
                    );
                    match rt_kind {
                        Runtime::Crius => row.crius = Some(p),
                        Runtime::Containerd => row.containerd = Some(p),
                        Runtime::CriusBefore => row.crius_before = Some(p),
                    }
                }
                Err(e) => {
                    ok = false;
                    println!("round {round} {:<10} FAILED: {e}", rt_kind.name());
                }
            }
        }
        rows.push(row);
    }
    drop(containerd);
    for c in std::iter::once(&mut crius).chain(before.as_mut()) {
        if let Ok(Some(status)) = c.stop()
            && !status.success()
        {
            println!("note: crius exited with {status}");
        }
    }
    print!("{}", table(&rows));
    Ok(ok)
}

// ---------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------

struct LayerInfo {
    dir: &'static str,
    package: &'static str,
    files: usize,
    tar_bytes: u64,
    gzip_bytes: u64,
}

struct ImageInfo {
    layers: Vec<LayerInfo>,
}

impl ImageInfo {
    fn summary(&self) -> String {
        let tar: u64 = self.layers.iter().map(|l| l.tar_bytes).sum();
        let gz: u64 = self.layers.iter().map(|l| l.gzip_bytes).sum();
        let mut s = format!(
            "{} layers, {} uncompressed ({tar} B), {} gzip ({gz} B)",
            self.layers.len(),
            human_size(tar),
            human_size(gz)
        );
        for l in &self.layers {
            let _ = write!(
                s,
                "\n  {:<40} {:<24} {:>5} files  tar {:>10}  gz {:>10}",
                l.dir,
                l.package,
                l.files,
                human_size(l.tar_bytes),
                human_size(l.gzip_bytes)
            );
        }
        s
    }
}

/// Builds one layer per [`LAYER_DIRS`] entry and pushes the image.
fn build_and_push(registry: &Registry) -> Res<ImageInfo> {
    let started = Instant::now();
    let cache = Path::new(CACHE_DIR);
    let mut blobs = Vec::new();
    let mut infos = Vec::new();
    for (dir, package) in LAYER_DIRS {
        let layer = dir_layer(Path::new(dir))
            .map_err(|e| format!("layer from {dir} (Debian package {package}): {e}"))?
            .with_comment(&format!("bench-pull: {dir} ({package})"));
        let files = layer
            .entries()
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File(_)))
            .count();
        let tar_bytes = layer.to_tar()?.len() as u64;
        let blob = layer
            .build_cached(Compression::Gzip, cache)
            .map_err(|e| format!("gzip layer {dir} (cache {CACHE_DIR}): {e}"))?;
        infos.push(LayerInfo {
            dir,
            package,
            files,
            tar_bytes,
            gzip_bytes: blob.data.len() as u64,
        });
        blobs.push(blob);
    }
    let config = ImageConfigJson {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cmd: Some(vec!["/bin/sh".into()]),
        ..ImageConfigJson::default()
    };
    let pushed = Image::new(blobs, config).push(&registry.url(), REPO, TAG)?;
    println!(
        "built and pushed {REPO}:{TAG} ({}) in {:.1} s",
        pushed.digest,
        started.elapsed().as_secs_f64()
    );
    Ok(ImageInfo { layers: infos })
}

/// `dir`'s tree as a layer at the same path: its ancestors (host modes),
/// itself and everything below. A missing directory is an error.
fn dir_layer(dir: &Path) -> Res<Layer> {
    let meta = fs::symlink_metadata(dir).map_err(|e| {
        format!(
            "{} is missing ({e}); install its package or change LAYER_DIRS",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    let prefix = dir
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", dir.display()))?
        .trim_start_matches('/')
        .to_owned();
    let mut layer = Layer::new(Vec::new());
    let mut ancestor = String::new();
    for component in prefix.split('/') {
        if !ancestor.is_empty() {
            ancestor.push('/');
        }
        ancestor.push_str(component);
        let host = Path::new("/").join(&ancestor);
        let m = fs::symlink_metadata(&host)?;
        if !m.is_dir() {
            return Err(format!("{} is not a plain directory", host.display()).into());
        }
        layer.push(Entry::dir(
            &ancestor,
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
        ));
    }
    for mut entry in Layer::from_dir(dir)?.entries().iter().cloned() {
        entry.path = format!("{prefix}/{}", entry.path);
        if let EntryKind::Hardlink(target) = &mut entry.kind {
            *target = format!("{prefix}/{target}");
        }
        layer.push(entry);
    }
    Ok(layer)
}

// ---------------------------------------------------------------------------
// Runtimes and rounds
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Crius,
    Containerd,
    CriusBefore,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Crius => "crius",
            Runtime::Containerd => "containerd",
            Runtime::CriusBefore => "crius-before",
        }
    }
}

struct Row {
    first: Runtime,
    crius: Option<Pulled>,
    containerd: Option<Pulled>,
    crius_before: Option<Pulled>,
}

struct Pulled {
    /// Wall clock of the `PullImage` RPC.
    secs: f64,
    /// CPU time (user + system) the runtime process used during it.
    cpu: f64,
    /// The kernel part of `cpu`.
    sys: f64,
    /// CPU time used during it by the rest of the host: everything but the
    /// runtime, the registry and this program (other engineers' builds,
    /// kernel writeback and journal threads).
    others_cpu: f64,
    /// How long the pull waited for the host to be quiet first.
    waited: f64,
    /// Apparent size of the unpacked layer files (a check that the
    /// runtime really unpacked them).
    unpacked_bytes: u64,
    /// Apparent size of every file under the runtime's root.
    disk_bytes: u64,
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..ImageSpec::default()
    })
}

/// Starts the crius `bin` with a mirror for the registry and
/// `log_level = "warn"`.
fn start_crius(bin: &Path, registry: &Registry, parallel_layers: Option<usize>) -> Res<Crius> {
    let host = registry.host();
    let url = registry.url();
    let extra = match parallel_layers {
        Some(n) => format!("[image]\nparallel_layers = {n}\n"),
        None => String::new(),
    };
    let mut crius = Crius::start_with(bin, &[(host.as_str(), url.as_str())], &extra)?;
    // Crius::start writes its own log_level (verbose, for the tests);
    // restart it on a config that says "warn" (same dirs, nothing pulled).
    crius.stop()?;
    let text = fs::read_to_string(&crius.config)?;
    let mut replaced = false;
    let warn: String = text
        .lines()
        .map(|line| {
            if !replaced && line.trim_start().starts_with("log_level") {
                replaced = true;
                "log_level = \"warn\"\n".to_owned()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    if !replaced {
        return Err(format!("no log_level line to replace in {}", crius.config.display()).into());
    }
    fs::write(&crius.config, warn)?;
    crius.kill_and_restart()?;
    Ok(crius)
}

async fn image_fs_used(client: &mut ImageServiceClient<Channel>) -> Res<u64> {
    let resp = client
        .image_fs_info(ImageFsInfoRequest::default())
        .await?
        .into_inner();
    Ok(resp
        .image_filesystems
        .iter()
        .filter_map(|f| f.used_bytes.as_ref().map(|u| u.value))
        .sum())
}

/// Empties crius's store and checks that `ImageFsInfo` reports (almost)
/// nothing; restarts crius (same root) if asked.
fn cold_crius(crius: &mut Crius, restart: bool, image: &str) -> Res<()> {
    block_on(async {
        let mut client = crius.images().await;
        client
            .remove_image(RemoveImageRequest { image: spec(image) })
            .await
            .map_err(|e| format!("RemoveImage: {e}"))?;
        let used = image_fs_used(&mut client).await?;
        if used > EMPTY_STORE_BYTES {
            return Err(format!(
                "crius still reports {} used after RemoveImage; not cold",
                human_size(used)
            )
            .into());
        }
        Res::Ok(())
    })??;
    if restart {
        crius.stop()?;
        crius.kill_and_restart()?;
    }
    Ok(())
}

/// Times one crius pull.
fn pull_crius(crius: &Crius, image: &str, registry_pid: u32) -> Res<Pulled> {
    let pid = crius.pid().ok_or("crius is not running")?;
    let (t, unpacked_bytes) = block_on(async {
        let mut client = crius.images().await;
        let t = timed_pull(&mut client, image, pid, registry_pid).await?;
        Res::Ok((t, image_fs_used(&mut client).await?))
    })??;
    Ok(Pulled {
        secs: t.secs,
        cpu: t.cpu,
        sys: t.sys,
        others_cpu: t.others_cpu,
        waited: t.waited,
        unpacked_bytes,
        disk_bytes: tree_bytes(&crius.root),
    })
}

/// Restarts containerd on an empty root and checks it lists no image.
fn cold_containerd(containerd: &mut Containerd) -> Res<()> {
    containerd.restart_fresh()?;
    let socket = containerd.socket()?;
    block_on(async {
        let mut client = ImageServiceClient::new(unix_channel(&socket).await?);
        let have = client
            .list_images(ListImagesRequest::default())
            .await?
            .into_inner()
            .images;
        if !have.is_empty() {
            return Err(format!("fresh containerd already lists {} images", have.len()).into());
        }
        Res::Ok(())
    })?
}

/// Times one containerd pull.
fn pull_containerd(containerd: &Containerd, image: &str, registry_pid: u32) -> Res<Pulled> {
    let socket = containerd.socket()?;
    let pid = containerd.pid().ok_or("containerd is not running")?;
    let t = block_on(async {
        let mut client = ImageServiceClient::new(unix_channel(&socket).await?);
        timed_pull(&mut client, image, pid, registry_pid).await
    })??;
    Ok(Pulled {
        secs: t.secs,
        cpu: t.cpu,
        sys: t.sys,
        others_cpu: t.others_cpu,
        waited: t.waited,
        unpacked_bytes: containerd.snapshot_bytes(),
        disk_bytes: containerd.root_bytes(),
    })
}

/// `sync(2)`, then sleeps `secs`: ext4 without a journal (this host's root
/// file system) skips inodes freed in the last 60 s when it allocates new
/// ones (`recently_deleted()` in fs/ext4/ialloc.c, 360 s while the inode
/// table block is dirty), and that scan makes file creation right after
/// the removal of a whole image several times slower.
fn settle(secs: u64) {
    if secs == 0 {
        return;
    }
    nix::unistd::sync();
    std::thread::sleep(Duration::from_secs(secs));
}

struct Timing {
    secs: f64,
    cpu: f64,
    sys: f64,
    others_cpu: f64,
    waited: f64,
}

/// Times one `PullImage` RPC (wall clock) and the CPU used meanwhile by the
/// runtime (`pid`) and by everything else. First `sync(2)`, so that no pull
/// pays for writing back the previous pull's dirty pages (nothing is
/// dropped from the page cache), then waits for the host to be quiet.
async fn timed_pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    pid: u32,
    registry_pid: u32,
) -> Res<Timing> {
    let req = PullImageRequest {
        image: spec(image),
        ..PullImageRequest::default()
    };
    nix::unistd::sync();
    let waited = wait_quiet().await?;
    let ours = [pid, registry_pid, std::process::id()];
    let host0 = host_busy_secs()?;
    let sys0 = proc_cpu(pid)?.1;
    let procs0: Vec<f64> = ours.iter().map(|p| proc_cpu_secs(*p)).collect::<Res<_>>()?;
    let started = Instant::now();
    let resp = tokio::time::timeout(PULL_TIMEOUT, client.pull_image(req))
        .await
        .map_err(|_| format!("PullImage took longer than {PULL_TIMEOUT:?}"))?
        .map_err(|e| format!("PullImage: {e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let host = host_busy_secs()? - host0;
    let procs: Vec<f64> = ours
        .iter()
        .zip(&procs0)
        .map(|(p, before)| Ok(proc_cpu_secs(*p)? - before))
        .collect::<Res<_>>()?;
    let sys = proc_cpu(pid)?.1 - sys0;
    if resp.into_inner().image_ref.is_empty() {
        return Err("PullImage returned an empty image_ref".into());
    }
    Ok(Timing {
        secs,
        cpu: procs[0],
        sys,
        others_cpu: (host - procs.iter().sum::<f64>()).max(0.0),
        waited,
    })
}

/// Host CPU use above which a pull waits (in cores, over [`QUIET_SAMPLE`]).
const QUIET_CORES: f64 = 0.2;
const QUIET_SAMPLE: Duration = Duration::from_millis(500);
/// The longest a pull waits for a quiet host before running anyway.
const QUIET_MAX_WAIT: Duration = Duration::from_secs(180);

/// Waits until the host's CPUs are nearly idle (other engineers share
/// them), at most [`QUIET_MAX_WAIT`]; returns the seconds waited.
async fn wait_quiet() -> Res<f64> {
    let started = Instant::now();
    loop {
        let before = host_busy_secs()?;
        tokio::time::sleep(QUIET_SAMPLE).await;
        let cores = (host_busy_secs()? - before) / QUIET_SAMPLE.as_secs_f64();
        if cores < QUIET_CORES || started.elapsed() > QUIET_MAX_WAIT {
            return Ok(started.elapsed().as_secs_f64() - QUIET_SAMPLE.as_secs_f64());
        }
    }
}

/// User + system CPU seconds of process `pid` (all its threads, plus its
/// reaped children).
fn proc_cpu_secs(pid: u32) -> Res<f64> {
    let (user, sys) = proc_cpu(pid)?;
    Ok(user + sys)
}

/// User and system CPU seconds of process `pid` (all its threads, plus its
/// reaped children).
fn proc_cpu(pid: u32) -> Res<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat has no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
    let ticks = f
        .get(11..15)
        .ok_or_else(|| format!("/proc/{pid}/stat is short"))?
        .iter()
        .map(|x| x.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let tck = clk_tck();
    Ok((
        (ticks[0] + ticks[2]) as f64 / tck,
        (ticks[1] + ticks[3]) as f64 / tck,
    ))
}

/// A tonic channel over a unix socket (the URI is required and ignored).
async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://containerd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// Debian's containerd, restarted on a fresh root for every pull.
struct Containerd {
    bin: PathBuf,
    registry_host: String,
    registry_url: String,
    base: tempfile::TempDir,
    generation: u32,
    child: Option<Child>,
    /// The current instance's directory (`base/gen-N`).
    dir: Option<PathBuf>,
}

impl Containerd {
    fn new(bin: &Path, registry: &Registry) -> Res<Containerd> {
        let base = tempfile::Builder::new()
            .prefix("crius-bench-containerd-")
            .tempdir()?;
        Ok(Containerd {
            bin: bin.to_path_buf(),
            registry_host: registry.host(),
            registry_url: registry.url(),
            base,
            generation: 0,
            child: None,
            dir: None,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn socket(&self) -> Res<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join("containerd.sock"))
            .ok_or_else(|| "containerd is not running".into())
    }

    fn log_path(&self) -> PathBuf {
        self.base.path().join("containerd.log")
    }

    fn log_tail(&self) -> String {
        let data = fs::read(self.log_path()).unwrap_or_default();
        let start = data.len().saturating_sub(4096);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    /// Stops the running instance, deletes its dirs and starts a new one
    /// on empty ones; returns when its CRI image service answers.
    fn restart_fresh(&mut self) -> Res<()> {
        self.stop_and_clean()?;
        let dir = self.base.path().join(format!("gen-{}", self.generation));
        self.generation += 1;
        for sub in ["root", "state", "opt", "cni/bin", "cni/conf"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let config = dir.join("config.toml");
        fs::write(&config, self.config_toml(&dir))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.dir = Some(dir);
        self.wait_ready()
    }

    fn config_toml(&self, dir: &Path) -> String {
        let q = |p: &Path| toml_str(&p.to_string_lossy());
        let sock = dir.join("containerd.sock");
        let ttrpc = dir.join("containerd.sock.ttrpc");
        format!(
            r#"version = 2
root = {root}
state = {state}
# Snapshotters that are never used here; aufs would try modprobe.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}

  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.{host}]
    endpoint = [{url}]
"#,
            root = q(&dir.join("root")),
            state = q(&dir.join("state")),
            sock = q(&sock),
            ttrpc = q(&ttrpc),
            opt = q(&dir.join("opt")),
            cni_bin = q(&dir.join("cni/bin")),
            cni_conf = q(&dir.join("cni/conf")),
            host = toml_str(&self.registry_host),
            url = toml_str(&self.registry_url),
        )
    }

    /// Polls `ListImages` until the CRI plugin answers (30 s at most).
    fn wait_ready(&mut self) -> Res<()> {
        let socket = self.socket()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(format!(
                    "containerd exited with {status} before serving CRI; log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            if socket.exists() {
                let answered = block_on(async {
                    let ch = unix_channel(&socket).await.ok()?;
                    ImageServiceClient::new(ch)
                        .list_images(ListImagesRequest::default())
                        .await
                        .ok()
                })?;
                if answered.is_some() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not serve CRI within 30 s; log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Apparent size of the files in the overlayfs snapshots.
    fn snapshot_bytes(&self) -> u64 {
        self.dir.as_ref().map_or(0, |d| {
            tree_bytes(&d.join("root/io.containerd.snapshotter.v1.overlayfs/snapshots"))
        })
    }

    /// Apparent size of every file under the root.
    fn root_bytes(&self) -> u64 {
        self.dir.as_ref().map_or(0, |d| tree_bytes(&d.join("root")))
    }

    /// SIGTERM (by PID), 10 s grace, SIGKILL; then unmounts whatever is
    /// still mounted under the instance's dir and deletes it.
    fn stop_and_clean(&mut self) -> Res<()> {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    // Child::kill sends SIGKILL to this PID only.
                    c.kill()?;
                    c.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(dir) = self.dir.take() {
            unmount_under(&dir)?;
            fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_clean() {
            eprintln!("bench-pull: stopping containerd: {e}");
        }
    }
}

/// Sum of regular files' sizes under `dir` (0 if unreadable).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

fn fmt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "FAILED".to_owned(), |s| format!("{s:.2}"))
}

/// The results as a Markdown table plus the ratio lines.
fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "\n| round | first | crius (s) | crius CPU (s) | containerd 1.6 (s) | containerd CPU (s) \
         | rest-of-host CPU (s), crius / containerd pull |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let wall = |p: &Option<Pulled>| p.as_ref().map(|p| p.secs);
    let cpu = |p: &Option<Pulled>| p.as_ref().map(|p| p.cpu);
    let others = |p: &Option<Pulled>| p.as_ref().map(|p| p.others_cpu);
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {i} | {} | {} | {} | {} | {} | {} / {} |",
            r.first.name(),
            fmt_secs(wall(&r.crius)),
            fmt_secs(cpu(&r.crius)),
            fmt_secs(wall(&r.containerd)),
            fmt_secs(cpu(&r.containerd)),
            fmt_secs(others(&r.crius)),
            fmt_secs(others(&r.containerd)),
        );
    }
    let med = |f: &dyn Fn(&Row) -> Option<f64>| median(rows.iter().filter_map(f).collect());
    let (wc, cc) = (med(&|r| wall(&r.crius)), med(&|r| cpu(&r.crius)));
    let (wd, cd) = (med(&|r| wall(&r.containerd)), med(&|r| cpu(&r.containerd)));
    let _ = writeln!(
        s,
        "| **median** | | **{}** | {} | **{}** | {} | |",
        fmt_secs(wc),
        fmt_secs(cc),
        fmt_secs(wd),
        fmt_secs(cd)
    );
    let (wb, cb) = (
        med(&|r| wall(&r.crius_before)),
        med(&|r| cpu(&r.crius_before)),
    );
    if rows.iter().any(|r| r.crius_before.is_some()) {
        let _ = writeln!(
            s,
            "\ncrius-before: {} (s)",
            rows.iter()
                .map(|r| fmt_secs(wall(&r.crius_before)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let (Some(b), Some(c), Some(bcpu), Some(ccpu)) = (wb, wc, cb, cc)
            && c > 0.0
            && ccpu > 0.0
        {
            let _ = writeln!(
                s,
                "median wall clock crius-before/crius = {:.2} ({:.2} s / {:.2} s)\n\
                 median CPU time   crius-before/crius = {:.2} ({:.2} s / {:.2} s)",
                b / c,
                b,
                c,
                bcpu / ccpu,
                bcpu,
                ccpu
            );
        }
    }
    match (wc, wd, cc, cd) {
        (Some(c), Some(d), Some(ccpu), Some(dcpu)) if c > 0.0 && ccpu > 0.0 => {
            let _ = writeln!(
                s,
                "\nmedian wall clock containerd/crius = {:.2} (crius is {:.2}x as fast)\n\
                 median CPU time   containerd/crius = {:.2}",
                d / c,
                d / c,
                dcpu / ccpu
            );
        }
        _ => s.push_str("\nratio: n/a (failed pulls)\n"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let (user, sys) = proc_cpu(std::process::id()).unwrap();
        assert!(user >= 0.0 && sys >= 0.0);
        assert!(host_busy_secs().unwrap() > 0.0);
    }
}
