//! `xdplb`: the daemon and its control CLI (see `xdplb --help` and docs/cli.md).
use clap::Parser;
use lb_userspace::cli::{run, Cli, Cmd};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        // `xdplb vip list --json | head` should end quietly, not panic on a closed pipe. Not for
        // the daemon: a client closing its socket early must not kill it.
        // SAFETY: restoring the default disposition of a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = run(cli) {
        eprintln!("xdplb: {e}");
        std::process::exit(1);
    }
}
