//! Interface facts the loader needs, read in the calling thread's network namespace (ioctl on
//! a socket, not /sys, which shows the namespace it was mounted in).

use std::{ffi::CString, io};

use crate::model::Mac;

/// Index of an interface by name.
pub fn index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::other("interface name contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?} in this network namespace"),
        )),
        i => Ok(i),
    }
}

/// Hardware address of an interface.
pub fn mac(name: &str) -> io::Result<Mac> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!(
            "interface name {name:?} is too long"
        )));
    }
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name fits (checked above); the
    // socket is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err);
        }
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        Ok(Mac(std::array::from_fn(|i| data[i] as u8)))
    }
}
