//! [`Conninfo`]: libpq-style connection strings, and the one a safekeeper expects for a
//! timeline.
//!
//! Owns: parsing `key=value ...` (with `'…'` quoting and `\` escapes), reading and setting
//! parameters, the address to dial. Must never: connect, or read the environment (the
//! `PGUSER` / `PGPASSWORD` fallbacks are applied by `connect`).

use std::collections::BTreeMap;

use utils::{TenantId, TimelineId};

use crate::error::PgError;

/// The port of a safekeeper address given without one (the safekeeper's default).
const DEFAULT_SAFEKEEPER_PORT: &str = "5454";

/// A parsed libpq connection string (`key=value ...` with `'…'` quoting and `\` escapes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conninfo {
    params: BTreeMap<String, String>,
}

impl Conninfo {
    /// Parses `host=… port=… user=… dbname=… password=… application_name=… options=…`.
    pub fn parse(s: &str) -> Result<Self, PgError> {
        let mut params = BTreeMap::new();
        let mut chars = s.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(PgError::Conninfo(format!("missing \"=\" after \"{key}\"")));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'\'') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('\\') => value.extend(chars.next()),
                        Some('\'') => break,
                        Some(c) => value.push(c),
                        None => {
                            return Err(PgError::Conninfo(format!(
                                "unterminated quoted value of \"{key}\""
                            )));
                        }
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    chars.next();
                    if c == '\\' {
                        value.extend(chars.next());
                    } else {
                        value.push(c);
                    }
                }
            }
            params.insert(key, value);
        }
        Ok(Conninfo { params })
    }

    /// The connection string of a safekeeper for one timeline: `addr` is `host:port`
    /// (without a port, the safekeeper's default 5454), the timeline goes into `options`
    /// (`-c tenant_id=… timeline_id=…`), and `app` is the `application_name`.
    pub fn for_timeline(addr: &str, tenant: TenantId, timeline: TimelineId, app: &str) -> Self {
        let (host, port) = addr
            .rsplit_once(':')
            .unwrap_or((addr, DEFAULT_SAFEKEEPER_PORT));
        let mut ci = Conninfo::default();
        ci.set("host", host)
            .set("port", port)
            .set("application_name", app)
            .set(
                "options",
                format!("-c tenant_id={tenant} timeline_id={timeline}"),
            );
        ci
    }

    /// A parameter's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Sets a parameter.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    /// The parameters, by name.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets every parameter of `other` (its values win).
    pub fn extend(&mut self, other: &Conninfo) -> &mut Self {
        for (k, v) in other.params() {
            self.set(k, v);
        }
        self
    }

    /// `host:port` to connect to (defaults: 127.0.0.1, 5432).
    pub fn addr(&self) -> String {
        let host = self
            .get("host")
            .or(self.get("hostaddr"))
            .unwrap_or("127.0.0.1");
        let port = self.get("port").unwrap_or("5432");
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parsing() {
        let ci = Conninfo::parse(
            "host=127.0.0.1 port=5432 user=postgres options='-c a=b\\'c' application_name = x",
        )
        .unwrap();
        assert_eq!(ci.addr(), "127.0.0.1:5432");
        assert_eq!(ci.get("options"), Some("-c a=b'c"));
        assert_eq!(ci.get("application_name"), Some("x"));
        assert!(Conninfo::parse("host").is_err());
        assert!(Conninfo::parse("options='x").is_err());
        assert_eq!(Conninfo::parse("").unwrap(), Conninfo::default());
    }

    #[test]
    fn for_timeline() {
        let tenant: TenantId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let timeline: TimelineId = "fedcba9876543210fedcba9876543210".parse().unwrap();
        let ci = Conninfo::for_timeline("10.0.0.7:7000", tenant, timeline, "walproposer");
        assert_eq!(ci.addr(), "10.0.0.7:7000");
        assert_eq!(ci.get("application_name"), Some("walproposer"));
        assert_eq!(
            ci.get("options"),
            Some(
                "-c tenant_id=0123456789abcdef0123456789abcdef \
                 timeline_id=fedcba9876543210fedcba9876543210"
            )
        );
        // No user, database or replication flag: the safekeeper needs none of them.
        assert_eq!(ci.get("user"), None);
        assert_eq!(ci.get("replication"), None);
        // Without a port, the safekeeper's default.
        let mut ci = Conninfo::for_timeline("sk1", tenant, timeline, "x");
        assert_eq!(ci.addr(), "sk1:5454");
        // Extra parameters (walproposer's --safekeeper-conninfo) are added.
        ci.extend(&Conninfo::parse("sslmode=verify-full sslrootcert=/ca.pem").unwrap());
        assert_eq!(ci.get("sslmode"), Some("verify-full"));
        assert_eq!(ci.get("sslrootcert"), Some("/ca.pem"));
        assert_eq!(ci.addr(), "sk1:5454");
    }
}
