//! The one time type: milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// A point in time, in milliseconds since the Unix epoch (UTC). Serialised as the bare number
/// (in index records, history rows and the admin API's JSON alike).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMs(pub u64);

impl UnixMs {
    /// Now (0 if the clock is before 1970).
    #[must_use]
    pub fn now() -> UnixMs {
        UnixMs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Whole seconds since the epoch.
    #[must_use]
    pub fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    #[must_use]
    pub fn since(self, earlier: UnixMs) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// RFC 3339 (UTC), for humans reading JSON or tables.
    #[must_use]
    pub fn rfc3339(self) -> Option<String> {
        let t =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000).ok()?;
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }
}

impl std::fmt::Display for UnixMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_bare_number() {
        assert_eq!(serde_json::to_string(&UnixMs(5)).unwrap(), "5");
        assert_eq!(serde_json::from_str::<UnixMs>("7").unwrap(), UnixMs(7));
        assert_eq!(
            UnixMs(1_700_000_000_000).rfc3339().as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(UnixMs(10).since(UnixMs(4)), 6);
        assert_eq!(UnixMs(4).since(UnixMs(10)), 0);
        assert!(UnixMs::now() > UnixMs(1_700_000_000_000));
    }
}
