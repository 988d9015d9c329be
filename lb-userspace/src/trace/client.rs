//! `xdplb trace` on the command line: sends the request and prints the stream (one line per
//! packet; `--json`: the daemon's JSON lines as they come).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use serde_json::Value;

use super::{TraceFilter, TraceLine};
use crate::api::Request;

/// Streams until the count is reached, the daemon ends the trace, or the user interrupts.
pub fn run(socket: &Path, filter: TraceFilter, json: bool) -> Result<(), String> {
    filter.check()?;
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the xdplb daemon at {}: {e} (is `xdplb daemon` running? --socket or XDPLB_SOCKET pick another socket)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(&Request::Trace(filter))
        .map_err(|e| format!("encoding the request: {e}"))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines
        .next()
        .ok_or("the daemon closed the connection without answering")?
        .map_err(|e| format!("reading the daemon's answer: {e}"))?;
    let first: Value = serde_json::from_str(&first)
        .map_err(|e| format!("the daemon's answer is not valid: {e}"))?;
    if first["ok"] != Value::Bool(true) {
        return Err(first["error"]
            .as_str()
            .unwrap_or("the daemon refused the trace without a reason")
            .to_string());
    }
    let budget = &first["data"]["events_per_cpu_per_sec"];
    eprintln!("tracing (at most {budget} packets per CPU per second); Ctrl-C stops");
    for l in lines {
        let l = l.map_err(|e| format!("reading the trace: {e}"))?;
        if json {
            println!("{l}");
        }
        let v: Value =
            serde_json::from_str(&l).map_err(|e| format!("the trace line is not valid: {e}"))?;
        if v.get("end").is_some() {
            return Ok(());
        }
        if json {
            continue;
        }
        if let Some(e) = v.get("event") {
            let e: TraceLine = serde_json::from_value(e.clone())
                .map_err(|e| format!("the trace line is not valid: {e}"))?;
            println!("{}", e.text());
        } else if let Some(d) = v.get("dropped") {
            eprintln!(
                "({} packets not traced: {} over the data path's budget or ring, {} behind in this client's queue)",
                d["data_path"].as_u64().unwrap_or(0) + d["queue"].as_u64().unwrap_or(0),
                d["data_path"],
                d["queue"]
            );
        }
    }
    Err("the daemon ended the trace (it stopped?)".into())
}
