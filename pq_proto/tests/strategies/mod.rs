//! proptest strategies generating every valid message of the crate (shared by the
//! property-test files; each includes it with `mod strategies;`).

#![allow(dead_code)]

use bytes::Bytes;
use pq_proto::backend::{
    Authentication, BeMessage, CopyResponse, ErrorFields, FieldDescription, SqlState,
    TransactionStatus,
};
use pq_proto::frontend::{EXTENDED_TAGS, FeMessage, FeStartupPacket};
use pq_proto::proposer::{
    AcceptorGreeting, AcceptorMessage, AppendRequest, AppendRequestHeader, AppendResponse,
    Configuration, Generation, HotStandbyFeedback, PageserverFeedback, ProposerElected,
    ProposerGreeting, ProposerMessage, ProtocolVersion, SafekeeperId, TermHistory, TermLsn,
    VoteRequest, VoteResponse,
};
use pq_proto::replication::{
    PrimaryKeepalive, ReplicationClientMessage, ReplicationServerMessage, StandbyHsFeedback,
    StandbyStatusUpdate, XLogData,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::{Just, Strategy, any, prop_oneof};
use proptest::sample::select;
use utils::{Lsn, NodeId, TenantId, Term, TimelineId};

/// Any string the wire can carry (no NUL).
pub fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

/// A non-empty string without NUL (names whose emptiness would end a list).
pub fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_ .-]{0,15}"
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..96).prop_map(Bytes::from)
}

pub fn bytes_without_nul() -> impl Strategy<Value = Bytes> {
    vec(1u8.., 0..64).prop_map(Bytes::from)
}

pub fn startup_packet() -> impl Strategy<Value = FeStartupPacket> {
    prop_oneof![
        Just(FeStartupPacket::SslRequest),
        Just(FeStartupPacket::GssEncRequest),
        (any::<i32>(), any::<i32>()).prop_map(|(process_id, secret_key)| {
            FeStartupPacket::CancelRequest {
                process_id,
                secret_key,
            }
        }),
        (any::<u16>(), vec((name(), text()), 0..6)).prop_map(|(minor, params)| {
            FeStartupPacket::Startup {
                major: 3,
                minor,
                params,
            }
        }),
    ]
}

pub fn fe_message() -> impl Strategy<Value = FeMessage> {
    prop_oneof![
        bytes_without_nul().prop_map(FeMessage::Query),
        bytes().prop_map(FeMessage::Password),
        Just(FeMessage::Terminate),
        bytes().prop_map(FeMessage::CopyData),
        Just(FeMessage::CopyDone),
        text().prop_map(FeMessage::CopyFail),
        Just(FeMessage::Sync),
        Just(FeMessage::Flush),
        (select(EXTENDED_TAGS.to_vec()), bytes())
            .prop_map(|(tag, body)| FeMessage::Extended { tag, body }),
    ]
}

pub fn sqlstate() -> impl Strategy<Value = SqlState> {
    "[0-9A-Z]{5}".prop_map(|s| SqlState::new(&s).expect("generated a valid code"))
}

pub fn error_fields() -> impl Strategy<Value = ErrorFields> {
    (
        text(),
        sqlstate(),
        text(),
        option::of(text()),
        option::of(text()),
    )
        .prop_map(|(severity, code, message, detail, hint)| ErrorFields {
            severity,
            code,
            message,
            detail,
            hint,
        })
}

pub fn authentication() -> impl Strategy<Value = Authentication> {
    prop_oneof![
        Just(Authentication::Ok),
        Just(Authentication::CleartextPassword),
        any::<[u8; 4]>().prop_map(|salt| Authentication::Md5Password { salt }),
        vec(name(), 0..4).prop_map(|mechanisms| Authentication::Sasl { mechanisms }),
        bytes().prop_map(Authentication::SaslContinue),
        bytes().prop_map(Authentication::SaslFinal),
    ]
}

pub fn field_description() -> impl Strategy<Value = FieldDescription> {
    (text(), any::<(u32, i16, u32, i16, i32, i16)>()).prop_map(
        |(name, (table_oid, column_id, type_oid, type_len, type_modifier, format))| {
            FieldDescription {
                name,
                table_oid,
                column_id,
                type_oid,
                type_len,
                type_modifier,
                format,
            }
        },
    )
}

pub fn copy_response() -> impl Strategy<Value = CopyResponse> {
    (any::<u8>(), vec(any::<i16>(), 0..5)).prop_map(|(format, column_formats)| CopyResponse {
        format,
        column_formats,
    })
}

pub fn be_message() -> impl Strategy<Value = BeMessage> {
    prop_oneof![
        authentication().prop_map(BeMessage::Authentication),
        (text(), text()).prop_map(|(name, value)| BeMessage::ParameterStatus { name, value }),
        any::<(i32, i32)>().prop_map(|(process_id, secret_key)| BeMessage::BackendKeyData {
            process_id,
            secret_key
        }),
        select(vec![
            TransactionStatus::Idle,
            TransactionStatus::InBlock,
            TransactionStatus::Failed
        ])
        .prop_map(BeMessage::ReadyForQuery),
        vec(field_description(), 0..4).prop_map(BeMessage::RowDescription),
        vec(option::of(bytes()), 0..4).prop_map(BeMessage::DataRow),
        text().prop_map(BeMessage::CommandComplete),
        Just(BeMessage::EmptyQueryResponse),
        error_fields().prop_map(BeMessage::ErrorResponse),
        error_fields().prop_map(BeMessage::NoticeResponse),
        copy_response().prop_map(BeMessage::CopyBothResponse),
        copy_response().prop_map(BeMessage::CopyOutResponse),
        copy_response().prop_map(BeMessage::CopyInResponse),
        bytes().prop_map(BeMessage::CopyData),
        Just(BeMessage::CopyDone),
        Just(BeMessage::NoData),
    ]
}

pub fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

pub fn pageserver_feedback() -> impl Strategy<Value = PageserverFeedback> {
    (any::<(u64, u64, u64, u64, i64, u32, bool)>()).prop_map(|(size, w, f, a, t, shard, c)| {
        PageserverFeedback {
            current_timeline_size: size,
            last_received_lsn: Lsn(w),
            disk_consistent_lsn: Lsn(f),
            remote_consistent_lsn: Lsn(a),
            replytime: t,
            shard_number: shard,
            corruption_detected: c,
        }
    })
}

pub fn replication_server_message() -> impl Strategy<Value = ReplicationServerMessage> {
    prop_oneof![
        (lsn(), lsn(), any::<i64>(), bytes()).prop_map(|(wal_start, wal_end, send_time, data)| {
            ReplicationServerMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            })
        }),
        (lsn(), any::<i64>(), any::<bool>()).prop_map(|(wal_end, send_time, reply_requested)| {
            ReplicationServerMessage::Keepalive(PrimaryKeepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }),
    ]
}

pub fn replication_client_message() -> impl Strategy<Value = ReplicationClientMessage> {
    prop_oneof![
        (lsn(), lsn(), lsn(), any::<i64>(), any::<bool>()).prop_map(|(w, f, a, t, r)| {
            ReplicationClientMessage::StandbyStatusUpdate(StandbyStatusUpdate {
                write_lsn: w,
                flush_lsn: f,
                apply_lsn: a,
                client_time: t,
                reply_requested: r,
            })
        }),
        any::<(i64, u32, u32, u32, u32)>().prop_map(|(ts, x, xe, c, ce)| {
            ReplicationClientMessage::HotStandbyFeedback(StandbyHsFeedback {
                ts,
                xmin: x,
                xmin_epoch: xe,
                catalog_xmin: c,
                catalog_xmin_epoch: ce,
            })
        }),
        pageserver_feedback().prop_map(ReplicationClientMessage::PageserverFeedback),
    ]
}

/// Members with distinct node ids.
fn member_set(min: usize) -> impl Strategy<Value = Vec<SafekeeperId>> {
    vec((0u64..16, text(), any::<u16>()), min..5).prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|(id, _, _)| seen.insert(*id))
            .map(|(id, host, pg_port)| SafekeeperId {
                id: NodeId(id),
                host,
                pg_port,
            })
            .collect()
    })
}

/// A valid configuration: generation 0 may be empty; a joint set is never empty.
pub fn configuration() -> impl Strategy<Value = Configuration> {
    prop_oneof![
        Just(Configuration::empty()),
        (any::<u32>(), member_set(1), option::of(member_set(1))).prop_map(
            |(generation, members, new_members)| Configuration {
                generation: Generation(generation),
                members,
                new_members,
            }
        ),
    ]
}

pub fn term_history() -> impl Strategy<Value = TermHistory> {
    vec(any::<(u64, u64)>(), 0..5).prop_map(|v| {
        TermHistory(
            v.into_iter()
                .map(|(t, l)| TermLsn {
                    term: Term(t),
                    lsn: Lsn(l),
                })
                .collect(),
        )
    })
}

/// Generation and configuration as the version can carry them (v2: neither).
fn gen_conf(version: ProtocolVersion) -> impl Strategy<Value = (Generation, Configuration)> {
    let v3 = version == ProtocolVersion::V3;
    (any::<u32>(), configuration()).prop_map(move |(g, c)| {
        if v3 {
            (Generation(g), c)
        } else {
            (Generation(0), Configuration::empty())
        }
    })
}

pub fn proposer_message(version: ProtocolVersion) -> impl Strategy<Value = ProposerMessage> {
    let greeting = (
        gen_conf(version),
        any::<([u8; 16], [u8; 16], u32, u64, u32)>(),
    )
        .prop_map(
            |((_, mconf), (tenant, timeline, pg_version, system_id, wal_seg_size))| {
                ProposerMessage::Greeting(ProposerGreeting {
                    tenant_id: TenantId(tenant),
                    timeline_id: TimelineId(timeline),
                    mconf,
                    pg_version,
                    system_id,
                    wal_seg_size,
                })
            },
        );
    let vote = (gen_conf(version), any::<u64>()).prop_map(|((generation, _), term)| {
        ProposerMessage::VoteRequest(VoteRequest {
            generation,
            term: Term(term),
        })
    });
    let elected = (gen_conf(version), any::<u64>(), lsn(), term_history()).prop_map(
        |((generation, _), term, start_streaming_at, term_history)| {
            ProposerMessage::Elected(ProposerElected {
                generation,
                term: Term(term),
                start_streaming_at,
                term_history,
            })
        },
    );
    let append = (gen_conf(version), any::<(u64, u64, u64, u64)>(), bytes()).prop_map(
        |((generation, _), (term, begin, commit, truncate), wal_data)| {
            let begin = begin.min(u64::MAX - wal_data.len() as u64);
            ProposerMessage::AppendRequest(AppendRequest {
                h: AppendRequestHeader {
                    generation,
                    term: Term(term),
                    begin_lsn: Lsn(begin),
                    end_lsn: Lsn(begin + wal_data.len() as u64),
                    commit_lsn: Lsn(commit),
                    truncate_lsn: Lsn(truncate),
                },
                wal_data,
            })
        },
    );
    prop_oneof![greeting, vote, elected, append]
}

pub fn acceptor_message(version: ProtocolVersion) -> impl Strategy<Value = AcceptorMessage> {
    let greeting = (gen_conf(version), any::<(u64, u64)>()).prop_map(|((_, mconf), (id, term))| {
        AcceptorMessage::Greeting(AcceptorGreeting {
            node_id: NodeId(id),
            mconf,
            term: Term(term),
        })
    });
    let vote = (
        gen_conf(version),
        any::<(u64, bool)>(),
        lsn(),
        lsn(),
        term_history(),
    )
        .prop_map(
            |((generation, _), (term, vote_given), flush_lsn, truncate_lsn, term_history)| {
                AcceptorMessage::VoteResponse(VoteResponse {
                    generation,
                    term: Term(term),
                    vote_given,
                    flush_lsn,
                    truncate_lsn,
                    term_history,
                })
            },
        );
    let append = (
        gen_conf(version),
        any::<(u64, u64, u64, i64, u64, u64)>(),
        option::of(pageserver_feedback()),
    )
        .prop_map(
            |((generation, _), (term, flush, commit, ts, xmin, cxmin), pageserver_feedback)| {
                AcceptorMessage::AppendResponse(AppendResponse {
                    generation,
                    term: Term(term),
                    flush_lsn: Lsn(flush),
                    commit_lsn: Lsn(commit),
                    hs_feedback: HotStandbyFeedback {
                        ts,
                        xmin,
                        catalog_xmin: cxmin,
                    },
                    pageserver_feedback,
                })
            },
        );
    prop_oneof![greeting, vote, append]
}

pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![ProtocolVersion::V2, ProtocolVersion::V3])
}
