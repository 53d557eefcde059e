//! The probe plan: which index finds a query item's events, decided by one rule
//! ([`ItemParts::access`]) in a fixed order of preference: the item's first tag; else
//! its declared-key pair, while that key is ready; else its `occurred_at` range when
//! it has both ends; else its types; else a scan of positions.
//!
//! Three places follow it: shaped read statements choose their arm from it
//! (`read::item_arm`), conditions and many-item reads render it as SQL guards on an
//! item row, of which exactly one holds ([`guard`], since only the statement knows
//! whether a key is ready), and the append statement's shape keeps only the probes it
//! allows ([`Probes::of`]). An integration test evaluates every guard on the server for
//! every combination of parts and compares it with the rule.

use crate::model::QueryItem;

/// An index through which an item's events are found, in the order of preference.
/// Its discriminant is its place in that order (and its bit in [`Probes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Access {
    /// `(tag, position)`, for the item's first tag.
    Tag = 0,
    /// `(source, key, value, position)` in `event_keys`, for its declared-key pair.
    Key = 1,
    /// `(occurred_at, position)`, for a range with both ends.
    Range = 2,
    /// `(event_type, position)`.
    Types = 3,
    /// The primary key: every position in the bounds.
    Scan = 4,
}

impl Access {
    /// Every access path, in [`Probes`]' bit order.
    pub(crate) const ALL: [Access; 5] = [
        Access::Tag,
        Access::Key,
        Access::Range,
        Access::Types,
        Access::Scan,
    ];
}

/// The parts of an item that decide its access path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ItemParts {
    pub tags: bool,
    /// A predicate on a declared key it could probe (`DeclaredKeys::probe`).
    pub key_pair: bool,
    /// An `occurred_at` range with both ends.
    pub bounded_range: bool,
    pub types: bool,
}

impl ItemParts {
    pub(crate) fn of(item: &QueryItem, key_pair: bool) -> Self {
        let (from, until) = item.occurred_range();
        ItemParts {
            tags: !item.tag_names().is_empty(),
            key_pair,
            bounded_range: from.is_some() && until.is_some(),
            types: !item.type_names().is_empty(),
        }
    }

    /// The rule: the access path of an item with these parts, `key_ready` saying
    /// whether its declared key has been backfilled.
    pub(crate) fn access(self, key_ready: bool) -> Access {
        if self.tags {
            Access::Tag
        } else if self.key_pair && key_ready {
            Access::Key
        } else if self.bounded_range {
            Access::Range
        } else if self.types {
            Access::Types
        } else {
            Access::Scan
        }
    }
}

/// The rule as a condition on an item row `ci` (columns `tags`, `keyed`,
/// `occurred_from`, `occurred_until`, `types`, as `item_rows` gives them, `keyed` being
/// "has a key pair and the key is ready"): true exactly when `access` is the row's.
pub(crate) fn guard(access: Access) -> String {
    let untagged = "cardinality(ci.tags) = 0 AND NOT ci.keyed";
    let ranged = "(ci.occurred_from IS NOT NULL AND ci.occurred_until IS NOT NULL)";
    match access {
        Access::Tag => "cardinality(ci.tags) > 0".to_owned(),
        Access::Key => "cardinality(ci.tags) = 0 AND ci.keyed".to_owned(),
        Access::Range => format!("{untagged} AND {ranged}"),
        Access::Types => format!("{untagged} AND NOT {ranged} AND cardinality(ci.types) > 0"),
        Access::Scan => format!("{untagged} AND NOT {ranged} AND cardinality(ci.types) = 0"),
    }
}

/// A set of access paths, as bits in [`Access::ALL`]'s order: the probes an item (or
/// a round of items) may run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Probes(u8);

impl Probes {
    /// What `item` may run: the rule's answer with the key ready and without (only
    /// the statement knows which holds).
    pub(crate) fn of(item: &QueryItem, key_pair: bool) -> Probes {
        let parts = ItemParts::of(item, key_pair);
        Probes::from(parts.access(true)).union(Probes::from(parts.access(false)))
    }

    pub(crate) fn union(self, other: Probes) -> Probes {
        Probes(self.0 | other.0)
    }

    /// Whether `access` is in the set.
    pub(crate) fn contains(self, access: Access) -> bool {
        self.0 & Probes::from(access).0 != 0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set as bits (bit `i`: `Access::ALL[i]`), for names that must tell sets apart.
    pub(crate) fn bits(self) -> u8 {
        self.0
    }
}

impl From<Access> for Probes {
    fn from(access: Access) -> Self {
        Probes(1 << access as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_access_path_is_its_place_in_the_order() {
        for (i, access) in Access::ALL.into_iter().enumerate() {
            assert_eq!(access as usize, i, "{access:?}");
            assert!(Probes::from(access).contains(access));
        }
    }

    #[test]
    fn a_tag_wins_and_a_ready_key_comes_next() {
        let parts = ItemParts {
            tags: false,
            key_pair: true,
            bounded_range: true,
            types: true,
        };
        assert_eq!(parts.access(true), Access::Key);
        assert_eq!(parts.access(false), Access::Range);
        let tagged = ItemParts {
            tags: true,
            ..parts
        };
        assert_eq!(tagged.access(true), Access::Tag);
    }
}
