//! Timestamps of run records, stored as RFC 3339 UTC text (`2026-01-31T12:00:00.000Z`) so
//! records and lock files stay readable; millisecond precision, no time-zone database needed.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// A UTC instant with millisecond precision.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_ms: i64,
}

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// From a `SystemTime` (truncated to milliseconds).
    pub fn from_system_time(t: SystemTime) -> Self {
        let unix_ms = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        Timestamp { unix_ms }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        self.unix_ms
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(unix_ms: i64) -> Self {
        Timestamp { unix_ms }
    }

    /// As a `SystemTime`.
    pub fn to_system_time(&self) -> SystemTime {
        if self.unix_ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.unix_ms as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.unix_ms.unsigned_abs())
        }
    }
}

// Howard Hinnant's days <-> civil date algorithms (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.unix_ms.rem_euclid(1000);
        let secs = self.unix_ms.div_euclid(1000);
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Timestamp {
    type Err = Error;
    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC only, as written by `Display`).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadTimestamp {
            text: s.to_string(),
        };
        let body = s.strip_suffix('Z').ok_or_else(bad)?;
        let (date, time) = body.split_once('T').ok_or_else(bad)?;
        let num = |t: &str, len: usize| -> Result<i64, Error> {
            if t.len() != len || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<i64>().map_err(|_| bad())
        };
        let dp: Vec<&str> = date.split('-').collect();
        let [y, mo, d] = dp.as_slice() else {
            return Err(bad());
        };
        let (y, mo, d) = (num(y, 4)?, num(mo, 2)?, num(d, 2)?);
        let (hms, frac) = match time.split_once('.') {
            Some((hms, frac)) => (hms, Some(frac)),
            None => (time, None),
        };
        let tp: Vec<&str> = hms.split(':').collect();
        let [h, mi, sec] = tp.as_slice() else {
            return Err(bad());
        };
        let (h, mi, sec) = (num(h, 2)?, num(mi, 2)?, num(sec, 2)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return Err(bad());
        }
        let ms = match frac {
            None => 0,
            Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
                // Keep the first three digits (milliseconds), padding short fractions.
                let mut padded = f.to_string();
                while padded.len() < 3 {
                    padded.push('0');
                }
                padded[..3].parse::<i64>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        let days = days_from_civil(y, mo as u32, d as u32);
        // Reject dates like 02-31 that the arithmetic would silently roll over.
        if civil_from_days(days) != (y, mo as u32, d as u32) {
            return Err(bad());
        }
        let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
        Ok(Timestamp {
            unix_ms: secs * 1000 + ms,
        })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(
            Timestamp::from_unix_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2000-02-29T12:34:56.789Z, a leap day.
        assert_eq!(
            Timestamp::from_unix_millis(951_827_696_789).to_string(),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parses_what_it_prints() {
        for ms in [0, 951_827_696_789, -1, 1_800_000_000_123, 4_102_444_800_000] {
            let t = Timestamp::from_unix_millis(ms);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        }
        assert_eq!(
            "2000-02-29T12:34:56Z"
                .parse::<Timestamp>()
                .unwrap()
                .unix_millis(),
            951_827_696_000
        );
        assert_eq!(
            "2000-02-29T12:34:56.7Z"
                .parse::<Timestamp>()
                .unwrap()
                .unix_millis(),
            951_827_696_700
        );
    }

    #[test]
    fn rejects_bad_text_naming_it() {
        for text in [
            "2000-02-30T00:00:00Z",
            "2000-13-01T00:00:00Z",
            "2000-01-01 00:00:00",
            "yesterday",
        ] {
            let err = text.parse::<Timestamp>().unwrap_err().to_string();
            assert!(err.contains(text), "{err}");
        }
    }
}
