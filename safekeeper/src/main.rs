use clap::Parser;

/// A WAL safekeeper: keeps a PostgreSQL primary's write-ahead log durable on a quorum of
/// machines and serves it back to replicas, pageservers and tools.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This safekeeper's node id, unique in its quorum.
    #[arg(long)]
    id: u64,
}

fn main() {
    let _args = Args::parse();
}
