//! The control API: one JSON request per line over a Unix socket, one JSON response per line.
//! The CLI is a client of it; so can be any tool (`socat - UNIX:/run/xdplb/xdplb.sock`).
//!
//! Response data schemas are documented in docs/cli.md and are stable: fields may be added,
//! never renamed or removed.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{CheckSpec, Config, XdpModeName},
    conn::ConnQuery,
    model::{BackendAddr, HashFields, Mac, Mode, VipAddr},
    trace::TraceFilter,
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/xdplb/xdplb.sock";
/// Largest request line the daemon reads.
pub const MAX_REQUEST: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    VipAdd {
        vip: VipAddr,
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        hash: HashFields,
    },
    VipDel {
        vip: VipAddr,
    },
    /// Changes a VIP's settings: its health check (`none` removes it).
    VipSet {
        vip: VipAddr,
        check: CheckSpec,
    },
    VipList,
    BackendAdd(BackendChange),
    /// Changes a backend's weight, MAC, interface, port or check (only the fields given).
    BackendSet(BackendChange),
    BackendDel {
        vip: VipAddr,
        addr: IpAddr,
    },
    /// No new flows (weight 0 in the data path, the configured weight kept): existing flows
    /// stay, new flows go to the other backends.
    BackendDrain {
        vip: VipAddr,
        addr: IpAddr,
    },
    /// Ends a drain: the backend takes new flows again with its kept weight.
    BackendUndrain {
        vip: VipAddr,
        addr: IpAddr,
    },
    Attach {
        iface: String,
        #[serde(default)]
        xdp_mode: XdpModeName,
    },
    Detach {
        iface: String,
    },
    /// Moves the running state to this configuration (with `dry_run`: checks it and lists
    /// the changes, and changes nothing).
    Apply {
        config: Config,
        #[serde(default)]
        dry_run: bool,
    },
    /// The running configuration.
    Config,
    /// Logs every verdict of the data path into the daemon's log (on) or stops (off).
    Debug {
        on: bool,
    },
    /// Streams the data path's decisions that match the filter: the answer line, then JSON
    /// lines until the count is reached or the client closes the connection (`trace::hub`).
    Trace(TraceFilter),
    /// Withdraws this node's VIP announcements; flows that still arrive are served.
    NodeDrain,
    /// Announces again what the node can serve.
    NodeUndrain,
    /// Drain state and the announcement of every VIP address.
    NodeStatus,
    Stats,
    Status,
    Simulate {
        src: IpAddr,
        sport: u16,
        vip: VipAddr,
    },
    /// Connection-table entries matching the query (`conn` module).
    ConnList(ConnQuery),
    /// How many entries match, per VIP and backend.
    ConnCount(ConnQuery),
}

/// A backend and the settings to give it: `backend add` and `backend set`, on the command
/// line and in the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct BackendChange {
    pub vip: VipAddr,
    /// ADDR, or ADDR:PORT ([ADDR]:PORT for IPv6) for an L3 backend on another port.
    pub addr: BackendAddr,
    /// Relative weight, 0..=10000 (0 drains).
    #[arg(long)]
    #[serde(default)]
    pub weight: Option<u32>,
    /// L2 mode: the backend's MAC (else looked up in the neighbour table).
    #[arg(long)]
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Interface the backend is reached through, if not the receiving one.
    #[arg(long)]
    #[serde(default)]
    pub via: Option<String>,
    /// Health check of this backend, e.g. tcp, http:/healthz, http:8081/ready,interval_ms=200
    /// (keys as in the config file); none removes it (the VIP's check, if any, applies).
    #[arg(long, value_name = "KIND[:PORT][PATH][,KEY=VALUE...]|none")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn err(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(e.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// Sends one request to the daemon and returns its data, or its error as a sentence.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the xdplb daemon at {}: {e} (is `xdplb daemon` running? --socket or XDPLB_SOCKET pick another socket)",
            socket.display()
        )
    })?;
    // Applying a large configuration writes many ring slots: allow time for it.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut line = serde_json::to_string(req).map_err(|e| format!("encoding the request: {e}"))?;
    line.push('\n');
    let sent = stream.write_all(line.as_bytes());
    // A daemon that refuses a request may answer before reading it all: read its answer even
    // when the write failed.
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    if let (Err(e), true) = (&sent, reply.is_empty()) {
        return Err(format!("sending to {}: {e}", socket.display()));
    }
    read.map_err(|e| format!("reading the daemon's answer: {e}"))?;
    if reply.is_empty() {
        return Err(format!(
            "the daemon at {} closed the connection without answering",
            socket.display()
        ));
    }
    let resp: Response = serde_json::from_str(&reply)
        .map_err(|e| format!("the daemon's answer is not valid: {e}"))?;
    if resp.ok {
        Ok(resp.data)
    } else {
        Err(resp
            .error
            .unwrap_or_else(|| "the daemon refused the request without a reason".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::BackendAdd(BackendChange {
            vip: "10.0.0.1:80/tcp".parse().unwrap(),
            addr: "10.0.1.1:8080".parse().unwrap(),
            weight: Some(3),
            mac: None,
            via: None,
            check: Some("http:/healthz,fall=1".parse().unwrap()),
        });
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""cmd":"backend_add""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        let bad = r#"{"cmd":"vip_del","vip":"10.0.0.1:80/tcp","extra":1}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
        let bad = r#"{"cmd":"backend_set","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1","colour":1}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
        let bad = r#"{"cmd":"vip_del","vip":"10.0.0.1/tcp"}"#;
        let err = serde_json::from_str::<Request>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ADDR:PORT/PROTO"), "{err}");
    }
}
