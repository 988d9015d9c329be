//! Developer workflows. Every command that needs the toolchain or root runs the idempotent
//! setup first (scripts/setup.sh), so each works on a fresh machine.
//!
//!   cargo xtask setup   install what building and testing need (seconds when present)
//!   cargo xtask test    setup, then every test: host unit tests, packet fixtures, namespaces
//!   cargo xtask demo    setup, then the L2 demo on a namespace topology
//!   cargo xtask bench   setup, then the benchmarks (per packet, control plane, memory, live
//!                       throughput); --quick for a short smoke run
//!   cargo xtask fuzz    setup, then fuzz the data path with millions of packets
//!   cargo xtask lint    rustfmt and clippy on every crate, the eBPF ones included

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xdplb developer workflows")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Run setup, then every test (needs root for the data-path tests). Every test binary runs
    /// even after a failure; the failed tests are listed at the end.
    Test {
        /// Extra arguments for `cargo test`: a test name filter (`cargo xtask test l3_`), or
        /// `--test NAME` for one test binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run setup, then the demo: traffic balanced over three backends in namespaces.
    Demo,
    /// Run setup, then the benchmarks: per-packet cost (BPF_PROG_TEST_RUN, net of an empty
    /// program), control plane, map memory, live throughput through veth against the floor
    /// forwarder, nftables DNAT and kernel routing. Results, Markdown and a chart in
    /// target/bench/.
    Bench {
        /// Small counts (under a minute): checks that everything runs, figures are not meaningful.
        #[arg(long)]
        quick: bool,
    },
    /// Fuzz the data path with N packets (the test suite runs 200 000).
    Fuzz {
        #[arg(default_value_t = 5_000_000)]
        packets: u64,
        /// Seed of the packet generator (a failure names its seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Formatting and clippy (host crates and the eBPF crates), as CI would want them.
    Lint,
    /// Install xdplb: the binary, the systemd unit, an example configuration (if none), shell
    /// completions and the man page.
    Install {
        /// Prefix for the binary and the man page.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo test`, one test at a time (namespace tests build topologies; a 2-core machine stays
/// calm), ending with one summary line over every test binary.
fn test(args: &[String]) -> Result<()> {
    let mut child = Command::new("cargo")
        .current_dir(root())
        // Every test binary runs even after one fails; the failures are listed at the end.
        .args(["test", "--release", "--no-fail-fast"])
        .args(args)
        .args(["--", "--test-threads=1"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            failures.push(name.to_string());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(what)?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    for name in &failures {
        println!("failed: {name}");
    }
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "{what} loads XDP programs and creates network namespaces: run it as root, e.g. sudo -E env \"PATH=$PATH\" cargo xtask {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(())
}

fn setup() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/setup.sh")))
}

/// Builds every binary (the tests and the demo drive the real `xdplb`).
fn build_bins() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["build", "--release", "--bins"]))
}

fn run_bin(name: &str, args: &[&str]) -> Result<()> {
    build_bins()?;
    run(Command::new("cargo")
        .current_dir(root())
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "lb-tests",
            "--bin",
            name,
            "--",
        ])
        .args(args))
}

fn install(prefix: &Path) -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "xdplb",
    ]))?;
    let bin = prefix.join("bin/xdplb");
    let copy = |from: &Path, to: &Path, mode: u32| -> Result<()> {
        std::fs::create_dir_all(to.parent().context("a file path")?)?;
        std::fs::copy(from, to).with_context(|| format!("installing {}", to.display()))?;
        std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        println!("installed {}", to.display());
        Ok(())
    };
    copy(&root().join("target/release/xdplb"), &bin, 0o755)?;
    let unit = std::fs::read_to_string(root().join("scripts/xdplb.service"))?
        .replace("/usr/local/bin/xdplb", &bin.display().to_string());
    std::fs::write("/etc/systemd/system/xdplb.service", unit)
        .context("installing the systemd unit")?;
    println!("installed /etc/systemd/system/xdplb.service");
    let config = Path::new("/etc/xdplb/xdplb.toml");
    if config.exists() {
        println!("kept {}", config.display());
    } else {
        copy(&root().join("scripts/xdplb.example.toml"), config, 0o644)?;
    }
    let output =
        |args: &[&str]| -> Result<Vec<u8>> { Ok(Command::new(&bin).args(args).output()?.stdout) };
    for (args, to) in [
        (
            &["completions", "bash"][..],
            PathBuf::from("/usr/share/bash-completion/completions/xdplb"),
        ),
        (
            &["completions", "zsh"][..],
            PathBuf::from("/usr/share/zsh/vendor-completions/_xdplb"),
        ),
        (
            &["completions", "fish"][..],
            PathBuf::from("/usr/share/fish/vendor_completions.d/xdplb.fish"),
        ),
        (&["man"][..], prefix.join("share/man/man8/xdplb.8")),
    ] {
        std::fs::create_dir_all(to.parent().context("a file path")?)?;
        std::fs::write(&to, output(args)?)
            .with_context(|| format!("installing {}", to.display()))?;
        println!("installed {}", to.display());
    }
    println!(
        "\nNext: edit {} and run `systemctl daemon-reload && systemctl enable --now xdplb`.",
        config.display()
    );
    Ok(())
}

fn lint() -> Result<()> {
    let cargo = |args: &[&str]| run(Command::new("cargo").current_dir(root()).args(args));
    cargo(&["+nightly", "fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&[
        "+nightly",
        "clippy",
        "-p",
        "lb-ebpf",
        "-p",
        "lb-ebpf-tools",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ])
}

extern "C" fn ignore(_: libc::c_int) {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C reaches the whole process group: let the child (the demo, a test) clean up and
    // exit first instead of returning the prompt under it. A handler, not SIG_IGN, so
    // children start with the default disposition.
    // SAFETY: installing a handler that does nothing.
    unsafe { libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t) };
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test { args } => require_root("the test suite")
            .and_then(|_| setup())
            .and_then(|_| build_bins())
            .and_then(|_| test(&args)),
        Cmd::Demo => require_root("the demo")
            .and_then(|_| setup())
            .and_then(|_| run_bin("demo", &[])),
        Cmd::Bench { quick } => require_root("the benchmark")
            .and_then(|_| setup())
            .and_then(|_| run_bin("bench", if quick { &["--quick"] } else { &[] })),
        Cmd::Lint => lint(),
        Cmd::Fuzz { packets, seed } => {
            require_root("fuzzing").and_then(|_| setup()).and_then(|_| {
                let mut cmd = Command::new("cargo");
                cmd.current_dir(root())
                    .args([
                        "test",
                        "--release",
                        "-p",
                        "lb-tests",
                        "--test",
                        "fuzz",
                        "--",
                        "--nocapture",
                    ])
                    .env("XDPLB_FUZZ_PACKETS", packets.to_string());
                if let Some(seed) = seed {
                    cmd.env("XDPLB_FUZZ_SEED", seed.to_string());
                }
                run(&mut cmd)
            })
        }
        Cmd::Install { prefix } => require_root("install")
            .and_then(|_| setup())
            .and_then(|_| install(&prefix)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
