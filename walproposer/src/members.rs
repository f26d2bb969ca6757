//! The `--safekeepers` list: `host:port` entries, or `ID@host:port` entries that also
//! name a membership configuration.
//!
//! Owns: turning the list into the addresses the driver connects to and the
//! [`Configuration`] the proposer sends in its greeting. Must never: do I/O (no name
//! resolution); it is pure so that every subcommand refuses a bad list the same way,
//! before connecting anywhere.

use std::collections::HashSet;

use pq_proto::proposer::{Configuration, Generation, ProtocolVersion, SafekeeperId};
use utils::NodeId;

/// The generation of the configuration the CLI sends when the list carries ids. There is
/// no membership change yet, so one generation is enough; safekeepers adopt any higher
/// generation naming them and refuse messages of another generation.
pub const CLI_GENERATION: Generation = Generation(1);

/// The parsed `--safekeepers` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Safekeepers {
    /// `host:port` of each safekeeper, in list order (what the driver connects to).
    pub addrs: Vec<String>,
    /// Without ids the empty configuration (generation 0); with ids, generation
    /// [`CLI_GENERATION`] whose members are the safekeepers in list order.
    pub mconf: Configuration,
}

/// Why a `--safekeepers` list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    /// The list is empty.
    #[error("no safekeepers given")]
    Empty,
    /// Some entries have an id and others do not.
    #[error(
        "safekeeper \"{entry}\" has no id while others have one: give every safekeeper as \
         ID@host:port, or none"
    )]
    Mixed {
        /// The entry without an id.
        entry: String,
    },
    /// The id is not a positive integer.
    #[error("safekeeper \"{entry}\": the id before '@' must be a positive integer")]
    BadId {
        /// The entry.
        entry: String,
    },
    /// Two entries carry the same id.
    #[error("safekeeper id {id} is given twice")]
    DuplicateId {
        /// The repeated id.
        id: u64,
    },
    /// No `host:port` after the id, or the port is not 1..=65535.
    #[error("safekeeper \"{entry}\": expected ID@host:port with a port in 1..=65535")]
    BadAddr {
        /// The entry.
        entry: String,
    },
    /// Ids were given but the protocol has no membership configuration.
    #[error(
        "safekeeper ids (ID@host:port) need protocol v3: protocol v2 carries no membership \
         configuration"
    )]
    NeedsV3,
}

/// Parses the `--safekeepers` entries.
///
/// Either every entry is `ID@host:port` (id ≥ 1, distinct; port explicit) and the result
/// carries a configuration of generation [`CLI_GENERATION`], or no entry has an `@` and
/// the entries are passed through unchanged as addresses with the empty configuration.
pub fn parse_safekeepers(entries: &[String]) -> Result<Safekeepers, MembersError> {
    if entries.is_empty() {
        return Err(MembersError::Empty);
    }
    let with_id = entries.iter().filter(|e| e.contains('@')).count();
    if with_id == 0 {
        return Ok(Safekeepers {
            addrs: entries.to_vec(),
            mconf: Configuration::empty(),
        });
    }
    let mut addrs = Vec::with_capacity(entries.len());
    let mut members = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for entry in entries {
        let Some((id, addr)) = entry.split_once('@') else {
            return Err(MembersError::Mixed {
                entry: entry.clone(),
            });
        };
        let id = match id.parse::<u64>() {
            Ok(id) if id > 0 => id,
            _ => {
                return Err(MembersError::BadId {
                    entry: entry.clone(),
                });
            }
        };
        if !seen.insert(id) {
            return Err(MembersError::DuplicateId { id });
        }
        let bad_addr = || MembersError::BadAddr {
            entry: entry.clone(),
        };
        // rsplit: the port follows the last ':' (a bracketed IPv6 host keeps its own).
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad_addr)?;
        let pg_port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad_addr()),
        };
        if host.is_empty() {
            return Err(bad_addr());
        }
        addrs.push(addr.to_string());
        members.push(SafekeeperId {
            id: NodeId(id),
            host: host.to_string(),
            pg_port,
        });
    }
    Ok(Safekeepers {
        addrs,
        mconf: Configuration {
            generation: CLI_GENERATION,
            members,
            new_members: None,
        },
    })
}

/// The safekeepers a configuration names, in [`crate::proposer::list_ids`] order (members,
/// then new members that are not members), addressed by their `host:pg_port`.
pub fn from_configuration(mconf: &Configuration) -> Safekeepers {
    let all = mconf
        .members
        .iter()
        .chain(mconf.new_members.iter().flatten());
    let mut seen = HashSet::new();
    let addrs = all
        .filter(|m| seen.insert(m.id))
        .map(|m| format!("{}:{}", m.host, m.pg_port))
        .collect();
    Safekeepers {
        addrs,
        mconf: mconf.clone(),
    }
}

/// Refuses a membership configuration on a protocol that cannot carry it (v2 has no
/// generations: every message would be refused by a safekeeper holding generation 1).
pub fn check_protocol(
    mconf: &Configuration,
    protocol: ProtocolVersion,
) -> Result<(), MembersError> {
    if protocol == ProtocolVersion::V2 && *mconf != Configuration::empty() {
        return Err(MembersError::NeedsV3);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(str::to_string).collect()
    }

    fn sk(id: u64, host: &str, pg_port: u16) -> SafekeeperId {
        SafekeeperId {
            id: NodeId(id),
            host: host.to_string(),
            pg_port,
        }
    }

    #[test]
    fn without_ids_is_passed_through() {
        let s = parse_safekeepers(&list("127.0.0.1:5454,sk2:5455,sk3")).unwrap();
        assert_eq!(s.addrs, list("127.0.0.1:5454,sk2:5455,sk3"));
        assert_eq!(s.mconf, Configuration::empty());
    }

    #[test]
    fn with_ids_makes_generation_one_in_list_order() {
        let s = parse_safekeepers(&list("3@127.0.0.1:5454,1@sk2:5455,2@[::1]:5456")).unwrap();
        assert_eq!(s.addrs, list("127.0.0.1:5454,sk2:5455,[::1]:5456"));
        assert_eq!(
            s.mconf,
            Configuration {
                generation: Generation(1),
                members: vec![
                    sk(3, "127.0.0.1", 5454),
                    sk(1, "sk2", 5455),
                    sk(2, "[::1]", 5456)
                ],
                new_members: None,
            }
        );
    }

    #[test]
    fn refuses_bad_lists() {
        let err = |s: &str| parse_safekeepers(&list(s)).unwrap_err();
        assert_eq!(parse_safekeepers(&[]).unwrap_err(), MembersError::Empty);
        assert_eq!(
            err("1@a:1,b:2"),
            MembersError::Mixed {
                entry: "b:2".into()
            }
        );
        assert_eq!(err("1@a:1,1@b:2"), MembersError::DuplicateId { id: 1 });
        for bad_id in ["0@a:1", "x@a:1", "@a:1", "-1@a:1"] {
            assert_eq!(
                err(bad_id),
                MembersError::BadId {
                    entry: bad_id.into()
                }
            );
        }
        for bad_addr in ["1@a", "1@a:0", "1@a:65536", "1@a:x", "1@:5454", "1@a:"] {
            assert_eq!(
                err(bad_addr),
                MembersError::BadAddr {
                    entry: bad_addr.into()
                }
            );
        }
        // The messages say what to write.
        assert!(err("1@a:1,b:2").to_string().contains("ID@host:port"));
    }

    #[test]
    fn ids_need_v3() {
        let with = parse_safekeepers(&list("1@a:1")).unwrap().mconf;
        let without = parse_safekeepers(&list("a:1")).unwrap().mconf;
        assert_eq!(check_protocol(&with, ProtocolVersion::V3), Ok(()));
        assert_eq!(
            check_protocol(&with, ProtocolVersion::V2),
            Err(MembersError::NeedsV3)
        );
        assert_eq!(check_protocol(&without, ProtocolVersion::V2), Ok(()));
        assert!(MembersError::NeedsV3.to_string().contains("protocol v3"));
    }
}
