//! Identifiers: consensus terms, safekeeper node ids, and tenant/timeline ids.
//!
//! Tenant and timeline ids are 16 random bytes, written as 32 lowercase hex characters
//! everywhere a person or another program sees them (paths, `options`, JSON, logs).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A consensus term: the number of an election. Higher wins.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug,
)]
pub struct Term(pub u64);

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of one safekeeper (`--id`), unique in its quorum.
#[derive(
    Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not a tenant or timeline id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// Not 32 characters long.
    #[error("invalid {kind} \"{input}\": expected 32 hexadecimal characters, got {len}")]
    Length {
        /// "tenant id" or "timeline id".
        kind: &'static str,
        /// What was given (cut to 64 characters).
        input: String,
        /// Its length in characters.
        len: usize,
    },
    /// A character that is not a hex digit.
    #[error("invalid {kind} \"{input}\": character {ch:?} at position {pos} is not hexadecimal")]
    NotHex {
        /// "tenant id" or "timeline id".
        kind: &'static str,
        /// What was given.
        input: String,
        /// The offending character.
        ch: char,
        /// Its 0-based position.
        pos: usize,
    },
}

fn parse_id(kind: &'static str, s: &str) -> Result<[u8; 16], IdParseError> {
    if let Some((pos, ch)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(IdParseError::NotHex {
            kind,
            input: s.chars().take(64).collect(),
            ch,
            pos,
        });
    }
    if s.len() != 32 {
        return Err(IdParseError::Length {
            kind,
            input: s.chars().take(64).collect(),
            len: s.chars().count(),
        });
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::Length {
        kind,
        input: s.to_string(),
        len: s.len(),
    })?;
    Ok(out)
}

macro_rules! hex_id {
    ($name:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The id as 16 raw bytes (the form protocol v2 sends).
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            /// A new random id.
            pub fn generate() -> Self {
                $name(crate::id::random_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_id($kind, s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    TenantId,
    "tenant id",
    "A tenant: the owner of a set of timelines."
);
hex_id!(
    TimelineId,
    "timeline id",
    "A timeline: one PostgreSQL cluster's WAL history."
);

/// A tenant and one of its timelines: the key of everything a safekeeper stores.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TenantTimelineId {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The timeline.
    pub timeline_id: TimelineId,
}

impl TenantTimelineId {
    /// Pairs a tenant and a timeline.
    pub fn new(tenant_id: TenantId, timeline_id: TimelineId) -> Self {
        Self {
            tenant_id,
            timeline_id,
        }
    }
}

impl fmt::Display for TenantTimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant_id, self.timeline_id)
    }
}

impl fmt::Debug for TenantTimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// 16 bytes that differ between calls and processes (not cryptographic: ids only need to
/// be unique, and std's hasher is seeded randomly per process).
fn random_bytes() -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = [0u8; 16];
    for chunk in out.chunks_mut(8) {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let s = "0123456789abcdef0123456789abcdef";
        let t: TenantId = s.parse().unwrap();
        assert_eq!(t.to_string(), s);
        let upper: TimelineId = s.to_uppercase().parse().unwrap();
        assert_eq!(upper.to_string(), s, "printed lowercase");
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{s}\""));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = "abc".parse::<TenantId>().unwrap_err().to_string();
        assert!(e.contains("tenant id") && e.contains("got 3"), "{e}");
        let e = "0123456789abcdef0123456789abcdeX"
            .parse::<TimelineId>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timeline id") && e.contains("position 31"),
            "{e}"
        );
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(TenantId::generate(), TenantId::generate());
    }
}
