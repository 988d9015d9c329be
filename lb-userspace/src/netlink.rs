//! Reading a device's XDP features from the `netdev` generic netlink family, which
//! `netlink-packet-route` (`crate::rtnl`) does not cover: a small hand-made request. One
//! request, one answer, in the calling thread's network namespace.

use std::io;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const HDR: usize = 16;

const GENL_ID_CTRL: u16 = 16;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
/// The device takes frames redirected into it (`ndo_xdp_xmit`); on a veth, set while its peer
/// runs a driver-mode XDP program or has GRO on (drivers/net/veth.c, veth_set_xdp_features).
pub const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// A netlink message under construction: header, fixed part, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut b = vec![0u8; HDR];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        b[8..12].copy_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(fixed);
        Msg(b)
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Msg {
        let len = (4 + value.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Sends one request on a new socket of `protocol` and returns the first answer's payload
/// (after the netlink header); an error answer becomes the error it carries.
fn request(protocol: i32, msg: Msg) -> io::Result<Vec<u8>> {
    let msg = msg.finish();
    let mut buf = vec![0u8; 16384];
    // SAFETY: plain socket calls on buffers we own; the socket is closed on every path.
    let got = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut got = libc::send(fd, msg.as_ptr().cast(), msg.len(), 0);
        if got >= 0 {
            got = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if got < 0 {
            return Err(err);
        }
        got as usize
    };
    if got < HDR + 4 {
        return Err(io::Error::other("short netlink answer"));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind == NLMSG_ERROR {
        // struct nlmsgerr: a negative errno, 0 for an acknowledgement.
        let code = i32::from_ne_bytes(buf[HDR..HDR + 4].try_into().expect("4 bytes"));
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    let len = (u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize).min(got);
    // A length below the header's own is malformed: an error, never a panic.
    buf.get(HDR..len).map(<[u8]>::to_vec).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netlink message of {len} bytes"),
        )
    })
}

/// The attributes of a payload after its fixed part of `skip` bytes: (type, value).
fn attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = skip;
    while at + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[at], payload[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]) & !NLA_F_NESTED;
        if len < 4 || at + len > payload.len() {
            break;
        }
        out.push((kind, &payload[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// The XDP features (`NETDEV_XDP_ACT_*`) the kernel reports for `ifindex`; `None` where the
/// kernel has no `netdev` family (before 6.3).
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let genl = |cmd: u8| [cmd, 1, 0, 0];
    let mut m = Msg::new(GENL_ID_CTRL, 0, &genl(CTRL_CMD_GETFAMILY));
    m.attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
    let family = match request(libc::NETLINK_GENERIC, m) {
        Ok(p) => attrs(&p, 4)
            .into_iter()
            .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]])),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(e),
    };
    let Some(family) = family else {
        return Ok(None);
    };
    let mut m = Msg::new(family, 0, &genl(NETDEV_CMD_DEV_GET));
    m.attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
    let p = request(libc::NETLINK_GENERIC, m)?;
    Ok(attrs(&p, 4)
        .into_iter()
        .find(|(k, v)| *k == NETDEV_A_DEV_XDP_FEATURES && v.len() == 8)
        .map(|(_, v)| u64::from_ne_bytes(v.try_into().expect("8 bytes"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_parse_back() {
        let mut m = Msg::new(GENL_ID_CTRL, 0, &[CTRL_CMD_GETFAMILY, 1, 0, 0]);
        m.attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0")
            .attr(CTRL_ATTR_FAMILY_ID, &7u16.to_ne_bytes());
        let msg = m.finish();
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(msg[..4].try_into().unwrap()) as usize,
            msg.len()
        );
        let got = attrs(&msg[HDR..], 4);
        assert_eq!(got[0], (CTRL_ATTR_FAMILY_NAME, &b"netdev\0"[..]));
        assert_eq!(got[1], (CTRL_ATTR_FAMILY_ID, &7u16.to_ne_bytes()[..]));
    }
}
