//! Where a program runs in a fleet (`docs/fleet.md`): on a named node or on nodes whose labels
//! match, on how many distinct nodes (`spread`), and whether it moves when its node dies. A
//! single daemon without a fleet ignores all of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `placement`, `spread` and `movable` of a program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `placement = { node = "x" }`: only node `x`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `placement = { labels = { role = "web" } }`: nodes having every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// On this many distinct matching nodes (at least 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub spread: u32,
    /// Moved to another matching node when its node's lease expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub movable: bool,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl super::Usual for Placement {
    /// Anywhere.
    fn usual() -> &'static Placement {
        static ANYWHERE: Placement = Placement {
            node: None,
            labels: BTreeMap::new(),
            spread: 1,
            movable: false,
        };
        &ANYWHERE
    }
}

impl Placement {
    /// Anywhere, once, not moved.
    pub fn anywhere() -> Placement {
        Placement {
            spread: 1,
            ..Placement::default()
        }
    }

    pub fn is_anywhere(&self) -> bool {
        *self == Placement::anywhere()
    }

    /// Whether a node of this name and these labels may run the program.
    pub fn matches(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_by_name_and_by_every_label() {
        let labels: BTreeMap<String, String> =
            [("role".into(), "web".into()), ("zone".into(), "a".into())].into();
        let by_name = Placement {
            node: Some("n1".into()),
            ..Placement::anywhere()
        };
        assert!(by_name.matches("n1", &BTreeMap::new()));
        assert!(!by_name.matches("n2", &labels));
        let by_label = Placement {
            labels: [("role".into(), "web".into())].into(),
            ..Placement::anywhere()
        };
        assert!(by_label.matches("n2", &labels));
        assert!(!by_label.matches("n2", &BTreeMap::new()));
        assert!(Placement::anywhere().matches("n3", &BTreeMap::new()));
    }

    #[test]
    fn anywhere_is_left_out_of_the_json() {
        let json = serde_json::to_string(&Placement::anywhere()).unwrap();
        assert_eq!(json, "{}");
        let back: Placement = serde_json::from_str("{}").unwrap();
        assert!(back.is_anywhere());
    }
}
