//! `safekeeper archive …`: flags of the archive tools, run on a small runtime of their own.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use safekeeper::archive::get::{GetJob, Got, default_spool};
use safekeeper::archive::restore::{RestoreJob, restore};
use safekeeper::archive::{list, progress_for_stderr};
use safekeeper::remote::{Compression, RemoteStorage};
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

/// `safekeeper archive`.
#[derive(Args, Debug)]
pub struct ArchiveArgs {
    #[command(subcommand)]
    cmd: ArchiveCmd,
}

/// Where the archive is: the same URL forms and environment as the server's.
#[derive(Args, Debug, Clone)]
struct Store {
    /// The archive: file:///DIR, s3://BUCKET[/PREFIX], gs://…, az://… (credentials from
    /// the environment, as for the server).
    #[arg(long, value_name = "URL")]
    remote_storage: String,
    /// WAL segment size of the timelines (bytes or e.g. 16MB).
    #[arg(long, value_name = "SIZE", default_value = "16MB", value_parser = crate::parse_size)]
    wal_segment_size: u64,
}

/// One timeline of the archive.
#[derive(Args, Debug, Clone)]
struct Timeline {
    /// Tenant id (32 hex digits).
    #[arg(long, value_name = "ID")]
    tenant_id: TenantId,
    /// Timeline id (32 hex digits).
    #[arg(long, value_name = "ID")]
    timeline_id: TimelineId,
}

#[derive(Subcommand, Debug)]
enum ArchiveCmd {
    /// Download the segments covering --from..--to into -D, in order, verified, resumable.
    Restore {
        #[command(flatten)]
        store: Store,
        #[command(flatten)]
        timeline: Timeline,
        /// First LSN wanted (X/X).
        #[arg(long, value_name = "LSN")]
        from: Lsn,
        /// End of the range (X/X, exclusive).
        #[arg(long, value_name = "LSN")]
        to: Lsn,
        /// Directory the segments go to (created if missing).
        #[arg(short = 'D', long, value_name = "DIR")]
        dir: PathBuf,
        /// Downloads at once (segments held in memory at most).
        #[arg(long, value_name = "N", default_value_t = 4)]
        parallel: usize,
        /// The cluster's system id, checked against every segment's long header (default:
        /// taken from the first one).
        #[arg(long, value_name = "ID")]
        system_id: Option<u64>,
    },
    /// For restore_command = 'safekeeper archive get … %f %p': fetch WALFILE to PATH; exit 1
    /// when the archive does not have it.
    Get {
        #[command(flatten)]
        store: Store,
        #[command(flatten)]
        timeline: Timeline,
        /// Segments after this one to download ahead into the spool directory.
        #[arg(long, value_name = "N", default_value_t = 8)]
        prefetch: u64,
        /// Where prefetched segments wait (default: safekeeper_prefetch beside PATH).
        #[arg(long, value_name = "DIR")]
        spool_dir: Option<PathBuf>,
        /// The WAL file name PostgreSQL asks for (%f).
        wal_file: String,
        /// Where to put it (%p).
        path: PathBuf,
    },
    /// List the timelines of the archive: first and last segment, size, gaps.
    List {
        #[command(flatten)]
        store: Store,
        /// Only this tenant.
        #[arg(long, value_name = "ID")]
        tenant_id: Option<TenantId>,
        /// Only this timeline.
        #[arg(long, value_name = "ID")]
        timeline_id: Option<TimelineId>,
    },
}

fn open(store: &Store) -> anyhow::Result<(RemoteStorage, u32)> {
    let seg = u32::try_from(store.wal_segment_size)
        .ok()
        .filter(|s| s.is_power_of_two() && (1 << 20..=1 << 30).contains(s))
        .context("--wal-segment-size must be a power of two from 1MB to 1GB")?;
    let remote = RemoteStorage::open(&store.remote_storage, Compression::Zstd(3))?;
    Ok((remote, seg))
}

/// Runs an archive subcommand.
pub fn run(a: ArchiveArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match a.cmd {
            ArchiveCmd::Restore {
                store,
                timeline,
                from,
                to,
                dir,
                parallel,
                system_id,
            } => {
                let (remote, seg_size) = open(&store)?;
                let job = RestoreJob {
                    remote,
                    ttid: TenantTimelineId::new(timeline.tenant_id, timeline.timeline_id),
                    from,
                    to,
                    dir,
                    parallel,
                    seg_size,
                    system_id,
                };
                let mut progress = progress_for_stderr();
                let done = restore(job, progress.as_mut()).await?;
                println!(
                    "restored {} segments ({} already present) to {}",
                    done.written,
                    done.skipped,
                    Lsn(to.0)
                );
                Ok(())
            }
            ArchiveCmd::Get {
                store,
                timeline,
                prefetch,
                spool_dir,
                wal_file,
                path,
            } => {
                let (remote, seg_size) = open(&store)?;
                let spool = spool_dir.unwrap_or_else(|| default_spool(&path));
                let job = GetJob {
                    remote,
                    ttid: TenantTimelineId::new(timeline.tenant_id, timeline.timeline_id),
                    seg_size,
                    wal_file: wal_file.clone(),
                    dest: path,
                    spool,
                    prefetch,
                };
                match safekeeper::archive::get::get(job).await? {
                    Got::Delivered { .. } => Ok(()),
                    Got::Absent => {
                        eprintln!("{wal_file} is not in the archive");
                        std::process::exit(1);
                    }
                }
            }
            ArchiveCmd::List {
                store,
                tenant_id,
                timeline_id,
            } => {
                let (remote, seg_size) = open(&store)?;
                let only = |t: &TenantTimelineId| {
                    tenant_id.is_none_or(|x| x == t.tenant_id)
                        && timeline_id.is_none_or(|x| x == t.timeline_id)
                };
                let all = list::list(&remote, only, seg_size).await?;
                print!("{}", list::render(&all, seg_size));
                Ok(())
            }
        }
    })
}
