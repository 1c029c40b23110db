//! The VM sandbox's guest for tests: the kernel and initramfs that the
//! project's scripts build (cached outside the clone; the scripts run here
//! when the test command did not pass the paths in), ext4 disk images made
//! with `mkfs.ext4 -d`, and network namespaces of our own.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::network::ip;

/// crius's config for VM pods: our guest kernel and initramfs (`[vm]`).
pub fn vm_toml() -> String {
    let kernel = kernel().expect("guest kernel");
    let initramfs = initramfs().expect("guest initramfs");
    format!("[vm]\nkernel = {kernel:?}\ninitramfs = {initramfs:?}\n")
}

/// The guest kernel: `$CRIUS_GUEST_KERNEL`, else what `scripts/guest-kernel`
/// prints (it builds the kernel once per machine).
pub fn kernel() -> io::Result<PathBuf> {
    static K: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    from_env_or_script(&K, "CRIUS_GUEST_KERNEL", "guest-kernel")
}

/// The initramfs with the guest agent: `$CRIUS_GUEST_INITRAMFS`, else what
/// `scripts/guest-agent` prints.
pub fn initramfs() -> io::Result<PathBuf> {
    static I: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    from_env_or_script(&I, "CRIUS_GUEST_INITRAMFS", "guest-agent")
}

fn from_env_or_script(
    cell: &OnceLock<Result<PathBuf, String>>,
    env: &str,
    script: &str,
) -> io::Result<PathBuf> {
    cell.get_or_init(|| match std::env::var_os(env) {
        Some(p) => Ok(PathBuf::from(p)),
        None => script_output(script).map_err(|e| e.to_string()),
    })
    .clone()
    .map_err(io::Error::other)
}

/// For the boot benchmark: the directory with Debian's cloud kernel
/// (`vmlinux`) and its initramfs (`initramfs.img`: our agent plus the
/// modules it needs), made by `scripts/debian-guest-kernel`.
pub fn debian_cloud() -> io::Result<PathBuf> {
    script_output("debian-guest-kernel")
}

/// Runs a script of the project (`scripts/NAME`, its progress on our
/// stderr) and returns the path it prints last.
pub fn script_output(script: &str) -> io::Result<PathBuf> {
    script_output_with(script, &[])
}

/// [`script_output`] with arguments.
pub fn script_output_with(script: &str, args: &[&str]) -> io::Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new(&path)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            path.display(),
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| io::Error::other(format!("{} printed no path", path.display())))
}

/// Makes an ext4 image of `size_mib` at `image` holding the files of `from`
/// (an empty filesystem when None).
pub fn ext4_image(image: &Path, from: Option<&Path>, size_mib: u32) -> io::Result<()> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-E", "root_owner=0:0"]);
    if let Some(dir) = from {
        cmd.arg("-d").arg(dir);
    }
    cmd.arg(image).arg(format!("{size_mib}M"));
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mkfs.ext4 {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Reads a file out of an ext4 image without mounting it (debugfs).
pub fn ext4_read(image: &Path, file: &str) -> io::Result<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(image)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("debugfs {}", image.display())));
    }
    Ok(out.stdout)
}

/// A network namespace made here (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn create(name: &str) -> io::Result<NetNs> {
        // A stale namespace of a crashed run with this name: ours to remove.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name])?;
        let ns = NetNs { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The namespace's link names.
    pub fn links(&self) -> io::Result<Vec<String>> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect())
    }

    /// Runs `f` on a thread that has entered the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let file = std::fs::File::open(self.path())?;
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// PIDs of live processes whose command line mentions `path` (a zombie's
/// command line is empty).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(pid);
        }
    }
    found
}

pub use crate::leftovers::mounts_under;

/// The PIDs of zombies named `comm` whose parent is PID 1: orphans nobody
/// has reaped yet (some machines' PID 1 reaps late, or never), the mark of
/// a process killed before its children.
pub fn orphaned_zombies(comm: &str) -> std::collections::BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "PID (COMM) STATE PPID ..."; COMM may hold spaces.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let mut rest = stat[close + 1..].split_whitespace();
            &stat[open + 1..close] == comm && rest.next() == Some("Z") && rest.next() == Some("1")
        })
        .collect()
}
