//! A hand-written SVG bar chart of the live results: one group per flow count, one bar per
//! case, each labelled with its Mpps.

use std::fmt::Write;

use serde_json::Value;

use super::{Case, CASES};

/// The compared paths; the reference (generator and one hop only) would dwarf their scale.
const CHART_CASES: [Case; 5] = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[4]];

const COLOURS: [&str; 5] = ["#1f77b4", "#17becf", "#7f7f7f", "#d62728", "#ff7f0e"];
const W: f64 = 900.0;
const H: f64 = 480.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 400.0;
const LEGEND: f64 = 690.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart of the `live` section of the results.
pub fn svg(live: &Value) -> String {
    let results = live["results"].as_array().cloned().unwrap_or_default();
    let mut flows: Vec<u64> = results.iter().filter_map(|r| r["flows"].as_u64()).collect();
    flows.dedup();
    let max = results
        .iter()
        .filter(|r| CHART_CASES.iter().any(|c| r["case"] == c.key()))
        .filter_map(|r| r["mpps"].as_f64())
        .fold(0.0, f64::max)
        .max(0.1);
    // A round top for the axis: 1, 2 or 5 times a power of ten.
    let step = {
        let raw = max / 5.0;
        let p = 10f64.powf(raw.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * p)
            .find(|s| *s >= raw)
            .unwrap_or(raw)
    };
    let top = (max / step).ceil() * step;
    let y = |v: f64| BOTTOM - (BOTTOM - TOP) * v / top;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="16" font-weight="bold">xdplb live throughput through veth (delivered Mpps, 60-byte UDP, one core)</text>
<text x="{LEFT}" y="44" fill="#444">{}</text>
"##,
        esc(live["machine"]["summary"].as_str().unwrap_or(""))
    );
    let mut v: f64 = 0.0;
    while v <= top + step / 2.0 {
        // 0.30000000000000004 -> 0.3
        let tick = format!("{v:.2}");
        let tick = tick.trim_end_matches('0').trim_end_matches('.');
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{tick}</text>"##,
            LEGEND - 20.0,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
        v += step;
    }
    let group_w = (LEGEND - 20.0 - LEFT) / flows.len().max(1) as f64;
    let bar_w = group_w * 0.8 / CHART_CASES.len() as f64;
    for (g, f) in flows.iter().enumerate() {
        let x0 = LEFT + g as f64 * group_w + group_w * 0.1;
        for (c, case) in CHART_CASES.iter().enumerate() {
            let Some(m) = results
                .iter()
                .find(|r| r["case"] == case.key() && r["flows"] == *f)
                .and_then(|r| r["mpps"].as_f64())
            else {
                continue;
            };
            let x = x0 + c as f64 * bar_w;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{m:.2}</text>"#,
                y(m),
                bar_w - 2.0,
                BOTTOM - y(m),
                COLOURS[c],
                x + bar_w / 2.0 - 1.0,
                y(m) - 4.0
            );
        }
        let label = match f {
            1 => "1 flow".to_string(),
            10_000 => "10 000 flows".into(),
            1_000_000 => "1 000 000 flows".into(),
            n => format!("{n} flows"),
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="13">{label}</text>"#,
            x0 + group_w * 0.4,
            BOTTOM + 20.0
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{BOTTOM}" stroke="#000"/><line x1="{LEFT}" x2="{}" y1="{BOTTOM}" y2="{BOTTOM}" stroke="#000"/><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">Mpps delivered</text>"##,
        LEGEND - 20.0,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );
    for (c, case) in CHART_CASES.iter().enumerate() {
        let ly = TOP + 10.0 + c as f64 * 40.0;
        let label = case.label();
        let (a, b) = label.split_once(" (").map_or((label, ""), |(a, b)| (a, b));
        let _ = writeln!(
            s,
            r##"<rect x="{LEGEND}" y="{ly}" width="14" height="14" fill="{}"/><text x="{}" y="{}">{}</text><text x="{}" y="{}" fill="#555" font-size="10">{}</text>"##,
            COLOURS[c],
            LEGEND + 20.0,
            ly + 11.0,
            esc(a),
            LEGEND + 20.0,
            ly + 25.0,
            esc(b.trim_end_matches(')'))
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" fill="#444" font-size="11">generator (BPF_PROG_RUN live frames) → veth → path under test → veth → XDP sink, all on one pinned CPU</text>"##,
        H - 30.0
    );
    s.push_str("</svg>\n");
    s
}
