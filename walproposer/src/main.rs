//! The `walproposer` binary: `sync`, `generate`, `bridge` and `membership` over the proposer
//! library.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pq_client::Conninfo;
use pq_proto::proposer::ProtocolVersion;
use utils::{Lsn, TenantId, TimelineId};
use walproposer::driver::{self, Driver};
use walproposer::generate::{self, GenerateOptions};
use walproposer::proposer::{Config, Mode, Output};
use walproposer::{members, pg_version};

/// The proposer for a safekeeper quorum: elects a term on a majority of safekeepers and
/// streams WAL into it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Elect a new term, bring a quorum of safekeepers to one end of WAL, print that LSN.
    ///
    /// Like Neon's `--sync-safekeepers`: the printed LSN is where a compute may start.
    Sync(SyncArgs),
    /// Push synthetic WAL (valid records) into a quorum and report throughput and commit
    /// latency: the benchmark's load, and the quickest way to see a quorum work.
    Generate(GenerateArgs),
    /// Run an unmodified PostgreSQL on the quorum: stream its WAL as a synchronous standby
    /// and acknowledge only what a majority of safekeepers has fsynced.
    Bridge(walproposer::bridge::BridgeArgs),
    /// Move a timeline from one set of safekeepers to another without stopping its writes:
    /// pull_timeline onto new members, a joint configuration, catch-up, the new
    /// configuration (through the safekeepers' HTTP API, as a control plane would).
    Membership(walproposer::membership::MembershipArgs),
}

/// Where the quorum is and which timeline.
#[derive(Args, Debug, Clone)]
struct Target {
    /// The safekeepers, `host:port` or `ID@host:port` separated by commas (an odd number,
    /// usually 3).
    ///
    /// With ids (all or none; distinct and positive, e.g. `1@sk1:5454,2@sk2:5454,3@sk3:5454`),
    /// the proposer sends a membership configuration of generation 1: the safekeepers then
    /// know their peers, which WAL offload needs to choose one offloader. Ids need
    /// `--protocol 3`.
    #[arg(
        long,
        value_name = "[ID@]H:P,...",
        value_delimiter = ',',
        required = true
    )]
    safekeepers: Vec<String>,
    /// Tenant id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    tenant_id: TenantId,
    /// Timeline id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    timeline_id: TimelineId,
    /// Proposer protocol version (3, or 2 for old safekeepers).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=3))]
    protocol: u32,
    /// A file holding the JWT sent as the password to safekeepers started with
    /// --pg-auth-public-key-path (scope safekeeperdata, or tenant for this tenant); or set
    /// SAFEKEEPER_TOKEN (not both).
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// libpq parameters added to every safekeeper connection, e.g. TLS:
    /// "sslmode=verify-full sslrootcert=/etc/safekeeper/ca.pem". PGSSLMODE and
    /// PGSSLROOTCERT apply when not given here; without either, connections are plain.
    #[arg(long, value_name = "CONNINFO", value_parser = parse_sk_conninfo, default_value = "")]
    safekeeper_conninfo: Conninfo,
}

/// `--safekeeper-conninfo`.
fn parse_sk_conninfo(s: &str) -> Result<Conninfo, String> {
    walproposer::driver::safekeeper_conninfo(s).map_err(|e| e.to_string())
}

impl Target {
    /// The proposer's settings and the addresses to connect to; refuses a bad
    /// `--safekeepers` list (or ids with protocol v2) before anything connects.
    fn config(&self) -> anyhow::Result<(Config, Vec<String>)> {
        let sks = members::parse_safekeepers(&self.safekeepers).context("invalid --safekeepers")?;
        let mut c = Config::new(self.tenant_id, self.timeline_id, sks.addrs.len());
        c.protocol = if self.protocol == 2 {
            ProtocolVersion::V2
        } else {
            ProtocolVersion::V3
        };
        members::check_protocol(&sks.mconf, c.protocol)?;
        c.mconf = sks.mconf;
        Ok((c, sks.addrs))
    }
}

#[derive(Args, Debug)]
struct SyncArgs {
    #[command(flatten)]
    target: Target,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// The timeline's PostgreSQL version (PG_VERSION_NUM, e.g. 150004), sent in the
    /// greeting. Default: what the safekeepers report for the timeline (this safekeeper
    /// does in TIMELINE_STATUS); needed for safekeepers that do not report it.
    #[arg(long, value_name = "NUM", value_parser = clap::value_parser!(u32).range(140000..=179999))]
    pg_version: Option<u32>,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    target: Target,
    /// WAL bytes to push (suffixes k, M, G: powers of 1024).
    #[arg(long, value_parser = parse_size, required_unless_present = "records")]
    bytes: Option<u64>,
    /// Stop after this many records (with --bytes: whichever comes first).
    #[arg(long)]
    records: Option<u64>,
    /// Payload bytes of each record.
    #[arg(long, default_value = "8k", value_parser = parse_size)]
    record_size: u64,
    /// Limit to this many bytes per second (suffixes as for --bytes); default: as fast as
    /// the quorum takes them.
    #[arg(long, value_parser = parse_size)]
    rate: Option<u64>,
    /// System identifier written into page headers (default: derived from the ids).
    #[arg(long)]
    system_id: Option<u64>,
    /// PG_VERSION_NUM the WAL claims (14xxxx to 17xxxx).
    #[arg(long, default_value_t = 150000)]
    pg_version: u32,
    /// Where a new timeline starts (a record boundary).
    #[arg(long, default_value = "0/1000028")]
    start_lsn: Lsn,
    /// WAL in flight beyond the commit LSN.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    max_in_flight: u64,
    /// Largest WAL payload of one AppendRequest (suffixes as for --bytes; at most 128k,
    /// what a safekeeper accepts).
    #[arg(long, default_value = "128k", value_parser = parse_append_size)]
    append_size: u64,
    /// One record at a time: append it and wait for the quorum to commit it before the
    /// next (commit latency without pipelining). Ignores --max-in-flight.
    #[arg(long)]
    sequential: bool,
}

/// An AppendRequest payload size: 1 byte to `MAX_SEND_SIZE`.
fn parse_append_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    let max = pq_proto::replication::MAX_SEND_SIZE as u64;
    if n == 0 || n > max {
        return Err(format!("append size {n} is not in 1..={max}"));
    }
    Ok(n)
}

/// `123`, `8k`, `16M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            format!("invalid size \"{s}\": expected a number with an optional k, M or G")
        })
}

/// A system id that stays the same for a timeline across runs (the safekeepers refuse a
/// different one for an existing timeline).
fn derived_system_id(t: &Target) -> u64 {
    let mut v: u64 = 0xcbf2_9ce4_8422_2325;
    for b in t.tenant_id.0.iter().chain(t.timeline_id.0.iter()) {
        v = (v ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    v | 1
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // One thread: every hand-off between the proposer loop and its connection tasks is
    // then a queue push, not a cross-thread wake-up (measured: commit latency p50 −15 %
    // with three safekeepers; throughput unchanged, the proposer is far from a core's worth
    // of work).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Sync(a) => sync(a).await,
            Command::Generate(a) => generate_cmd(a).await,
            Command::Bridge(a) => walproposer::bridge::run(a).await,
            Command::Membership(a) => walproposer::membership::run(a).await,
        }
    })
}

async fn sync(a: SyncArgs) -> anyhow::Result<()> {
    let (mut conf, addrs) = a.target.config()?;
    conf.mode = Mode::Sync;
    let token = driver::load_token(a.target.token_file.as_deref())?;
    conf.pg_version = match a.pg_version {
        Some(v) => v,
        None => {
            let probe = Driver::with_options(
                conf.clone(),
                addrs.clone(),
                token.clone(),
                a.target.safekeeper_conninfo.clone(),
            );
            let cis: Vec<_> = (0..addrs.len())
                .map(|i| probe.conninfo(i, "walproposer_sync"))
                .collect();
            match pg_version::timeline_pg_version(&cis).await {
                pg_version::Known::Version(v) => v,
                pg_version::Known::Unknown => bail!(
                    "no safekeeper reports the timeline's PostgreSQL version (a new timeline, \
                     or safekeepers whose TIMELINE_STATUS does not show it): \
                     pass --pg-version, e.g. --pg-version 150004"
                ),
                pg_version::Known::Conflict(x, y) => bail!(
                    "safekeepers disagree about the timeline's PostgreSQL version ({x} and {y}): \
                     pass --pg-version"
                ),
            }
        }
    };
    let mut d = Driver::with_options(
        conf,
        addrs.clone(),
        token,
        a.target.safekeeper_conninfo.clone(),
    );
    let deadline = tokio::time::sleep(Duration::from_secs(a.timeout));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => bail!(
                "no quorum synced within {} s (are a majority of {} reachable?)",
                a.timeout,
                addrs.join(",")
            ),
            o = d.next() => match o? {
                Output::Synced(lsn) => {
                    println!("{lsn}");
                    return Ok(());
                }
                Output::SteppedDown { term, reason } => {
                    bail!("another proposer holds term {term}: {reason}")
                }
                Output::Elected { term, term_start_lsn } => {
                    tracing::info!("elected in term {term}; syncing the quorum to {term_start_lsn}");
                }
                _ => {}
            }
        }
    }
}

async fn generate_cmd(a: GenerateArgs) -> anyhow::Result<()> {
    let (mut conf, addrs) = a.target.config()?;
    conf.pg_version = a.pg_version;
    conf.system_id = a.system_id.unwrap_or_else(|| derived_system_id(&a.target));
    conf.timeline_start_lsn = a.start_lsn;
    conf.max_append = usize::try_from(a.append_size).context("--append-size")?;
    let opts = GenerateOptions {
        bytes: a.bytes.unwrap_or(u64::MAX),
        max_records: a.records,
        record_size: usize::try_from(a.record_size).context("--record-size")?,
        rate: a.rate,
        max_in_flight: a.max_in_flight,
        pacing: if a.sequential {
            generate::Pacing::Sequential
        } else {
            generate::Pacing::Pipelined
        },
        final_wait: Duration::from_secs(10),
        token: driver::load_token(a.target.token_file.as_deref())?,
    };
    let report =
        generate::run_with_conninfo(conf, addrs, opts, a.target.safekeeper_conninfo.clone())
            .await?;
    println!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn append_sizes() {
        assert_eq!(parse_append_size("8k"), Ok(8192));
        assert_eq!(parse_append_size("128k"), Ok(131_072));
        assert!(parse_append_size("129k").is_err());
        assert!(parse_append_size("0").is_err());
    }

    #[test]
    fn generate_flags() {
        let cli = Cli::try_parse_from([
            "walproposer",
            "generate",
            "--safekeepers",
            "127.0.0.1:1",
            "--tenant-id",
            "00000000000000000000000000000001",
            "--timeline-id",
            "00000000000000000000000000000002",
            "--records",
            "100",
            "--sequential",
            "--append-size",
            "16k",
        ])
        .unwrap();
        let Command::Generate(g) = cli.command else {
            panic!("not generate")
        };
        assert_eq!((g.bytes, g.records, g.sequential), (None, Some(100), true));
        assert_eq!(g.append_size, 16 * 1024);
        // Neither --bytes nor --records: refused.
        assert!(
            Cli::try_parse_from([
                "walproposer",
                "generate",
                "--safekeepers",
                "127.0.0.1:1",
                "--tenant-id",
                "00000000000000000000000000000001",
                "--timeline-id",
                "00000000000000000000000000000002",
            ])
            .is_err()
        );
    }

    fn sync_target(safekeepers: &str, protocol: &str) -> Target {
        let cli = Cli::try_parse_from([
            "walproposer",
            "sync",
            "--safekeepers",
            safekeepers,
            "--tenant-id",
            "00000000000000000000000000000001",
            "--timeline-id",
            "00000000000000000000000000000002",
            "--protocol",
            protocol,
        ])
        .unwrap();
        let Command::Sync(s) = cli.command else {
            panic!("not sync")
        };
        s.target
    }

    #[test]
    fn safekeeper_ids_make_a_membership_configuration() {
        let (c, addrs) = sync_target("1@127.0.0.1:5454,2@127.0.0.1:5455,3@h:5456", "3")
            .config()
            .unwrap();
        assert_eq!(addrs, ["127.0.0.1:5454", "127.0.0.1:5455", "h:5456"]);
        assert_eq!(c.n_safekeepers, 3);
        assert_eq!(c.mconf.generation.0, 1);
        let ids: Vec<u64> = c.mconf.members.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, [1, 2, 3]);
        // Without ids: as before.
        let (c, addrs) = sync_target("127.0.0.1:5454,127.0.0.1:5455", "2")
            .config()
            .unwrap();
        assert_eq!(addrs, ["127.0.0.1:5454", "127.0.0.1:5455"]);
        assert_eq!(c.mconf, pq_proto::proposer::Configuration::empty());
        // Refused with a message, not a panic.
        let err =
            |sks: &str, proto: &str| format!("{:#}", sync_target(sks, proto).config().unwrap_err());
        assert!(err("1@a:1,2@b:2,3@c:3", "2").contains("need protocol v3"));
        assert!(err("1@a:1,b:2", "3").contains("ID@host:port"));
        assert!(err("1@a:1,1@b:2", "3").contains("given twice"));
        assert!(err("0@a:1", "3").contains("positive integer"));
        assert!(err("1@a:99999", "3").contains("1..=65535"));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
