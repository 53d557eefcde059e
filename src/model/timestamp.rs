//! What a timestamp looks like once stored: PostgreSQL keeps microseconds, from
//! 4714-11-24 BC (UTC) on. Events and query bounds are normalised here, when they are
//! built, so the in-memory matcher compares exactly the values the database compares.

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::{Error, Result};

/// An event's `occurred_at` as stored: truncated to whole microseconds.
pub(crate) fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    // `timestamp_micros` floors (leap-second nanoseconds roll into the next second).
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// A query bound as compared: rounded *up* to whole microseconds. Stored times are
/// whole microseconds, so `t >= from` and `t < until` select exactly the events the
/// caller's finer bound selects.
pub(crate) fn bound(at: DateTime<Utc>) -> DateTime<Utc> {
    let floor = stored(at);
    if floor == at {
        return at;
    }
    floor
        .checked_add_signed(chrono::TimeDelta::microseconds(1))
        .unwrap_or(floor)
}

/// The earliest instant PostgreSQL's `timestamptz` can hold: 4714-11-24 00:00 BC, UTC
/// (year -4713 in the proleptic Gregorian calendar chrono uses). The latest, in year
/// 294276, is beyond what chrono can represent.
fn earliest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(-4713, 11, 24)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Refuses a timestamp PostgreSQL cannot store.
pub(crate) fn check_range(at: DateTime<Utc>, what: &str) -> Result<()> {
    if at < earliest() {
        return Err(Error::invalid(format!(
            "{what} {at} is before 4714-11-24 BC, the earliest time PostgreSQL can store"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn stored_times_floor_and_bounds_round_up_to_microseconds() {
        let t = at("2024-05-01T10:00:00.123456789Z");
        assert_eq!(stored(t), at("2024-05-01T10:00:00.123456Z"));
        assert_eq!(bound(t), at("2024-05-01T10:00:00.123457Z"));
        let whole = at("2024-05-01T10:00:00.123456Z");
        assert_eq!((stored(whole), bound(whole)), (whole, whole));
        let old = at("1900-01-01T00:00:00.000000999Z");
        assert_eq!(stored(old), at("1900-01-01T00:00:00Z"));
        assert_eq!(bound(old), at("1900-01-01T00:00:00.000001Z"));
    }

    #[test]
    fn the_range_starts_where_postgresql_starts() {
        assert!(check_range(earliest(), "t").is_ok());
        let before = earliest() - chrono::TimeDelta::microseconds(1);
        assert!(check_range(before, "t").is_err());
        assert!(check_range(DateTime::<Utc>::MAX_UTC, "t").is_ok());
    }
}
