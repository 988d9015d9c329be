//! Real servers and clients for namespace tests. Servers answer every request line (TCP) or
//! datagram (UDP) with their own name, so a client learns which backend it reached.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP and a UDP server in one namespace; stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves `name` on TCP `port` (all addresses) and on UDP `port` at each of `udp_addrs`
    /// (UDP binds the VIP itself, so replies leave from the VIP).
    pub fn start(ns: &Netns, name: &str, port: u16, udp_addrs: &[IpAddr]) -> Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udps) = ns.run(|| -> Result<_> {
            let tcp = TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
                .context("bind TCP server")?;
            tcp.set_nonblocking(true)?;
            let udps = udp_addrs
                .iter()
                .map(|a| {
                    let s = UdpSocket::bind(SocketAddr::new(*a, port))
                        .with_context(|| format!("bind UDP {a}"))?;
                    s.set_read_timeout(Some(Duration::from_millis(20)))?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((tcp, udps))
        })??;
        let mut threads = Vec::new();
        let (n, st) = (name.to_string(), stop.clone());
        threads.push(std::thread::spawn(move || accept_loop(tcp, n, st)));
        for udp in udps {
            let (n, st) = (name.to_string(), stop.clone());
            threads.push(std::thread::spawn(move || udp_loop(udp, n, st)));
        }
        Ok(Server { stop, threads })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, name: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let (n, st) = (name.clone(), stop.clone());
                std::thread::spawn(move || serve(conn, n, st));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn serve(conn: TcpStream, name: String, stop: Arc<AtomicBool>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = conn;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            // A small HTTP server too (health checks, curl, the demo): one answer, then close.
            // A small HTTP server too (health checks, curl, the demo, transfers): one answer,
            // then close.
            Ok(_) if line.starts_with("GET ") || line.starts_with("POST ") => {
                http_answer(&line, &mut reader, &mut writer, &name);
                return;
            }
            Ok(_) => {
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// `GET /bytes/N`: N bytes of body; `POST` with a body: "NAME LEN"; any other GET: "NAME".
fn http_answer(
    request: &str,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    name: &str,
) {
    let _ = reader.get_ref().set_read_timeout(Some(IO_TIMEOUT));
    let mut length = 0usize;
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim() != "" {
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        header.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let body: Vec<u8> = if request.starts_with("POST ") {
        let mut got = vec![0u8; length];
        if std::io::Read::read_exact(reader, &mut got).is_err() {
            return;
        }
        format!("{name} {}\n", got.len()).into_bytes()
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        (0..n).map(|i| (i % 251) as u8).collect()
    } else {
        format!("{name}\n").into_bytes()
    };
    let head = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Backend: {name}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = writer
        .write_all(head.as_bytes())
        .and_then(|_| writer.write_all(&body));
}

fn udp_loop(sock: UdpSocket, name: String, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(name.as_bytes(), from);
        }
    }
}

/// A server in every namespace, named b1, b2, ... in order.
pub fn serve_all<'a>(
    namespaces: impl IntoIterator<Item = &'a Netns>,
    port: u16,
    udp_addrs: &[IpAddr],
) -> Result<Vec<Server>> {
    namespaces
        .into_iter()
        .enumerate()
        .map(|(i, ns)| Server::start(ns, &format!("b{}", i + 1), port, udp_addrs))
        .collect()
}

/// A client connection held open across requests.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects from `src_port` (0: any) to `vip` (call inside the client namespace).
    pub fn open(vip: SocketAddr, src_port: u16) -> Result<Conn> {
        let stream = connect_from(vip, src_port)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one request line and returns the backend's name.
    pub fn ask(&mut self) -> Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed by the server");
        }
        Ok(line.trim().to_string())
    }
}

fn connect_from(vip: SocketAddr, src_port: u16) -> Result<TcpStream> {
    // std has no bind-before-connect: go through a raw socket for a chosen source port.
    let domain = if vip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket calls; the fd is owned by the TcpStream on success, closed otherwise.
    unsafe {
        use std::os::fd::FromRawFd;
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const _,
            4,
        );
        let tv = libc::timeval {
            tv_sec: IO_TIMEOUT.as_secs() as _,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const _,
            std::mem::size_of::<libc::timeval>() as _,
        );
        let (src, dst) = (
            sockaddr(SocketAddr::new(unspecified(vip), src_port)),
            sockaddr(vip),
        );
        if libc::bind(fd, &src.0 as *const _ as *const libc::sockaddr, src.1) != 0 {
            bail!(
                "bind source port {src_port}: {}",
                std::io::Error::last_os_error()
            );
        }
        if libc::connect(fd, &dst.0 as *const _ as *const libc::sockaddr, dst.1) != 0 {
            bail!(
                "connect to {vip} from port {src_port}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(stream)
    }
}

fn unspecified(like: SocketAddr) -> IpAddr {
    if like.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the matching variant.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as _;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// `n` connections from consecutive source ports, each asked once and held open: (connection,
/// the backend that answered). Call inside the client namespace.
pub fn hold(vip: SocketAddr, n: u16, first_port: u16) -> Result<Vec<(Conn, String)>> {
    (0..n)
        .map(|i| {
            let mut c = Conn::open(vip, first_port + i)?;
            let name = c.ask()?;
            Ok((c, name))
        })
        .collect()
}

/// One connection: connect from `src_port`, ask once, close. Returns the backend's name.
pub fn tcp_once(vip: SocketAddr, src_port: u16) -> Result<String> {
    Conn::open(vip, src_port)?.ask()
}

/// One HTTP request to `vip` from any port: (X-Backend header, body).
pub fn http(vip: SocketAddr, request: &[u8]) -> Result<(String, Vec<u8>)> {
    let mut c = Conn::open(vip, 0)?;
    c.writer.write_all(request)?;
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut c.reader, &mut all)?;
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    if !head.starts_with("HTTP/1.0 200") {
        bail!("HTTP answer {head:?}");
    }
    let backend = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Backend: "))
        .unwrap_or("")
        .to_string();
    Ok((backend, all[end + 4..].to_vec()))
}

/// `GET /` to `vip`; returns the body (the backend's name).
pub fn http_get(vip: SocketAddr) -> Result<String> {
    let (_, body) = http(vip, b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

/// Downloads `n` bytes from `vip` and checks them; returns the backend's name.
pub fn http_download(vip: SocketAddr, n: usize) -> Result<String> {
    let (backend, body) = http(
        vip,
        format!("GET /bytes/{n} HTTP/1.0\r\nHost: vip\r\n\r\n").as_bytes(),
    )?;
    if body.len() != n || body.iter().enumerate().any(|(i, b)| *b != (i % 251) as u8) {
        bail!(
            "download of {n} bytes from {backend} came back as {} bytes, or corrupted",
            body.len()
        );
    }
    Ok(backend)
}

/// Uploads `n` bytes to `vip`; returns the backend's name once it confirmed receiving them all.
pub fn http_upload(vip: SocketAddr, n: usize) -> Result<String> {
    let mut req =
        format!("POST /upload HTTP/1.0\r\nHost: vip\r\nContent-Length: {n}\r\n\r\n").into_bytes();
    req.extend((0..n).map(|i| (i % 13) as u8));
    let (backend, body) = http(vip, &req)?;
    let text = String::from_utf8_lossy(&body);
    if text.trim() != format!("{backend} {n}") {
        bail!("upload of {n} bytes: the backend answered {text:?}");
    }
    Ok(backend)
}

/// One UDP request from `src_port`; returns the backend's name.
pub fn udp_once(vip: SocketAddr, src_port: u16) -> Result<String> {
    let s = UdpSocket::bind(SocketAddr::new(unspecified(vip), src_port))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.connect(vip)?;
    let mut buf = [0u8; 64];
    // UDP has no retransmission: retry a few times (the first packet may wait on ARP/NDP).
    for _ in 0..5 {
        s.send(b"who")?;
        if let Ok(n) = s.recv(&mut buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    bail!("no UDP answer from {vip} to source port {src_port}")
}

/// One datagram to `vip` from each of `src_ports` (a connected UDP socket each), all sent
/// before any is waited for, then up to `wait` in all for what comes back. Per port: `true`
/// when the socket reports ECONNREFUSED (the kernel matched an ICMP "port unreachable" quoting
/// exactly this socket's packet, client -> `vip`), `false` on silence. An answer or any other
/// error fails. Call inside the client namespace.
pub fn udp_refused(
    vip: SocketAddr,
    src_ports: impl IntoIterator<Item = u16>,
    wait: Duration,
) -> Result<Vec<bool>> {
    let sockets = src_ports
        .into_iter()
        .map(|port| {
            let s = UdpSocket::bind(SocketAddr::new(unspecified(vip), port))
                .with_context(|| format!("bind UDP port {port}"))?;
            s.connect(vip)?;
            s.send(b"who")?;
            Ok((port, s))
        })
        .collect::<Result<Vec<_>>>()?;
    let deadline = std::time::Instant::now() + wait;
    let mut buf = [0u8; 64];
    sockets
        .iter()
        .map(|(port, s)| {
            // An error that arrived while the others were read is reported at once; a zero
            // timeout would mean "block for ever".
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match s.recv(&mut buf) {
                Ok(n) => bail!(
                    "{vip} answered {:?} to source port {port}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e).context(format!("receiving from {vip} on port {port}")),
            }
        })
        .collect()
}
