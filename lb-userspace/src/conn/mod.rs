//! The connection table as `ipvsadm -Lnc` shows it: `xdplb conn list` and `xdplb conn count`.
//! The daemon reads the table (`table`), since it owns the maps and knows what each id in an
//! entry names; the CLI prints its answer (`print`).
//!
//! Entries keep no age or last-seen time: stamping one on every packet would cost the hit path
//! a store into a cache line that every CPU serving the flow shares (docs/cli.md).

mod print;
pub mod table;

use std::{net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    api::{self, Request},
    model::VipAddr,
};

/// Which entries `conn list` and `conn count` report, on the command line and in the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConnQuery {
    /// Only the flows of this VIP (as `vip list` names it, e.g. 10.0.0.100:80/tcp).
    #[arg(long)]
    #[serde(default)]
    pub vip: Option<VipAddr>,
    /// Only the flows recorded for this backend address.
    #[arg(long)]
    #[serde(default)]
    pub backend: Option<IpAddr>,
    /// Only the flows of this client address.
    #[arg(long)]
    #[serde(default)]
    pub client: Option<IpAddr>,
    /// Stop after this many matching entries (the walk ends early).
    #[arg(long)]
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(clap::Subcommand)]
pub enum ConnCmd {
    /// List connection-table entries: client, VIP, backend (L3: the rewritten destination), state.
    #[command(
        after_help = "Examples:\n  xdplb conn list\n  xdplb conn list --vip 10.0.0.100:80/tcp --limit 20\n  xdplb conn list --client 192.0.2.7 --json\n\nA full default table (262144 entries) is counted in about 0.2 s; a listing of it is\n71 MB of JSON. Cost: docs/operations.md."
    )]
    List {
        #[command(flatten)]
        query: ConnQuery,
        #[arg(long)]
        json: bool,
    },
    /// Count connection-table entries, per VIP and backend.
    #[command(
        after_help = "Examples:\n  xdplb conn count\n  xdplb conn count --backend 10.0.1.1 --json"
    )]
    Count {
        #[command(flatten)]
        query: ConnQuery,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `conn` command against the daemon at `socket`.
pub fn run(socket: &Path, cmd: ConnCmd) -> Result<(), String> {
    let (req, json, human): (_, _, fn(&serde_json::Value)) = match cmd {
        ConnCmd::List { query, json } => (Request::ConnList(query), json, print::list),
        ConnCmd::Count { query, json } => (Request::ConnCount(query), json, print::count),
    };
    crate::cli::show(api::call(socket, &req)?, json, human)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_requests_parse_with_optional_filters_and_refuse_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"cmd":"conn_count"}"#).unwrap();
        assert_eq!(r, Request::ConnCount(ConnQuery::default()));
        let r: Request = serde_json::from_str(
            r#"{"cmd":"conn_list","vip":"10.0.0.1:80/tcp","client":"2001:db8::7","limit":5}"#,
        )
        .unwrap();
        let Request::ConnList(q) = r else {
            panic!("{r:?}")
        };
        assert_eq!(q.vip, Some("10.0.0.1:80/tcp".parse().unwrap()));
        assert_eq!(q.client, Some("2001:db8::7".parse().unwrap()));
        assert_eq!((q.backend, q.limit), (None, Some(5)));
        let bad = r#"{"cmd":"conn_list","age":1}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
        let bad = r#"{"cmd":"conn_list","vip":"10.0.0.1"}"#;
        let err = serde_json::from_str::<Request>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ADDR:PORT/PROTO"), "{err}");
    }
}
