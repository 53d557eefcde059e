//! The in-memory cache of projection states: bounded, least recently used first out.
//!
//! An entry is a leaf projection's state folded up to `head`: every event matching its
//! query at positions `<= head`, and no other. Events never change and positions are
//! never reused, so an entry stays exact forever; building a model only reads what
//! came after it. An entry is only replaced by one that has scanned further.

use std::any::{Any, TypeId};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::projection::Leaf;
use crate::model::Query;

/// What identifies a state: the projection's name, version and type (two types that
/// share a name by mistake never see each other's states), and its query's canonical
/// text (equivalent queries share an entry; different parameters never do).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub name: &'static str,
    pub version: u32,
    pub projection: TypeId,
    pub canonical: Arc<str>,
}

impl Key {
    pub(crate) fn of(leaf: &dyn Leaf) -> Self {
        Self::with_query(leaf, &leaf.query())
    }

    /// The key of `leaf`, whose query is `query` (for callers that need it too).
    pub(crate) fn with_query(leaf: &dyn Leaf, query: &Query) -> Self {
        Key {
            name: leaf.name(),
            version: leaf.version(),
            projection: leaf.projection_type(),
            canonical: query.canonical().into(),
        }
    }
}

/// A cached state.
#[derive(Clone)]
pub(crate) struct Entry {
    /// How far the state has scanned (`None`: nothing yet, the empty store).
    pub head: Option<u64>,
    pub state: Arc<dyn Any + Send + Sync>,
    /// Events folded in since the state was last loaded from or saved as a snapshot.
    pub unsaved: u64,
}

/// The cache; `None` inside when it is turned off (capacity 0).
pub(crate) struct StateCache {
    entries: Option<Mutex<LruCache<Key, Entry>>>,
}

impl StateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<Entry> {
        let entries = self.entries.as_ref()?;
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).cloned()
    }

    /// Keeps `entry` unless the cache holds a state that has scanned further.
    pub(crate) fn put(&self, key: Key, entry: Entry) {
        let Some(entries) = self.entries.as_ref() else {
            return;
        };
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.peek(&key).is_some_and(|old| old.head > entry.head) {
            return;
        }
        entries.put(key, entry);
    }
}
