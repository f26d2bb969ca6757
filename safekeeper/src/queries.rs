//! Answers to the commands that return rows: what a walsender answers for psql,
//! pg_receivewal and a standby's walreceiver, plus our status commands.
//!
//! Slots are virtual: this safekeeper keeps all the WAL it has (nothing is removed
//! yet), so a slot has nothing to retain. `CREATE_REPLICATION_SLOT` and
//! `DROP_REPLICATION_SLOT` succeed without storing anything, and `READ_REPLICATION_SLOT`
//! reports every name as a physical slot whose `restart_lsn` is the first WAL this
//! safekeeper can serve (the start of the timeline's first segment): `pg_receivewal
//! --slot=s` with an empty directory then fetches everything from the timeline start.
//! (An unknown slot answered with NULLs, as PostgreSQL does, would make pg_receivewal
//! 15 fail with "replication slot does not exist".) A timeline without WAL yet has a
//! NULL `restart_lsn`, and clients fall back to IDENTIFY_SYSTEM's position.

use bytes::Bytes;
use pq_proto::backend::{BeMessage, FieldDescription};
use utils::Lsn;

use crate::command::Command;
use crate::ctx::ServerCtx;
use crate::errors::ClientError;
use crate::session::{Conn, Session, text_columns};
use crate::timeline::TimelineStatus;
use crate::timelines::RegistryError;

/// The `server_version` reported at startup and by `SHOW server_version`. Clients refuse
/// servers newer than themselves; 15 is what this project is tested with.
pub const SERVER_VERSION: &str = "15.0 (safekeeper)";
const SERVER_VERSION_NUM: &str = "150000";

fn row(values: &[Option<String>]) -> BeMessage {
    BeMessage::DataRow(
        values
            .iter()
            .map(|v| v.as_ref().map(|s| Bytes::from(s.clone())))
            .collect(),
    )
}

fn complete(tag: &str) -> BeMessage {
    BeMessage::CommandComplete(tag.to_string())
}

/// The published status of the session's timeline (never the timeline's lock: this
/// answers while a flush is stalled on the disk).
async fn status(ctx: &ServerCtx, session: &Session) -> Result<TimelineStatus, ClientError> {
    Ok(ctx.timelines.get(&session.timeline(ctx)?).await?.status())
}

/// Writes the answer to `cmd` (rows and CommandComplete; not ReadyForQuery).
pub async fn answer(
    conn: &mut Conn,
    ctx: &ServerCtx,
    session: &Session,
    cmd: Command,
) -> Result<(), ClientError> {
    let mut out = Vec::new();
    match cmd {
        Command::Empty => out.push(BeMessage::EmptyQueryResponse),
        Command::SetDatestyle => out.push(complete("SET")),
        Command::IdentifySystem => {
            let st = status(ctx, session).await?;
            // Proposers recovering WAL and peer safekeepers may read uncommitted WAL.
            let recovery = session.app_name == "wal_proposer_recovery"
                || session.app_name.starts_with("safekeeper");
            let pos = if recovery {
                st.flush_lsn
            } else {
                st.commit_lsn
            };
            out.push(BeMessage::RowDescription(vec![
                FieldDescription::text("systemid"),
                FieldDescription::int4("timeline"),
                FieldDescription::text("xlogpos"),
                FieldDescription::text("dbname"),
            ]));
            out.push(row(&[
                Some(st.server.system_id.to_string()),
                Some("1".into()),
                Some(pos.to_string()),
                None,
            ]));
            out.push(complete("IDENTIFY_SYSTEM"));
        }
        Command::TimelineStatus => {
            out.push(text_columns(&[
                "flush_lsn",
                "commit_lsn",
                "term",
                "last_log_term",
                "timeline_start_lsn",
                "local_start_lsn",
                "peer_horizon_lsn",
                "system_id",
                "pg_version",
                "backup_lsn",
                "remote_consistent_lsn",
            ]));
            // Zero rows for a timeline that does not exist (Neon's behaviour, which
            // compute_ctl's fast path expects).
            match status(ctx, session).await {
                Ok(st) => {
                    out.push(row(&[
                        Some(st.flush_lsn.to_string()),
                        Some(st.commit_lsn.to_string()),
                        Some(st.term.to_string()),
                        Some(st.last_log_term.to_string()),
                        Some(st.timeline_start_lsn.to_string()),
                        Some(st.local_start_lsn.to_string()),
                        Some(st.peer_horizon_lsn.to_string()),
                        Some(st.server.system_id.to_string()),
                        Some(st.server.pg_version.to_string()),
                        Some(st.backup_lsn.to_string()),
                        Some(st.remote_consistent_lsn.to_string()),
                    ]));
                }
                Err(ClientError::Registry(RegistryError::NotFound(_))) => {}
                Err(e) => return Err(e),
            }
            out.push(complete("TIMELINE_STATUS"));
        }
        Command::ReaderStatus => {
            let tl = ctx.timelines.get(&session.timeline(ctx)?).await?;
            out.push(text_columns(&[
                "reader_id",
                "application_name",
                "sent_lsn",
                "write_lsn",
                "flush_lsn",
                "apply_lsn",
                "xmin",
                "catalog_xmin",
            ]));
            let readers = tl.feedback.readers();
            for r in &readers {
                out.push(row(&[
                    Some(r.id.to_string()),
                    Some(r.app_name.clone()),
                    Some(r.sent_lsn.to_string()),
                    Some(r.write_lsn.to_string()),
                    Some(r.flush_lsn.to_string()),
                    Some(r.apply_lsn.to_string()),
                    Some(r.hs.xmin.to_string()),
                    Some(r.hs.catalog_xmin.to_string()),
                ]));
            }
            out.push(complete(&format!("SELECT {}", readers.len())));
        }
        Command::Show(name) => {
            let value = show(ctx, session, &name).await?;
            out.push(text_columns(&[name.as_str()]));
            out.push(row(&[Some(value)]));
            out.push(complete("SHOW"));
        }
        Command::TimelineHistory(n) => {
            return Err(ClientError::WalUnavailable(format!(
                "could not send history of timeline {n}: this safekeeper serves PostgreSQL timeline 1 only, which has no history file"
            )));
        }
        Command::ReadReplicationSlot(_) => {
            let restart = status(ctx, session).await?.first_servable_lsn();
            out.push(BeMessage::RowDescription(vec![
                FieldDescription::text("slot_type"),
                FieldDescription::text("restart_lsn"),
                FieldDescription::int8("restart_tli"),
            ]));
            out.push(row(&[
                Some("physical".into()),
                restart.map(|l| l.to_string()),
                restart.map(|_| "1".into()),
            ]));
            out.push(complete("READ_REPLICATION_SLOT"));
        }
        Command::CreateReplicationSlot { name, .. } => {
            out.push(text_columns(&[
                "slot_name",
                "consistent_point",
                "snapshot_name",
                "output_plugin",
            ]));
            out.push(row(&[
                Some(name),
                Some(Lsn::INVALID.to_string()),
                None,
                None,
            ]));
            out.push(complete("CREATE_REPLICATION_SLOT"));
        }
        Command::DropReplicationSlot(_) => out.push(complete("DROP_REPLICATION_SLOT")),
        Command::StartWalPush { .. } | Command::StartReplication(_) => {
            unreachable!("streaming commands are dispatched by the handler")
        }
    }
    for m in &out {
        conn.write_be(m);
    }
    Ok(())
}

/// Values of the settings clients ask for.
async fn show(ctx: &ServerCtx, session: &Session, name: &str) -> Result<String, ClientError> {
    Ok(match name {
        "wal_segment_size" => {
            let size = match status(ctx, session).await {
                Ok(st) => st.server.wal_seg_size,
                Err(_) => utils::xlog::DEFAULT_WAL_SEG_SIZE,
            };
            format_size(size)
        }
        "data_directory_mode" => "0700".into(),
        "server_version" => SERVER_VERSION.into(),
        "server_version_num" => SERVER_VERSION_NUM.into(),
        "integer_datetimes" => "on".into(),
        "wal_block_size" => utils::xlog::XLOG_BLCKSZ.to_string(),
        "block_size" => "8192".into(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "timezone" => "UTC".into(),
        "max_wal_senders" => "100".into(),
        "wal_sender_timeout" | "wal_receiver_timeout" => "1min".into(),
        "node_id" => ctx.node_id().to_string(),
        other => return Err(ClientError::UnknownSetting(other.to_string())),
    })
}

/// Formats a byte size the way `SHOW wal_segment_size` does ("16MB", "1GB").
fn format_size(bytes: u32) -> String {
    const MB: u32 = 1024 * 1024;
    if bytes.is_multiple_of(1024 * MB) {
        format!("{}GB", bytes / (1024 * MB))
    } else if bytes.is_multiple_of(MB) {
        format!("{}MB", bytes / MB)
    } else if bytes.is_multiple_of(1024) {
        format!("{}kB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::format_size;

    #[test]
    fn sizes_print_like_show() {
        assert_eq!(format_size(16 * 1024 * 1024), "16MB");
        assert_eq!(format_size(1024 * 1024 * 1024), "1GB");
        assert_eq!(format_size(64 * 1024), "64kB");
    }
}
