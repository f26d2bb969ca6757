//! The proposer.
