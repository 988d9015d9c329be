//! The metrics server: `GET /metrics` on hyper's HTTP/1.1, one request per connection, every
//! connection bounded in time and memory so that a slow or misbehaving client cannot hold the
//! daemon's resources or delay other scrapes for long.

use std::{convert::Infallible, io, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout,
};

use super::{render, Format, MetricsSnapshot};

/// The metrics now, or why they cannot be read (answered with a 500, never with zeros that
/// Prometheus would take for counter resets).
pub type SnapshotFn = Arc<dyn Fn() -> Result<MetricsSnapshot, String> + Send + Sync>;

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    /// To send its whole request head.
    pub head: Duration,
    /// For the whole exchange, head and response: bounds a client that reads slowly.
    pub exchange: Duration,
}

const TIMEOUTS: Timeouts = Timeouts {
    head: Duration::from_secs(5),
    exchange: Duration::from_secs(10),
};
/// The largest request head read (hyper's smallest buffer limit); a longer one gets a 431.
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog. Bounds memory and descriptors.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` on `listener` until the task is dropped or aborted, which also ends
/// the connections in flight. Never returns on its own: errors, even of `accept`, are logged
/// and the server goes on.
pub async fn serve(listener: TcpListener, snapshot: SnapshotFn) -> io::Result<()> {
    serve_with(listener, snapshot, TIMEOUTS).await
}

pub(super) async fn serve_with(
    listener: TcpListener,
    snapshot: SnapshotFn,
    timeouts: Timeouts,
) -> io::Result<()> {
    // A JoinSet aborts every connection task when it is dropped with the server.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Reap finished connections; the branch is disabled while there are none.
            Some(_) = connections.join_next() => {}
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                match accepted {
                    Ok((stream, peer)) => {
                        let snapshot = snapshot.clone();
                        connections.spawn(async move {
                            if let Err(e) = connection(stream, snapshot, timeouts).await {
                                log::debug!("metrics connection from {peer}: {e}");
                            }
                        });
                    }
                    Err(e) if is_transient(&e) => log::debug!("metrics accept: {e}"),
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        log::warn!("metrics accept: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// One request: hyper closes a connection whose head is late (`timeouts.head`) and answers an
/// oversize head with 431 and a malformed one with 400; the outer deadline bounds a client
/// that reads the response slowly.
async fn connection(stream: TcpStream, snapshot: SnapshotFn, timeouts: Timeouts) -> io::Result<()> {
    let service = service_fn(move |request| {
        let snapshot = snapshot.clone();
        async move { Ok::<_, Infallible>(answer(request, snapshot).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.head)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    timeout(timeouts.exchange, served)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out serving the request"))?
        .map_err(io::Error::other)
}

async fn answer(request: Request<Incoming>, snapshot: SnapshotFn) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, "GET".parse().expect("a valid header"));
        return r;
    }
    // Query parameters (Prometheus' `params`) do not change the answer.
    match request.uri().path() {
        "/metrics" => {
            let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            metrics(snapshot, Format::from_accept(accept)).await
        }
        "/" => plain(
            StatusCode::OK,
            "xdplb metrics exporter: see /metrics\n".into(),
        ),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n".into(),
        ),
    }
}

async fn metrics(snapshot: SnapshotFn, format: Format) -> Response<Full<Bytes>> {
    // The callback does blocking work (reading BPF maps, the core's lock) and may panic: keep
    // both off the async workers and out of the server.
    let rendered = tokio::task::spawn_blocking(move || {
        let s = snapshot()?;
        render(&s, format).map_err(|e| format!("encoding the metrics: {e}"))
    })
    .await;
    let error = match rendered {
        Ok(Ok(body)) => return response(StatusCode::OK, format.content_type(), body),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    };
    log::warn!("metrics snapshot failed: {error}");
    let body = format!("metrics snapshot failed: {error}\n");
    plain(StatusCode::INTERNAL_SERVER_ERROR, body)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("a valid header"));
    r
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicBool, Ordering},
        time::Instant,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::metrics::VipMetrics;

    /// Upper bound for any single network exchange in these tests.
    const DEADLINE: Duration = Duration::from_secs(2);

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            vips: vec![VipMetrics {
                vip: "10.0.0.1:80/tcp".into(),
                mode: "l2".into(),
                packets: 10,
                ..Default::default()
            }],
            uptime_seconds: 3.0,
            ..Default::default()
        }
    }

    struct Server {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(snapshot: SnapshotFn, timeouts: Timeouts) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_with(listener, snapshot, timeouts));
        Server { addr, task }
    }

    async fn start_default() -> Server {
        start(Arc::new(|| Ok(snapshot())), TIMEOUTS).await
    }

    struct Reply {
        status: u16,
        /// Lower-cased, as HTTP header names compare.
        head: String,
        body: String,
    }

    /// Sends `request` and reads the reply until the server closes, within `DEADLINE`.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
        let mut reply = Vec::new();
        timeout(DEADLINE, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            stream.read_to_end(&mut reply).await.unwrap();
        })
        .await
        .expect("exchange timed out");
        let reply = String::from_utf8(reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("no end of head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Reply {
            status,
            head: head.to_ascii_lowercase(),
            body: body.into(),
        }
    }

    async fn get(addr: SocketAddr, path: &str, accept: &str) -> Reply {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}\r\n");
        exchange(addr, request.as_bytes()).await
    }

    #[tokio::test]
    async fn serves_metrics_in_the_format_asked_for() {
        let server = start_default().await;
        let reply = get(server.addr, "/metrics", "").await;
        assert_eq!(reply.status, 200);
        assert!(reply.head.starts_with("http/1.1 200 ok\r\n"));
        assert!(reply
            .head
            .contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(reply.head.contains("\r\nconnection: close"));
        assert!(reply
            .head
            .contains(&format!("\r\ncontent-length: {}\r\n", reply.body.len())));
        assert_eq!(reply.body, render(&snapshot(), Format::Prometheus).unwrap());

        let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
        let reply = get(server.addr, "/metrics", accept).await;
        assert_eq!(reply.status, 200);
        assert!(reply.head.contains(
            "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ));
        assert_eq!(
            reply.body,
            render(&snapshot(), Format::OpenMetrics).unwrap()
        );

        // Query parameters are ignored.
        assert_eq!(get(server.addr, "/metrics?target=x", "").await.status, 200);
    }

    #[tokio::test]
    async fn answers_other_requests() {
        let server = start_default().await;
        let root = get(server.addr, "/", "").await;
        assert_eq!(root.status, 200);
        assert!(root.body.contains("/metrics"));
        assert_eq!(root.body.lines().count(), 1);

        assert_eq!(get(server.addr, "/nope", "").await.status, 404);
        let post = exchange(server.addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(post.status, 405);
        assert!(post.head.contains("\r\nallow: get"));
        assert_eq!(exchange(server.addr, b"garbage\r\n\r\n").await.status, 400);
        // HTTP/1.0 without a Host header, as typed into nc.
        let old = exchange(server.addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert_eq!(old.status, 200);
    }

    #[tokio::test]
    async fn refuses_an_oversize_head() {
        let server = start_default().await;
        let filler = "a".repeat(MAX_HEAD);
        let request = format!("GET /metrics HTTP/1.1\r\nX-Filler: {filler}\r\n\r\n");
        let reply = exchange(server.addr, request.as_bytes()).await;
        assert_eq!(reply.status, 431);
        // The server is still there.
        assert_eq!(get(server.addr, "/metrics", "").await.status, 200);
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_scrapes() {
        let server = start_default().await;
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        let mut partial = TcpStream::connect(server.addr).await.unwrap();
        partial.write_all(b"GET /metr").await.unwrap();
        let started = Instant::now();
        assert_eq!(get(server.addr, "/metrics", "").await.status, 200);
        // Well before the silent clients' 5 s read timeout.
        assert!(started.elapsed() < DEADLINE);
    }

    #[tokio::test]
    async fn closes_a_silent_connection_after_the_read_timeout() {
        let timeouts = Timeouts {
            head: Duration::from_millis(200),
            ..TIMEOUTS
        };
        let server = start(Arc::new(|| Ok(snapshot())), timeouts).await;
        for request in [&b""[..], b"GET /metrics HTTP/1.1\r\nHost:"] {
            let mut silent = TcpStream::connect(server.addr).await.unwrap();
            silent.write_all(request).await.unwrap();
            let mut reply = Vec::new();
            let read = timeout(DEADLINE, silent.read_to_end(&mut reply))
                .await
                .expect("not closed in time");
            // Closed, at most with a 408 and never with metrics.
            assert!(read.is_ok() || reply.is_empty(), "{read:?}");
            let reply = String::from_utf8_lossy(&reply);
            assert!(
                reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
                "{reply}"
            );
        }
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_cut_off_after_the_exchange_timeout() {
        // Some 20 MB of metrics: more than the kernel buffers on both sides of the socket.
        let big = MetricsSnapshot {
            events: (0..600_000).map(|i| (format!("e{i}"), i)).collect(),
            ..Default::default()
        };
        let full = render(&big, Format::Prometheus).unwrap().len();
        assert!(full > 20_000_000, "{full}");
        let timeouts = Timeouts {
            head: TIMEOUTS.head,
            exchange: Duration::from_millis(500),
        };
        let server = start(Arc::new(move || Ok(big.clone())), timeouts).await;
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut reply = Vec::new();
        let read = timeout(Duration::from_secs(10), slow.read_to_end(&mut reply))
            .await
            .expect("closed");
        // Cut off: a reset, or the stream ends before the whole body.
        assert!(
            read.is_err() || reply.len() < full,
            "{read:?} {}",
            reply.len()
        );
        // The server goes on.
        assert_eq!(get(server.addr, "/", "").await.status, 200);
    }

    #[tokio::test]
    async fn a_panicking_snapshot_gives_500_and_the_server_goes_on() {
        let panicked = Arc::new(AtomicBool::new(false));
        let flag = panicked.clone();
        let snapshot_fn: SnapshotFn = Arc::new(move || {
            if !flag.swap(true, Ordering::SeqCst) {
                panic!("snapshot failure (expected by this test)");
            }
            Ok(snapshot())
        });
        let server = start(snapshot_fn, TIMEOUTS).await;
        assert_eq!(get(server.addr, "/metrics", "").await.status, 500);
        assert!(panicked.load(Ordering::SeqCst));
        assert_eq!(get(server.addr, "/metrics", "").await.status, 200);
    }

    #[tokio::test]
    async fn a_failed_counter_read_gives_500_not_zeros() {
        let failing: SnapshotFn = Arc::new(|| Err("reading the counters of VIP x failed".into()));
        let server = start(failing, TIMEOUTS).await;
        let reply = get(server.addr, "/metrics", "").await;
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("reading the counters of VIP x failed"));
    }

    #[tokio::test]
    async fn public_serve_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(|| Ok(snapshot()))));
        assert_eq!(get(addr, "/metrics", "").await.status, 200);
        task.abort();
    }
}
