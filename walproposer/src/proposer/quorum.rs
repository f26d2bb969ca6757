//! Which sets of safekeepers must agree: a majority of every set.
//!
//! Without a membership configuration (generation 0) that is a majority of the whole list.
//! With one, a majority of its members; in a joint configuration (`new_members` set) also
//! a majority of the new members, for greetings, votes and the commit alike, so that
//! neither the old set nor the new one can be outvoted while the change is under way.
//!
//! Owns: [`Quorums`]. Must never: count a safekeeper the configuration does not name.

use pq_proto::proposer::Configuration;
use utils::{Lsn, NodeId};

use super::SkId;

/// The sets whose majorities decide, as indexes into the proposer's safekeeper list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quorums {
    sets: Vec<Vec<SkId>>,
}

impl Quorums {
    /// The sets for a list of `n` safekeepers under `mconf`. With a generation, list entry
    /// `i` is the safekeeper with node id `ids[i]`; without `ids`, the list is the
    /// configuration's safekeepers in [`list_ids`] order (how `--safekeepers` and a
    /// reconfiguration build it). Entries the configuration does not name count for nothing.
    pub fn new(n: usize, mconf: &Configuration, ids: Option<&[NodeId]>) -> Self {
        if mconf.generation.0 == 0 {
            return Quorums {
                sets: vec![(0..n).collect()],
            };
        }
        let ids = ids.map_or_else(|| list_ids(mconf), <[NodeId]>::to_vec);
        let index = |id: NodeId| ids.iter().position(|&i| i == id).filter(|&i| i < n);
        let mut sets = vec![mconf.members.iter().filter_map(|m| index(m.id)).collect()];
        if let Some(new) = &mconf.new_members {
            sets.push(new.iter().filter_map(|m| index(m.id)).collect());
        }
        Quorums { sets }
    }

    /// True if `ok` holds for a majority of every set.
    pub fn reached(&self, ok: impl Fn(SkId) -> bool) -> bool {
        self.sets.iter().all(|set| {
            let n = set.iter().filter(|&&sk| ok(sk)).count();
            n >= majority(set.len())
        })
    }

    /// The highest LSN a majority of every set has reached, given each safekeeper's `lsn`
    /// (`Lsn::INVALID` for none).
    pub fn agreed_lsn(&self, lsn: impl Fn(SkId) -> Lsn) -> Lsn {
        self.sets
            .iter()
            .map(|set| {
                let mut v: Vec<Lsn> = set.iter().map(|&sk| lsn(sk)).collect();
                v.sort_unstable_by(|a, b| b.cmp(a));
                v.get(majority(set.len()) - 1).copied().unwrap_or_default()
            })
            .min()
            .unwrap_or_default()
    }
}

/// A majority of `n`.
fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// The node ids of a configuration's safekeepers in list order: the members, then the new
/// members that are not members already.
pub fn list_ids(mconf: &Configuration) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = mconf.members.iter().map(|m| m.id).collect();
    for m in mconf.new_members.iter().flatten() {
        if !ids.contains(&m.id) {
            ids.push(m.id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use pq_proto::proposer::{Generation, SafekeeperId};

    fn sks(ids: &[u64]) -> Vec<SafekeeperId> {
        ids.iter()
            .map(|&id| SafekeeperId {
                id: NodeId(id),
                host: "h".into(),
                pg_port: 5454,
            })
            .collect()
    }

    fn joint() -> Configuration {
        Configuration {
            generation: Generation(2),
            members: sks(&[1, 2, 3]),
            new_members: Some(sks(&[1, 2, 4])),
        }
    }

    #[test]
    fn without_a_generation_a_majority_of_the_list() {
        let q = Quorums::new(3, &Configuration::empty(), None);
        assert!(q.reached(|sk| sk != 0));
        assert!(!q.reached(|sk| sk == 0));
        let l = [Lsn(30), Lsn(10), Lsn(20)];
        assert_eq!(q.agreed_lsn(|sk| l[sk]), Lsn(20));
    }

    #[test]
    fn a_joint_configuration_needs_both_majorities() {
        let c = joint();
        assert_eq!(list_ids(&c), [1, 2, 3, 4].map(NodeId));
        let q = Quorums::new(4, &c, None);
        // {1, 2} is a majority of both sets.
        assert!(q.reached(|sk| sk <= 1));
        // {1, 3} (ids 1 and 3): the new set has only 1 of 3.
        assert!(!q.reached(|sk| sk == 0 || sk == 2));
        // {1, 3, 4}: 2 of the old set, 2 of the new set.
        assert!(q.reached(|sk| sk != 1));
        // Commit: min over the sets of each set's majority point.
        let l = [Lsn(50), Lsn(10), Lsn(40), Lsn(20)];
        // old {50, 10, 40} → 40; new {50, 10, 20} → 20.
        assert_eq!(q.agreed_lsn(|sk| l[sk]), Lsn(20));
    }

    #[test]
    fn a_plain_configuration_is_one_set_of_its_members() {
        let c = Configuration {
            generation: Generation(3),
            members: sks(&[1, 2, 4]),
            new_members: None,
        };
        let q = Quorums::new(3, &c, None);
        assert!(q.reached(|sk| sk != 2));
        assert!(!q.reached(|sk| sk == 2));
        // A list that names every safekeeper ever used, in its own order: entry 2 (id 3)
        // is not a member and counts for nothing.
        let ids = [1, 2, 3, 4].map(NodeId);
        let q = Quorums::new(4, &c, Some(&ids));
        assert!(q.reached(|sk| sk == 0 || sk == 3));
        assert!(!q.reached(|sk| sk == 0 || sk == 2));
    }
}
