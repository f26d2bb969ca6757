//! The pure part of a membership change: which configurations to install, where a change
//! stands given what the safekeepers hold, and when a quorum answered.
//!
//! Owns: [`Plan`], [`Stage`], [`majority_of`]. Must never: do I/O.

use std::collections::BTreeSet;

use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use utils::NodeId;

/// The two configurations a change from `from` to `to` installs after generation `base`:
/// the joint one (`base + 1`: members `from`, new members `to`) and the final one
/// (`base + 2`: members `to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Generation `base + 1`.
    pub joint: Configuration,
    /// Generation `base + 2`.
    pub last: Configuration,
}

impl Plan {
    /// The plan from generation `base`.
    pub fn new(base: Generation, from: &[SafekeeperId], to: &[SafekeeperId]) -> Plan {
        Plan {
            joint: Configuration {
                generation: Generation(base.0 + 1),
                members: from.to_vec(),
                new_members: Some(to.to_vec()),
            },
            last: Configuration {
                generation: Generation(base.0 + 2),
                members: to.to_vec(),
                new_members: None,
            },
        }
    }
}

/// Where a change stands, judged from the highest configuration the old members hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The old configuration is current: the change starts from its generation.
    Start(Generation),
    /// The joint configuration of this change is installed (an earlier run stopped
    /// after it): go on from there. Carries the base generation.
    Joint(Generation),
    /// The target configuration is current: nothing to do.
    Done(Generation),
}

/// Why a change cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The safekeepers hold a configuration that is neither `from`, the joint one, nor `to`.
    #[error(
        "the safekeepers hold generation {generation} with members {members:?}{}, which is \
         neither --from, --to, nor the joint configuration between them: another change is \
         under way or the lists are wrong",
        new_members.as_ref().map(|n| format!(" and new members {n:?}")).unwrap_or_default()
    )]
    Unexpected {
        /// Its generation.
        generation: u32,
        /// Its member ids.
        members: Vec<u64>,
        /// Its new member ids, if joint.
        new_members: Option<Vec<u64>>,
    },
    /// `--from` and `--to` name the same set.
    #[error("--from and --to name the same safekeepers: there is nothing to change")]
    Same,
}

fn ids(s: &[SafekeeperId]) -> BTreeSet<NodeId> {
    s.iter().map(|m| m.id).collect()
}

/// Judges `current` (the highest configuration found on the old members) against a change
/// from `from` to `to`. Generation 0 (no configuration yet) counts as `from`.
pub fn stage(
    current: &Configuration,
    from: &[SafekeeperId],
    to: &[SafekeeperId],
) -> Result<Stage, PlanError> {
    if ids(from) == ids(to) {
        return Err(PlanError::Same);
    }
    let members = ids(&current.members);
    let new = current.new_members.as_deref().map(ids);
    let g = current.generation;
    match new {
        _ if g.0 == 0 => Ok(Stage::Start(g)),
        None if members == ids(from) => Ok(Stage::Start(g)),
        None if members == ids(to) => Ok(Stage::Done(g)),
        Some(n) if members == ids(from) && n == ids(to) && g.0 >= 1 => {
            Ok(Stage::Joint(Generation(g.0 - 1)))
        }
        _ => Err(PlanError::Unexpected {
            generation: g.0,
            members: members.iter().map(|i| i.0).collect(),
            new_members: current
                .new_members
                .as_ref()
                .map(|n| n.iter().map(|m| m.id.0).collect()),
        }),
    }
}

/// True if `ok` holds for a majority of `set`.
pub fn majority_of(set: &[SafekeeperId], ok: impl Fn(NodeId) -> bool) -> bool {
    set.iter().filter(|m| ok(m.id)).count() > set.len() / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sks(ids: &[u64]) -> Vec<SafekeeperId> {
        ids.iter()
            .map(|&id| SafekeeperId {
                id: NodeId(id),
                host: "127.0.0.1".into(),
                pg_port: 5000 + id as u16,
            })
            .collect()
    }

    #[test]
    fn a_plan_is_joint_then_the_new_set() {
        let p = Plan::new(Generation(1), &sks(&[1, 2, 3]), &sks(&[1, 2, 4]));
        assert_eq!(p.joint.generation, Generation(2));
        assert_eq!(p.joint.members, sks(&[1, 2, 3]));
        assert_eq!(p.joint.new_members, Some(sks(&[1, 2, 4])));
        assert_eq!(p.last.generation, Generation(3));
        assert_eq!(p.last.members, sks(&[1, 2, 4]));
        assert_eq!(p.last.new_members, None);
    }

    #[test]
    fn the_stage_follows_what_the_safekeepers_hold() {
        let (from, to) = (sks(&[1, 2, 3]), sks(&[1, 2, 4]));
        let conf = |g, m: &[u64], n: Option<&[u64]>| Configuration {
            generation: Generation(g),
            members: sks(m),
            new_members: n.map(sks),
        };
        assert_eq!(
            stage(&Configuration::empty(), &from, &to),
            Ok(Stage::Start(Generation(0)))
        );
        assert_eq!(
            stage(&conf(1, &[3, 2, 1], None), &from, &to),
            Ok(Stage::Start(Generation(1)))
        );
        assert_eq!(
            stage(&conf(2, &[1, 2, 3], Some(&[1, 2, 4])), &from, &to),
            Ok(Stage::Joint(Generation(1)))
        );
        assert_eq!(
            stage(&conf(3, &[1, 2, 4], None), &from, &to),
            Ok(Stage::Done(Generation(3)))
        );
        let e = stage(&conf(5, &[1, 2, 5], None), &from, &to).unwrap_err();
        assert!(e.to_string().contains("another change"), "{e}");
        assert_eq!(
            stage(&conf(1, &[1], None), &from, &from),
            Err(PlanError::Same)
        );
    }

    #[test]
    fn majorities() {
        let s = sks(&[1, 2, 4]);
        assert!(majority_of(&s, |id| id.0 != 4));
        assert!(!majority_of(&s, |id| id.0 == 4));
    }
}
