//! The safekeeper server.
