//! Building a decision model: each leaf's state from the cache, else its snapshot, else
//! its initial state; leaves behind the newest head read their own queries up to it;
//! then one read of the union of the leaves' queries after that head, applying each
//! event to the leaves whose query matches it.
//!
//! Exactness: a leaf's state folds every event matching its query up to its head. Each
//! read returns every event of its query after a leaf's head, in position order
//! (positions become visible in order), and applies it only to leaves that have not
//! scanned it, so each leaf gets exactly the events it lacks, and all leaves end at the
//! last read's head — the model's head.

use std::sync::Arc;

use super::cache::{Entry, Key};
use super::projection::{union, AnyState, Leaf, Members, States};
use super::snapshots::Rejection;
use super::snapshots::SaveJob;
use super::{DecisionModel, Decisions};
use crate::engine::Engine;
use crate::error::Result;
use crate::metrics::Record;
use crate::model::{Consistency, MatchView, Query, ReadOptions};
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
    /// The head at which the cache holds this very state, when it came from there.
    cached_at: Option<Option<u64>>,
}

impl Slot<'_> {
    /// Starts over from the initial state: what was folded so far is not trusted.
    fn reset(&mut self, store: &Engine) {
        if self.from_snapshot {
            store.record(Rejection::Position.record());
        }
        self.head = None;
        self.state = self.leaf.initial();
        self.unsaved = 0;
        self.applied = 0;
        self.from_snapshot = false;
        self.cached_at = None;
    }
}

pub(crate) async fn build<P: Projection>(
    store: &Engine,
    decisions: &Decisions,
    projection: &P,
    consistency: Consistency,
) -> Result<DecisionModel<P::State>> {
    let leaves = Members::of(projection);
    let queries: Vec<Query> = leaves.iter().map(|leaf| leaf.query()).collect();
    let keys: Vec<Key> = leaves
        .iter()
        .zip(&queries)
        .map(|(leaf, query)| Key::with_query(*leaf, query))
        .collect();
    let cached: Vec<Option<(Entry, AnyState)>> = leaves
        .iter()
        .zip(&keys)
        .map(|(leaf, key)| {
            let entry = decisions.cache.get(key)?;
            let state = leaf.clone_state(&*entry.state)?;
            Some((entry, state))
        })
        .collect();
    let misses: Vec<(&dyn Leaf, &Key)> = leaves
        .iter()
        .zip(&keys)
        .zip(&cached)
        .filter(|(_, hit)| hit.is_none())
        .map(|((leaf, key), _)| (*leaf, key))
        .collect();
    let mut snapshots = if misses.is_empty() {
        Vec::new()
    } else {
        match decisions.snapshots.load_for_misses(&misses).await {
            Ok(found) => found,
            Err(error) => {
                // Reading from the start is always exact; the read below meets a real
                // database problem again and reports it.
                tracing::warn!(error = %crate::error::Chain(&error), "snapshots not loaded");
                misses.iter().map(|_| None).collect()
            }
        }
    }
    .into_iter();
    let (hits, misses) = (cached.len() - misses.len(), misses.len());
    let mut slots = Vec::with_capacity(leaves.len());
    for (((leaf, query), key), cached) in leaves.into_iter().zip(queries).zip(keys).zip(cached) {
        let (head, state, unsaved, from_snapshot, cached_at) = match cached {
            Some((entry, state)) => (entry.head, state, entry.unsaved, false, Some(entry.head)),
            None => match snapshots.next().flatten() {
                Some((position, state)) => (Some(position), state, 0, true, None),
                None => (None, leaf.initial(), 0, false, None),
            },
        };
        slots.push(Slot {
            leaf,
            key,
            query,
            head,
            state,
            unsaved,
            from_snapshot,
            applied: 0,
            cached_at,
        });
    }
    let query = union(slots.iter().map(|s| s.query.clone()));
    let head = catch_up(store, &query, &mut slots, consistency).await?;
    let mut applied = 0u64;
    // `catch_up` left every slot at `head`.
    for slot in &mut slots {
        applied += slot.applied;
        slot.unsaved += slot.applied;
        remember(decisions, slot);
    }
    store.record(Record::Decision {
        hits: hits as u32,
        misses: misses as u32,
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

/// Brings every slot to one head and returns it. Slots behind the newest head (a
/// member missing from the cache next to cached ones) first read only their own
/// queries up to it, so a miss never re-reads what the cached members hold; then one
/// read of the union after that head serves all members. A slot whose head is beyond
/// the store's (a snapshot from a database since restored to an earlier point) is
/// never trusted: it starts over from its initial state.
///
/// Reads that may go to a replica ask for one that has every slot's head, so a lagging
/// replica never looks like a store behind the states (the primary answers when no
/// replica has it).
async fn catch_up(
    store: &Engine,
    query: &Query,
    slots: &mut [Slot<'_>],
    mut consistency: Consistency,
) -> Result<Option<u64>> {
    let everyone: Vec<usize> = (0..slots.len()).collect();
    'again: loop {
        let newest = slots.iter().map(|s| s.head).max().flatten();
        consistency = consistency.at_least(newest);
        if let Some(newest) = newest {
            let mut behind: Vec<Option<u64>> = slots
                .iter()
                .map(|s| s.head)
                .filter(|h| *h < Some(newest))
                .collect();
            behind.sort_unstable();
            behind.dedup();
            for from in behind {
                let members: Vec<usize> = everyone
                    .iter()
                    .copied()
                    .filter(|&i| slots[i].head == from)
                    .collect();
                let group = union(members.iter().map(|&i| slots[i].query.clone()));
                let until = Some(newest);
                let head = fold(
                    store,
                    &group,
                    slots,
                    &members,
                    from,
                    until,
                    &mut consistency,
                )
                .await?;
                if head < from {
                    // The store is behind these members' own heads.
                    for &i in &members {
                        slots[i].reset(store);
                    }
                    continue 'again;
                }
                for &i in &members {
                    slots[i].head = head;
                }
            }
        }
        let from = slots.iter().map(|s| s.head).min().flatten();
        let head = fold(store, query, slots, &everyone, from, None, &mut consistency).await?;
        let mut ahead = false;
        for slot in slots.iter_mut() {
            if slot.head > head {
                slot.reset(store);
                ahead = true;
            } else {
                slot.head = head;
            }
        }
        if !ahead {
            return Ok(head);
        }
    }
}

/// Reads `query` (the union of the `members`' queries) after `after` and up to
/// `until`, page by page, applying each event to the members that have not scanned
/// it and whose query matches it; returns the read's head. `consistency` moves on with
/// the pages: at least the head read so far, or the primary once it had to serve.
async fn fold(
    store: &Engine,
    query: &Query,
    slots: &mut [Slot<'_>],
    members: &[usize],
    mut after: Option<u64>,
    until: Option<u64>,
    consistency: &mut Consistency,
) -> Result<Option<u64>> {
    let page = store.config().read_page_size() as u64;
    // With one member, the read returns exactly its query's events.
    let exact = members.len() == 1;
    loop {
        let mut options = ReadOptions::default().limit(page).consistency(*consistency);
        if let Some(after) = after {
            options = options.after(after);
        }
        if let Some(until) = until {
            options = options.before(until.saturating_add(1));
        }
        let (read, server) = store.read_served(query, options).await?;
        *consistency = server.next_read(*consistency, read.head);
        for event in &read.events {
            let view = MatchView::new(&event.event);
            for &i in members {
                let slot = &mut slots[i];
                let lacks = slot.head.is_none_or(|h| event.position > h);
                if lacks && (exact || slot.query.matches_view(&view)) {
                    slot.leaf.apply(&mut slot.state, event);
                    slot.applied += 1;
                }
            }
        }
        if (read.events.len() as u64) < page {
            return Ok(read.head);
        }
        after = read.head;
    }
}

/// Puts a slot's state in the cache (unless it is already there as it is) and asks
/// for a snapshot when enough events were folded since the last one.
fn remember(decisions: &Decisions, slot: &Slot<'_>) {
    // Unchanged: nothing to store. A leaf that only moved its head is stored again, so
    // that it does not stay behind the other members of its tuples.
    if slot.applied == 0 && slot.cached_at == Some(slot.head) {
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
