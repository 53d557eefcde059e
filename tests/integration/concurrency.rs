//! Two stores (two pools, as two processes would have) on one schema, many concurrent
//! deciders on a few contended courses: the course-subscription invariants hold.

use std::collections::{HashMap, HashSet};

use dcb_store::{AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use futures_util::future::join_all;
use rand::Rng;
use serde_json::json;

use crate::support;

const CAPACITY: usize = 5;
const MAX_COURSES: usize = 2;
const COURSES: usize = 3;
const STUDENTS: usize = 30;

async fn subscribe(store: &EventStore, course: usize, student: usize) -> Result<bool, Error> {
    let (ct, st) = (format!("course:{course}"), format!("student:{student}"));
    let query = Query::new([
        QueryItem::new().types(["Subscribed"]).tags([ct.clone()]),
        QueryItem::new().types(["Subscribed"]).tags([st.clone()]),
    ]);
    loop {
        let read = store.read(&query, ReadOptions::default()).await?;
        let in_course = read
            .events
            .iter()
            .filter(|e| e.event.tags().contains(&ct))
            .count();
        let of_student = read
            .events
            .iter()
            .filter(|e| e.event.tags().contains(&st))
            .count();
        let already = read
            .events
            .iter()
            .any(|e| e.event.tags().contains(&ct) && e.event.tags().contains(&st));
        if already || in_course >= CAPACITY || of_student >= MAX_COURSES {
            return Ok(false);
        }
        let e = Event::new("Subscribed", json!({"course": course, "student": student}))
            .with_tags([ct.clone(), st.clone()]);
        match store
            .append(
                vec![e],
                Some(AppendCondition::new(query.clone(), read.head)),
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(Error::ConditionFailed { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[actix::test]
async fn two_stores_with_dozens_of_deciders_never_break_the_invariants() {
    for round in 0..3 {
        let schema = support::unique_schema("race");
        let a = EventStore::connect(support::config(&schema)).await.unwrap();
        let b = EventStore::connect(support::config(&schema)).await.unwrap();
        let deciders = (0..48).map(|d| {
            let store = if d % 2 == 0 { a.clone() } else { b.clone() };
            actix::spawn(async move {
                let mut accepted = 0;
                for _ in 0..8 {
                    let (course, student) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_range(0..COURSES), rng.gen_range(0..STUDENTS))
                    };
                    accepted += usize::from(subscribe(&store, course, student).await.unwrap());
                }
                accepted
            })
        });
        let accepted: usize = join_all(deciders)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum();

        let all = a
            .read(&Query::all(), ReadOptions::default())
            .await
            .unwrap()
            .events;
        assert_eq!(
            all.len(),
            accepted,
            "round {round}: every accepted decision is stored once"
        );
        let mut per_course: HashMap<u64, usize> = HashMap::new();
        let mut per_student: HashMap<u64, usize> = HashMap::new();
        let mut pairs = HashSet::new();
        for e in &all {
            let d: serde_json::Value = e.event.data().unwrap();
            let (c, s) = (
                d["course"].as_u64().unwrap(),
                d["student"].as_u64().unwrap(),
            );
            *per_course.entry(c).or_default() += 1;
            *per_student.entry(s).or_default() += 1;
            assert!(
                pairs.insert((c, s)),
                "round {round}: student {s} twice in course {c}"
            );
        }
        assert!(
            per_course.values().all(|n| *n <= CAPACITY),
            "round {round}: {per_course:?}"
        );
        assert!(
            per_student.values().all(|n| *n <= MAX_COURSES),
            "round {round}: {per_student:?}"
        );
        // Contention was real: the courses filled up.
        assert_eq!(
            per_course.values().sum::<usize>(),
            COURSES * CAPACITY,
            "round {round}"
        );
    }
}
