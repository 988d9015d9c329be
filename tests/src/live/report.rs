//! The live section's report: the ratios and reach goals, the machine, Markdown.

use serde_json::{json, Value};

use super::{Case, CASES};

/// Mpps of `case` at `flows` in `results`.
fn mpps(results: &[Value], case: Case, flows: u32) -> Option<f64> {
    results
        .iter()
        .find(|r| r["case"] == case.key() && r["flows"] == flows)
        .and_then(|r| r["mpps"].as_f64())
}

/// The ratios and its reach goals (reported, never enforced).
pub(super) fn ratios_and_goals(results: &[Value], flows: &[u32]) -> (Value, Vec<Value>) {
    let mut ratios = serde_json::Map::new();
    let mut goals = Vec::new();
    let ratio =
        |a: Case, fa: u32, b: Case, fb: u32| Some(mpps(results, a, fa)? / mpps(results, b, fb)?);
    let mut goal = |name: String, value: Option<f64>, target: f64| {
        if let Some(v) = value {
            ratios.insert(name.clone(), json!(v));
            goals.push(json!({ "goal": name, "value": v, "target": target, "met": v >= target }));
        }
    };
    for &f in flows {
        goal(
            format!("L2/floor @{f}"),
            ratio(Case::L2, f, Case::Floor, f),
            0.8,
        );
    }
    // (name, case, flows, over case, flows, target)
    let fixed = [
        ("L2/nft @10000", Case::L2, 10_000, Case::Nft, 10_000, 4.0),
        ("L3/nft @10000", Case::L3, 10_000, Case::Nft, 10_000, 3.5),
        ("L2 1M/1 flow", Case::L2, 1_000_000, Case::L2, 1, 0.7),
        ("L3 1M/1 flow", Case::L3, 1_000_000, Case::L3, 1, 0.7),
    ];
    for (name, a, fa, b, fb, target) in fixed {
        goal(name.into(), ratio(a, fa, b, fb), target);
    }
    for &f in flows {
        for (name, a, b) in [
            ("L2/nft", Case::L2, Case::Nft),
            ("L3/nft", Case::L3, Case::Nft),
            ("L3/floor", Case::L3, Case::Floor),
            ("floor/routing", Case::Floor, Case::Routing),
        ] {
            let key = format!("{name} @{f}");
            if let (false, Some(v)) = (ratios.contains_key(&key), ratio(a, f, b, f)) {
                ratios.insert(key, json!(v));
            }
        }
    }
    (Value::Object(ratios), goals)
}

pub(super) fn print_ratios(ratios: &Value, goals: &[Value]) {
    println!("ratios (same run):");
    for (k, v) in ratios.as_object().into_iter().flatten() {
        println!("  {k:<22} {:>6.2}", v.as_f64().unwrap_or(f64::NAN));
    }
    println!("reach goals (issue 8; reported, not enforced):");
    for g in goals {
        println!(
            "  {:<22} {:>6.2}  target >= {:<4}  {}",
            g["goal"].as_str().unwrap_or(""),
            g["value"].as_f64().unwrap_or(f64::NAN),
            g["target"],
            if g["met"] == true { "met" } else { "MISSED" }
        );
    }
}

/// CPU count, kernel and CPU model, for titles and the JSON.
pub(super) fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "cpus": cpus, "kernel": kernel, "cpu_model": model, "date": date,
        "summary": format!("{cpus} vCPU {model}, Linux {kernel}, {date}"),
    })
}

/// The live section as Markdown: delivered Mpps per case and flow count (the spread of the
/// rounds in brackets), then the reach goals.
pub fn markdown(live: &Value) -> String {
    let results = live["results"].as_array().cloned().unwrap_or_default();
    let mut flows: Vec<u64> = results.iter().filter_map(|r| r["flows"].as_u64()).collect();
    flows.dedup();
    let mut md = format!(
        "\n## Live throughput through veth\n\n{}. Delivered Mpps, 60-byte UDP frames, median of {} \
         round(s) (spread of the rounds); {}.\n\n| case |",
        live["machine"]["summary"].as_str().unwrap_or(""),
        live["params"]["rounds"],
        live["core"].as_str().unwrap_or("")
    );
    for f in &flows {
        md.push_str(&format!(" {f} flow{} |", if *f == 1 { "" } else { "s" }));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(flows.len()));
    md.push('\n');
    for case in CASES {
        md.push_str(&format!("| {} |", case.label()));
        for f in &flows {
            let r = results
                .iter()
                .find(|r| r["case"] == case.key() && r["flows"] == *f);
            match r {
                Some(r) => md.push_str(&format!(
                    " {:.2} ({:.0}%) |",
                    r["mpps"].as_f64().unwrap_or(f64::NAN),
                    r["spread_pct"].as_f64().unwrap_or(f64::NAN)
                )),
                None => md.push_str(" |"),
            }
        }
        md.push('\n');
    }
    md.push_str("\n| reach goal | value | target | |\n|---|---:|---:|---|\n");
    for g in live["goals"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {:.2} | ≥ {} | {} |\n",
            g["goal"].as_str().unwrap_or(""),
            g["value"].as_f64().unwrap_or(f64::NAN),
            g["target"],
            if g["met"] == true { "met" } else { "missed" }
        ));
    }
    md
}
