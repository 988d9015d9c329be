//! A packet capture on a test interface (AF_PACKET), counting the source addresses of the IP
//! packets it receives, and the addresses quoted inside the ICMP errors among them: how a test
//! proves a client never saw a backend's address, neither as a sender nor inside an error.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::netns::Netns;

const PACKET_OUTGOING: u8 = 4;
/// How long a stopped capture goes on reading what was queued before the stop.
const DRAIN: Duration = Duration::from_secs(1);

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Seen>>>,
}

/// What a capture received.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Packets per (outer) source address.
    pub sources: BTreeMap<IpAddr, u64>,
    /// Addresses quoted inside ICMP errors (the quoted packet's source and destination, each
    /// counted), with their ports when the quoted packet is TCP or UDP and long enough (0
    /// otherwise).
    pub quoted: BTreeMap<SocketAddr, u64>,
}

impl Capture {
    /// Starts capturing what `iface` in `ns` receives.
    pub fn start(ns: &Netns, iface: &str) -> Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns_name, iface, flag) = (ns.name.clone(), iface.to_string(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<Seen> {
            let ns = Netns { name: ns_name };
            let entered = ns.enter();
            std::mem::forget(ns); // not ours to delete
            entered?;
            let fd = open(&iface);
            let _ = ready_tx.send(fd.is_ok());
            let fd = fd?;
            let mut seen = Seen::default();
            let mut buf = [0u8; 2048];
            // Once stopped, what is still queued is read without waiting: frames that arrived
            // just before the stop (an answer the test already saw, say) count too. For a
            // second at most, in case traffic never pauses.
            let mut drain_until = None;
            loop {
                let stopping = flag.load(Ordering::Relaxed);
                if stopping {
                    let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
                    if Instant::now() > until {
                        break;
                    }
                }
                // SAFETY: recvfrom into owned buffers of the sizes given.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        if stopping { libc::MSG_DONTWAIT } else { 0 },
                        (&raw mut sll).cast(),
                        &mut len,
                    )
                };
                if n <= 0 && stopping {
                    break;
                }
                if n <= 0 || sll.sll_pkttype == PACKET_OUTGOING {
                    continue;
                }
                let frame = &buf[..n as usize];
                if let Some(src) = source(frame) {
                    *seen.sources.entry(src).or_default() += 1;
                }
                for addr in quoted(frame).into_iter().flatten() {
                    *seen.quoted.entry(addr).or_default() += 1;
                }
            }
            // The kernel's own count of frames the capture missed: it must be 0.
            let mut st = libc::tpacket_stats {
                tp_packets: 0,
                tp_drops: 0,
            };
            let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
            // SAFETY: getsockopt into an owned struct of the size given; closing our own socket.
            let drops = unsafe {
                let rc = libc::getsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    (&raw mut st).cast(),
                    &mut len,
                );
                libc::close(fd);
                if rc == 0 {
                    st.tp_drops
                } else {
                    u32::MAX
                }
            };
            if drops != 0 {
                bail!("the capture missed {drops} frames");
            }
            Ok(seen)
        });
        if !ready_rx.recv().unwrap_or(false) {
            return match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the capture thread failed to start"),
            };
        }
        Ok(Capture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns the packets received per source address.
    pub fn finish(self) -> Result<BTreeMap<IpAddr, u64>> {
        Ok(self.finish_all()?.sources)
    }

    /// Stops and returns the source addresses and the addresses quoted in ICMP errors.
    pub fn finish_all(mut self) -> Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("finished once").join() {
            Ok(r) => r,
            Err(_) => bail!("the capture thread panicked"),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(iface: &str) -> Result<i32> {
    let ifindex = lb_userspace::iface::index(iface)?;
    // SAFETY: plain socket calls; the fd is closed by the capture thread.
    unsafe {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as i32,
        );
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("binding the capture to {iface}: {e}");
        }
        // A large buffer: a capture that drops frames could miss the one that matters.
        let size: libc::c_int = 8 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            4,
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        Ok(fd)
    }
}

/// Source address of an Ethernet frame carrying IPv4 or IPv6.
fn source(frame: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?) {
        0x0800 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(frame.get(26..30)?).ok()?,
        ))),
        0x86dd => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(frame.get(22..38)?).ok()?,
        ))),
        _ => None,
    }
}

/// The quoted packet's source and destination of an ICMP or ICMPv6 error in an Ethernet frame
/// (the outer IPv6 header without extension headers, as the kernel sends errors).
fn quoted(frame: &[u8]) -> Option<[SocketAddr; 2]> {
    let (inner, v6) = match u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?) {
        0x0800 => {
            let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
            let icmp = frame.get(14 + ihl..)?;
            // Destination unreachable, source quench, redirect, time exceeded, parameter
            // problem: the errors that quote a packet (RFC 792).
            if *frame.get(23)? != 1 || !matches!(icmp.first()?, 3 | 4 | 5 | 11 | 12) {
                return None;
            }
            (icmp.get(8..)?, false)
        }
        // Destination unreachable, packet too big, time exceeded, parameter problem (RFC 4443).
        0x86dd if *frame.get(20)? == 58 && matches!(frame.get(54)?, 1..=4) => {
            (frame.get(62..)?, true)
        }
        _ => return None,
    };
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, usize) = if v6 {
        (
            Ipv6Addr::from(<[u8; 16]>::try_from(inner.get(8..24)?).ok()?).into(),
            Ipv6Addr::from(<[u8; 16]>::try_from(inner.get(24..40)?).ok()?).into(),
            inner[6],
            40,
        )
    } else {
        (
            Ipv4Addr::from(<[u8; 4]>::try_from(inner.get(12..16)?).ok()?).into(),
            Ipv4Addr::from(<[u8; 4]>::try_from(inner.get(16..20)?).ok()?).into(),
            inner[9],
            usize::from(inner[0] & 0x0f) * 4,
        )
    };
    let port = |at: usize| -> u16 {
        match inner.get(l4 + at..l4 + at + 2) {
            Some(p) if matches!(proto, 6 | 17) => u16::from_be_bytes([p[0], p[1]]),
            _ => 0,
        }
    };
    Some([SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2))])
}
