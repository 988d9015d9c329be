//! The benchmark in quick mode, as a smoke test: every section runs and produces sane output
//! (positive, finite figures; every live case and flow count present, its path checks passed,
//! which the bench itself enforces). Speed is never checked. Needs root.

use std::process::Command;

use serde_json::Value;

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn quick_bench_produces_sane_results() {
    let out = std::env::temp_dir().join(format!("xdplb-bench-smoke-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .output()
        .expect("starting the bench binary");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let (json, md, svg) = (read("results.json"), read("results.md"), read("live.svg"));
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        run.status.success(),
        "bench --quick failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let r: Value = serde_json::from_str(&json).expect("results.json");

    assert_eq!(r["quick"], true);
    let per_packet = r["per_packet"].as_array().expect("per_packet");
    assert!(
        per_packet.len() >= 5,
        "per-packet cases: {}",
        per_packet.len()
    );
    for c in per_packet {
        positive(&c["ns"], &format!("per-packet ns of {}", c["case"]));
    }
    // Hits at N concurrent flows (the bench checks each timed packet was a hit).
    let concurrent = r["concurrent_flows"]["cases"]
        .as_array()
        .expect("concurrent_flows");
    assert_eq!(concurrent.len(), 2, "{concurrent:?}");
    for c in concurrent {
        let what = format!("{} concurrent flows", c["flows"]);
        assert!(
            positive(&c["table_entries"], &what) >= positive(&c["flows"], &what),
            "{what}: a table that holds them"
        );
        positive(&c["x_1_flow"], &what);
    }
    positive(&r["verified_insns"], "verified_insns");
    for (k, v) in r["control_plane"].as_object().expect("control_plane") {
        match v {
            Value::Object(m) => m.values().for_each(|x| {
                positive(x, k);
            }),
            x => {
                positive(x, k);
            }
        }
    }
    positive(&r["map_memory_total_bytes"], "map memory");

    let live = &r["live"];
    if let Some(why) = live["skipped"].as_str() {
        println!("SKIPPED the live section's checks: {why}");
        return;
    }
    let results = live["results"].as_array().expect("live results");
    for flows in [1u64, 10_000, 1_000_000] {
        for case in lb_tests::live::CASES {
            let run = results
                .iter()
                .find(|x| x["case"] == case.key() && x["flows"] == flows)
                .unwrap_or_else(|| panic!("no live result for {} at {flows} flows", case.key()));
            let what = format!("{} at {flows} flows", case.key());
            positive(&run["mpps"], &what);
            positive(&run["sent_mpps"], &what);
            let (sent, delivered) = (
                positive(&run["sent"], &what),
                positive(&run["delivered"], &what),
            );
            assert!(
                delivered <= sent,
                "{what}: {delivered} delivered of {sent} sent"
            );
        }
    }
    let goals = live["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 7, "every reach goal evaluated: {goals:?}");
    for g in goals {
        positive(&g["value"], "goal ratio");
    }
    assert!(
        md.contains("Live throughput"),
        "results.md has the live section"
    );
    assert!(svg.starts_with("<svg") && svg.matches("<rect").count() > results.len());
}
