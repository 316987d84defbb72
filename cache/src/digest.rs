//! Names: every object, artifact and run record in the cache is named by a blake3 digest,
//! written with its algorithm (`blake3:<64 hex>`) so a future algorithm can sit beside it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// The algorithm prefix of every stored digest.
pub const ALGORITHM: &str = "blake3";

/// A blake3 digest (32 bytes). Prints and parses as `blake3:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm prefix (used in file names).
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits without the prefix (file names in the store).
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        let bad = |reason| Error::BadDigest {
            text: hex.to_string(),
            reason,
        };
        if hex.len() != 64 {
            return Err(bad("not 64 hex digits long"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("not lowercase hex"));
        }
        blake3::Hash::from_hex(hex)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| bad("not lowercase hex"))
    }

    /// The short form people read (`blake3:` and the first 12 hex digits): the one place a
    /// digest is shortened for display.
    pub fn short(&self) -> String {
        format!("{ALGORITHM}:{}", &self.to_hex()[..12])
    }

    pub(crate) fn from_hash(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{}", self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(Error::BadDigest {
                text: s.to_string(),
                reason: "no `algorithm:` prefix",
            });
        };
        if algo != ALGORITHM {
            return Err(Error::BadDigest {
                text: s.to_string(),
                reason: "unknown algorithm",
            });
        }
        Digest::from_hex(hex).map_err(|e| match e {
            Error::BadDigest { reason, .. } => Error::BadDigest {
                text: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! named_digest {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Digest);

        impl $name {
            /// The underlying digest.
            pub fn digest(&self) -> Digest {
                self.0
            }

            /// The short display form ([`Digest::short`]).
            pub fn short(&self) -> String {
                self.0.short()
            }
        }

        impl From<Digest> for $name {
            fn from(d: Digest) -> Self {
                $name(d)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                s.parse().map($name)
            }
        }
    };
}

named_digest!(
    /// The name of a committed artifact: the digest of its canonical manifest (sorted relative
    /// paths, sizes, executable bits and content digests). Identical folders get identical ids.
    ArtifactId
);

named_digest!(
    /// The key of a stage run: the digest of the stage's canonical fingerprint (built by the
    /// engine). Run records and per-key locks are found by it.
    CacheKey
);

impl CacheKey {
    /// The key of canonical fingerprint bytes.
    pub fn of(bytes: &[u8]) -> Self {
        CacheKey(Digest::of(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let d = Digest::of(b"abc");
        let text = d.to_string();
        // blake3("abc") from the reference test vectors.
        assert_eq!(
            text,
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(text.parse::<Digest>().unwrap(), d);
        let key: CacheKey = text.parse().unwrap();
        assert_eq!(key, CacheKey::of(b"abc"));
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{text}\""));
        let back: ArtifactId = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(back.digest(), d);
    }

    #[test]
    fn bad_digests_are_rejected_with_the_text() {
        for (text, needle) in [
            ("md5:abcd", "unknown algorithm"),
            ("6437b3ac", "no `algorithm:` prefix"),
            ("blake3:6437", "not 64 hex"),
            (
                "blake3:6437B3AC38465133FFB63B75273A8DB548C558465D79DB03FD359C6CD5BD9D85",
                "lowercase",
            ),
        ] {
            let err = text.parse::<Digest>().unwrap_err().to_string();
            assert!(err.contains(text) && err.contains(needle), "{err}");
        }
        let err = serde_json::from_str::<CacheKey>("\"blake3:zz\"").unwrap_err();
        assert!(err.to_string().contains("blake3:zz"), "{err}");
    }

    #[test]
    fn digests_order_by_bytes() {
        let a = Digest::from_bytes([0; 32]);
        let mut high = [0; 32];
        high[0] = 1;
        assert!(a < Digest::from_bytes(high));
    }
}
