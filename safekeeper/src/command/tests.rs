//! The command grammar, case by case: every command with its options, and the errors a
//! person can act on.

use super::*;

#[test]
fn start_wal_push() {
    assert_eq!(
        parse("START_WAL_PUSH").unwrap(),
        Command::StartWalPush {
            proto_version: ProtocolVersion::V2,
            allow_timeline_creation: true
        }
    );
    assert_eq!(
        parse("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')").unwrap(),
        Command::StartWalPush {
            proto_version: ProtocolVersion::V3,
            allow_timeline_creation: false
        }
    );
    assert!(parse("START_WAL_PUSH (proto_version '4')").is_err());
    assert!(parse("START_WAL_PUSH (proto_version '3'").is_err());
}

#[test]
fn start_replication_forms() {
    let sr = |s| match parse(s).unwrap() {
        Command::StartReplication(sr) => sr,
        other => panic!("{other:?}"),
    };
    let r = sr("START_REPLICATION 0/1000000 TIMELINE 1");
    assert_eq!((r.start, r.timeline), (Lsn(0x1000000), Some(1)));
    let r = sr("START_REPLICATION SLOT \"s1\" PHYSICAL 0/5000000 TIMELINE 1");
    assert_eq!(r.slot.as_deref(), Some("s1"));
    let r = sr("start_replication physical 0/10 0/20 (term='7');");
    assert_eq!(
        (r.start, r.stop, r.term),
        (Lsn(0x10), Some(Lsn(0x20)), Some(Term(7)))
    );
    let r = sr("START_REPLICATION 0/10 0/20 TIMELINE 1");
    assert_eq!(
        (r.start, r.stop, r.timeline),
        (Lsn(0x10), Some(Lsn(0x20)), Some(1))
    );
    let r = sr("START_REPLICATION 0/10 TIMELINE 1 0/20");
    assert_eq!((r.start, r.stop), (Lsn(0x10), Some(Lsn(0x20))));
    assert!(parse("START_REPLICATION 0/10 0/20 TIMELINE 1 0/30").is_err());
    let r = sr("START_REPLICATION PHYSICAL 1/0 (term = '3')");
    assert_eq!(r.term, Some(Term(3)));
    assert!(parse("START_REPLICATION").is_err());
    assert!(parse("START_REPLICATION 0/1 (foo '1')").is_err());
    assert!(parse("START_REPLICATION SLOT s LOGICAL 0/0").is_err());
}

#[test]
fn walsender_commands() {
    assert_eq!(parse("IDENTIFY_SYSTEM").unwrap(), Command::IdentifySystem);
    assert_eq!(
        parse(" identify_system ; ").unwrap(),
        Command::IdentifySystem
    );
    assert_eq!(
        parse("SHOW wal_segment_size").unwrap(),
        Command::Show("wal_segment_size".into())
    );
    assert_eq!(
        parse("TIMELINE_HISTORY 2").unwrap(),
        Command::TimelineHistory(2)
    );
    assert_eq!(
        parse("READ_REPLICATION_SLOT \"slot\"").unwrap(),
        Command::ReadReplicationSlot("slot".into())
    );
    assert_eq!(
        parse("CREATE_REPLICATION_SLOT \"pg_basebackup_1\" TEMPORARY PHYSICAL ( RESERVE_WAL)")
            .unwrap(),
        Command::CreateReplicationSlot {
            name: "pg_basebackup_1".into(),
            temporary: true
        }
    );
    assert_eq!(
        parse("DROP_REPLICATION_SLOT s WAIT").unwrap(),
        Command::DropReplicationSlot("s".into())
    );
    assert_eq!(
        parse("set datestyle to 'ISO'").unwrap(),
        Command::SetDatestyle
    );
    assert_eq!(parse("").unwrap(), Command::Empty);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for q in [
        "SELECT 1",
        "IDENTIFY_SYSTEM extra",
        "TIMELINE_HISTORY x",
        "'",
        "(",
        "SHOW",
    ] {
        assert!(parse(q).is_err(), "{q}");
    }
    assert!(matches!(
        parse("SELECT 1"),
        Err(CommandError::Unsupported(_))
    ));
}
