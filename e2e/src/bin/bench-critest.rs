//! `bench-critest`: pod and container lifecycle of crius against two
//! containerds, containerd 2.4 with runc 1.5 (built by `scripts/peers`) and
//! Debian's containerd 1.6 with its runc 1.1, timed by critest's own
//! benchmarks, plus the memory each runtime needs idle and per running pod.
//! Not part of CI.
//!
//! ```text
//! scripts/peers    # once: containerd 2.4.2 and runc 1.5.3 into /var/tmp/crius-peers/bin
//! cargo run --release -p e2e --bin bench-critest -- [--rounds N] [--samples N]
//!     [--image-samples N] [--memory-pods N] [--crius PATH] [--crius-before PATH]
//!     [--containerd2 PATH]
//!     [--runc2 PATH] [--containerd PATH] [--skip NAME]... [--critest PATH]
//!     [--crius-log-level FILTER] [--keep-logs DIR]
//! ```
//!
//! The runtimes, by the names `--skip` takes: `crius`; `crius-before`, an
//! earlier build of crius given by `--crius-before` (only then), for a
//! before-and-after in one run; `crius-vm`, the same
//! crius with every pod on its `vm` runtime handler (critest's
//! `--runtime-handler vm`, the memory pods' handler): each pod a VM through
//! the driver crius picks (qemu; TCG on a host whose KVM runs no stock
//! guest), its per-pod processes the vm-monitor and the VM's (qemu,
//! virtiofsd, vhost-device-vsock); `containerd2.4`, the
//! containerd of `--containerd2` (default `$CRIUS_PEERS_DIR/bin/containerd`,
//! `CRIUS_PEERS_DIR` defaulting to `/var/tmp/crius-peers`) with the
//! `containerd-shim-runc-v2` beside it (that dir is put first in its `PATH`)
//! and the runc of `--runc2` (default: `runc` beside it); `containerd1.6`,
//! the containerd of `--containerd` (default `/usr/bin/containerd`) with the
//! shim and runc of the ordinary `PATH` (Debian's). A containerd whose
//! binaries are missing is skipped with a message, and the run goes on with
//! the others.
//!
//! 1. Starts a local `docker-registry` with every critest image
//!    ([`e2e::test_images::push_all`]) and one pod network per runtime
//!    ([`e2e::network::TestNetwork`]: a bridge of ours with a gateway
//!    address in 198.18.0.0/15, `isGateway` and `ipMasq` false). The crius
//!    binary is copied into the benchmark's temp dir first, so a rebuild by
//!    someone else during the run changes nothing.
//! 2. Per round, for each runtime (the order rotates by one each round, so
//!    with 3 rounds each runtime goes first once), on a fresh instance (new
//!    root, state and socket):
//!    * waits until the CRI `Status` reports RuntimeReady and NetworkReady,
//!      waits 2 s and reads the server's idle `VmRSS`;
//!    * unless `--image-samples 0`: waits for a quiet host and runs critest's
//!      image benchmarks ("Image ... basic operations on Image": `PullImage`,
//!      `ImageStatus`, `RemoveImage` per sample; "Image ... listing Image":
//!      `ListImages`), `--image-samples` (20) samples each, sequential, on
//!      the still empty image store. The image is
//!      [`IMAGE_BENCH_IMAGE`] from the local registry: the same image as
//!      critest's busybox under another name (critest's `AfterEach` removes
//!      the listed images, and a runtime removes an image with all its
//!      names, so it must run before busybox is pulled). Every sample pulls
//!      the whole image (one gzip layer of about 3 MiB, 7 MiB unpacked)
//!      over loopback and unpacks it: the runtimes drop the content with
//!      the image;
//!      `ListImages` lists an empty store, as the pull spec's `AfterEach`
//!      has removed the image by then;
//!    * pulls critest's container image (`BUSYBOX`) and, for containerd,
//!      its sandbox image (`registry.k8s.io/pause:3.9`, crius has none),
//!      so no timed operation pulls;
//!    * waits (at most 120 s) until the shared host's CPUs are nearly idle,
//!      then runs `critest --benchmark` with a params file that sets
//!      `podsNumber` and `containersNumber` to `--samples` (sequential);
//!      only "PodSandbox ... lifecycle of PodSandbox" and "Container ...
//!      basic operations on Container" run (the single-shot "start a
//!      container from scratch" is skipped); their per-operation timings
//!      are read from the JSON files critest writes to
//!      `--benchmarking-output-dir`;
//!    * starts `--memory-pods` pods (10) with one `sleep 3600` busybox
//!      container each and, after 2 s, reads `VmRSS`, `RssAnon` and `Pss`
//!      (`/proc/<pid>/smaps_rollup`) of the per-pod runtime processes:
//!      crius's pod monitors (`/proc/<pid>/cmdline` has `monitor` and the
//!      instance's state dir) and containerd's `containerd-shim-runc-v2`
//!      (cmdline has the instance's socket); of their other descendants but
//!      the `sleep`s (the pod's PID 1: crius's `crius-pod-init`, forked by
//!      the monitor, and containerd's pause; the pods share a PID namespace,
//!      CRI's default); the server's `VmRSS` growth; and the size of the
//!      memfds the server holds (crius's sealed copy of its own binary,
//!      which the monitors run from: shmem that is not in the server's
//!      `VmRSS`); times 20 ExecSync calls and 20 `crictl exec` runs of
//!      `true` in the first pod's container (after one warm-up each); then
//!      stops and removes every pod;
//!    * unless `--kubelet-samples 0`: starts a standalone kubelet v1.37
//!      (`scripts/kube`, `e2e::kubelet`) on the runtime and times
//!      `--kubelet-samples` (10) static pods, one after the other, after one
//!      not counted: from the manifest written to kubelet reporting its
//!      container running (`/pods`, polled every 20 ms), and from the
//!      manifest removed (2 s after it was written, so at the same point
//!      of kubelet's once-a-second relist for every runtime) to the pod's
//!      sandbox stopped (not Ready in the runtime's ListPodSandbox; kubelet
//!      removes it at its next garbage collection, once a minute whatever
//!      the runtime).
//!      `crius-vm` runs with `default_runtime_handler = "vm"`, as static
//!      pods name no handler. A runtime kubelet will not run on gets no
//!      figures, with a note.
//! 3. Prints per-round lines and a Markdown table of the medians over all
//!    samples of all rounds (memory: the median over rounds), one column per
//!    runtime, with the ratio best containerd / crius: for each figure the
//!    smaller (better) of the two containerds' values over crius's (above 1:
//!    crius is faster or smaller than both; the runc handler's crius, not
//!    `crius-vm`), and the aims of the issue;
//!    exits nonzero if any round failed.
//!
//! Each containerd runs with its own temp root, state, sockets and a
//! generated config with the same settings: CRI plugin, sandbox image
//! registry.k8s.io/pause:3.9 through a registry mirror to the local
//! registry, overlayfs snapshotter, runc v2 shim with `SystemdCgroup =
//! false` (cgroupfs), CNI from `/usr/lib/cni` with its test network's conf
//! dir, and `restrict_oom_score_adj = true` (this host withholds
//! CAP_SYS_RESOURCE, so runc could not give the pause container its -998).
//! containerd 1.6 gets a version 2 config (`io.containerd.grpc.v1.cri`,
//! `sandbox_image`, `registry.mirrors`); containerd 2.4 the version 4 that
//! its `containerd config default` prints (server addresses under
//! `io.containerd.server.v1.grpc`/`ttrpc`, `io.containerd.cri.v1.images`
//! with `pinned_images.sandbox` and `registry.config_path` pointing at
//! `hosts.toml` files, since 2.x pulls through its transfer service, which
//! ignores the deprecated `mirrors`; `io.containerd.cri.v1.runtime` with
//! runc's `BinaryName` and the CNI `bin_dirs`; NRI disabled, as its socket
//! is host-wide). Everything else is left at each version's defaults. crius
//! runs with `log_level = "warn"` (`--crius-log-level`), the same mirrors
//! and its own test network.
//!
//! Cleanup, on success and failure alike (guards, plus SIGINT/SIGTERM/
//! SIGHUP turned into an orderly stop): every pod is stopped and removed
//! through CRI, the runtime is stopped by its PID, leftover monitors or
//! shims of that instance and their children are SIGKILLed by PID,
//! containerd's network namespaces of leftover pods are removed, mounts
//! under the instance's dirs are detached, the temp dirs, bridges and the
//! registry are removed, and cgroup directories this program's pods made
//! (`/crius-bench-<pid>`, and critest's `/test.slice` when it did not exist
//! before) are removed when empty. Every child process gets
//! `PR_SET_PDEATHSIG` and is started from the main thread.

use e2e::bench::{
    block_on, clk_tck, default_crius, host_busy_secs, median, nproc, toml_str, unmount_under,
};
use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crius_proto::cri::image_service_client::ImageServiceClient;
use crius_proto::cri::runtime_service_client::RuntimeServiceClient;
use crius_proto::cri::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxPodSandboxConfig, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxState, PodSandboxStatusRequest, PullImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
};
use e2e::crius::{Crius, crictl_bin, die_with_parent};
use e2e::network::TestNetwork;
use e2e::registry::Registry;
use e2e::test_images::{self, BUSYBOX, MIRRORED_HOSTS, PAUSE};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

type Res<T> = Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: bench-critest [--rounds N (default 3)] [--samples N (default 20)] \
                     [--image-samples N (default 20)] [--memory-pods N (default 10)] \
                     [--kubelet-samples N (default 10)] \
                     [--crius PATH] [--crius-before PATH] [--containerd2 PATH] [--runc2 PATH] \
                     [--containerd PATH] \
                     [--skip NAME]... [--critest PATH] [--crius-log-level FILTER] \
                     [--keep-logs DIR]\n\
                     --samples N        critest's podsNumber and containersNumber (sequential)\n\
                     --image-samples N  critest's imagesNumber (sequential; 0 skips the image \
                     benchmarks)\n\
                     --memory-pods N    running pods (one sleep container each) for the \
                     memory measurement\n\
                     --kubelet-samples N  static pods started and removed through kubelet \
                     v1.37 (scripts/kube; 0 skips them)\n\
                     --crius PATH       default $CARGO_TARGET_DIR/release/crius, else beside \
                     this binary\n\
                     --crius-before PATH  an earlier crius, measured too (runtime crius-before)\n\
                     --containerd2 PATH containerd 2.4, default \
                     ${CRIUS_PEERS_DIR:-/var/tmp/crius-peers}/bin/containerd (scripts/peers); \
                     the containerd-shim-runc-v2 beside it is used\n\
                     --runc2 PATH       its runc, default runc beside --containerd2\n\
                     --containerd PATH  containerd 1.6, default /usr/bin/containerd (shim and \
                     runc from PATH)\n\
                     --skip NAME        leave out crius, containerd2.4 or containerd1.6 \
                     (repeatable, or comma-separated)\n\
                     --critest PATH     default /var/tmp/crius-critest/critest\n\
                     --crius-log-level FILTER  crius's log_level (default warn; \
                     \"info,crius=debug,sandbox_container=debug\" logs every RPC's and CNI \
                     plugin's milliseconds)\n\
                     --keep-logs DIR    copy each run's runtime log, critest logs and critest \
                     JSON outputs to DIR/round<N>-<runtime>/";

/// What critest's lifecycle benchmarks focus on (critest itself adds
/// "benchmark" to the focus, which matches every benchmark: the skip list
/// does the work).
const FOCUS: &str = "PodSandbox benchmark|Container benchmark";
/// The image benchmarks and the single-shot pod + container start.
const SKIP: &str = r"\[k8s\.io\] Image|start a container from scratch";
/// The image benchmarks' run: everything but them is skipped.
const IMAGE_FOCUS: &str = "Image benchmark";
const IMAGE_SKIP: &str = r"\[k8s\.io\] (PodSandbox|Container)";
/// The image the image benchmarks pull, list and remove: critest's busybox
/// under another of the names the local registry serves it by.
const IMAGE_BENCH_IMAGE: &str = "public.ecr.aws/docker/library/busybox:1.35.0-glibc";

/// The cgroup parent critest gives pods when `RuntimeConfig` is missing or
/// says systemd (containerd 1.6 does not implement it; crius and containerd
/// 2.4 say cgroupfs, so critest gives their pods the parent "").
const CRITEST_CGROUP: &str = "test.slice";

/// Longest one critest run may take.
const CRITEST_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest one CRI call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// Host CPU use above which a critest run waits (in cores).
const QUIET_CORES: f64 = 0.3;
const QUIET_SAMPLE: Duration = Duration::from_millis(500);
/// The longest a run waits for a quiet host before running anyway.
const QUIET_MAX_WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Arguments and main
// ---------------------------------------------------------------------------

struct Args {
    rounds: usize,
    samples: usize,
    image_samples: usize,
    memory_pods: usize,
    /// Static pods started and removed through a kubelet per run (0: none).
    kubelet_samples: usize,
    crius: PathBuf,
    /// Another crius (an earlier build) measured in the same run.
    crius_before: Option<PathBuf>,
    containerd2: PathBuf,
    runc2: PathBuf,
    containerd: PathBuf,
    skip: Vec<Kind>,
    critest: PathBuf,
    crius_log_level: String,
    keep_logs: Option<PathBuf>,
}

/// `${CRIUS_PEERS_DIR:-/var/tmp/crius-peers}/bin`, where `scripts/peers`
/// installs containerd 2.4 and runc 1.5.
fn peers_bin_dir() -> PathBuf {
    std::env::var_os("CRIUS_PEERS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp/crius-peers"), PathBuf::from)
        .join("bin")
}

fn parse_args() -> Result<Args, String> {
    let mut rounds = 3usize;
    let mut samples = 20usize;
    let mut image_samples = 20usize;
    let mut memory_pods = 10usize;
    let mut kubelet_samples = 10usize;
    let mut crius = None;
    let mut crius_before = None;
    let mut containerd2 = peers_bin_dir().join("containerd");
    let mut runc2 = None;
    let mut containerd = PathBuf::from("/usr/bin/containerd");
    let mut skip = Vec::new();
    let mut critest = PathBuf::from("/var/tmp/crius-critest/critest");
    let mut crius_log_level = "warn".to_owned();
    let mut keep_logs = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let mut number = |what: &str, min: usize| -> Result<usize, String> {
            let v = value()?;
            v.parse()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| format!("{what} wants a number of at least {min}, got {v:?}"))
        };
        match name.as_str() {
            "--rounds" => rounds = number("--rounds", 1)?,
            "--samples" => samples = number("--samples", 1)?,
            "--image-samples" => image_samples = number("--image-samples", 0)?,
            "--memory-pods" => memory_pods = number("--memory-pods", 1)?,
            "--kubelet-samples" => kubelet_samples = number("--kubelet-samples", 0)?,
            "--crius" => crius = Some(PathBuf::from(value()?)),
            "--crius-before" => crius_before = Some(PathBuf::from(value()?)),
            "--containerd2" => containerd2 = PathBuf::from(value()?),
            "--runc2" => runc2 = Some(PathBuf::from(value()?)),
            "--containerd" => containerd = PathBuf::from(value()?),
            "--skip" => {
                for n in value()?.split(',').filter(|n| !n.is_empty()) {
                    let kind = Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == n)
                        .ok_or_else(|| {
                            format!(
                                "--skip {n:?}: not one of {}",
                                Kind::ALL.map(Kind::name).join(", ")
                            )
                        })?;
                    skip.push(kind);
                }
            }
            "--critest" => critest = PathBuf::from(value()?),
            "--crius-log-level" => crius_log_level = value()?,
            "--keep-logs" => keep_logs = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let crius = crius.unwrap_or_else(default_crius);
    let needs_crius = !skip.contains(&Kind::Crius) || !skip.contains(&Kind::CriusVm);
    if needs_crius && !crius.is_file() {
        return Err(format!(
            "crius binary {} not found: build it with `cargo build --release -p cri-server \
             --bin crius` or pass --crius PATH",
            crius.display()
        ));
    }
    if let Some(b) = &crius_before
        && !b.is_file()
    {
        return Err(format!("--crius-before {}: not found", b.display()));
    }
    let runc2 = runc2.unwrap_or_else(|| {
        containerd2
            .parent()
            .map_or_else(|| PathBuf::from("runc"), |d| d.join("runc"))
    });
    if !critest.is_file() {
        return Err(format!(
            "critest {} not found: build cri-tools v1.37.0's critest or pass --critest PATH",
            critest.display()
        ));
    }
    Ok(Args {
        rounds,
        samples,
        image_samples,
        kubelet_samples,
        memory_pods,
        crius,
        crius_before,
        containerd2,
        runc2,
        containerd,
        skip,
        critest,
        crius_log_level,
        keep_logs,
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
            eprintln!("bench-critest: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let work = match tempfile::Builder::new()
        .prefix("crius-bench-critest-")
        .tempdir()
    {
        Ok(w) => w,
        Err(e) => {
            eprintln!("bench-critest: temp dir: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Private copies: a rebuild of the shared target dir during the run
    // must not change a binary between rounds.
    let mut copies = Vec::new();
    let needs_crius = !args.skip.contains(&Kind::Crius) || !args.skip.contains(&Kind::CriusVm);
    for (name, from) in [
        ("crius", needs_crius.then_some(&args.crius)),
        ("crius-before", args.crius_before.as_ref()),
    ] {
        let Some(from) = from else { continue };
        let to = work.path().join(name);
        let digest = match fs::copy(from, &to).and_then(|_| file_sha256(&to)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("bench-critest: copying {}: {e}", from.display());
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{name} {} ({}, sha256 {}...), copied to {}",
            from.display(),
            fs::metadata(&to).map_or_else(|_| "?".into(), |m| mib(m.len() / 1024)),
            &digest[..16],
            to.display()
        );
        copies.push((name, digest));
    }
    // SAFETY: still single-threaded: no runtime, registry or helper
    // thread exists yet, so nothing reads the environment concurrently.
    unsafe {
        // RUST_LOG would override crius's log_level.
        std::env::remove_var("RUST_LOG");
    }
    if let Err(e) = e2e::bench::install_stop_signals() {
        eprintln!("bench-critest: signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let before = copies
        .iter()
        .find(|(n, _)| *n == "crius-before")
        .map(|(_, d)| d[..12].to_string());
    let res = run(&args, work.path(), before.as_deref());
    drop(work);
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-critest: some runs failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-critest: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Signals: an orderly stop, so the guards run
// ---------------------------------------------------------------------------

fn check_stop() -> Res<()> {
    if e2e::bench::stop_requested() {
        Err("interrupted by a signal; cleaning up".into())
    } else {
        Ok(())
    }
}

/// Sleeps `d`, waking early (with an error) on SIGINT/SIGTERM/SIGHUP.
fn sleep_checked(d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_stop()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    check_stop()
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Crius,
    /// crius's `vm` runtime handler: each pod a VM (qemu; TCG here).
    CriusVm,
    /// An earlier crius (`--crius-before`), runc handler.
    CriusBefore,
    /// containerd 2.4 with runc 1.5, from `scripts/peers`.
    Containerd2,
    /// Debian's containerd 1.6 with its runc.
    Containerd16,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Crius,
        Kind::CriusBefore,
        Kind::CriusVm,
        Kind::Containerd2,
        Kind::Containerd16,
    ];

    /// The name `--skip` takes and the logs use.
    fn name(self) -> &'static str {
        match self {
            Kind::Crius => "crius",
            Kind::CriusVm => "crius-vm",
            Kind::CriusBefore => "crius-before",
            Kind::Containerd2 => "containerd2.4",
            Kind::Containerd16 => "containerd1.6",
        }
    }

    fn is_containerd(self) -> bool {
        matches!(self, Kind::Containerd2 | Kind::Containerd16)
    }

    /// The CRI runtime handler its pods ask for.
    fn handler(self) -> &'static str {
        match self {
            Kind::CriusVm => "vm",
            _ => "",
        }
    }
}

/// A runtime this run measures.
struct Runtime {
    kind: Kind,
    /// The table's column header: the versions found.
    label: String,
}

/// The runtimes to measure, in `Kind::ALL` order: those not skipped whose
/// binaries exist (a missing containerd is reported and left out).
fn runtimes(args: &Args, before: Option<&str>) -> Vec<Runtime> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::CriusBefore && args.crius_before.is_none() {
            continue;
        }
        if args.skip.contains(&kind) {
            println!("{}: skipped (--skip)", kind.name());
            continue;
        }
        let label = match kind {
            Kind::Crius => "crius".to_owned(),
            Kind::CriusVm => "crius, vm handler".to_owned(),
            Kind::CriusBefore => format!("crius before ({})", before.unwrap_or("?")),
            Kind::Containerd2 => {
                let shim = args
                    .containerd2
                    .parent()
                    .map(|d| d.join("containerd-shim-runc-v2"));
                let missing = [
                    Some(args.containerd2.clone()),
                    shim,
                    Some(args.runc2.clone()),
                ]
                .into_iter()
                .map(|p| p.unwrap_or_default())
                .find(|p| !p.is_file());
                if let Some(m) = missing {
                    println!(
                        "{}: SKIPPED, {} not found (run scripts/peers, or pass --containerd2 \
                         PATH and --runc2 PATH)",
                        kind.name(),
                        m.display()
                    );
                    continue;
                }
                format!(
                    "containerd {} + runc {}",
                    version_of(&args.containerd2, 2),
                    version_of(&args.runc2, 2)
                )
            }
            Kind::Containerd16 => {
                if !args.containerd.is_file() {
                    println!(
                        "{}: SKIPPED, {} not found (install Debian's containerd, or pass \
                         --containerd PATH)",
                        kind.name(),
                        args.containerd.display()
                    );
                    continue;
                }
                format!(
                    "containerd {} + runc {}",
                    version_of(&args.containerd, 2),
                    version_of(Path::new("runc"), 2)
                )
            }
        };
        out.push(Runtime { kind, label });
    }
    out
}

/// The version in `bin --version`'s first line, its `n`th word (from 0),
/// without a `+build` or `~packaging` suffix.
fn version_of(bin: &Path, n: usize) -> String {
    let line = first_line_of(bin, &["--version"]);
    line.split_whitespace()
        .nth(n)
        .and_then(|v| v.split(['+', '~']).next())
        .filter(|v| !v.is_empty())
        .map_or(line.clone(), str::to_owned)
}

/// What one runtime gave in one round.
/// Non-shmem PSS of every per-pod process (monitors or shims, and a VM
/// pod's helpers), in KiB.
fn private_pss(m: &Mem) -> u64 {
    m.per_pod
        .iter()
        .chain(&m.helpers)
        .map(|p| p.pss.saturating_sub(p.pss_shmem))
        .sum()
}

struct RunResult {
    /// Server `VmRSS` right after start (KiB).
    idle_rss: u64,
    /// critest's pod lifecycle benchmark.
    pods: Series,
    /// critest's container lifecycle benchmark.
    containers: Series,
    /// critest's image benchmarks (pull, status, remove; list), unless
    /// `--image-samples 0`.
    images: Option<(Series, Series)>,
    /// Through kubelet: manifest written to its container running, and
    /// manifest removed to the pod's sandbox stopped (ms each), unless
    /// `--kubelet-samples 0` or kubelet would not run on this runtime.
    kubelet: Option<(Vec<f64>, Vec<f64>)>,
    /// Wall clock of the critest run.
    critest_secs: f64,
    /// Busy host CPU over the critest run, in cores (everything, ours too).
    host_cores: f64,
    /// CPU seconds the server process used during the critest run.
    server_cpu: f64,
    mem: Mem,
}

/// The memory of `pods` running pods.
struct Mem {
    pods: usize,
    /// Server `VmRSS` before starting them and with them running (KiB).
    server_before: u64,
    server_after: u64,
    /// memfds the server holds (KiB): crius's copy of its binary.
    memfd: u64,
    /// crius's monitors or containerd's shims.
    per_pod: Vec<ProcMem>,
    /// Their other descendants, but for the containers' `sleep`: crius's
    /// pod PID init (`crius-pod-init`, forked by the monitor; critest's and
    /// these pods share one PID namespace, CRI's default) and containerd's
    /// pause.
    helpers: Vec<ProcMem>,
    /// The helpers' command names.
    helper_names: Vec<String>,
    /// The pods' own `sleep` processes (a check that they run).
    sleepers: usize,
    /// The executables the per-pod processes run (`/proc/<pid>/exe`): which
    /// shim a containerd started.
    exes: Vec<String>,
    /// ExecSync of `true` in the first pod's container, each (ms).
    exec_sync: Vec<f64>,
    /// `crictl exec <container> true` (the streaming Exec, SPDY), each (ms).
    crictl_exec: Vec<f64>,
}

#[derive(Clone, Copy)]
struct ProcMem {
    rss: u64,
    anon: u64,
    pss: u64,
    /// The shmem part of `pss` (crius's monitors run from a memfd).
    pss_shmem: u64,
}

fn run(args: &Args, work: &Path, before: Option<&str>) -> Res<bool> {
    println!("machine: {} cores (nproc)", nproc());
    let runtimes = runtimes(args, before);
    if runtimes.is_empty() {
        return Err("no runtime left to measure".into());
    }
    for rt in &runtimes {
        match rt.kind {
            Kind::Crius => {}
            Kind::CriusBefore => println!(
                "{}: {}",
                rt.kind.name(),
                args.crius_before
                    .as_ref()
                    .map_or_else(String::new, |b| b.display().to_string())
            ),
            Kind::CriusVm => println!(
                "{}: crius's vm handler (its VMs' driver and accelerator: crius.log of each round)",
                rt.kind.name()
            ),
            Kind::Containerd2 => println!(
                "{}: {} ({}), runc {} ({}), shim from {}",
                rt.kind.name(),
                args.containerd2.display(),
                first_line_of(&args.containerd2, &["--version"]),
                args.runc2.display(),
                first_line_of(&args.runc2, &["--version"]),
                args.containerd2
                    .parent()
                    .map_or_else(String::new, |d| d.display().to_string()),
            ),
            Kind::Containerd16 => println!(
                "{}: {} ({}), runc and shim from PATH ({})",
                rt.kind.name(),
                args.containerd.display(),
                first_line_of(&args.containerd, &["--version"]),
                first_line_of(Path::new("runc"), &["--version"]),
            ),
        }
    }
    println!("critest: {}", args.critest.display());

    let started = Instant::now();
    let registry = Registry::start().map_err(|e| format!("start registry: {e}"))?;
    test_images::push_all(&registry.url()).map_err(|e| format!("push test images: {e}"))?;
    println!(
        "registry {} with the critest images ({:.1} s)",
        registry.url(),
        started.elapsed().as_secs_f64()
    );
    check_stop()?;
    let mut nets = BTreeMap::new();
    for rt in &runtimes {
        let net =
            TestNetwork::create().map_err(|e| format!("{} pod network: {e}", rt.kind.name()))?;
        println!(
            "pod network of {}: {} {}",
            rt.kind.name(),
            net.bridge,
            net.subnet
        );
        nets.insert(rt.kind, net);
    }
    let bench_cgroup = format!("crius-bench-{}", std::process::id());
    let _cgroups = CgroupGuard::new(&[CRITEST_CGROUP, &bench_cgroup]);

    let params = work.join("benchmark-params.yaml");
    fs::write(&params, params_yaml(args.samples, args.image_samples))?;

    let mut results: Vec<(usize, Kind, RunResult)> = Vec::new();
    let mut ok = true;
    for round in 0..args.rounds {
        // Rotate the order by one each round.
        let n = runtimes.len();
        for i in 0..n {
            let kind = runtimes[(round + i) % n].kind;
            check_stop()?;
            let dir = work.join(format!("round{round}-{}", kind.name()));
            fs::create_dir_all(&dir)?;
            let ctx = RunCtx {
                args,
                crius: work.join(if kind == Kind::CriusBefore {
                    "crius-before"
                } else {
                    "crius"
                }),
                params: &params,
                dir: &dir,
                cgroup_parent: format!("/{bench_cgroup}"),
                handler: kind.handler(),
            };
            let net = nets.get(&kind).ok_or("no pod network")?;
            let res = match kind {
                Kind::Crius | Kind::CriusVm | Kind::CriusBefore => {
                    bench_crius(&ctx, kind, &registry, net)
                }
                Kind::Containerd2 | Kind::Containerd16 => {
                    bench_containerd(&ctx, kind, &registry, net)
                }
            };
            if let Some(keep) = &args.keep_logs
                && let Some(name) = dir.file_name()
                && let Err(e) = copy_tree(&dir, &keep.join(name))
            {
                println!("  note: keeping logs in {}: {e}", keep.display());
            }
            match res {
                Ok(r) => {
                    print_run(round, kind, &r);
                    results.push((round, kind, r));
                }
                Err(e) => {
                    ok = false;
                    println!("round {round} {:<13} FAILED: {e}", kind.name());
                    check_stop()?;
                }
            }
        }
    }
    print!("{}", report(args, &runtimes, &results));
    Ok(ok)
}

struct RunCtx<'a> {
    args: &'a Args,
    /// The crius binary of this run (a private copy).
    crius: PathBuf,
    params: &'a Path,
    dir: &'a Path,
    /// For the memory pods.
    cgroup_parent: String,
    /// The runtime handler of every pod (critest's and the memory pods).
    handler: &'static str,
}

fn params_yaml(samples: usize, image_samples: usize) -> String {
    format!(
        "# bench-critest: sequential pod, container and image lifecycles\n\
         podsNumber: {samples}\n\
         podsNumberParallel: 1\n\
         podBenchmarkTimeoutSeconds: 120\n\
         containersNumber: {samples}\n\
         containersNumberParallel: 1\n\
         containerBenchmarkTimeoutSeconds: 120\n\
         # The image benchmarks run on their own, before busybox is pulled:\n\
         # their AfterEach removes the listed images.\n\
         imagesNumber: {image_samples}\n\
         imagesNumberParallel: 1\n\
         imageBenchmarkTimeoutSeconds: 120\n\
         imagePullingBenchmarkImage: {IMAGE_BENCH_IMAGE}\n\
         imageListingBenchmarkImages:\n  - {IMAGE_BENCH_IMAGE}\n"
    )
}

fn mirrors(registry: &Registry) -> Vec<(String, String)> {
    MIRRORED_HOSTS
        .iter()
        .chain(["docker.io"].iter())
        .map(|h| ((*h).to_owned(), registry.url()))
        .collect()
}

fn bench_crius(ctx: &RunCtx, kind: Kind, registry: &Registry, net: &TestNetwork) -> Res<RunResult> {
    // kubelet's static pods name no handler: the vm run makes vm crius's
    // default.
    let extra = if kind == Kind::CriusVm {
        "default_runtime_handler = \"vm\"\n"
    } else {
        ""
    };
    let run = CriusRun::start(&ctx.crius, registry, net, &ctx.args.crius_log_level, extra)?;
    let pid = run.crius.pid().ok_or("crius is not running")?;
    let socket = run.crius.socket.clone();
    let state = run.crius.state.clone();
    let result = bench_runtime(ctx, &socket, pid, &[BUSYBOX], &|| {
        pod_processes(kind, &state)
    });
    let log = run.crius.log();
    let _ = fs::write(ctx.dir.join("crius.log"), &log);
    let result = result.map_err(|e| format!("{e}\ncrius log tail:\n{}", tail(&log)).into());
    drop(run);
    result
}

fn bench_containerd(
    ctx: &RunCtx,
    kind: Kind,
    registry: &Registry,
    net: &TestNetwork,
) -> Res<RunResult> {
    let ctd = Containerd::start(ctx.args, kind, registry, net)?;
    let pid = ctd.pid().ok_or("containerd is not running")?;
    let socket = ctd.socket.clone();
    let result = bench_runtime(ctx, &socket, pid, &[BUSYBOX, PAUSE], &|| {
        pod_processes(kind, &socket)
    });
    let _ = fs::copy(
        ctd.dir.path().join("containerd.log"),
        ctx.dir.join("containerd.log"),
    );
    let result =
        result.map_err(|e| format!("{e}\ncontainerd log tail:\n{}", ctd.log_tail()).into());
    drop(ctd);
    result
}

/// The steps shared by all runtimes, on a started instance.
fn bench_runtime(
    ctx: &RunCtx,
    socket: &Path,
    pid: u32,
    images: &[&str],
    pod_procs: &dyn Fn() -> Vec<u32>,
) -> Res<RunResult> {
    wait_cri_ready(socket)?;
    sleep_checked(Duration::from_secs(2))?;
    let idle_rss = status_kib(pid, "VmRSS")?;

    // The image benchmarks first, on the empty image store.
    let image_series = if ctx.args.image_samples > 0 {
        let waited = wait_quiet()?;
        if waited > 1.0 {
            println!("  (waited {waited:.0} s for a quiet host before the image benchmarks)");
        }
        let out = ctx.dir.join("critest-images-out");
        fs::create_dir_all(&out)?;
        run_critest(ctx, socket, &out, CritestRun::Images)?;
        Some((
            read_series(&out.join("image_lifecycle_benchmark_data.json"))?,
            read_series(&out.join("image_listing_benchmark_data.json"))?,
        ))
    } else {
        None
    };

    block_on(async {
        let (_, mut images_client) = clients(socket).await?;
        for image in images {
            rpc(
                &format!("PullImage {image}"),
                images_client.pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: (*image).to_owned(),
                        ..ImageSpec::default()
                    }),
                    ..PullImageRequest::default()
                }),
            )
            .await?;
        }
        Res::Ok(())
    })??;

    let waited = wait_quiet()?;
    let out = ctx.dir.join("critest-out");
    fs::create_dir_all(&out)?;
    let cpu0 = proc_cpu_secs(pid)?;
    let host0 = host_busy_secs()?;
    let t0 = Instant::now();
    run_critest(ctx, socket, &out, CritestRun::Lifecycle)?;
    let critest_secs = t0.elapsed().as_secs_f64();
    let host_cores = (host_busy_secs()? - host0) / critest_secs;
    let server_cpu = proc_cpu_secs(pid)? - cpu0;
    if waited > 1.0 {
        println!("  (waited {waited:.0} s for a quiet host before critest)");
    }
    let pods = read_series(&out.join("pod_benchmark_data.json"))?;
    let containers = read_series(&out.join("container_benchmark_data.json"))?;
    // critest removes its pods; anything left would skew the memory step.
    let left = block_on(remove_all_pods(socket))??;
    if left > 0 {
        println!("  note: critest left {left} pods behind (removed)");
    }

    let mem = memory(ctx, socket, pid, pod_procs);
    let removed = block_on(remove_all_pods(socket))??;
    let mem = mem?;
    if removed != mem.pods {
        println!(
            "  note: removed {removed} pods after the memory step, expected {}",
            mem.pods
        );
    }
    // The per-pod processes must go with their pods.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = pod_procs();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} per-pod processes still run 15 s after their pods were removed: {left:?}",
                left.len()
            )
            .into());
        }
        sleep_checked(Duration::from_millis(100))?;
    }
    let kubelet = if ctx.args.kubelet_samples > 0 {
        match kubelet_pods(ctx.args.kubelet_samples, socket) {
            Ok(k) => Some(k),
            Err(e) => {
                println!("  note: no kubelet figures: {e}");
                None
            }
        }
    } else {
        None
    };
    Ok(RunResult {
        idle_rss,
        kubelet,
        pods,
        containers,
        images: image_series,
        critest_secs,
        host_cores,
        server_cpu,
        mem,
    })
}

/// When a kubelet sample's manifest is removed, after it was written
/// (see [`kubelet_pods`]).
const KUBELET_REMOVE_AFTER: Duration = Duration::from_secs(2);

/// A kubelet (standalone, `e2e::kubelet`) on the runtime at `socket`
/// starts and removes `samples` static pods one after the other (one
/// more first, not counted): from the manifest written to its container
/// running as kubelet reports it, and from the manifest removed to the
/// pod's sandbox stopped (not Ready in the runtime's ListPodSandbox), in
/// ms. kubelet removes a stopped sandbox at its next garbage collection
/// (every minute, whatever the runtime), so that is not timed. The
/// container's shell exits at once on SIGTERM, PID 1 or not, so no
/// runtime waits out the grace period.
///
/// kubelet acts on a removed manifest at its next pod lifecycle relist
/// (every second), and each manifest is written just after the relist
/// that stopped the previous pod: removing it as soon as the pod runs
/// would make a runtime that starts pods faster wait longer for that
/// relist (start + removal came to about 1 s for every runtime). So
/// every manifest is removed [`KUBELET_REMOVE_AFTER`] after it was
/// written (or once its pod runs, if later): at the same point of
/// kubelet's cycle for every runtime, whose removal figures then differ
/// by their own work.
fn kubelet_pods(samples: usize, socket: &Path) -> Res<(Vec<f64>, Vec<f64>)> {
    block_on(async {
        let mut k = e2e::kubelet::Kubelet::start(socket).await?;
        let (mut rt, _) = clients(socket).await?;
        let (mut start, mut gone) = (Vec::new(), Vec::new());
        for i in 0..=samples {
            check_stop()?;
            let name = format!("bench-{i}");
            let pod = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "sleep",
                        "image": BUSYBOX,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"],
                    }],
                }
            });
            let t0 = Instant::now();
            k.add_manifest(&name, &pod)?;
            loop {
                let p = k.pod(&name).await?;
                let running = p.as_ref().is_some_and(|p| {
                    p["status"]["containerStatuses"][0]["state"]["running"].is_object()
                });
                if running {
                    break;
                }
                if t0.elapsed() > Duration::from_secs(120) {
                    return Err(format!("pod {name} not running after 120 s").into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let started = t0.elapsed();
            let full = format!("{name}-{}", k.node);
            tokio::time::sleep_until((t0 + KUBELET_REMOVE_AFTER).into()).await;
            let t1 = Instant::now();
            k.remove_manifest(&name)?;
            loop {
                let pods = rpc(
                    "ListPodSandbox",
                    rt.list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await?
                .items;
                let ready = pods.iter().any(|p| {
                    p.metadata.as_ref().is_some_and(|m| m.name == full)
                        && p.state == PodSandboxState::SandboxReady as i32
                });
                if !ready {
                    break;
                }
                if t1.elapsed() > Duration::from_secs(180) {
                    return Err(format!("pod {name} still Ready after 180 s").into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if i > 0 {
                start.push(started.as_secs_f64() * 1000.0);
                gone.push(t1.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let left = k.finish();
        if !left.is_empty() {
            println!("  note: kubelet left {left:?}");
        }
        Res::Ok((start, gone))
    })?
}

/// Which critest benchmarks one critest run does.
#[derive(Clone, Copy)]
enum CritestRun {
    /// The pod and the container lifecycle.
    Lifecycle,
    /// Image pull / status / remove and image listing.
    Images,
}

fn run_critest(ctx: &RunCtx, socket: &Path, out: &Path, which: CritestRun) -> Res<()> {
    let (name, focus, skip) = match which {
        CritestRun::Lifecycle => ("critest", FOCUS, SKIP),
        CritestRun::Images => ("critest-images", IMAGE_FOCUS, IMAGE_SKIP),
    };
    let log_path = ctx.dir.join(format!("{name}.log"));
    let log = fs::File::create(&log_path)?;
    let report = ctx.dir.join(format!("{name}-report.json"));
    let endpoint = format!("unix://{}", socket.display());
    let mut cmd = Command::new(&ctx.args.critest);
    cmd.arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg("--benchmark")
        .arg(format!(
            "--benchmarking-params-file={}",
            ctx.params.display()
        ))
        .arg(format!("--benchmarking-output-dir={}", out.display()))
        .arg(format!("--ginkgo.focus={focus}"))
        .arg(format!("--ginkgo.skip={skip}"))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg("--ginkgo.no-color")
        .args((!ctx.handler.is_empty()).then(|| format!("--runtime-handler={}", ctx.handler)))
        .current_dir(ctx.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", ctx.args.critest.display()))?;
    let deadline = Instant::now() + CRITEST_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if e2e::bench::stop_requested() || Instant::now() > deadline {
            // Child::kill sends SIGKILL to this PID only.
            let _ = child.kill();
            let _ = child.wait();
            check_stop()?;
            return Err(format!("{name} took longer than {CRITEST_TIMEOUT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (ran, failures) = read_report(&report);
    if !status.success() || !failures.is_empty() || ran != 2 {
        let log_text = fs::read_to_string(&log_path).unwrap_or_default();
        return Err(format!(
            "{name} exited with {status}, {ran} benchmark specs ran (want 2), failures: \
             {failures:?}\n{name} log tail:\n{}",
            tail(&log_text)
        )
        .into());
    }
    Ok(())
}

/// (specs that ran, failure messages) of a ginkgo JSON report.
fn read_report(path: &Path) -> (usize, Vec<String>) {
    let Ok(bytes) = fs::read(path) else {
        return (0, vec![format!("no report at {}", path.display())]);
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return (0, vec!["unparsable report".into()]);
    };
    let mut ran = 0;
    let mut failures = Vec::new();
    for suite in v.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            match spec["State"].as_str().unwrap_or("") {
                "passed" => ran += 1,
                "skipped" | "pending" => {}
                state => {
                    ran += 1;
                    failures.push(format!(
                        "{} {state}: {}",
                        spec["LeafNodeText"].as_str().unwrap_or("?"),
                        spec["Failure"]["Message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    (ran, failures)
}

/// One of critest's lifecycle result files.
struct Series {
    names: Vec<String>,
    /// Per sample: each operation's duration (ms), in `names` order.
    ops: Vec<Vec<f64>>,
    /// Per sample: end - start of the whole cycle (ms).
    cycles: Vec<f64>,
}

impl Series {
    fn op(&self, name: &str) -> Vec<f64> {
        let Some(i) = self.names.iter().position(|n| n == name) else {
            return Vec::new();
        };
        self.ops.iter().filter_map(|o| o.get(i).copied()).collect()
    }
}

fn read_series(path: &Path) -> Res<Series> {
    let bytes = fs::read(path).map_err(|e| format!("critest wrote no {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("parse {}: {e}", path.display()))?;
    let names: Vec<String> = v["operationsNames"]
        .as_array()
        .ok_or_else(|| format!("{}: no operationsNames", path.display()))?
        .iter()
        .map(|n| n.as_str().unwrap_or("").to_owned())
        .collect();
    let mut ops = Vec::new();
    let mut cycles = Vec::new();
    for p in v["datapoints"].as_array().into_iter().flatten() {
        let d: Vec<f64> = p["operationsDurationsNs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_i64)
            .map(|ns| ns as f64 / 1e6)
            .collect();
        if d.len() != names.len() {
            return Err(format!(
                "{}: a datapoint has {} durations for {} operations",
                path.display(),
                d.len(),
                names.len()
            )
            .into());
        }
        let (Some(start), Some(end)) = (p["startTime"].as_i64(), p["endTime"].as_i64()) else {
            return Err(format!("{}: a datapoint has no start or end", path.display()).into());
        };
        ops.push(d);
        cycles.push((end - start) as f64 / 1e6);
    }
    if ops.is_empty() {
        return Err(format!("{}: no datapoints", path.display()).into());
    }
    Ok(Series { names, ops, cycles })
}

/// Starts `ctx.args.memory_pods` pods with a `sleep` container each and
/// measures; the caller removes the pods.
fn memory(ctx: &RunCtx, socket: &Path, pid: u32, pod_procs: &dyn Fn() -> Vec<u32>) -> Res<Mem> {
    let n = ctx.args.memory_pods;
    sleep_checked(Duration::from_secs(1))?;
    let server_before = status_kib(pid, "VmRSS")?;
    let mut first_ctr = None;
    block_on(async {
        let (mut rt, _) = clients(socket).await?;
        for i in 0..n {
            check_stop()?;
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: format!("bench-mem-{i}"),
                    uid: format!("bench-mem-uid-{i}"),
                    namespace: "crius-bench".into(),
                    attempt: 0,
                }),
                hostname: format!("bench-mem-{i}"),
                linux: Some(LinuxPodSandboxConfig {
                    cgroup_parent: ctx.cgroup_parent.clone(),
                    ..LinuxPodSandboxConfig::default()
                }),
                ..PodSandboxConfig::default()
            };
            let pod = rpc(
                "RunPodSandbox",
                rt.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: ctx.handler.to_owned(),
                }),
            )
            .await?
            .pod_sandbox_id;
            let ctr = rpc(
                "CreateContainer",
                rt.create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata {
                            name: "sleep".into(),
                            attempt: 0,
                        }),
                        image: Some(ImageSpec {
                            image: BUSYBOX.into(),
                            ..ImageSpec::default()
                        }),
                        command: vec!["sleep".into(), "3600".into()],
                        ..ContainerConfig::default()
                    }),
                    sandbox_config: Some(config),
                }),
            )
            .await?
            .container_id;
            rpc(
                "StartContainer",
                rt.start_container(StartContainerRequest {
                    container_id: ctr.clone(),
                }),
            )
            .await?;
            first_ctr.get_or_insert(ctr);
        }
        Res::Ok(())
    })??;
    sleep_checked(Duration::from_secs(2))?;
    let (exec_sync, crictl_exec) = match &first_ctr {
        Some(ctr) => exec_times(socket, ctr)?,
        None => (Vec::new(), Vec::new()),
    };
    let procs = pod_procs();
    let table = process_table();
    let mut per_pod = Vec::new();
    let mut helpers = Vec::new();
    let mut helper_names = std::collections::BTreeSet::new();
    let mut sleepers = 0;
    let mut exes = std::collections::BTreeSet::new();
    for p in &procs {
        per_pod.push(proc_mem(*p)?);
        if let Ok(exe) = fs::read_link(format!("/proc/{p}/exe")) {
            exes.insert(exe.to_string_lossy().into_owned());
        }
        for d in descendants(&table, *p) {
            let comm = table.get(&d).map_or("", |(_, c)| c.as_str());
            if comm == "sleep" {
                sleepers += 1;
            } else {
                helper_names.insert(comm.to_owned());
                helpers.push(proc_mem(d)?);
            }
        }
    }
    let server_after = status_kib(pid, "VmRSS")?;
    let memfd = memfd_kib(pid);
    Ok(Mem {
        memfd,
        pods: n,
        server_before,
        server_after,
        per_pod,
        helpers,
        helper_names: helper_names.into_iter().collect(),
        sleepers,
        exes: exes.into_iter().collect(),
        exec_sync,
        crictl_exec,
    })
}

/// Samples of each exec measurement.
const EXEC_SAMPLES: usize = 20;

/// ExecSync and `crictl exec` of `true` in `ctr`, one after another, each
/// timed (ms); after a warm-up call of each.
fn exec_times(socket: &Path, ctr: &str) -> Res<(Vec<f64>, Vec<f64>)> {
    let sync = block_on(async {
        let (mut rt, _) = clients(socket).await?;
        let mut times = Vec::new();
        for i in 0..=EXEC_SAMPLES {
            check_stop()?;
            let start = Instant::now();
            let r = rpc(
                "ExecSync",
                rt.exec_sync(ExecSyncRequest {
                    container_id: ctr.to_owned(),
                    cmd: vec!["true".into()],
                    timeout: 10,
                }),
            )
            .await?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if r.exit_code != 0 {
                return Err(format!("ExecSync true exited {}", r.exit_code).into());
            }
            if i > 0 {
                times.push(ms);
            }
        }
        Res::Ok(times)
    })??;
    let endpoint = format!("unix://{}", socket.display());
    let mut crictl = Vec::new();
    for i in 0..=EXEC_SAMPLES {
        check_stop()?;
        let start = Instant::now();
        let out = Command::new(crictl_bin())
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--timeout",
                "30s",
                "exec",
                ctr,
                "true",
            ])
            .stdin(Stdio::null())
            .output()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            return Err(format!(
                "crictl exec failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        if i > 0 {
            crictl.push(ms);
        }
    }
    Ok((sync, crictl))
}

fn print_run(round: usize, kind: Kind, r: &RunResult) {
    let m = &r.mem;
    println!(
        "round {round} {:<13} pod cycle {:>7.1} ms  container cycle {:>7.1} ms  (median of {}/{}; \
         critest {:.0} s, host busy {:.2} cores, server cpu {:.1} s)",
        kind.name(),
        median(r.pods.cycles.clone()).unwrap_or(f64::NAN),
        median(r.containers.cycles.clone()).unwrap_or(f64::NAN),
        r.pods.cycles.len(),
        r.containers.cycles.len(),
        r.critest_secs,
        r.host_cores,
        r.server_cpu,
    );
    println!(
        "      idle RSS {}; {} pods: {} {}, per pod VmRSS {} PSS {}; {} {:?}, per pod VmRSS {} \
         PSS {}; {} sleep; server {} -> {}, memfd {}; running {:?}",
        mib(r.idle_rss),
        m.pods,
        m.per_pod.len(),
        if kind.is_containerd() {
            "shims"
        } else {
            "monitors"
        },
        kib(per_pod_sum(m, &m.per_pod, |p| p.rss)),
        kib(per_pod_sum(m, &m.per_pod, |p| p.pss)),
        m.helpers.len(),
        m.helper_names,
        kib(per_pod_sum(m, &m.helpers, |p| p.rss)),
        kib(per_pod_sum(m, &m.helpers, |p| p.pss)),
        m.sleepers,
        mib(m.server_before),
        mib(m.server_after),
        mib(m.memfd),
        m.exes,
    );
    if let Some((start, gone)) = &r.kubelet {
        println!(
            "      kubelet: manifest to running {:.1} ms, removed to stopped {:.1} ms (median of {})",
            median(start.clone()).unwrap_or(f64::NAN),
            median(gone.clone()).unwrap_or(f64::NAN),
            start.len()
        );
    }
    if let Some((ops, list)) = &r.images {
        println!(
            "      images: pull {:.1} ms, status {:.1} ms, remove {:.1} ms, list {:.1} ms \
             (median of {}/{})",
            median(ops.op("PullImage")).unwrap_or(f64::NAN),
            median(ops.op("StatusImage")).unwrap_or(f64::NAN),
            median(ops.op("RemoveImage")).unwrap_or(f64::NAN),
            median(list.op("ListImages")).unwrap_or(f64::NAN),
            ops.cycles.len(),
            list.cycles.len(),
        );
    }
    // A VM pod's sleeps run in its guest.
    let sleeps = if kind == Kind::CriusVm { 0 } else { m.pods };
    if m.per_pod.len() != m.pods || m.sleepers != sleeps {
        println!(
            "      note: expected {} per-pod processes and {sleeps} sleeps",
            m.pods
        );
    }
}

fn per_pod_sum(m: &Mem, procs: &[ProcMem], f: impl Fn(&ProcMem) -> u64) -> u64 {
    procs.iter().map(f).sum::<u64>() / m.pods.max(1) as u64
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// One table row: a median per runtime (smaller is better: time, memory).
struct Line {
    label: String,
    /// In the order of the runtimes measured.
    values: Vec<Option<f64>>,
    unit: &'static str,
    /// Whether best containerd / crius means anything for this row.
    ratio: bool,
}

impl Line {
    /// The smaller of the containerds' values over crius's.
    fn best_ratio(&self, runtimes: &[Runtime]) -> Option<f64> {
        let mut crius = None;
        let mut best: Option<f64> = None;
        for (rt, v) in runtimes.iter().zip(&self.values) {
            let Some(v) = *v else { continue };
            if rt.kind.is_containerd() {
                best = Some(best.map_or(v, |b| b.min(v)));
            } else if rt.kind == Kind::Crius {
                crius = Some(v);
            }
        }
        match (crius, best) {
            (Some(c), Some(b)) if self.ratio && c > 0.0 => Some(b / c),
            _ => None,
        }
    }
}

fn report(args: &Args, runtimes: &[Runtime], results: &[(usize, Kind, RunResult)]) -> String {
    let runs: Vec<Vec<&RunResult>> = runtimes
        .iter()
        .map(|rt| {
            results
                .iter()
                .filter(|(_, kind, _)| *kind == rt.kind)
                .map(|(_, _, r)| r)
                .collect()
        })
        .collect();
    // Pooled samples of every round, per runtime.
    let pooled = |f: &dyn Fn(&RunResult) -> Vec<f64>| -> Vec<Option<f64>> {
        runs.iter()
            .map(|rs| median(rs.iter().flat_map(|r| f(r)).collect()))
            .collect()
    };
    // One value per round, per runtime.
    let per_round = |f: &dyn Fn(&RunResult) -> f64| -> Vec<Option<f64>> {
        runs.iter()
            .map(|rs| median(rs.iter().map(|r| f(r)).collect()))
            .collect()
    };
    let mut lines = Vec::new();
    let mut time_line = |label: &str, f: &dyn Fn(&RunResult) -> Vec<f64>| {
        lines.push(Line {
            label: label.to_owned(),
            values: pooled(f),
            unit: "ms",
            ratio: true,
        });
    };
    time_line("RunPodSandbox", &|r| r.pods.op("CreatePod"));
    time_line("PodSandboxStatus", &|r| r.pods.op("StatusPod"));
    time_line("StopPodSandbox", &|r| r.pods.op("StopPod"));
    time_line("RemovePodSandbox", &|r| r.pods.op("RemovePod"));
    time_line("**pod cycle** (run, status, stop, remove)", &|r| {
        r.pods.cycles.clone()
    });
    time_line("CreateContainer (+ critest's ImageStatus)", &|r| {
        r.containers.op("CreateContainer")
    });
    time_line("StartContainer", &|r| r.containers.op("StartContainer"));
    time_line("ContainerStatus", &|r| r.containers.op("StatusContainer"));
    time_line("StopContainer", &|r| r.containers.op("StopContainer"));
    time_line("RemoveContainer", &|r| r.containers.op("RemoveContainer"));
    time_line(
        "**container cycle** (create, start, status, stop, remove)",
        &|r| r.containers.cycles.clone(),
    );
    time_line("ExecSync (`true` in a running busybox)", &|r| {
        r.mem.exec_sync.clone()
    });
    time_line(
        "`crictl exec` round trip (`true`; streaming Exec over SPDY)",
        &|r| r.mem.crictl_exec.clone(),
    );
    if args.kubelet_samples > 0 {
        let k = |which: usize| {
            move |r: &RunResult| {
                r.kubelet.as_ref().map_or_else(Vec::new, |k| {
                    if which == 0 { k.0.clone() } else { k.1.clone() }
                })
            }
        };
        time_line(
            "**kubelet: static pod manifest to its container running**",
            &k(0),
        );
        time_line(
            "kubelet: manifest removed to the pod's sandbox stopped",
            &k(1),
        );
    }
    if args.image_samples > 0 {
        let ops = |name: &'static str| {
            move |r: &RunResult| r.images.as_ref().map_or_else(Vec::new, |(o, _)| o.op(name))
        };
        time_line("PullImage (whole image, local registry)", &ops("PullImage"));
        time_line("ImageStatus", &ops("StatusImage"));
        time_line("RemoveImage", &ops("RemoveImage"));
        time_line("**image cycle** (pull, status, remove)", &|r| {
            r.images
                .as_ref()
                .map_or_else(Vec::new, |(o, _)| o.cycles.clone())
        });
        time_line("ListImages (empty store)", &|r| {
            r.images
                .as_ref()
                .map_or_else(Vec::new, |(_, l)| l.op("ListImages"))
        });
    }
    let mut mem_line = |label: &str, ratio: bool, f: &dyn Fn(&RunResult) -> f64| {
        lines.push(Line {
            label: label.to_owned(),
            values: per_round(f),
            unit: "MiB",
            ratio,
        });
    };
    let to_mib = |k: u64| k as f64 / 1024.0;
    mem_line("**idle server VmRSS**", true, &|r| to_mib(r.idle_rss));
    mem_line("**per pod: monitor / shim VmRSS**", true, &|r| {
        to_mib(per_pod_sum(&r.mem, &r.mem.per_pod, |p| p.rss))
    });
    mem_line("per pod: monitor / shim RssAnon", true, &|r| {
        to_mib(per_pod_sum(&r.mem, &r.mem.per_pod, |p| p.anon))
    });
    mem_line("per pod: monitor / shim PSS", true, &|r| {
        to_mib(per_pod_sum(&r.mem, &r.mem.per_pod, |p| p.pss))
    });
    mem_line(
        "per pod: all its processes, non-shmem PSS (a VM pod's: beyond guest RAM)",
        false,
        &|r| to_mib(private_pss(&r.mem)) / r.mem.pods.max(1) as f64,
    );
    mem_line("per pod: pod PID init / pause VmRSS", true, &|r| {
        to_mib(per_pod_sum(&r.mem, &r.mem.helpers, |p| p.rss))
    });
    mem_line("per pod: pod PID init / pause PSS", true, &|r| {
        to_mib(per_pod_sum(&r.mem, &r.mem.helpers, |p| p.pss))
    });
    let growth = |r: &RunResult| {
        (r.mem.server_after as f64 - r.mem.server_before as f64) / r.mem.pods.max(1) as f64
    };
    // Within noise (a few hundred KiB for all pods): no ratio.
    mem_line("per pod: server VmRSS growth", false, &|r| {
        growth(r) / 1024.0
    });
    mem_line(
        "server: memfd copy of the binary (shmem, not in the server's VmRSS)",
        false,
        &|r| to_mib(r.mem.memfd),
    );
    mem_line(
        "**all runtime memory with the pods running** (server VmRSS + memfd + \
         non-shmem PSS of the per-pod processes)",
        true,
        &|r| to_mib(r.mem.server_after + r.mem.memfd + private_pss(&r.mem)),
    );
    mem_line(
        "**per pod: total** (PSS of monitor + init / shim + pause, + server growth if > 0)",
        true,
        &|r| {
            let pss = per_pod_sum(&r.mem, &r.mem.per_pod, |p| p.pss)
                + per_pod_sum(&r.mem, &r.mem.helpers, |p| p.pss);
            (pss as f64 + growth(r).max(0.0)) / 1024.0
        },
    );

    let counts: Vec<String> = runtimes
        .iter()
        .zip(&runs)
        .map(|(rt, rs)| format!("{} {} runs", rt.kind.name(), rs.len()))
        .collect();
    let mut s = format!(
        "\n{} round(s), {} samples per lifecycle benchmark and {} per image benchmark per \
         round, {} memory pods; {}\n\n|",
        args.rounds,
        args.samples,
        args.image_samples,
        args.memory_pods,
        counts.join(", ")
    );
    for rt in runtimes {
        let _ = write!(s, " | {}", rt.label);
    }
    s.push_str(" | best containerd / crius |\n|---|");
    for _ in runtimes {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    let fmt = |v: Option<f64>, unit: &str| match v {
        Some(x) if unit == "ms" => format!("{x:.1} ms"),
        Some(x) if x.abs() < 10.0 => format!("{x:.2} MiB"),
        Some(x) => format!("{x:.1} MiB"),
        None => "n/a".into(),
    };
    for l in &lines {
        let _ = write!(s, "| {} |", l.label);
        for v in &l.values {
            let _ = write!(s, " {} |", fmt(*v, l.unit));
        }
        let ratio = l
            .best_ratio(runtimes)
            .map_or_else(|| "n/a".into(), |r| format!("{r:.2}"));
        let _ = writeln!(s, " {ratio} |");
    }
    s.push_str("\nper round (median pod cycle / container cycle, ms):\n");
    for (round, kind, r) in results {
        let _ = writeln!(
            s,
            "  round {round} {:<13} {:>7.1} / {:>7.1}  idle {}",
            kind.name(),
            median(r.pods.cycles.clone()).unwrap_or(f64::NAN),
            median(r.containers.cycles.clone()).unwrap_or(f64::NAN),
            mib(r.idle_rss)
        );
    }
    let find = |prefix: &str| lines.iter().find(|l| l.label.starts_with(prefix));
    s.push_str("\naims (best containerd / crius):\n");
    for (prefix, want, what) in [
        (
            "**pod cycle**",
            4.0,
            "pod cycle at most a quarter of containerd's",
        ),
        (
            "**container cycle**",
            4.0,
            "container cycle at most a quarter of containerd's",
        ),
        (
            "**idle server",
            2.0,
            "idle RSS at most half of containerd's",
        ),
        (
            "**per pod: monitor / shim VmRSS",
            1.0,
            "per-pod overhead (VmRSS) below the shim's",
        ),
        (
            "per pod: monitor / shim PSS",
            1.0,
            "per-pod overhead (PSS) below the shim's",
        ),
        (
            "**per pod: total",
            1.0,
            "per-pod total (monitor + init vs shim + pause, PSS, + server growth) below",
        ),
    ] {
        let r = find(prefix).and_then(|l| l.best_ratio(runtimes));
        // "At most a quarter / half" allows equality; "below" does not.
        let verdict = match r {
            Some(x) if (want > 1.0 && x >= want) || x > want => "met",
            Some(_) => "NOT met",
            None => "n/a",
        };
        let _ = writeln!(
            s,
            "  {what}: ratio {} (want {}{want}) -> {verdict}",
            r.map_or_else(|| "n/a".into(), |x| format!("{x:.2}")),
            if want > 1.0 { ">= " } else { "> " }
        );
    }
    s
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn kib(kib: u64) -> String {
    format!("{kib} KiB")
}

/// Copies the files of `from` (recursively) into `to`.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        } else if t.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------
// CRI helpers
// ---------------------------------------------------------------------------

/// A tonic channel over a unix socket (the URI is required and ignored).
async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(TokioIo::new(s))
            }
        }))
        .await
}

async fn clients(
    socket: &Path,
) -> Res<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>)> {
    let ch = unix_channel(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    Ok((
        RuntimeServiceClient::new(ch.clone()),
        ImageServiceClient::new(ch),
    ))
}

/// One CRI call with [`RPC_TIMEOUT`].
async fn rpc<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Res<T> {
    Ok(tokio::time::timeout(RPC_TIMEOUT, call)
        .await
        .map_err(|_| format!("{what} took longer than {RPC_TIMEOUT:?}"))?
        .map_err(|e| format!("{what}: {e}"))?
        .into_inner())
}

/// Polls `Status` until RuntimeReady and NetworkReady are true (60 s).
fn wait_cri_ready(socket: &Path) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = block_on(async {
            let (mut rt, _) = clients(socket).await?;
            let status = rpc("Status", rt.status(StatusRequest { verbose: false })).await?;
            let conds = status.status.map(|s| s.conditions).unwrap_or_default();
            let is = |t: &str| conds.iter().any(|c| c.r#type == t && c.status);
            if is("RuntimeReady") && is("NetworkReady") {
                Res::Ok(None)
            } else {
                Res::Ok(Some(format!("{conds:?}")))
            }
        })?;
        let last = match ready {
            Ok(None) => return Ok(()),
            Ok(Some(c)) => c,
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!("the runtime was not ready within 60 s: {last}").into());
        }
        sleep_checked(Duration::from_millis(100))?;
    }
}

/// Stops and removes every pod; returns how many there were.
async fn remove_all_pods(socket: &Path) -> Res<usize> {
    let (mut rt, _) = clients(socket).await?;
    let pods = rpc(
        "ListPodSandbox",
        rt.list_pod_sandbox(ListPodSandboxRequest::default()),
    )
    .await?
    .items;
    let mut first_err = None;
    for p in &pods {
        let stop = rpc(
            "StopPodSandbox",
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }),
        )
        .await;
        let remove = rpc(
            "RemovePodSandbox",
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }),
        )
        .await;
        if let Err(e) = stop.map(drop).and(remove.map(drop)) {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(pods.len()),
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Res<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    kb_field(&text, field).ok_or_else(|| format!("/proc/{pid}/status has no {field}").into())
}

/// `Name:   1234 kB` -> 1234.
fn kb_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k != field {
            return None;
        }
        v.split_whitespace().next()?.parse().ok()
    })
}

fn proc_mem(pid: u32) -> Res<ProcMem> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| {
        kb_field(&rollup, name).ok_or_else(|| format!("/proc/{pid}/smaps_rollup: no {name}"))
    };
    Ok(ProcMem {
        rss: status_kib(pid, "VmRSS")?,
        anon: status_kib(pid, "RssAnon")?,
        pss: field("Pss")?,
        pss_shmem: field("Pss_Shmem")?,
    })
}

/// Total size (KiB) of the memfds process `pid` holds open: crius keeps a
/// sealed memfd copy of its binary to run the monitors from; its pages are
/// shmem, in the `VmRSS` only of processes that map them (the monitors).
fn memfd_kib(pid: u32) -> u64 {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"))
        })
        .filter_map(|e| fs::metadata(e.path()).ok())
        .map(|m| m.len() / 1024)
        .sum()
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// pid -> (ppid, comm) of every process.
fn process_table() -> BTreeMap<u32, (u32, String)> {
    let mut out = BTreeMap::new();
    for pid in all_pids() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.insert(pid, (ppid, comm));
    }
    out
}

/// Every process of one instance's per-pod runtime processes: crius's
/// monitors and what they fork (`monitor` and a path under the state dir
/// `key` in the cmdline, which a fork keeps) or containerd's shims
/// (`containerd-shim-runc-v2` with the socket `key`).
fn matching_processes(kind: Kind, key: &Path) -> Vec<u32> {
    let key = key.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|pid| {
            let args = cmdline(*pid);
            match kind {
                Kind::Crius | Kind::CriusBefore => {
                    args.iter().any(|a| a == "monitor") && args.iter().any(|a| a.starts_with(&*key))
                }
                Kind::CriusVm => {
                    args.iter().any(|a| a == "vm-monitor")
                        && args.iter().any(|a| a.starts_with(&*key))
                }
                Kind::Containerd2 | Kind::Containerd16 => {
                    args.first()
                        .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                        && args.iter().any(|a| a == &*key)
                }
            }
        })
        .collect()
}

/// The per-pod runtime processes themselves: the [`matching_processes`]
/// whose parent is not one (crius's monitors, containerd's shims).
fn pod_processes(kind: Kind, key: &Path) -> Vec<u32> {
    let all = matching_processes(kind, key);
    let table = process_table();
    all.iter()
        .copied()
        .filter(|p| table.get(p).is_none_or(|(ppid, _)| !all.contains(ppid)))
        .collect()
}

/// Every descendant of `pid` in `table`.
fn descendants(table: &BTreeMap<u32, (u32, String)>, pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for (child, (ppid, _)) in table {
            if *ppid == p && !out.contains(child) {
                out.push(*child);
                todo.push(*child);
            }
        }
    }
    out
}

/// SIGKILLs `pids` and all their descendants (by PID), descendants first.
fn kill_tree(pids: &[u32]) {
    let table = process_table();
    for p in pids {
        for d in descendants(&table, *p).iter().rev() {
            kill9(*d);
        }
        kill9(*p);
    }
}

fn kill9(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// User + system CPU seconds of `pid` (with its reaped children).
fn proc_cpu_secs(pid: u32) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat has no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
    let ticks: u64 = f
        .get(11..15)
        .ok_or_else(|| format!("/proc/{pid}/stat is short"))?
        .iter()
        .map(|x| x.parse::<u64>())
        .sum::<Result<u64, _>>()
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    Ok(ticks as f64 / clk_tck())
}

/// Waits until the host's CPUs are nearly idle (other engineers share
/// them), at most [`QUIET_MAX_WAIT`]; returns the seconds waited.
fn wait_quiet() -> Res<f64> {
    let started = Instant::now();
    loop {
        let before = host_busy_secs()?;
        sleep_checked(QUIET_SAMPLE)?;
        let cores = (host_busy_secs()? - before) / QUIET_SAMPLE.as_secs_f64();
        if cores < QUIET_CORES || started.elapsed() > QUIET_MAX_WAIT {
            return Ok(started.elapsed().as_secs_f64() - QUIET_SAMPLE.as_secs_f64());
        }
    }
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn first_line_of(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("({} --version: {e})", bin.display()))
}

// ---------------------------------------------------------------------------
// Mounts and cgroups
// ---------------------------------------------------------------------------

/// Removes, when dropped, the top-level cgroup directories `names` (in
/// every hierarchy under /sys/fs/cgroup) that did not exist when it was
/// made, with their empty subdirectories (rmdir fails on a cgroup that
/// still has processes, which then stays).
struct CgroupGuard {
    made_later: Vec<String>,
    existed: Vec<PathBuf>,
}

impl CgroupGuard {
    fn new(names: &[&str]) -> CgroupGuard {
        let existed = names
            .iter()
            .flat_map(|n| cgroup_dirs(n))
            .filter(|p| p.exists())
            .collect();
        CgroupGuard {
            made_later: names.iter().map(|n| (*n).to_owned()).collect(),
            existed,
        }
    }
}

/// `/sys/fs/cgroup/<hierarchy>/<name>` for every hierarchy, and
/// `/sys/fs/cgroup/<name>` (cgroup v2).
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = vec![root.join(name)];
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path().join(name));
            }
        }
    }
    out
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for name in &self.made_later {
            for dir in cgroup_dirs(name) {
                if dir.is_dir() && !self.existed.contains(&dir) {
                    rmdir_tree(&dir);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// crius
// ---------------------------------------------------------------------------

/// A fresh crius with our log level; dropping it removes its pods,
/// stops it, kills leftover monitors and detaches leftover mounts.
struct CriusRun {
    crius: Crius,
}

impl CriusRun {
    fn start(
        bin: &Path,
        registry: &Registry,
        net: &TestNetwork,
        log_level: &str,
        extra: &str,
    ) -> Res<CriusRun> {
        let m = mirrors(registry);
        let mirrors: Vec<(&str, &str)> = m.iter().map(|(h, u)| (h.as_str(), u.as_str())).collect();
        let mut crius = Crius::start_with(bin, &mirrors, &format!("{extra}{}", net.toml()))
            .map_err(|e| format!("start crius: {e}"))?;
        // Crius::start writes its own verbose log_level; restart on a config
        // with ours (same, still empty, dirs).
        crius.stop()?;
        let mut run = CriusRun { crius };
        let text = fs::read_to_string(&run.crius.config)?;
        let mut replaced = false;
        let warn: String = text
            .lines()
            .map(|line| {
                if !replaced && line.trim_start().starts_with("log_level") {
                    replaced = true;
                    format!("log_level = {}\n", toml_str(log_level))
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        if !replaced {
            return Err(format!(
                "no log_level line to replace in {}",
                run.crius.config.display()
            )
            .into());
        }
        fs::write(&run.crius.config, warn)?;
        run.crius
            .kill_and_restart()
            .map_err(|e| format!("restart crius: {e}"))?;
        Ok(run)
    }
}

impl Drop for CriusRun {
    fn drop(&mut self) {
        if self.crius.pid().is_some() {
            match block_on(remove_all_pods(&self.crius.socket)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => eprintln!("bench-critest: removing crius's pods: {e}"),
            }
        }
        match self.crius.stop() {
            Ok(Some(s)) if !s.success() => eprintln!("bench-critest: crius exited with {s}"),
            Ok(_) => {}
            Err(e) => eprintln!("bench-critest: stopping crius: {e}"),
        }
        let mut left = matching_processes(Kind::Crius, &self.crius.state);
        left.extend(matching_processes(Kind::CriusVm, &self.crius.state));
        if !left.is_empty() {
            eprintln!("bench-critest: killing leftover crius monitors {left:?}");
            kill_tree(&left);
        }
        if let Some(dir) = self.crius.root.parent()
            && let Err(e) = unmount_under(dir)
        {
            eprintln!("bench-critest: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// A fresh containerd on its own temp dirs; dropping it removes its pods,
/// stops it and cleans up whatever they left.
struct Containerd {
    kind: Kind,
    dir: tempfile::TempDir,
    child: Option<Child>,
    socket: PathBuf,
}

impl Containerd {
    /// containerd 2.4 (`kind` Containerd2) with its shim dir first in
    /// `PATH` and `--runc2`, or containerd 1.6 with the `PATH` as it is.
    fn start(args: &Args, kind: Kind, registry: &Registry, net: &TestNetwork) -> Res<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("crius-bench-ctd-")
            .tempdir()?;
        for sub in ["root", "state", "opt"] {
            fs::create_dir_all(dir.path().join(sub))?;
        }
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        let bin = if kind == Kind::Containerd2 {
            write_hosts_dirs(&dir.path().join("certs.d"), registry)?;
            fs::write(&config, containerd_toml_v4(dir.path(), &args.runc2, net))?;
            &args.containerd2
        } else {
            fs::write(&config, containerd_toml_v2(dir.path(), registry, net))?;
            &args.containerd
        };
        let log = fs::File::create(dir.path().join("containerd.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if kind == Kind::Containerd2
            && let Some(shim_dir) = bin.parent()
        {
            // containerd looks its shim up in PATH first.
            let mut path = std::ffi::OsString::from(shim_dir);
            if let Some(old) = std::env::var_os("PATH") {
                path.push(":");
                path.push(old);
            }
            cmd.env("PATH", path);
        }
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut c = Containerd {
            kind,
            dir,
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.socket.exists() {
            if let Some(ch) = c.child.as_mut()
                && let Some(status) = ch.try_wait()?
            {
                return Err(
                    format!("containerd exited with {status}; log:\n{}", c.log_tail()).into(),
                );
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd made no socket within 30 s; log:\n{}",
                    c.log_tail()
                )
                .into());
            }
            sleep_checked(Duration::from_millis(20))?;
        }
        Ok(c)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default())
    }

    /// Network namespace paths of the pods containerd still has.
    fn netns_paths(&self) -> Res<Vec<PathBuf>> {
        let socket = self.socket.clone();
        block_on(async move {
            let (mut rt, _) = clients(&socket).await?;
            let pods = rpc(
                "ListPodSandbox",
                rt.list_pod_sandbox(ListPodSandboxRequest::default()),
            )
            .await?
            .items;
            let mut out = Vec::new();
            for p in pods {
                let st = rpc(
                    "PodSandboxStatus",
                    rt.pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: p.id,
                        verbose: true,
                    }),
                )
                .await?;
                let Some(info) = st.info.get("info") else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(info)?;
                for ns in v["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    if ns["type"] == "network"
                        && let Some(path) = ns["path"].as_str()
                        && !path.is_empty()
                    {
                        out.push(PathBuf::from(path));
                    }
                }
            }
            Res::Ok(out)
        })?
    }

    fn shutdown(&mut self) {
        let mut netns = Vec::new();
        if self.child.is_some() {
            match self.netns_paths() {
                Ok(p) => netns = p,
                Err(e) => eprintln!("bench-critest: containerd's pods: {e}"),
            }
            match block_on(remove_all_pods(&self.socket)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) | Err(e) => {
                    eprintln!("bench-critest: removing containerd's pods: {e}")
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        // Child::kill sends SIGKILL to this PID only.
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        let left = matching_processes(self.kind, &self.socket);
        if !left.is_empty() {
            eprintln!("bench-critest: killing leftover containerd shims {left:?} and children");
            kill_tree(&left);
        }
        for ns in netns.iter().filter(|p| p.exists()) {
            let _ = nix::mount::umount2(ns, nix::mount::MntFlags::MNT_DETACH);
            if let Err(e) = fs::remove_file(ns) {
                eprintln!("bench-critest: removing {}: {e}", ns.display());
            }
        }
        if let Err(e) = unmount_under(self.dir.path()) {
            eprintln!("bench-critest: {e}");
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// containerd 1.6's version 2 config.
fn containerd_toml_v2(dir: &Path, registry: &Registry, net: &TestNetwork) -> String {
    let q = |p: &Path| toml_str(&p.to_string_lossy());
    let mut mirrors = String::new();
    for (host, url) in self::mirrors(registry) {
        let _ = write!(
            mirrors,
            "\n  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.{}]\n    endpoint = [{}]\n",
            toml_str(&host),
            toml_str(&url)
        );
    }
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
  sandbox_image = {pause}
  # This host withholds CAP_SYS_RESOURCE even from root, so runc cannot
  # give the pause container oom_score_adj -998: keep scores at or above
  # containerd's own (0), as for rootless containerd.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni_conf}
    max_conf_num = 1
{mirrors}"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        sock = q(&dir.join("containerd.sock")),
        ttrpc = q(&dir.join("containerd.sock.ttrpc")),
        opt = q(&dir.join("opt")),
        pause = toml_str(PAUSE),
        cni_conf = q(&net.conf_dir()),
    )
}

/// A `hosts.toml` per mirrored registry host under `certs_d`
/// (containerd 2.x's `registry.config_path`): pulls and resolves go to the
/// local registry, over plain HTTP.
fn write_hosts_dirs(certs_d: &Path, registry: &Registry) -> io::Result<()> {
    for (host, url) in mirrors(registry) {
        let d = certs_d.join(&host);
        fs::create_dir_all(&d)?;
        fs::write(
            d.join("hosts.toml"),
            format!(
                "server = {}\n\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                toml_str(&format!("https://{host}")),
                toml_str(&url)
            ),
        )?;
    }
    Ok(())
}

/// containerd 2.4's version 4 config, with the keys of its own
/// `containerd config default`; the registry mirrors are the `hosts.toml`
/// files of [`write_hosts_dirs`] under `dir/certs.d`.
fn containerd_toml_v4(dir: &Path, runc: &Path, net: &TestNetwork) -> String {
    let q = |p: &Path| toml_str(&p.to_string_lossy());
    format!(
        r#"version = 4
root = {root}
state = {state}
# No drop-ins from /etc/containerd/conf.d.
imports = []
# Snapshotters and differs that are never used here.
disabled_plugins = [
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.differ.v1.erofs",
]

[debug]
  level = "warn"

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = {sock}

  [plugins.'io.containerd.server.v1.ttrpc']
    address = {ttrpc}

  [plugins.'io.containerd.internal.v1.opt']
    path = {opt}

  # Its socket (/var/run/nri/nri.sock) is host-wide.
  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {pause}

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = {certs_d}

  [plugins.'io.containerd.cri.v1.runtime']
    # This host withholds CAP_SYS_RESOURCE even from root, so runc cannot
    # give the pause container oom_score_adj -998: keep scores at or above
    # containerd's own (0), as for rootless containerd.
    restrict_oom_score_adj = true

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = {runc}
          SystemdCgroup = false

    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = {cni_conf}
      max_conf_num = 1
"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        sock = q(&dir.join("containerd.sock")),
        ttrpc = q(&dir.join("containerd.sock.ttrpc")),
        opt = q(&dir.join("opt")),
        pause = toml_str(PAUSE),
        certs_d = q(&dir.join("certs.d")),
        runc = q(runc),
        cni_conf = q(&net.conf_dir()),
    )
}
