//! Which member of a timeline's quorum offloads its WAL.
//!
//! Every member computes the same answer from the same facts: the candidates are the
//! members that answered the last status round (this one included) whose commit position
//! is within `max_lag` of the best; sorted by node id, the one at index
//! `hash(timeline) mod n` offloads. Spreading by timeline puts the offload work of many
//! timelines on all members. Members see slightly different facts for a moment (a peer
//! answered one and not another); then two may offload or none for one round, which
//! costs nothing: uploads are idempotent, and the next round agrees again.
//!
//! Owns: that rule (pure, unit-tested). Must never: pick a member that did not answer, or
//! one lagging by more than `max_lag` while others are current.

use utils::{Lsn, NodeId, TimelineId};

/// A member that can offload: its id and commit position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub id: NodeId,
    /// Its commit_lsn as last reported.
    pub commit_lsn: Lsn,
}

/// The offloader among `candidates` (never empty: it includes the caller).
pub fn choose(timeline: &TimelineId, candidates: &[Candidate], max_lag: u64) -> NodeId {
    let best = candidates
        .iter()
        .map(|c| c.commit_lsn)
        .max()
        .unwrap_or(Lsn::INVALID);
    let mut ids: Vec<NodeId> = candidates
        .iter()
        .filter(|c| best.0.saturating_sub(c.commit_lsn.0) <= max_lag)
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids.dedup();
    let bytes = timeline.as_bytes();
    let a = u64::from_le_bytes(bytes[..8].try_into().expect("16 bytes"));
    let b = u64::from_le_bytes(bytes[8..].try_into().expect("16 bytes"));
    // Mixed (not a plain xor, which is 0 for an id whose halves are equal).
    let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b;
    h ^= h >> 31;
    ids[(h % ids.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, commit: u64) -> Candidate {
        Candidate {
            id: NodeId(id),
            commit_lsn: Lsn(commit),
        }
    }

    #[test]
    fn every_member_agrees_whatever_order_it_lists_them_in() {
        let tl = TimelineId([7; 16]);
        let a = choose(&tl, &[c(1, 100), c(2, 100), c(3, 100)], 0);
        let b = choose(&tl, &[c(3, 100), c(1, 100), c(2, 100)], 0);
        assert_eq!(a, b);
    }

    #[test]
    fn laggards_are_not_chosen_and_timelines_spread() {
        let mut chosen = std::collections::HashSet::new();
        for i in 0..32u8 {
            let tl = TimelineId([i; 16]);
            let id = choose(&tl, &[c(1, 1000), c(2, 10), c(3, 1000)], 100);
            assert_ne!(id, NodeId(2));
            chosen.insert(id);
        }
        assert_eq!(chosen.len(), 2, "both current members get timelines");
    }

    #[test]
    fn a_member_that_is_gone_hands_over() {
        let tl = TimelineId([3; 16]);
        let all = [c(1, 5), c(2, 5), c(3, 5)];
        let first = choose(&tl, &all, 0);
        let rest: Vec<_> = all.iter().copied().filter(|x| x.id != first).collect();
        let next = choose(&tl, &rest, 0);
        assert_ne!(next, first);
    }
}
