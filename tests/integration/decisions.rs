//! Decision models, `decide`, the projection cache and snapshots against the real
//! server: a model's state equals a fold of `read` from scratch at its head (generated
//! histories and queries; with and without the cache; from snapshots), its condition
//! catches conflicting appends from another store, snapshots are monotonic and never
//! trusted when they do not fit, and `decide` keeps the enrolment invariants under 32
//! concurrent deciders in two stores.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use dcb_store::{
    Decided, Error, Event, EventStore, Projection, Query, QueryItem, ReadOptions, SequencedEvent,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::generate::Gen;
use crate::support;

/// Folds the positions and types of the events of any query: a state that shows every
/// event missed, duplicated or out of order.
#[derive(Clone)]
struct Trace {
    query: Query,
    name: &'static str,
    version: u32,
}

fn trace(query: Query) -> Trace {
    Trace {
        query,
        name: "trace",
        version: 1,
    }
}

impl Projection for Trace {
    type State = Vec<(u64, String)>;
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn query(&self) -> Query {
        self.query.clone()
    }
    fn initial(&self) -> Self::State {
        Vec::new()
    }
    fn apply(&self, state: &mut Self::State, event: &SequencedEvent) {
        state.push((event.position, event.event.event_type().to_owned()));
    }
}

/// The fold from scratch: every event of `query` up to `head`.
async fn folded(store: &EventStore, query: &Query, head: Option<u64>) -> Vec<(u64, String)> {
    let Some(head) = head else { return Vec::new() };
    let read = store
        .read(query, ReadOptions::default().before(head + 1))
        .await
        .unwrap();
    read.events
        .iter()
        .map(|e| (e.position, e.event.event_type().to_owned()))
        .collect()
}

#[actix::test]
async fn models_equal_a_fold_from_scratch_with_and_without_cache_and_snapshots() {
    let mut gen = Gen::new();
    let seed = gen.seed();
    let schema = support::unique_schema("decide_prop");
    let cached = EventStore::connect(support::config(&schema)).await.unwrap();
    let uncached = EventStore::connect(support::config(&schema).with_decision_cache(0))
        .await
        .unwrap();
    // Snapshots after every few events, and a cache of 3 entries (evictions, then
    // snapshot loads).
    let snapshotting = EventStore::connect(
        support::config(&schema)
            .with_snapshot_after(3)
            .with_decision_cache(3),
    )
    .await
    .unwrap();
    let queries: Vec<Query> = (0..12).map(|_| gen.query()).collect();
    for round in 0..25 {
        let batch: Vec<Event> = (0..gen.rng().gen_range(1..=6))
            .map(|_| gen.event())
            .collect();
        match cached.append(batch, None).await {
            Ok(_) | Err(Error::InvalidInput { .. }) => {}
            Err(e) => panic!("seed {seed}: {e}"),
        }
        for store in [&cached, &uncached, &snapshotting] {
            let (i, j) = (
                gen.rng().gen_range(0..queries.len()),
                gen.rng().gen_range(0..queries.len()),
            );
            let (a, b) = (trace(queries[i].clone()), trace(queries[j].clone()));
            let one = store.decision_model(&a).await.unwrap();
            assert_eq!(
                one.state,
                folded(&cached, &queries[i], one.head()).await,
                "seed {seed}, round {round}, query {i}"
            );
            let pair = store.decision_model(&(a.clone(), b.clone())).await.unwrap();
            assert_eq!(
                pair.state.0,
                folded(&cached, &queries[i], pair.head()).await,
                "seed {seed}"
            );
            assert_eq!(
                pair.state.1,
                folded(&cached, &queries[j], pair.head()).await,
                "seed {seed}"
            );
            // The model's head is the store's head when it was read.
            let head = cached
                .read(&Query::all(), ReadOptions::default().backwards().limit(1))
                .await
                .unwrap()
                .head;
            assert!(
                pair.head() <= head && pair.head() >= one.head(),
                "seed {seed}"
            );
            if round % 5 == 4 {
                // An explicit snapshot at the model's head, loaded by a store that has
                // no cache: the same state.
                cached
                    .save_snapshot(&a, &one.state, one.head().unwrap_or(0))
                    .await
                    .unwrap();
            }
        }
    }
    // A store started now builds from the snapshots only.
    let fresh = EventStore::connect(support::config(&schema)).await.unwrap();
    for (i, q) in queries.iter().enumerate() {
        let model = fresh.decision_model(&trace(q.clone())).await.unwrap();
        assert_eq!(
            model.state,
            folded(&cached, q, model.head()).await,
            "seed {seed}, query {i}"
        );
    }
    let m = snapshotting.metrics().await.unwrap();
    assert!(m.snapshots_loaded > 0, "seed {seed}: {m:?}");
    assert!(
        fresh.metrics().await.unwrap().snapshots_loaded > 0,
        "seed {seed}"
    );
}

#[actix::test]
async fn a_model_from_cache_and_snapshot_catches_a_conflicting_append_from_another_store() {
    let schema = support::unique_schema("decide_conflict");
    let deciding = EventStore::connect(support::config(&schema).with_snapshot_after(1))
        .await
        .unwrap();
    let other = EventStore::connect(support::config(&schema)).await.unwrap();
    let course = trace(Query::new([QueryItem::new().tags(["course:1"])]));
    for _ in 0..5 {
        other
            .append(vec![support::event("S", &["course:1"])], None)
            .await
            .unwrap();
    }
    other
        .append(vec![support::event("S", &["course:2"])], None)
        .await
        .unwrap();
    // First model: read from scratch, then (saved in the background) a snapshot.
    deciding.decision_model(&course).await.unwrap();
    wait_until(|| async { deciding.metrics().await.unwrap().snapshots_saved >= 1 }).await;
    // A second store with no cache builds from the snapshot.
    let from_snapshot = EventStore::connect(support::config(&schema)).await.unwrap();
    let cached_model = deciding.decision_model(&course).await.unwrap();
    let snapshot_model = from_snapshot.decision_model(&course).await.unwrap();
    assert_eq!(snapshot_model.events_applied(), 0);
    assert_eq!(from_snapshot.metrics().await.unwrap().snapshots_loaded, 1);
    // An unrelated append does not conflict; a matching one from the other store does.
    other
        .append(vec![support::event("S", &["course:2"])], None)
        .await
        .unwrap();
    other
        .append(vec![support::event("S", &["course:1"])], None)
        .await
        .unwrap();
    for (store, model) in [(&deciding, cached_model), (&from_snapshot, snapshot_model)] {
        let refused = store
            .append(
                vec![support::event("S", &["course:1"])],
                Some(model.condition()),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::ConditionFailed { .. })),
            "{refused:?}"
        );
    }
}

/// Polls `check` for up to 10 s.
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 10 s");
}

#[actix::test]
async fn building_reads_only_what_is_new_once_for_all_members() {
    let store = support::store("decide_incremental").await;
    let a = trace(Query::new([QueryItem::new().tags(["a"])]));
    let b = trace(Query::new([QueryItem::new().tags(["b"])]));
    for tags in [&["a"][..], &["b"], &["a", "b"], &["c"]] {
        store
            .append(vec![support::event("E", tags)], None)
            .await
            .unwrap();
    }
    let first = store.decision_model(&(a.clone(), b.clone())).await.unwrap();
    assert_eq!(first.events_applied(), 4, "a: 2 events, b: 2 events");
    store
        .append(vec![support::event("E", &["a", "b"])], None)
        .await
        .unwrap();
    let before = store.metrics().await.unwrap();
    let second = store.decision_model(&(a.clone(), b.clone())).await.unwrap();
    let after = store.metrics().await.unwrap();
    assert_eq!(
        second.events_applied(),
        2,
        "only the new event, once per member"
    );
    assert_eq!(after.reads - before.reads, 1, "one read for the tuple");
    assert_eq!(after.decision_cache_hits - before.decision_cache_hits, 2);
    assert_eq!(second.state.0.len(), 3);
    assert_eq!(second.state.1.len(), 3);
    // A member alone is served from the tuple's entries.
    let alone = store.decision_model(&a).await.unwrap();
    assert_eq!(alone.events_applied(), 0);
    assert_eq!(alone.state, second.state.0);
}

/// The same query in another spelling shares entries; other parameters never do.
#[actix::test]
async fn equivalent_queries_share_an_entry_and_other_parameters_never_do() {
    let store = support::store("decide_keys").await;
    store
        .append(vec![support::event("A", &["x", "y"])], None)
        .await
        .unwrap();
    store
        .append(vec![support::event("B", &["x"])], None)
        .await
        .unwrap();
    let spelled = |items: Vec<QueryItem>| trace(Query::new(items));
    let one = spelled(vec![
        QueryItem::new().types(["A", "B"]).tags(["x", "y"]),
        QueryItem::new().types(["B"]),
    ]);
    let same = spelled(vec![
        QueryItem::new().types(["B"]),
        QueryItem::new().tags(["y", "x"]).types(["B", "A"]),
    ]);
    let other = spelled(vec![QueryItem::new().types(["A", "B"]).tags(["x"])]);
    let first = store.decision_model(&one).await.unwrap();
    let m0 = store.metrics().await.unwrap();
    let shared = store.decision_model(&same).await.unwrap();
    let m1 = store.metrics().await.unwrap();
    assert_eq!(m1.decision_cache_hits - m0.decision_cache_hits, 1);
    assert_eq!(shared.state, first.state);
    let separate = store.decision_model(&other).await.unwrap();
    let m2 = store.metrics().await.unwrap();
    assert_eq!(m2.decision_cache_misses - m1.decision_cache_misses, 1);
    assert_eq!(separate.state.len(), 2);
    assert_eq!(first.state.len(), 2);
    // Snapshots: one saved for one course is not another course's.
    let c1 = Seats::course("c1");
    let c2 = Seats::course("c2");
    store.save_snapshot(&c1, &7, 1).await.unwrap();
    assert_eq!(store.load_snapshot(&c1).await.unwrap(), Some((1, 7)));
    assert_eq!(store.load_snapshot(&c2).await.unwrap(), None);
}

/// Seats taken in a course (a `u32`), or as text in version 3 (another state type).
struct Seats {
    course: String,
    version: u32,
}

impl Seats {
    fn course(course: &str) -> Self {
        Seats {
            course: course.to_owned(),
            version: 1,
        }
    }
}

impl Projection for Seats {
    type State = u32;
    fn name(&self) -> &'static str {
        "seats"
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["S"])
            .tags([format!("course:{}", self.course)])])
    }
    fn initial(&self) -> u32 {
        0
    }
    fn apply(&self, seats: &mut u32, _: &SequencedEvent) {
        *seats += 1;
    }
}

/// Same name and version as `Seats`, another state type.
struct SeatNames(String);

impl Projection for SeatNames {
    type State = Vec<String>;
    fn name(&self) -> &'static str {
        "seats"
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["S"])
            .tags([format!("course:{}", self.0)])])
    }
    fn initial(&self) -> Vec<String> {
        Vec::new()
    }
    fn apply(&self, names: &mut Vec<String>, e: &SequencedEvent) {
        names.push(e.event.id().to_string());
    }
}

#[actix::test]
async fn snapshots_of_another_version_type_or_position_are_ignored_and_counted() {
    let schema = support::unique_schema("decide_snap_reject");
    let store = EventStore::connect(support::config(&schema)).await.unwrap();
    for _ in 0..3 {
        store
            .append(vec![support::event("S", &["course:c1"])], None)
            .await
            .unwrap();
    }
    let v1 = Seats::course("c1");
    // A wrong state, saved as if it were right.
    assert!(store.save_snapshot(&v1, &100, 3).await.unwrap());
    let fresh = || async { EventStore::connect(support::config(&schema)).await.unwrap() };
    let trusting = fresh().await;
    assert_eq!(
        trusting.decision_model(&v1).await.unwrap().state,
        100,
        "v1 uses its snapshot"
    );
    // Version 2 ignores version 1's snapshot and rebuilds.
    let v2 = Seats {
        version: 2,
        ..Seats::course("c1")
    };
    let other_version = fresh().await;
    assert_eq!(other_version.load_snapshot(&v2).await.unwrap(), None);
    assert_eq!(other_version.decision_model(&v2).await.unwrap().state, 3);
    let m = other_version.metrics().await.unwrap();
    assert!(m.snapshots_rejected["version"] >= 2, "{m:?}");
    assert_eq!(m.snapshots_loaded, 0);
    // Another state type under the same name and version: the state does not
    // deserialise, so it is ignored.
    let other_type = fresh().await;
    let names = other_type
        .decision_model(&SeatNames("c1".into()))
        .await
        .unwrap();
    assert_eq!(names.state.len(), 3);
    assert_eq!(
        other_type.metrics().await.unwrap().snapshots_rejected["state"],
        1
    );
    // A snapshot from beyond the store's head, or saved after another event at its
    // position (a database restored to another point), is never trusted.
    let client = support::client().await;
    for tamper in [
        "SET position = 1000000",
        "SET event_id = '00000000-0000-4000-8000-000000000000'",
    ] {
        client
            .execute(&format!("UPDATE {schema}.snapshots {tamper}"), &[])
            .await
            .unwrap();
        let elsewhere = fresh().await;
        assert_eq!(
            elsewhere.decision_model(&v1).await.unwrap().state,
            3,
            "{tamper}"
        );
        let m = elsewhere.metrics().await.unwrap();
        assert_eq!(m.snapshots_rejected["position"], 1, "{tamper}");
        let restore = format!(
            "UPDATE {schema}.snapshots SET position = 3, \
             event_id = (SELECT event_id FROM {schema}.events WHERE position = 3)"
        );
        client.execute(&restore, &[]).await.unwrap();
        let trusting = fresh().await;
        assert_eq!(
            trusting.decision_model(&v1).await.unwrap().state,
            100,
            "{tamper}"
        );
    }
}

#[actix::test]
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let store = support::store("decide_snap_monotonic").await;
    for _ in 0..10 {
        store
            .append(vec![support::event("S", &["course:c1"])], None)
            .await
            .unwrap();
    }
    let seats = Seats::course("c1");
    assert!(store.save_snapshot(&seats, &8, 8).await.unwrap());
    assert!(!store.save_snapshot(&seats, &5, 5).await.unwrap(), "older");
    assert!(
        !store.save_snapshot(&seats, &99, 8).await.unwrap(),
        "same position"
    );
    assert_eq!(store.load_snapshot(&seats).await.unwrap(), Some((8, 8)));
    assert!(store.save_snapshot(&seats, &10, 10).await.unwrap());
    assert_eq!(store.load_snapshot(&seats).await.unwrap(), Some((10, 10)));
    let beyond = store.save_snapshot(&seats, &11, 11).await;
    assert!(
        matches!(beyond, Err(Error::InvalidInput { .. })),
        "{beyond:?}"
    );
    // Concurrent saves at many positions: the greatest wins.
    let saves = (1..=10u32).map(|p| {
        let store = store.clone();
        actix::spawn(async move {
            store
                .save_snapshot(&Seats::course("c1"), &(p * 10), u64::from(p))
                .await
        })
    });
    for saved in futures_util::future::join_all(saves).await {
        saved.unwrap().unwrap();
    }
    assert_eq!(store.load_snapshot(&seats).await.unwrap(), Some((10, 10)));
}

// --- The enrolment invariants under `decide` ---------------------------------------

const CAPACITY: u32 = 3;
const MAX_COURSES: usize = 2;

struct CourseSeats(u32);

#[derive(Clone, Default, Serialize, Deserialize)]
struct Course {
    defined: bool,
    taken: u32,
    students: BTreeSet<u32>,
}

impl Projection for CourseSeats {
    type State = Course;
    fn name(&self) -> &'static str {
        "course-seats"
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["CourseDefined", "Subscribed"])
            .tags([format!("course:{}", self.0)])])
    }
    fn initial(&self) -> Course {
        Course::default()
    }
    fn apply(&self, course: &mut Course, e: &SequencedEvent) {
        if e.event.event_type() == "CourseDefined" {
            course.defined = true;
        } else {
            course.taken += 1;
            let data: serde_json::Value = e.event.data().unwrap();
            course
                .students
                .insert(data["student"].as_u64().unwrap() as u32);
        }
    }
}

struct StudentCourses(u32);

impl Projection for StudentCourses {
    type State = usize;
    fn name(&self) -> &'static str {
        "student-courses"
    }
    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types(["Subscribed"])
            .tags([format!("student:{}", self.0)])])
    }
    fn initial(&self) -> usize {
        0
    }
    fn apply(&self, courses: &mut usize, _: &SequencedEvent) {
        *courses += 1;
    }
}

#[derive(Debug, PartialEq)]
enum Refusal {
    NoCourse,
    Full,
    Already,
    TooMany,
}

async fn subscribe(
    store: &EventStore,
    course: u32,
    student: u32,
) -> Result<Decided<Refusal>, Error> {
    store
        .decide(&(CourseSeats(course), StudentCourses(student)), |(c, s)| {
            if !c.defined {
                return Err(Refusal::NoCourse);
            }
            if c.students.contains(&student) {
                return Err(Refusal::Already);
            }
            if c.taken >= CAPACITY {
                return Err(Refusal::Full);
            }
            if *s >= MAX_COURSES {
                return Err(Refusal::TooMany);
            }
            Ok(vec![Event::new(
                "Subscribed",
                json!({"course": course, "student": student}),
            )
            .with_tags([
                format!("course:{course}"),
                format!("student:{student}"),
            ])])
        })
        .await
}

#[actix::test]
async fn decide_keeps_every_invariant_under_32_deciders_in_two_stores() {
    let schema = support::unique_schema("decide_enrol");
    enrolment_invariants(support::config(&schema)).await;
}

/// 32 deciders in two stores made from `config` (one snapshotting after every two
/// events) enrol students; afterwards every invariant holds and every acknowledged
/// decision is stored once.
pub async fn enrolment_invariants(config: dcb_store::Config) {
    let stores = [
        EventStore::connect(config.clone().with_decide_retries(1000))
            .await
            .unwrap(),
        EventStore::connect(config.with_decide_retries(1000).with_snapshot_after(2))
            .await
            .unwrap(),
    ];
    let courses = 6u32;
    for c in 0..courses - 1 {
        let defined = Event::new("CourseDefined", json!({})).with_tags([format!("course:{c}")]);
        stores[0].append(vec![defined], None).await.unwrap();
    }
    let deciders = (0..32).map(|d| {
        let store = stores[d % 2].clone();
        actix::spawn(async move {
            let mut rng = rand::thread_rng();
            let mut appended = Vec::new();
            for _ in 0..12 {
                let (course, student) = (rng.gen_range(0..courses), rng.gen_range(0..8));
                match subscribe(&store, course, student).await.unwrap() {
                    Decided::Appended(at) => appended.push((at.first_position, course, student)),
                    Decided::Rejected(Refusal::NoCourse) => assert_eq!(course, courses - 1),
                    Decided::Rejected(_) => {}
                    Decided::Unchanged => unreachable!(),
                    _ => unreachable!("Decided has no other outcome yet"),
                }
            }
            appended
        })
    });
    let appended: Vec<(u64, u32, u32)> = futures_util::future::join_all(deciders)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let all = stores[0]
        .read(
            &Query::new([QueryItem::new().types(["Subscribed"])]),
            ReadOptions::default(),
        )
        .await
        .unwrap();
    let mut per_course: HashMap<u64, u32> = HashMap::new();
    let mut per_student: HashMap<u64, usize> = HashMap::new();
    let mut pairs = HashSet::new();
    for e in &all.events {
        let data: serde_json::Value = e.event.data().unwrap();
        let (c, s) = (
            data["course"].as_u64().unwrap(),
            data["student"].as_u64().unwrap(),
        );
        *per_course.entry(c).or_default() += 1;
        *per_student.entry(s).or_default() += 1;
        assert!(pairs.insert((c, s)), "student {s} twice in course {c}");
    }
    assert!(
        per_course.values().all(|n| *n <= CAPACITY),
        "{per_course:?}"
    );
    assert!(
        per_student.values().all(|n| *n <= MAX_COURSES),
        "{per_student:?}"
    );
    // Every acknowledged decision is stored, once, where it was acknowledged.
    assert_eq!(appended.len(), all.events.len());
    let stored: HashSet<u64> = all.events.iter().map(|e| e.position).collect();
    assert!(appended.iter().all(|(p, _, _)| stored.contains(p)));
    assert!(!appended.is_empty());
    let retries: u64 = [
        stores[0].metrics().await.unwrap(),
        stores[1].metrics().await.unwrap(),
    ]
    .iter()
    .map(|m| m.decide_retries)
    .sum();
    assert!(retries > 0, "32 deciders on 6 courses conflict");
}

/// `decide` decides again on what a conflicting append changed, and gives up after
/// `decide_retries`.
#[actix::test]
async fn decide_reads_again_after_a_conflict_and_gives_up_after_its_retries() {
    let schema = support::unique_schema("decide_retry");
    let store = EventStore::connect(support::config(&schema)).await.unwrap();
    let stingy = EventStore::connect(support::config(&schema).with_decide_retries(0))
        .await
        .unwrap();
    let defined = Event::new("CourseDefined", json!({})).with_tags(["course:0"]);
    store.append(vec![defined], None).await.unwrap();
    // Another process: a thread with a system and store of its own, appending when told.
    let (ask, asked) = std::sync::mpsc::channel::<u32>();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let config = support::config(&schema);
    let remote = std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let other = EventStore::connect(config).await.unwrap();
            while let Ok(student) = asked.recv() {
                let e = Event::new("Subscribed", json!({"course": 0, "student": student}))
                    .with_tags(["course:0".to_owned(), format!("student:{student}")]);
                other.append(vec![e], None).await.unwrap();
                done.send(()).unwrap();
            }
        })
    });
    for (store, expect_retry) in [(&store, true), (&stingy, false)] {
        let mut seen = Vec::new();
        let outcome = store
            .decide(&CourseSeats(0), |course| {
                seen.push(course.taken);
                if seen.len() == 1 {
                    // Someone else subscribes between this decision's read and append.
                    ask.send(100 + course.taken).unwrap();
                    finished.recv().unwrap();
                }
                Ok::<_, Refusal>(vec![Event::new(
                    "Subscribed",
                    json!({"course": 0, "student": 7}),
                )
                .with_tags(["course:0", "student:7"])])
            })
            .await;
        if expect_retry {
            assert!(matches!(outcome, Ok(Decided::Appended(_))), "{outcome:?}");
            assert_eq!(seen, vec![0, 1], "decided again on the conflicting event");
            assert_eq!(store.metrics().await.unwrap().decide_retries, 1);
        } else {
            assert!(
                matches!(outcome, Err(Error::ConditionFailed { .. })),
                "{outcome:?}"
            );
            assert_eq!(seen.len(), 1);
        }
    }
    drop(ask);
    remote.join().unwrap();
    // Unchanged and Rejected append nothing.
    let head = store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .unwrap()
        .head;
    let unchanged = store
        .decide(&CourseSeats(0), |_| Ok::<_, Refusal>(vec![]))
        .await
        .unwrap();
    assert_eq!(unchanged, Decided::Unchanged);
    let rejected = store
        .decide(&CourseSeats(0), |_| Err::<Vec<Event>, _>(Refusal::Full))
        .await
        .unwrap();
    assert_eq!(rejected, Decided::Rejected(Refusal::Full));
    let after = store
        .read(&Query::all(), ReadOptions::default().backwards().limit(1))
        .await
        .unwrap()
        .head;
    assert_eq!(head, after);
}

/// `Seats` with a chosen course and version, for other modules' tests.
pub struct SeatsOf(Seats);

impl SeatsOf {
    pub fn new(course: &str, version: u32) -> Self {
        SeatsOf(Seats {
            course: course.to_owned(),
            version,
        })
    }
}

impl Projection for SeatsOf {
    type State = u32;
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn version(&self) -> u32 {
        self.0.version()
    }
    fn query(&self) -> Query {
        self.0.query()
    }
    fn initial(&self) -> u32 {
        0
    }
    fn apply(&self, seats: &mut u32, event: &SequencedEvent) {
        self.0.apply(seats, event)
    }
}

/// The snapshot rows of `schema`: (name, version, fingerprint prefix).
async fn snapshot_rows(schema: &str) -> Vec<(String, i32)> {
    support::client()
        .await
        .query(
            &format!("SELECT name, version FROM \"{schema}\".snapshots ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[actix::test]
async fn a_newer_versions_snapshot_deletes_the_older_ones_and_delete_snapshot_removes_them() {
    let schema = support::unique_schema("snap_versions");
    let store = EventStore::connect(support::config(&schema).with_snapshot_after(0))
        .await
        .unwrap();
    for _ in 0..3 {
        let seat = Event::new("S", json!({})).with_tags(["course:c1"]);
        store.append(vec![seat], None).await.unwrap();
    }
    let (v1, v2) = (SeatsOf::new("c1", 1), SeatsOf::new("c1", 2));
    let other_course = SeatsOf::new("c2", 1);
    assert!(store.save_snapshot(&v1, &2, 2).await.unwrap());
    assert!(store.save_snapshot(&other_course, &0, 3).await.unwrap());
    assert_eq!(snapshot_rows(&schema).await.len(), 2);
    // A newer version's save deletes the older version of the same query only.
    assert!(store.save_snapshot(&v2, &3, 3).await.unwrap());
    let rows = snapshot_rows(&schema).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.contains(&("seats".to_owned(), 2)), "{rows:?}");
    assert_eq!(store.load_snapshot(&v1).await.unwrap(), None);
    // An older version saving again (a process not yet upgraded) deletes nothing newer.
    assert!(store.save_snapshot(&v1, &3, 3).await.unwrap());
    assert_eq!(store.load_snapshot(&v2).await.unwrap(), Some((3, 3)));
    // Deleting removes every version of that query, and only of that query.
    assert_eq!(store.delete_snapshot(&v2).await.unwrap(), 2);
    assert_eq!(store.delete_snapshot(&v2).await.unwrap(), 0);
    assert_eq!(store.load_snapshot(&v1).await.unwrap(), None);
    assert_eq!(
        store.load_snapshot(&other_course).await.unwrap(),
        Some((3, 0))
    );
    // Decisions stay exact without a snapshot (a fresh process folds from the start).
    let fresh = EventStore::connect(support::config(&schema)).await.unwrap();
    let seen = fresh
        .decide(&v2, |seats| Err::<Vec<Event>, u32>(*seats))
        .await
        .unwrap();
    assert!(matches!(seen, Decided::Rejected(3)));
}
