use clap::Parser;

/// The proposer for a safekeeper quorum.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
