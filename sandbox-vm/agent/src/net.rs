//! The `ConfigureInterface` request: the guest's network interface with a
//! given hardware address gets its MTU, an IPv4 address and netmask, is
//! brought up (with `lo`), and gets a default route through the gateway.
//!
//! Done with the classic `SIOCSIF*` / `SIOCADDRT` ioctls on an `AF_INET`
//! datagram socket: a handful of calls, no netlink. The ioctl arguments are
//! our own `#[repr(C)]` copies of the kernel's `struct ifreq` and
//! `struct rtentry` (the kernel ABI, the same under glibc and musl).

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

const SYS_CLASS_NET: &str = "/sys/class/net";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no network interface has hardware address {0}")]
    NoInterface(String),
    #[error("listing {SYS_CLASS_NET}: {0}")]
    Sysfs(std::io::Error),
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    #[error("invalid prefix length {0} (at most 32)")]
    BadPrefix(u8),
    #[error("invalid gateway {0:?}")]
    BadGateway(String),
    #[error("invalid MTU {0}")]
    BadMtu(u32),
    #[error("interface name {0:?} does not fit an ifreq")]
    BadName(String),
    #[error("creating an AF_INET socket: {0}")]
    Socket(Errno),
    #[error("{what} on {iface}: {errno}")]
    Ioctl {
        what: &'static str,
        iface: String,
        errno: Errno,
    },
}

/// A `ConfigureInterface` request's fields.
pub struct InterfaceConfig<'a> {
    pub mac: &'a str,
    pub address: &'a str,
    pub prefix_len: u8,
    pub gateway: Option<&'a str>,
    pub mtu: Option<u32>,
}

/// Configures the interface `cfg.mac` names, and brings `lo` up.
pub fn configure(cfg: &InterfaceConfig<'_>) -> Result<(), NetError> {
    let address: Ipv4Addr = cfg
        .address
        .parse()
        .map_err(|_| NetError::BadAddress(cfg.address.to_owned()))?;
    let netmask = netmask(cfg.prefix_len).ok_or(NetError::BadPrefix(cfg.prefix_len))?;
    let gateway: Option<Ipv4Addr> = cfg
        .gateway
        .map(|g| g.parse().map_err(|_| NetError::BadGateway(g.to_owned())))
        .transpose()?;
    let mtu = cfg
        .mtu
        .map(|m| i32::try_from(m).map_err(|_| NetError::BadMtu(m)))
        .transpose()?;
    let iface = interface_by_mac(Path::new(SYS_CLASS_NET), cfg.mac)?;

    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)?;
    let sock = sock.as_fd();
    let fail = |what: &'static str, iface: &str| {
        let iface = iface.to_owned();
        move |errno| NetError::Ioctl { what, iface, errno }
    };

    if let Some(mtu) = mtu {
        let mut req = IfReq::new(&iface)?;
        req.set_int(mtu);
        if_ioctl(sock, libc::SIOCSIFMTU as libc::Ioctl, &mut req)
            .map_err(fail("setting the MTU", &iface))?;
    }
    let mut req = IfReq::new(&iface)?;
    req.set_addr(address);
    if_ioctl(sock, libc::SIOCSIFADDR as libc::Ioctl, &mut req)
        .map_err(fail("setting the address", &iface))?;
    let mut req = IfReq::new(&iface)?;
    req.set_addr(netmask);
    if_ioctl(sock, libc::SIOCSIFNETMASK as libc::Ioctl, &mut req)
        .map_err(fail("setting the netmask", &iface))?;
    bring_up(sock, &iface)?;
    bring_up(sock, "lo")?;
    if let Some(gateway) = gateway {
        let dev = CString::new(iface.as_str()).map_err(|_| NetError::BadName(iface.clone()))?;
        let mut rt = RtEntry::default_route(gateway);
        match add_route(sock, &mut rt, &dev) {
            // A default route is there already (a repeated request).
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(fail("adding the default route", &iface)(errno)),
        }
    }
    Ok(())
}

/// The netmask of a prefix length, if it is one.
fn netmask(prefix_len: u8) -> Option<Ipv4Addr> {
    match prefix_len {
        0 => Some(Ipv4Addr::UNSPECIFIED),
        1..=32 => Some(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix_len)))),
        _ => None,
    }
}

/// The interface under `class_net` whose `address` is `mac`, ignoring
/// case.
fn interface_by_mac(class_net: &Path, mac: &str) -> Result<String, NetError> {
    let mac = mac.trim();
    for entry in std::fs::read_dir(class_net).map_err(NetError::Sysfs)? {
        let entry = entry.map_err(NetError::Sysfs)?;
        let Ok(address) = std::fs::read_to_string(entry.path().join("address")) else {
            continue;
        };
        if address.trim().eq_ignore_ascii_case(mac) {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(NetError::NoInterface(mac.to_owned()))
}

/// Sets IFF_UP on `iface`.
fn bring_up(sock: BorrowedFd<'_>, iface: &str) -> Result<(), NetError> {
    let fail = |what| {
        move |errno| NetError::Ioctl {
            what,
            iface: iface.to_owned(),
            errno,
        }
    };
    let mut req = IfReq::new(iface)?;
    if_ioctl(sock, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req).map_err(fail("reading flags"))?;
    let flags = req.short() | libc::IFF_UP as i16;
    req.set_short(flags);
    if_ioctl(sock, libc::SIOCSIFFLAGS as libc::Ioctl, &mut req).map_err(fail("bringing it up"))
}

/// The kernel's `struct ifreq`: the name, then a 24-byte union of which we
/// use a `sockaddr`, an `int` (MTU) and a `short` (flags).
#[repr(C, align(8))]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

const _: () = assert!(size_of::<IfReq>() == size_of::<libc::ifreq>());

impl IfReq {
    fn new(iface: &str) -> Result<IfReq, NetError> {
        let bytes = iface.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(NetError::BadName(iface.to_owned()));
        }
        let mut name = [0u8; libc::IFNAMSIZ];
        name[..bytes.len()].copy_from_slice(bytes);
        Ok(IfReq {
            name,
            data: [0; 24],
        })
    }

    /// A `struct sockaddr_in` (port 0).
    fn set_addr(&mut self, addr: Ipv4Addr) {
        self.data = [0; 24];
        let family = libc::AF_INET as libc::sa_family_t;
        self.data[..2].copy_from_slice(&family.to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }

    fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, value: i16) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }
}

/// One `SIOC[GS]IF*` ioctl on `sock`.
fn if_ioctl(sock: BorrowedFd<'_>, request: libc::Ioctl, req: &mut IfReq) -> Result<(), Errno> {
    let arg: *mut IfReq = req;
    // SAFETY: the SIOC[GS]IF* requests passed here read and write a
    // `struct ifreq`, which `IfReq` mirrors (same size, checked above); it
    // is exclusively borrowed for the call, and `sock` is an open socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg) };
    Errno::result(rc).map(drop)
}

/// The kernel's `struct rtentry` (`linux/route.h`).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

#[cfg(target_env = "musl")]
const _: () = assert!(size_of::<RtEntry>() == size_of::<libc::rtentry>());

impl RtEntry {
    /// 0.0.0.0/0 through `gateway`.
    fn default_route(gateway: Ipv4Addr) -> RtEntry {
        RtEntry {
            pad1: 0,
            dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            gateway: sockaddr_in(gateway),
            genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            flags: libc::RTF_UP | libc::RTF_GATEWAY,
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        }
    }
}

/// A `struct sockaddr_in` (port 0) as the generic `struct sockaddr`.
fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    for (slot, octet) in data[2..6].iter_mut().zip(addr.octets()) {
        *slot = octet as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

/// `SIOCADDRT`: adds `rt` through the device `dev`.
fn add_route(sock: BorrowedFd<'_>, rt: &mut RtEntry, dev: &CStr) -> Result<(), Errno> {
    // The kernel only reads the name.
    rt.dev = dev.as_ptr().cast_mut();
    let arg: *mut RtEntry = rt;
    // SAFETY: SIOCADDRT reads a `struct rtentry`, which `RtEntry` mirrors,
    // exclusively borrowed for the call; its only pointer, `dev`, points to
    // the NUL-terminated `dev`, alive for the call; `sock` is an open
    // socket.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as libc::Ioctl, arg) };
    rt.dev = std::ptr::null_mut();
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Some(Ipv4Addr::UNSPECIFIED));
        assert_eq!(netmask(8), Some(Ipv4Addr::new(255, 0, 0, 0)));
        assert_eq!(netmask(20), Some(Ipv4Addr::new(255, 255, 240, 0)));
        assert_eq!(netmask(32), Some(Ipv4Addr::BROADCAST));
        assert_eq!(netmask(33), None);
    }

    #[test]
    fn finds_interfaces_by_mac_ignoring_case() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:ab:cd:ef")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), format!("{mac}\n")).unwrap();
        }
        assert_eq!(
            interface_by_mac(dir.path(), "52:54:00:AB:CD:EF").unwrap(),
            "eth0"
        );
        assert!(matches!(
            interface_by_mac(dir.path(), "52:54:00:00:00:01"),
            Err(NetError::NoInterface(_))
        ));
    }

    #[test]
    fn ifreq_layout() {
        let mut req = IfReq::new("eth0").unwrap();
        req.set_addr(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(&req.name[..5], b"eth0\0");
        assert_eq!(&req.data[4..8], &[10, 1, 2, 3]);
        req.set_short(0x1043);
        assert_eq!(req.short(), 0x1043);
        assert!(IfReq::new("a-name-far-too-long").is_err());
        assert!(IfReq::new("").is_err());
    }

    #[test]
    fn rtentry_layout() {
        // What the kernel's struct rtentry measures on 64-bit targets.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size_of::<RtEntry>(), 120);
    }
}
