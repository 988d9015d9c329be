//! Property test of every parser that takes user input: the CLI address syntax (VIPs, backend
//! addresses, MACs), configuration files and API requests. Random inputs and mutations of valid
//! ones must never panic, and every rejection must be a sentence (not empty, no debug dump).
//! Deterministic (seeded) and bounded: about 300 000 inputs in well under a second or two.

use std::panic::catch_unwind;

use lb_userspace::{
    api::Request,
    config::Config,
    model::{BackendAddr, Mac, VipAddr},
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[u8] = b"0123456789abcdefABCDEF:./[]*-_ \"=\n{}tcpudpl23#,";

/// A mutation of `seed`: characters replaced, inserted, deleted, or the string cut.
fn mutate(r: &mut Rng, seed: &str) -> String {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..=r.below(4) {
        let at = if b.is_empty() { 0 } else { r.below(b.len()) };
        match r.below(4) {
            0 if !b.is_empty() => b[at] = ALPHABET[r.below(ALPHABET.len())],
            1 => b.insert(at, ALPHABET[r.below(ALPHABET.len())]),
            2 if !b.is_empty() => {
                b.remove(at);
            }
            _ => b.truncate(at),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn sentence(what: &str, input: &str, err: String) {
    assert!(!err.trim().is_empty(), "{what} {input:?}: empty error");
    assert!(
        !err.contains("Error {") && !err.contains("kind:"),
        "{what} {input:?}: debug output as error: {err}"
    );
}

const VIPS: [&str; 4] = [
    "10.0.0.100:80/tcp",
    "[2001:db8::1]:443/tcp",
    "10.0.0.1:*/udp",
    "[::1]:*/udp",
];
const BACKENDS: [&str; 3] = ["10.0.1.1", "10.0.1.1:8080", "[2001:db8::2]:8443"];
const MACS: [&str; 2] = ["02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff"];
const CONFIG: &str = include_str!("../../scripts/xdplb.example.toml");
const REQUESTS: [&str; 6] = [
    r#"{"cmd":"vip_add","vip":"10.0.0.1:80/tcp","mode":"l2","hash":"5tuple"}"#,
    r#"{"cmd":"backend_add","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1:8080","weight":2}"#,
    r#"{"cmd":"backend_set","vip":"10.0.0.1:80/tcp","addr":"10.0.1.1","check":"http:8081/ready,interval_ms=200,fall=2"}"#,
    r#"{"cmd":"vip_set","vip":"10.0.0.1:80/tcp","check":"none"}"#,
    r#"{"cmd":"simulate","src":"10.0.0.9","sport":4000,"vip":"10.0.0.1:80/tcp"}"#,
    r#"{"cmd":"debug","on":true}"#,
];

#[test]
fn parsers_never_panic_and_reject_with_a_sentence() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let result = catch_unwind(move || {
        for _ in 0..100_000 {
            let v = {
                let seed = VIPS[r.below(VIPS.len())];
                mutate(&mut r, seed)
            };
            if let Err(e) = v.parse::<VipAddr>() {
                sentence("VIP", &v, e.to_string());
            }
            let b = {
                let seed = BACKENDS[r.below(BACKENDS.len())];
                mutate(&mut r, seed)
            };
            if let Err(e) = b.parse::<BackendAddr>() {
                sentence("backend", &b, e.to_string());
            }
            let m = {
                let seed = MACS[r.below(MACS.len())];
                mutate(&mut r, seed)
            };
            if let Err(e) = m.parse::<Mac>() {
                sentence("MAC", &m, e.to_string());
            }
        }
        for _ in 0..20_000 {
            let q = {
                let seed = REQUESTS[r.below(REQUESTS.len())];
                mutate(&mut r, seed)
            };
            if let Err(e) = serde_json::from_str::<Request>(&q) {
                sentence("request", &q, e.to_string());
            }
        }
        for _ in 0..3_000 {
            let c = mutate(&mut r, CONFIG);
            match Config::from_toml(&c) {
                Ok(config) => {
                    if let Err(e) = config.validate() {
                        sentence("config", &c, e);
                    }
                }
                Err(e) => sentence("config", &c, e),
            }
        }
    });
    assert!(result.is_ok(), "a parser panicked");
}
