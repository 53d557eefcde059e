//! Round planning: which appends of a batch may be decided by the same execution of
//! the append statement.
//!
//! Within one statement every condition sees only rows committed before it or
//! written by earlier rounds of the transaction. So an append whose condition could
//! match an event of an earlier append of the batch (or that shares an event id with
//! one) waits for a later round, where it sees them. The serial order of a batch is
//! then (round, arrival), and every decision is exact for it.
//!
//! Deferring is always safe: it ignores `after` and whether the earlier append will
//! pass, and costs one more statement in the same transaction, never correctness.
//! The planner bounds its own work: an append that would have to look at more than
//! [`MAX_VISITS_PER_APPEND`] earlier events ends the batch before it (it leads the
//! next batch, where nothing precedes it), so planning is linear in the batch size
//! whatever the conditions are; so does an append that would need more than
//! [`MAX_ROUNDS`] rounds. Each event's data is parsed at most once per batch, on
//! first use.

use std::collections::HashMap;

use uuid::Uuid;

use crate::model::{AppendCondition, Event, MatchView, Query};

/// Earlier events one append may look at to find its round; an append that would
/// need more starts the next batch instead.
pub(crate) const MAX_VISITS_PER_APPEND: usize = 256;

/// Rounds one batch may have: each is one more execution of the append statement
/// while the write lock is held, so an append that would need a later round leads
/// the next batch instead (appends that all conflict are then decided 64 a batch).
pub(crate) const MAX_ROUNDS: usize = 64;

/// One append as the planner sees it.
pub(crate) struct PlannedAppend<'a> {
    pub events: &'a [Event],
    pub condition: Option<&'a AppendCondition>,
    /// The consumer a tracked append moves: two of one consumer never share a round
    /// (each must see the checkpoint the other leaves, and one statement can move a
    /// row only once).
    pub tracking: Option<&'a str>,
}

impl<'a> PlannedAppend<'a> {
    /// An untracked append.
    pub(crate) fn new(events: &'a [Event], condition: Option<&'a AppendCondition>) -> Self {
        PlannedAppend {
            events,
            condition,
            tracking: None,
        }
    }
}

/// The rounds of the first `planned` appends of a batch; the rest wait for the next.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// Append indexes per round, each in arrival order.
    pub rounds: Vec<Vec<usize>>,
    /// How many appends, from the start of the batch, the rounds hold.
    pub planned: usize,
}

/// Splits a prefix of `batch` (at least one append) into rounds.
pub(crate) fn plan(batch: &[PlannedAppend<'_>]) -> Plan {
    let mut index = EventIndex::default();
    let mut round_of = Vec::with_capacity(batch.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    // The round of each consumer's latest tracked append.
    let mut tracked: HashMap<&str, usize> = HashMap::new();
    for (i, append) in batch.iter().enumerate() {
        let (events, condition) = (append.events, append.condition);
        let conflicts = match condition {
            Some(condition) => {
                index.round_after_conflicts(&condition.fail_if_events_match, &round_of)
            }
            None => Some(0),
        };
        let Some(mut round) = conflicts else {
            return Plan { rounds, planned: i };
        };
        for event in events.iter() {
            if let Some(&earlier) = index.ids.get(&event.id()) {
                round = round.max(round_of[earlier] + 1);
            }
        }
        if let Some(&earlier) = append.tracking.and_then(|c| tracked.get(c)) {
            round = round.max(earlier + 1);
        }
        if round >= MAX_ROUNDS {
            return Plan { rounds, planned: i };
        }
        if let Some(consumer) = append.tracking {
            tracked.insert(consumer, round);
        }
        round_of.push(round);
        index.add(i, round, events);
        if rounds.len() <= round {
            rounds.resize_with(round + 1, Vec::new);
        }
        rounds[round].push(i);
    }
    Plan {
        rounds,
        planned: batch.len(),
    }
}

/// The events of a batch's earlier appends, indexed by tag and type.
#[derive(Default)]
struct EventIndex<'a> {
    /// (append, event) in arrival order; the view keeps the event's parsed data.
    events: Vec<(usize, MatchView<'a>)>,
    by_tag: HashMap<&'a str, Vec<usize>>,
    by_type: HashMap<&'a str, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
    /// The highest round of any indexed event.
    last_round: Option<usize>,
}

impl<'a> EventIndex<'a> {
    fn add(&mut self, append: usize, round: usize, events: &'a [Event]) {
        for event in events {
            let at = self.events.len();
            for tag in event.tags() {
                self.by_tag.entry(tag).or_default().push(at);
            }
            self.by_type.entry(event.event_type()).or_default().push(at);
            self.ids.insert(event.id(), append);
            self.events.push((append, MatchView::new(event)));
            self.last_round = self.last_round.max(Some(round));
        }
    }

    /// The first round in which `query` sees every earlier event it may match, or
    /// `None` when finding it would take more than [`MAX_VISITS_PER_APPEND`] visits.
    fn round_after_conflicts(&self, query: &Query, round_of: &[usize]) -> Option<usize> {
        let Some(last_round) = self.last_round else {
            return Some(0);
        };
        let after_all = last_round + 1;
        let (mut round, mut visits) = (0, 0);
        for item in query.items() {
            if item.matches_everything() {
                return Some(after_all);
            }
            // Newest first: the latest events tend to be in the highest rounds.
            let candidates: Box<dyn Iterator<Item = usize> + '_> =
                if let Some(tag) = item.tag_names().first() {
                    Box::new(
                        self.by_tag
                            .get(tag.as_str())
                            .into_iter()
                            .flatten()
                            .rev()
                            .copied(),
                    )
                } else if !item.type_names().is_empty() {
                    Box::new(
                        item.type_names()
                            .iter()
                            .filter_map(|t| self.by_type.get(t.as_str()))
                            .flat_map(|list| list.iter().rev().copied()),
                    )
                } else {
                    Box::new((0..self.events.len()).rev())
                };
            for at in candidates {
                visits += 1;
                if visits > MAX_VISITS_PER_APPEND {
                    return None;
                }
                let (append, view) = &self.events[at];
                let earlier = round_of[*append];
                if earlier >= round && item.matches_view(view) {
                    round = earlier + 1;
                    if round == after_all {
                        return Some(after_all);
                    }
                }
            }
        }
        Some(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QueryItem;

    fn event(event_type: &str, tags: &[&str], data: serde_json::Value) -> Event {
        Event::new(event_type, data).with_tags(tags.iter().copied())
    }

    fn condition(item: QueryItem) -> Option<AppendCondition> {
        Some(AppendCondition::new(Query::new([item]), None))
    }

    fn plan_of(batch: &[(Vec<Event>, Option<AppendCondition>)]) -> Plan {
        let appends: Vec<PlannedAppend<'_>> = batch
            .iter()
            .map(|(e, c)| PlannedAppend::new(e, c.as_ref()))
            .collect();
        plan(&appends)
    }

    #[test]
    fn tracked_appends_of_one_consumer_are_decided_one_round_after_another() {
        let events: Vec<Vec<Event>> = (0..5)
            .map(|i| vec![event("E", &[&format!("t{i}")], serde_json::json!({}))])
            .collect();
        let consumers = [Some("a"), Some("b"), Some("a"), None, Some("a")];
        let appends: Vec<PlannedAppend<'_>> = events
            .iter()
            .zip(consumers)
            .map(|(e, tracking)| PlannedAppend {
                tracking,
                ..PlannedAppend::new(e, None)
            })
            .collect();
        let expected = vec![vec![0, 1, 3], vec![2], vec![4]];
        assert_eq!(
            plan(&appends),
            Plan {
                rounds: expected,
                planned: 5
            }
        );
    }

    #[test]
    fn an_append_goes_after_the_earlier_appends_its_condition_could_match() {
        let batch = vec![
            (vec![event("A", &["x"], serde_json::json!({}))], None),
            (
                vec![event("B", &["y"], serde_json::json!({}))],
                condition(QueryItem::new().tags(["z"])),
            ),
            (
                vec![event("C", &["z"], serde_json::json!({}))],
                condition(QueryItem::new().tags(["x"])),
            ),
            (
                vec![event("D", &[], serde_json::json!({}))],
                condition(QueryItem::new().types(["C"])),
            ),
            (
                vec![event("E", &[], serde_json::json!({}))],
                condition(QueryItem::new()),
            ),
        ];
        let expected = vec![vec![0, 1], vec![2], vec![3], vec![4]];
        assert_eq!(
            plan_of(&batch),
            Plan {
                rounds: expected,
                planned: 5
            }
        );
    }

    #[test]
    fn payload_conditions_read_each_event_once_and_planning_stays_linear() {
        // The worst case: conditions without tags or types that match nothing, so every
        // earlier event is a candidate. Each event's data is parsed at most once and
        // each append looks at a bounded number of events.
        let n = 2_000;
        let batch: Vec<_> = (0..n)
            .map(|i| {
                let e = event("E", &[], serde_json::json!({"k": i.to_string()}));
                (
                    vec![e],
                    condition(QueryItem::new().data_all([("k", "never")])),
                )
            })
            .collect();
        let before = crate::model::json_parses();
        let plan = plan_of(&batch);
        let parses = crate::model::json_parses() - before;
        // The first append beyond the budget ends the batch; all before share round 0.
        let planned = MAX_VISITS_PER_APPEND + 1;
        assert_eq!(plan.planned, planned);
        assert_eq!(plan.rounds, vec![(0..planned).collect::<Vec<_>>()]);
        assert!(parses <= planned, "{parses} parses for {planned} events");
        // The rest plans the same way from its own start.
        let rest = plan_of(&batch[planned..]);
        assert_eq!(rest.planned, planned);
    }

    #[test]
    fn a_batch_holds_at_most_max_rounds_rounds() {
        let batch: Vec<_> = (0..200)
            .map(|_| {
                (
                    vec![event("E", &[], serde_json::json!({}))],
                    condition(QueryItem::new()),
                )
            })
            .collect();
        let plan = plan_of(&batch);
        assert_eq!((plan.rounds.len(), plan.planned), (MAX_ROUNDS, MAX_ROUNDS));
    }
}
