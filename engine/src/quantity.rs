//! Quantities in manifests: counts (`20M`, `94B`, `1_000`) and memory sizes (`24GiB`, `512MiB`).
//! Stage kinds use these types in their `Params` so every kind reads them the same way; they
//! serialize back to plain integers, so the cache key does not depend on the spelling.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A count such as a token budget: an integer, or a string with an optional `_` separator and a
/// decimal suffix K (1e3), M (1e6), B or G (1e9), T (1e12). `2.5M` is allowed when it is whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Count(pub u64);

/// A memory size in bytes: an integer, or a string with a binary (KiB, MiB, GiB, TiB) or
/// decimal (KB, MB, GB, TB) unit, or B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Count {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Bytes {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Parses `number[suffix]` where the suffix table maps a unit to its multiplier.
fn parse_scaled(text: &str, units: &[(&str, f64)], what: &str) -> Result<u64, String> {
    let cleaned: String = text.trim().chars().filter(|c| *c != '_').collect();
    let split = cleaned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(cleaned.len());
    let (number, unit) = cleaned.split_at(split);
    let unit = unit.trim();
    let multiplier = if unit.is_empty() {
        1.0
    } else {
        units
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(unit))
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let known: Vec<&str> = units.iter().map(|(n, _)| *n).collect();
                format!(
                    "`{text}` is not a valid {what}: unknown unit `{unit}` (expected one of {})",
                    known.join(", ")
                )
            })?
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a valid {what}"))?;
    let scaled = value * multiplier;
    if !scaled.is_finite() || scaled < 0.0 || scaled > u64::MAX as f64 || scaled.fract() != 0.0 {
        return Err(format!(
            "`{text}` is not a valid {what}: it must be a whole, non-negative number"
        ));
    }
    Ok(scaled as u64)
}

const COUNT_UNITS: &[(&str, f64)] = &[("K", 1e3), ("M", 1e6), ("B", 1e9), ("G", 1e9), ("T", 1e12)];
const BYTE_UNITS: &[(&str, f64)] = &[
    ("B", 1.0),
    ("KiB", 1024.0),
    ("MiB", 1048576.0),
    ("GiB", 1073741824.0),
    ("TiB", 1099511627776.0),
    ("KB", 1e3),
    ("MB", 1e6),
    ("GB", 1e9),
    ("TB", 1e12),
];

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_scaled(s, COUNT_UNITS, "count").map(Count)
    }
}

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_scaled(s, BYTE_UNITS, "memory size").map(Bytes)
    }
}

impl fmt::Display for Bytes {
    /// Human form with a binary unit, e.g. `80.0 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let (value, unit) = if b >= 1099511627776.0 {
            (b / 1099511627776.0, "TiB")
        } else if b >= 1073741824.0 {
            (b / 1073741824.0, "GiB")
        } else if b >= 1048576.0 {
            (b / 1048576.0, "MiB")
        } else if b >= 1024.0 {
            (b / 1024.0, "KiB")
        } else {
            return write!(f, "{} B", self.0);
        };
        write!(f, "{value:.1} {unit}")
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

struct ScaledVisitor<T>(std::marker::PhantomData<T>, &'static str);

impl<'de, T: std::str::FromStr<Err = String> + From<u64>> Visitor<'de> for ScaledVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} (an integer or a string such as {})",
            self.1,
            if self.1 == "count" {
                "`20M`"
            } else {
                "`24GiB`"
            }
        )
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map(T::from)
            .map_err(|_| E::custom(format!("`{v}` is not a valid {}: it is negative", self.1)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64 {
            Ok(T::from(v as u64))
        } else {
            Err(E::custom(format!(
                "`{v}` is not a valid {}: it must be a whole, non-negative number",
                self.1
            )))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

impl From<u64> for Count {
    fn from(v: u64) -> Self {
        Count(v)
    }
}

impl From<u64> for Bytes {
    fn from(v: u64) -> Self {
        Bytes(v)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScaledVisitor(std::marker::PhantomData, "count"))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScaledVisitor(std::marker::PhantomData, "memory size"))
    }
}

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_accept_suffixes_and_separators() {
        assert_eq!("20M".parse::<Count>().unwrap(), Count(20_000_000));
        assert_eq!("94B".parse::<Count>().unwrap(), Count(94_000_000_000));
        assert_eq!("1_000".parse::<Count>().unwrap(), Count(1000));
        assert_eq!("2.5K".parse::<Count>().unwrap(), Count(2500));
        assert!("2.5".parse::<Count>().is_err());
        assert!("12Q"
            .parse::<Count>()
            .unwrap_err()
            .contains("unknown unit `Q`"));
    }

    #[test]
    fn memory_sizes_accept_binary_and_decimal_units() {
        assert_eq!("24GiB".parse::<Bytes>().unwrap(), Bytes(24 << 30));
        assert_eq!("512MiB".parse::<Bytes>().unwrap(), Bytes(512 << 20));
        assert_eq!("1GB".parse::<Bytes>().unwrap(), Bytes(1_000_000_000));
        assert_eq!(Bytes(80 << 30).to_string(), "80.0 GiB");
    }

    #[test]
    fn yaml_values_decode_from_numbers_and_strings() {
        let c: Count = crate::yaml::from_str("20M").unwrap();
        assert_eq!(c, Count(20_000_000));
        let c: Count = crate::yaml::from_str("1000").unwrap();
        assert_eq!(c, Count(1000));
        let b: Bytes = crate::yaml::from_str("80GiB").unwrap();
        assert_eq!(b.0, 80 << 30);
        assert!(crate::yaml::from_str::<Count>("-3").is_err());
    }
}
