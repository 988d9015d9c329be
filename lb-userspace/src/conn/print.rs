//! The tables `conn list` and `conn count` print (without `--json`).

use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether the walk stopped at `--limit`, and how much it read.
fn footer(d: &Value, shown: &str) -> String {
    format!(
        "{shown}; {} table entries read{}",
        text(&d["walked"]),
        if d["truncated"] == true {
            ", stopped at --limit (more match)"
        } else {
            ""
        }
    )
}

/// One line per entry, as `ipvsadm -Lnc`: an L3 flow's BACKEND is the destination its packets
/// are rewritten to (`client -> vip => backend:port`), an L2 flow's the backend it is sent to;
/// IDLE (L3 only) the time since the flow's packets last refreshed their next hop.
pub fn list(d: &Value) {
    let conns = d["conns"].as_array().cloned().unwrap_or_default();
    let mut rows =
        vec![["PRO", "CLIENT", "VIP", "BACKEND", "MODE", "STATE", "IDLE"].map(String::from)];
    rows.extend(conns.iter().map(|c| {
        let backend = if c["to"].is_null() {
            &c["backend"]
        } else {
            &c["to"]
        };
        [
            text(&c["proto"]).to_uppercase(),
            text(&c["client"]),
            text(&c["dst"]),
            text(backend),
            text(&c["mode"]),
            text(&c["state"]),
            c["idle_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        ]
    }));
    // Columns as wide as their widest cell: IPv4 tables stay narrow, IPv6 ones line up.
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!("{}", footer(d, &format!("{} entries", conns.len())));
}

/// Totals, then entries per VIP and per backend.
pub fn count(d: &Value) {
    println!(
        "{}",
        footer(
            d,
            &format!(
                "{} entries ({} active, {} stale)",
                text(&d["total"]),
                text(&d["active"]),
                text(&d["stale"])
            )
        )
    );
    for v in d["vips"].as_array().into_iter().flatten() {
        let vip = match &v["vip"] {
            Value::Null => "(VIP gone)".into(),
            other => text(other),
        };
        println!("{vip:<48} {:>10}", text(&v["conns"]));
        for b in v["backends"].as_array().into_iter().flatten() {
            let addr = match &b["addr"] {
                Value::Null => "(backend id reused)".into(),
                other => text(other),
            };
            println!("  {addr:<46} {:>10}", text(&b["conns"]));
        }
    }
}
