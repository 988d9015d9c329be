//! The metrics server: `GET /metrics` over a minimal HTTP/1.1, one request per connection,
//! every connection bounded in time and memory.

use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::timeout,
};

use super::{render, MetricsSnapshot};

/// The metrics now, or why they cannot be read (answered with a 500, never with zeros that
/// Prometheus would take for counter resets).
pub type SnapshotFn = Arc<dyn Fn() -> Result<MetricsSnapshot, String> + Send + Sync>;

/// Time a client has to send its whole request head.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for a client to close after the response; see `respond`.
const LINGER: Duration = Duration::from_secs(1);
pub(super) const MAX_HEAD: usize = 8 * 1024;
/// Connections served at once; more wait in the listen backlog. Bounds memory and descriptors.
const MAX_CONNECTIONS: usize = 64;

/// Serves `GET /metrics` on `listener` until the task is dropped or aborted, which also ends
/// the connections in flight. Never returns on its own: errors, even of `accept`, are logged
/// and the server goes on.
pub async fn serve(listener: TcpListener, snapshot: SnapshotFn) -> io::Result<()> {
    serve_with(listener, snapshot, READ_TIMEOUT).await
}

pub(super) async fn serve_with(
    listener: TcpListener,
    snapshot: SnapshotFn,
    read_timeout: Duration,
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
                            if let Err(e) = handle(stream, snapshot, read_timeout).await {
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

async fn handle(
    mut stream: TcpStream,
    snapshot: SnapshotFn,
    read_timeout: Duration,
) -> io::Result<()> {
    let head = timeout(read_timeout, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out reading the request"))??;
    let response = match head {
        Head::Closed => return Ok(()),
        Head::Incomplete => response(400, "bad request\n"),
        Head::TooLarge => response(431, "request head larger than 8 KiB\n"),
        Head::Complete(head) => route(&head, snapshot).await,
    };
    timeout(WRITE_TIMEOUT, respond(&mut stream, &response))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out writing the response"))?
}

enum Head {
    /// The client closed without sending anything.
    Closed,
    /// The client closed in the middle of the head.
    Incomplete,
    TooLarge,
    Complete(Vec<u8>),
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = vec![0; MAX_HEAD];
    let mut len = 0;
    while len < MAX_HEAD {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(if len == 0 {
                Head::Closed
            } else {
                Head::Incomplete
            });
        }
        // The blank line may straddle reads.
        let from = len.saturating_sub(2);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
    }
    Ok(Head::TooLarge)
}

/// Index just past the blank line that ends a head, accepting bare LF as well as CRLF.
fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

async fn route(head: &[u8], snapshot: SnapshotFn) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .unwrap_or_default()
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return response(400, "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return response(400, "only HTTP/1.x is served\n");
    }
    if method != "GET" {
        return response(405, "only GET is allowed\n");
    }
    // Query parameters (Prometheus' `params`) do not change the answer.
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path {
        // The callback may do blocking work (reading BPF maps) and may panic: keep both off
        // the async workers and out of the server.
        "/metrics" => {
            match tokio::task::spawn_blocking(move || snapshot().map(|s| render(&s))).await {
                Ok(Ok(body)) => metrics_response(&body),
                Ok(Err(e)) => {
                    log::warn!("metrics snapshot failed: {e}");
                    response(500, &format!("metrics snapshot failed: {e}\n"))
                }
                Err(e) => {
                    log::warn!("metrics snapshot failed: {e}");
                    response(500, "metrics snapshot failed\n")
                }
            }
        }
        "/" => response(200, "xdplb metrics exporter: see /metrics\n"),
        _ => response(404, "not found; metrics are at /metrics\n"),
    }
}

fn metrics_response(body: &str) -> Vec<u8> {
    http_response(200, "text/plain; version=0.0.4; charset=utf-8", body)
}

fn response(status: u16, body: &str) -> Vec<u8> {
    http_response(status, "text/plain; charset=utf-8", body)
}

fn http_response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let len = body.len();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         {allow}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

async fn respond(stream: &mut TcpStream, response: &[u8]) -> io::Result<()> {
    stream.write_all(response).await?;
    stream.shutdown().await?;
    // Closing with unread input (an oversize head, a body) makes the kernel reset the
    // connection, which can destroy the response before the client reads it. So drain a
    // bounded amount until the client closes.
    let mut unread = (&mut *stream).take(64 * 1024);
    let _ = timeout(LINGER, tokio::io::copy(&mut unread, &mut tokio::io::sink())).await;
    Ok(())
}
