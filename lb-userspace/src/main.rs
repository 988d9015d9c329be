//! `xdplb`: the daemon and its control CLI (see `xdplb --help` and docs/cli.md).
use clap::Parser;
use lb_userspace::cli::{run, Cli};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xdplb: {e}");
        std::process::exit(1);
    }
}
