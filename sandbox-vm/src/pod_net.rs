//! The pod network reaches the VM, the Kata way: CNI puts `eth0` (a veth
//! with the pod IP) in the pod's network namespace as for any pod; the VM's
//! NIC is a TAP in that namespace; each of the two gets an ingress qdisc
//! with a filter matching every frame whose action is `mirred egress
//! redirect` to the other, so every frame that arrives on one leaves by the
//! other. The pod
//! IP then lives in the guest (its NIC has eth0's MAC and MTU), and the
//! plugins still see an ordinary pod.
//!
//! [`inspect`] reads what the guest needs from eth0 (MAC, MTU, IPv4
//! address and prefix, default gateway); [`TcRedirect::set_up`] joins the
//! TAP (which qemu made in the namespace) to eth0, [`TcRedirect::tear_down`]
//! (or dropping it, or [`tear_down`] by names after a restart) undoes it.
//!
//! The filter is u32 with one all-zero key (`u32 match u8 0 0`), as Kata
//! does, rather than `matchall`: kernels without cls_matchall exist (this
//! project's CI machines' among them) and u32 is in about every one.
//!
//! Everything is done over rtnetlink (the `netlink-packet-route` message
//! types on a plain `netlink-sys` socket, synchronously) from a short-lived
//! thread that has joined the namespace (`setns`), never the whole process.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `ETH_P_ALL` in network byte order, as a filter's protocol.
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();
/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// Our filter's priority on each ingress qdisc.
const FILTER_PRIORITY: u16 = 1;
/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("interface name {0:?}: 1 to 15 bytes, no '/', ':' or whitespace")]
    BadName(String),
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Netlink { what: String, source: io::Error },
    #[error("netlink: {0}")]
    Protocol(String),
    #[error("no interface {0:?} in the pod's network namespace")]
    NoInterface(String),
    #[error("interface {name}: {what}")]
    Interface { name: String, what: &'static str },
    #[error("the thread in the network namespace panicked")]
    Thread,
}

/// What the guest's NIC takes from the pod's CNI interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: the guest NIC's MAC.
    pub mac: String,
    pub mtu: u32,
    /// The first IPv4 address and its prefix length, if any.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The gateway of the namespace's IPv4 default route, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// Reads `interface` (the CNI interface, `eth0`) in the network namespace
/// at `netns`: MAC, MTU, first IPv4 address, default gateway.
pub fn inspect(netns: &Path, interface: &str) -> Result<PodInterface, PodNetError> {
    check_name(interface)?;
    let name = interface.to_owned();
    in_netns(netns, move || {
        let mut nl = Rtnl::open()?;
        let link = nl.link(&name)?;
        let index = link.header.index;
        let mut mac = None;
        let mut mtu = None;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(a) if a.len() == 6 => mac = Some(format_mac(a)),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                _ => {}
            }
        }
        let fail = |what| PodNetError::Interface {
            name: name.clone(),
            what,
        };
        let mac = mac.ok_or_else(|| fail("no Ethernet address"))?;
        let mtu = mtu.ok_or_else(|| fail("no MTU"))?;

        let mut get = AddressMessage::default();
        get.header.family = AddressFamily::Inet;
        let mut ipv4 = None;
        for m in nl.dump(RouteNetlinkMessage::GetAddress(get), "listing addresses")? {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            let addr = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                })
            });
            if let Some(addr) = addr {
                ipv4 = Some((addr, a.header.prefix_len));
                break;
            }
        }

        let mut get = RouteMessage::default();
        get.header.address_family = AddressFamily::Inet;
        let mut gateway = None;
        for m in nl.dump(RouteNetlinkMessage::GetRoute(get), "listing routes")? {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let main = r.header.table == RT_TABLE_MAIN
                || r.attributes.iter().any(
                    |a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RT_TABLE_MAIN)),
                );
            if r.header.address_family != AddressFamily::Inet
                || r.header.destination_prefix_length != 0
                || !main
            {
                continue;
            }
            gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            if gateway.is_some() {
                break;
            }
        }
        Ok(PodInterface {
            name: name.clone(),
            mac,
            mtu,
            ipv4,
            gateway,
        })
    })
}

/// The redirect between the pod's CNI interface and the VM's TAP. Dropping
/// it tears it down (errors logged); [`TcRedirect::tear_down`] reports them.
#[derive(Debug)]
pub struct TcRedirect {
    netns: PathBuf,
    interface: String,
    tap: String,
    active: bool,
}

impl TcRedirect {
    /// In the network namespace `netns`: gives `tap` the MTU of
    /// `interface`, brings it up, and redirects each one's ingress to the
    /// other's egress (an ingress qdisc and a u32 + mirred filter on
    /// each). On failure nothing of it is left.
    pub fn set_up(netns: &Path, interface: &str, tap: &str) -> Result<Self, PodNetError> {
        check_name(interface)?;
        check_name(tap)?;
        if interface == tap {
            return Err(PodNetError::BadName(tap.to_owned()));
        }
        let (iface, tap) = (interface.to_owned(), tap.to_owned());
        let (iface2, tap2) = (iface.clone(), tap.clone());
        in_netns(netns, move || {
            let mut nl = Rtnl::open()?;
            // The qdiscs this call made, removed again if a later step fails
            // (a qdisc that was there before, EEXIST, is not ours).
            let mut made = Vec::new();
            let r = Self::join(&mut nl, &iface, &tap, &mut made);
            if r.is_err() {
                for index in made {
                    let _ = nl.ack(
                        RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
                        0,
                        "removing an ingress qdisc",
                    );
                }
            }
            r
        })?;
        tracing::debug!(netns = %netns.display(), interface, tap = %tap2, "tc redirect set up");
        Ok(Self {
            netns: netns.to_owned(),
            interface: iface2,
            tap: tap2,
            active: true,
        })
    }

    /// The steps of [`TcRedirect::set_up`] in the namespace; `made` gets
    /// the index of each link that got an ingress qdisc.
    fn join(nl: &mut Rtnl, iface: &str, tap: &str, made: &mut Vec<u32>) -> Result<(), PodNetError> {
        let eth = nl.link(iface)?;
        let tap_link = nl.link(tap)?;
        let mtu = eth
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or(PodNetError::Interface {
                name: iface.to_owned(),
                what: "no MTU",
            })?;
        let (eth, tap_index) = (eth.header.index, tap_link.header.index);
        nl.set_link_up(tap_index, Some(mtu), tap)?;
        for (from, to, name) in [(eth, tap_index, iface), (tap_index, eth, tap)] {
            nl.ack(
                RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("adding an ingress qdisc to {name}"),
            )?;
            made.push(from);
            nl.ack(
                RouteNetlinkMessage::NewTrafficFilter(redirect_filter(from, to)),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("adding the redirect filter to {name}"),
            )?;
        }
        Ok(())
    }

    /// Removes the qdiscs (their filters go with them). Idempotent; an
    /// interface already gone (the TAP with qemu, the veth with CNI DEL)
    /// is fine.
    pub fn tear_down(mut self) -> Result<(), PodNetError> {
        self.active = false;
        tear_down(&self.netns, &self.interface, &self.tap)
    }
}

impl Drop for TcRedirect {
    fn drop(&mut self) {
        if self.active
            && let Err(e) = tear_down(&self.netns, &self.interface, &self.tap)
        {
            tracing::warn!(error = %e, tap = %self.tap, "tearing down a tc redirect");
        }
    }
}

/// Removes the ingress qdiscs (and so the redirect filters) of `interface`
/// and `tap` in `netns`, for whoever lost the [`TcRedirect`] (a restart).
/// Interfaces, qdiscs or a namespace already gone are fine.
pub fn tear_down(netns: &Path, interface: &str, tap: &str) -> Result<(), PodNetError> {
    check_name(interface)?;
    check_name(tap)?;
    if !netns.exists() {
        return Ok(());
    }
    let names = [interface.to_owned(), tap.to_owned()];
    in_netns(netns, move || {
        let mut nl = Rtnl::open()?;
        for name in &names {
            let link = match nl.link(name) {
                Ok(link) => link,
                Err(PodNetError::NoInterface(_)) => continue,
                Err(e) => return Err(e),
            };
            match nl.ack(
                RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(link.header.index)),
                0,
                &format!("removing the ingress qdisc of {name}"),
            ) {
                Ok(()) => {}
                // No ingress qdisc (EINVAL from the kernel), or the link
                // went meanwhile.
                Err(PodNetError::Netlink { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// An ingress qdisc on link `index`.
fn ingress_qdisc(index: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.parent = TcHandle::INGRESS;
    m.header.handle = INGRESS_HANDLE;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m
}

/// `tc filter add dev FROM parent ffff: protocol all prio 1 u32 match u8 0 0
/// action mirred egress redirect dev TO`: one key that masks nothing, so
/// every frame matches.
fn redirect_filter(from: u32, to: u32) -> TcMessage {
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    let mut m = TcMessage::with_index(from as i32);
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ALL_PROTOCOLS);
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    m.attributes
        .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

/// A Linux interface name: 1 to 15 bytes, none of '/', ':' or whitespace.
fn check_name(name: &str) -> Result<(), PodNetError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(PodNetError::BadName(name.to_owned()))
    }
}

fn format_mac(a: &[u8]) -> String {
    a.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` on a new thread that has joined the network namespace at
/// `netns`; the thread ends with `f`, so no other code runs in there.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, PodNetError> + Send + 'static,
) -> Result<T, PodNetError> {
    let file = File::open(netns).map_err(|source| PodNetError::Netns {
        path: netns.to_owned(),
        source,
    })?;
    let path = netns.to_owned();
    std::thread::Builder::new()
        .name("pod-netns".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                PodNetError::Netns {
                    path,
                    source: e.into(),
                }
            })?;
            f()
        })
        .map_err(|source| PodNetError::Netns {
            path: netns.to_owned(),
            source,
        })?
        .join()
        .map_err(|_| PodNetError::Thread)?
}

/// A synchronous rtnetlink socket of the calling thread's network namespace.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Self, PodNetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(PodNetError::Socket)?;
        socket.bind_auto().map_err(PodNetError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(PodNetError::Socket)?;
        Ok(Self { socket, seq: 0 })
    }

    /// The link called `name`.
    fn link(&mut self, name: &str) -> Result<LinkMessage, PodNetError> {
        let mut get = LinkMessage::default();
        get.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            RouteNetlinkMessage::GetLink(get),
            0,
            &format!("looking up {name}"),
        ) {
            Ok(mut msgs) => match msgs.pop() {
                Some(RouteNetlinkMessage::NewLink(link)) => Ok(link),
                other => Err(PodNetError::Protocol(format!(
                    "unexpected answer to a link lookup: {other:?}"
                ))),
            },
            Err(PodNetError::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Err(PodNetError::NoInterface(name.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Brings link `index` up, with `mtu` when given.
    fn set_link_up(&mut self, index: u32, mtu: Option<u32>, name: &str) -> Result<(), PodNetError> {
        let mut set = LinkMessage::default();
        set.header.index = index;
        set.header.flags = LinkFlags::Up;
        set.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            set.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.ack(
            RouteNetlinkMessage::SetLink(set),
            0,
            &format!("setting {name} up"),
        )
    }

    fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, PodNetError> {
        self.request(msg, NLM_F_DUMP, what)
    }

    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<(), PodNetError> {
        self.request(msg, flags | NLM_F_ACK, what).map(|_| ())
    }

    /// Sends `msg` and collects the answers up to the end of a dump, the
    /// acknowledgement, or (neither asked) the first answer.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, PodNetError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        let fail = |source: io::Error| PodNetError::Netlink {
            what: what.to_owned(),
            source,
        };
        self.socket.send(&buf, 0).map_err(fail)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let acked = flags & NLM_F_ACK != 0;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(fail)?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| PodNetError::Protocol(format!("{what}: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(PodNetError::Protocol(format!("{what}: empty message")));
                }
                offset += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(fail(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && !acked {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["eth0", "tap0_kata", "a", "crvm-123456789"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a:b", "a b", "0123456789abcdef", ".", ".."] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            TcRedirect::set_up(Path::new("/nonexistent"), "eth0", "eth0"),
            Err(PodNetError::BadName(_))
        ));
    }

    #[test]
    fn a_missing_netns_is_a_clear_error() {
        let e = inspect(Path::new("/nonexistent/netns"), "eth0").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
        // Tearing down in a namespace already gone is fine.
        tear_down(Path::new("/nonexistent/netns"), "eth0", "tap0").unwrap();
    }

    #[test]
    fn the_filter_redirects_all_protocols_to_the_other_link() {
        let m = redirect_filter(7, 9);
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.parent, INGRESS_HANDLE);
        assert_eq!(m.header.info, 0x0001_0300);
        let TcAttribute::Options(opts) = &m.attributes[1] else {
            panic!("{m:?}")
        };
        let TcOption::U32(TcFilterU32Option::Selector(sel)) = &opts[0] else {
            panic!("{opts:?}")
        };
        assert_eq!(
            sel.keys,
            vec![TcU32Key::default()],
            "a key that masks nothing"
        );
        let TcOption::U32(TcFilterU32Option::Action(actions)) = &opts[1] else {
            panic!("{opts:?}")
        };
        let TcActionAttribute::Options(a) = &actions[0].attributes[1] else {
            panic!("{actions:?}")
        };
        let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(p.ifindex, 9);
        assert_eq!(p.eaction, TcMirrorActionType::EgressRedir);
        assert_eq!(format_mac(&[2, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
    }
}
