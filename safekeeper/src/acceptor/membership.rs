//! Membership switches from outside the proposer protocol (`PUT .../membership`, what an
//! external controller drives, as Neon's safekeeper takes it).
//!
//! Rules: a configuration of a higher generation replaces the current one and is
//! persisted before the switch is reported (a [`Effect::PersistControl`] first); the
//! same configuration again is a no-op (idempotent retries); another configuration with
//! the same generation is refused (two configurations can never share one); a lower
//! generation changes nothing and reports the current configuration (the caller sees it
//! is behind, as Neon answers). A configuration that leaves this safekeeper out is taken:
//! from then on it refuses votes and appends ([`AcceptorError::NotAMember`]).
//!
//! A term bump (`POST …/term_bump`, which a membership change uses to raise the new
//! members' term to the highest term of the old set before the new set decides alone)
//! raises the term as a vote would, without voting: persisted before it is reported.
//!
//! Owns: [`Acceptor::switch_membership`], [`Acceptor::bump_term`]. Must never: move the
//! generation or the term backwards, or report a change it has not asked to persist first.

use pq_proto::proposer::Configuration;
use utils::{Lsn, Term};

use super::{Acceptor, AcceptorError, Effect};

/// What a switch did: the configurations before and after, and where the WAL here ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipSwitch {
    /// The configuration before.
    pub previous: Configuration,
    /// The configuration now (the requested one, or the current one if it was not lower).
    pub current: Configuration,
    /// Term of the last WAL here.
    pub last_log_term: Term,
    /// End of the WAL here.
    pub flush_lsn: Lsn,
}

/// What a term bump did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermBump {
    /// The term before.
    pub previous: Term,
    /// The term now.
    pub current: Term,
}

impl Acceptor {
    /// Raises the term to `to` (one above the current term when `None`) if that is
    /// higher: from then on no vote or append of a lower term is taken, as after a vote,
    /// but no vote is given. The effects (a persist, when it rose) must be performed
    /// before the bump is reported.
    pub fn bump_term(&mut self, to: Option<Term>) -> (TermBump, Vec<Effect>) {
        let previous = self.state.term;
        let to = to.unwrap_or(Term(previous.0.saturating_add(1)));
        let mut effects = Vec::new();
        if to > previous {
            self.state.term = to;
            self.candidate_commit_lsn = Lsn::INVALID;
            effects.push(self.persist());
        }
        (
            TermBump {
                previous,
                current: self.state.term,
            },
            effects,
        )
    }

    /// Switches to `to` if its generation is higher than the current one (see the module
    /// documentation). The effects (a persist, when it switched) must be performed before
    /// the switch is reported.
    pub fn switch_membership(
        &mut self,
        to: Configuration,
    ) -> Result<(MembershipSwitch, Vec<Effect>), AcceptorError> {
        let previous = self.state.mconf.clone();
        let mut effects = Vec::new();
        if to.generation == previous.generation && to != previous {
            return Err(AcceptorError::ConfigurationConflict(to.generation));
        }
        if to.generation > previous.generation {
            self.state.mconf = to;
            effects.push(self.persist());
        }
        Ok((
            MembershipSwitch {
                previous,
                current: self.state.mconf.clone(),
                last_log_term: self.last_log_term(),
                flush_lsn: self.flush_lsn(),
            },
            effects,
        ))
    }

    /// Votes and appends need membership of the current configuration (or none).
    pub(super) fn check_member(&self) -> Result<(), AcceptorError> {
        if !self.state.is_member(self.node_id) {
            return Err(AcceptorError::NotAMember(self.state.mconf.generation));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ServerInfo, TimelineState};
    use pq_proto::proposer::{Generation, SafekeeperId};
    use utils::{NodeId, TenantId, TenantTimelineId, TimelineId};

    fn conf(generation: u32, ids: &[u64]) -> Configuration {
        Configuration {
            generation: Generation(generation),
            members: ids
                .iter()
                .map(|i| SafekeeperId {
                    id: NodeId(*i),
                    host: "h".into(),
                    pg_port: 1,
                })
                .collect(),
            new_members: None,
        }
    }

    fn acceptor() -> Acceptor {
        let ttid = TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]));
        let mut s = TimelineState::new(ttid, ServerInfo::default());
        s.mconf = conf(1, &[1, 2, 3]);
        Acceptor::new(NodeId(1), s, Lsn::INVALID)
    }

    #[test]
    fn higher_switches_and_persists_first() {
        let mut a = acceptor();
        let (sw, effects) = a.switch_membership(conf(2, &[1, 2, 4])).unwrap();
        assert_eq!(sw.previous, conf(1, &[1, 2, 3]));
        assert_eq!(sw.current, conf(2, &[1, 2, 4]));
        assert!(
            matches!(&effects[..], [Effect::PersistControl(s)] if s.mconf == conf(2, &[1, 2, 4]))
        );
        assert_eq!(a.state().mconf, conf(2, &[1, 2, 4]));
    }

    #[test]
    fn same_is_a_noop_other_same_generation_is_refused_lower_reports_current() {
        let mut a = acceptor();
        let (sw, effects) = a.switch_membership(conf(1, &[1, 2, 3])).unwrap();
        assert!(effects.is_empty());
        assert_eq!(sw.previous, sw.current);
        assert_eq!(
            a.switch_membership(conf(1, &[1, 2])),
            Err(AcceptorError::ConfigurationConflict(Generation(1)))
        );
        a.switch_membership(conf(3, &[1, 2, 3])).unwrap();
        let (sw, effects) = a.switch_membership(conf(2, &[1])).unwrap();
        assert!(effects.is_empty());
        assert_eq!(sw.current, conf(3, &[1, 2, 3]));
        assert_eq!(a.state().mconf.generation, Generation(3));
    }

    #[test]
    fn left_out_refuses_votes() {
        let mut a = acceptor();
        a.check_member().unwrap();
        a.switch_membership(conf(2, &[2, 3, 4])).unwrap();
        assert_eq!(
            a.check_member(),
            Err(AcceptorError::NotAMember(Generation(2)))
        );
    }

    #[test]
    fn a_term_bump_only_raises_and_persists_first() {
        let mut a = acceptor();
        let (b, effects) = a.bump_term(Some(Term(5)));
        assert_eq!((b.previous, b.current), (Term(0), Term(5)));
        assert!(matches!(&effects[..], [Effect::PersistControl(s)] if s.term == Term(5)));
        // Lower or equal: nothing changes, nothing is persisted.
        let (b, effects) = a.bump_term(Some(Term(3)));
        assert_eq!((b.previous, b.current), (Term(5), Term(5)));
        assert!(effects.is_empty());
        // No term: one above the current one.
        let (b, _) = a.bump_term(None);
        assert_eq!(b.current, Term(6));
        assert_eq!(a.term(), Term(6));
    }
}
