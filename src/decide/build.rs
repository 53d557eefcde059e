//! Building a decision model: each leaf's state from the cache, else its snapshot, else
//! its initial state; then one read of the union of the leaves' queries after the
//! oldest of their heads, applying each event to the leaves that have not scanned it
//! and whose query matches it.
//!
//! Exactness: a leaf's state folds every event matching its query up to its head. The
//! read returns every event of the union after the oldest head up to the read's head,
//! in position order (positions become visible in order), so each leaf gets exactly
//! the events it lacks, and all leaves end at the read's head — the model's head.

use std::sync::Arc;

use super::cache::{Entry, Key};
use super::projection::{union, AnyState, Leaf, Members, States};
use super::snapshots::SaveJob;
use super::{DecisionModel, Decisions};
use crate::error::Result;
use crate::metrics::{Record, Rejection, SnapshotOutcome};
use crate::model::{MatchView, Query, ReadOptions};
use crate::store::EventStore;
use crate::Projection;

/// One leaf while its model is built.
struct Slot<'a> {
    leaf: &'a dyn Leaf,
    key: Key,
    query: Query,
    head: Option<u64>,
    state: AnyState,
    /// Events applied since the state was last loaded from or saved as a snapshot.
    unsaved: u64,
    from_snapshot: bool,
    applied: u64,
    /// Whether the cache already holds this very state.
    cached: bool,
}

impl Slot<'_> {
    fn reset(&mut self) {
        self.head = None;
        self.state = self.leaf.initial();
        self.unsaved = 0;
        self.from_snapshot = false;
        self.cached = false;
    }
}

pub(crate) async fn build<P: Projection>(
    store: &EventStore,
    decisions: &Decisions,
    projection: &P,
) -> Result<DecisionModel<P::State>> {
    let leaves = Members::of(projection);
    let (mut hits, mut misses) = (0u32, 0u32);
    let mut slots = Vec::with_capacity(leaves.len());
    for leaf in leaves {
        let key = Key::of(leaf);
        let cached = decisions.cache.get(&key).and_then(|entry| {
            let state = leaf.clone_state(&*entry.state)?;
            Some((entry, state))
        });
        let slot = match cached {
            Some((entry, state)) => {
                hits += 1;
                Slot {
                    leaf,
                    query: leaf.query(),
                    key,
                    head: entry.head,
                    state,
                    unsaved: entry.unsaved,
                    from_snapshot: false,
                    applied: 0,
                    cached: true,
                }
            }
            None => {
                misses += 1;
                let snapshot = match decisions.snapshots.load(leaf, &key).await {
                    Ok(found) => found,
                    Err(error) => {
                        // Reading from the start is always exact; the read below meets a
                        // real database problem again and reports it.
                        tracing::warn!(projection = leaf.name(), %error, "snapshot not loaded");
                        None
                    }
                };
                let from_snapshot = snapshot.is_some();
                let (head, state) = match snapshot {
                    Some((position, state)) => (Some(position), state),
                    None => (None, leaf.initial()),
                };
                Slot {
                    leaf,
                    query: leaf.query(),
                    key,
                    head,
                    state,
                    unsaved: 0,
                    from_snapshot,
                    applied: 0,
                    cached: false,
                }
            }
        };
        slots.push(slot);
    }
    let query = union(slots.iter().map(|s| s.query.clone()));
    let head = catch_up(store, &query, &mut slots).await?;
    let mut applied = 0u64;
    for slot in &mut slots {
        applied += slot.applied;
        slot.head = head;
        slot.unsaved += slot.applied;
        remember(decisions, slot);
    }
    store.record_internal(Record::Decision {
        hits,
        misses,
        applied: u32::try_from(applied).unwrap_or(u32::MAX),
    });
    let mut states = States {
        states: slots
            .into_iter()
            .map(|s| s.state)
            .collect::<Vec<_>>()
            .into_iter(),
    };
    Ok(DecisionModel {
        state: projection.__assemble(&mut states),
        head,
        query,
        applied,
    })
}

/// Reads the union after the oldest head, page by page, applying each event to the
/// slots that lack it; returns the head all slots are then at. A slot whose head is
/// beyond the store's (a snapshot from a database since restored to an earlier point)
/// is never trusted: it starts over from its initial state.
async fn catch_up(
    store: &EventStore,
    query: &Query,
    slots: &mut [Slot<'_>],
) -> Result<Option<u64>> {
    let page = store.config().read_page_size() as u64;
    // With one slot, the read returns exactly its query's events.
    let single = slots.len() == 1;
    loop {
        let mut after = slots.iter().map(|s| s.head).min().flatten();
        let head = loop {
            let mut options = ReadOptions::default().limit(page);
            if let Some(after) = after {
                options = options.after(after);
            }
            let read = store.read(query, options).await?;
            for event in &read.events {
                let view = MatchView::new(&event.event);
                for slot in slots.iter_mut() {
                    let lacks = slot.head.is_none_or(|h| event.position > h);
                    if lacks && (single || slot.query.matches_view(&view)) {
                        slot.leaf.apply(&mut slot.state, event);
                        slot.applied += 1;
                    }
                }
            }
            if (read.events.len() as u64) < page {
                break read.head;
            }
            after = read.head;
        };
        let mut ahead = false;
        for slot in slots.iter_mut() {
            if slot.head > head {
                if slot.from_snapshot {
                    store.record_internal(Record::Snapshot(SnapshotOutcome::Rejected(
                        Rejection::Ahead,
                    )));
                }
                slot.reset();
                ahead = true;
            } else {
                // Everything up to `head` is in; later pages start after it.
                slot.head = head;
            }
        }
        if !ahead {
            return Ok(head);
        }
    }
}

/// Puts a slot's state in the cache (unless it is already there as it is) and asks
/// for a snapshot when enough events were folded since the last one.
fn remember(decisions: &Decisions, slot: &mut Slot<'_>) {
    if slot.cached && slot.applied == 0 {
        return;
    }
    let Some(state) = slot.leaf.clone_state(&*slot.state) else {
        return;
    };
    let state: Arc<dyn std::any::Any + Send + Sync> = Arc::from(state);
    let mut unsaved = slot.unsaved;
    if let Some(position) = slot.head {
        if decisions.snapshot_after > 0 && unsaved >= decisions.snapshot_after {
            decisions.save_later(SaveJob {
                key: slot.key.clone(),
                position,
                state: state.clone(),
                serializer: slot.leaf.serializer(),
            });
            unsaved = 0;
        }
    }
    decisions.cache.put(
        slot.key.clone(),
        Entry {
            head: slot.head,
            state,
            unsaved,
        },
    );
}
