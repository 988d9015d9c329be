//! Route netlink through `netlink-packet-route`: one request (or dump) per socket, answered in
//! the calling thread's network namespace, and a socket that follows the kernel's neighbour
//! and link changes. Errors the kernel answers with come back as `io::Error`s; a message the
//! crate cannot parse is an error too, never an empty answer.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

fn send(s: &Socket, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    s.send(&buf, 0).map(drop)
}

/// The messages in one datagram, in order.
fn parse(buf: &[u8]) -> io::Result<Vec<NetlinkPayload<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..])
            .map_err(|e| io::Error::other(format!("an unreadable netlink message: {e}")))?;
        let len = m.header.length as usize;
        out.push(m.payload);
        if len == 0 {
            break;
        }
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// Every message a dump request answers with. Strict checking is on, so the kernel applies
/// the filters the request carries (a route table, a protocol) instead of sending everything.
pub fn dump(msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let s = socket()?;
    s.set_netlink_get_strict_chk(true)?;
    send(&s, msg, NLM_F_DUMP)?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = s.recv_from_full()?;
        for payload in parse(&buf)? {
            match payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

/// The one message a request (not a dump) answers with.
pub fn get(msg: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
    let s = socket()?;
    send(&s, msg, 0)?;
    loop {
        let (buf, _) = s.recv_from_full()?;
        for payload in parse(&buf)? {
            match payload {
                NetlinkPayload::InnerMessage(m) => return Ok(m),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

/// Sends a change (`flags` besides request and ack: create, replace, ...) and waits for the
/// kernel's acknowledgement.
pub fn change(msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let s = socket()?;
    send(&s, msg, NLM_F_ACK | flags)?;
    loop {
        let (buf, _) = s.recv_from_full()?;
        for payload in parse(&buf)? {
            if let NetlinkPayload::Error(e) = payload {
                return match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                };
            }
        }
    }
}

/// Fail instead of replacing a program already attached.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
/// Driver (native) mode.
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// Attaches program `prog_fd` to interface `ifindex` through the device itself rather than a
/// bpf_link (as `ip link set ... xdp` does): it stays attached when this process exits, until
/// `set_xdp(ifindex, -1, ..)`.
pub fn set_xdp(ifindex: u32, prog_fd: i32, flags: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(prog_fd),
        LinkXdp::Flags(flags),
    ]));
    change(RouteNetlinkMessage::SetLink(m), 0)
}

/// A socket on the kernel's multicast groups (`libc::RTNLGRP_*`): what changes there, as it
/// changes. Blocking reads.
pub struct Events(Socket);

impl Events {
    pub fn subscribe(groups: &[u32]) -> io::Result<Events> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        for g in groups {
            s.add_membership(*g)?;
        }
        Ok(Events(s))
    }

    /// The next batch of messages. `ENOBUFS` means the kernel dropped some (the reader was
    /// too slow): the caller re-reads the state it follows.
    pub fn next(&self) -> io::Result<Vec<RouteNetlinkMessage>> {
        let (buf, _) = self.0.recv_from_full()?;
        Ok(parse(&buf)?
            .into_iter()
            .filter_map(|p| match p {
                NetlinkPayload::InnerMessage(m) => Some(m),
                _ => None,
            })
            .collect())
    }
}
