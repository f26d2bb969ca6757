//! PostgreSQL timestamps (`TimestampTz`): i64 microseconds since 2000-01-01 00:00 UTC, as
//! carried by the replication messages.
//!
//! Owns: conversion between them and [`SystemTime`]. Must never: panic on a timestamp a
//! peer sent (every value converts; out-of-range ones saturate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 00:00 UTC).
pub const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

fn pg_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS)
}

/// The current time as a PostgreSQL timestamp.
pub fn pg_timestamp_now() -> i64 {
    system_time_to_pg_timestamp(SystemTime::now())
}

/// `t` as a PostgreSQL timestamp (saturating at the i64 range).
pub fn system_time_to_pg_timestamp(t: SystemTime) -> i64 {
    match t.duration_since(pg_epoch()) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// A PostgreSQL timestamp as a [`SystemTime`]. Values the platform cannot represent map
/// to the PostgreSQL epoch itself (they cannot come from a sane clock).
pub fn pg_timestamp_to_system_time(ts: i64) -> SystemTime {
    let offset = Duration::from_micros(ts.unsigned_abs());
    let t = if ts >= 0 {
        pg_epoch().checked_add(offset)
    } else {
        pg_epoch().checked_sub(offset)
    };
    t.unwrap_or_else(pg_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_and_round_trip() {
        assert_eq!(pg_timestamp_to_system_time(0), pg_epoch());
        assert_eq!(system_time_to_pg_timestamp(pg_epoch()), 0);
        assert_eq!(
            system_time_to_pg_timestamp(UNIX_EPOCH),
            -946_684_800_000_000
        );
        let now = pg_timestamp_now();
        // Sometime after 2024 in PostgreSQL time.
        assert!(now > 24 * 365 * 86_400 * 1_000_000);
        assert_eq!(
            system_time_to_pg_timestamp(pg_timestamp_to_system_time(now)),
            now
        );
        // Extremes neither panic nor wrap.
        let _ = pg_timestamp_to_system_time(i64::MIN);
        let _ = pg_timestamp_to_system_time(i64::MAX);
    }
}
