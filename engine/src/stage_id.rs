//! The name of one stage of the expanded pipeline (`prep`, `shrink.r1.score`): what the spec,
//! the plan, run events, the lock file and the run history call a stage. Validated where the
//! manifest is read ([`crate::manifest::valid_id`] per dotted part); a type of its own so a
//! stage's name cannot be confused with the other strings beside it (kinds, slots, digests).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageId(String);

impl StageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for StageId {
    fn from(s: String) -> Self {
        StageId(s)
    }
}

impl From<&str> for StageId {
    fn from(s: &str) -> Self {
        StageId(s.to_string())
    }
}

impl From<StageId> for String {
    fn from(id: StageId) -> Self {
        id.0
    }
}

impl Deref for StageId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Maps keyed by `StageId` are looked up with a plain `&str` (a name from the command line).
impl Borrow<str> for StageId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for StageId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StageId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for StageId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_stage_id_reads_and_writes_as_its_name() {
        let id = StageId::from("shrink.r1.score");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"shrink.r1.score\"");
        assert_eq!(format!("[{id:>16}]"), "[ shrink.r1.score]");
        let map = BTreeMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("shrink.r1.score"), Some(&1));
        let back: StageId = serde_json::from_str("\"shrink.r1.score\"").unwrap();
        assert_eq!(back, id);
    }
}
