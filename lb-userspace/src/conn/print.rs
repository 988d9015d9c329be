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
/// are rewritten to (`client -> vip => backend:port`), an L2 flow's the backend it is sent to.
pub fn list(d: &Value) {
    let conns = d["conns"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<4} {:<46} {:<46} {:<46} {:<4} {:<6}",
        "PRO", "CLIENT", "VIP", "BACKEND", "MODE", "STATE"
    );
    for c in &conns {
        let backend = if c["to"].is_null() {
            text(&c["backend"])
        } else {
            text(&c["to"])
        };
        println!(
            "{:<4} {:<46} {:<46} {:<46} {:<4} {:<6}",
            text(&c["proto"]).to_uppercase(),
            text(&c["client"]),
            text(&c["dst"]),
            backend,
            text(&c["mode"]),
            text(&c["state"])
        );
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
