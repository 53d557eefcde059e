//! `dcb-store bench cold-start`: the first decision on one course that already holds
//! N subscriptions (`--prefill`, default 10,000), by a store that has just started (its
//! cache empty): once with no snapshot (all N events read and folded), once with a
//! snapshot at the head (nothing to fold). Each measurement connects a new store, lets
//! it open its connections and see the statements' shapes (a decision on an empty
//! boundary), and times `decision_model` alone; the median of the repeats is reported.

use std::process::ExitCode;
use std::time::Instant;

use dcb_store::{Config, Error, Event, EventStore};
use serde_json::json;

use crate::bench::BenchArgs;
use crate::enrolment::{CourseSeats, StudentCourses};

/// Events per append while filling the course.
const FILL_CHUNK: usize = 1_000;

pub async fn run(config: Config, args: &BenchArgs) -> Result<ExitCode, Error> {
    let n = args.prefill.first().copied().unwrap_or(10_000) as usize;
    let runs = args.repeat.max(7);
    let schema = format!(
        "bench_cold_{}",
        chrono::Utc::now().format("%Y%m%d_%H%M%S_%6f")
    );
    // No automatic snapshots: the two cases differ only in the one saved below.
    let config = config.with_schema(&schema).with_snapshot_after(0);
    let store = EventStore::connect(config.clone()).await?;
    let defined = Event::new("CourseDefined", json!({"courseId": 0, "capacity": n + 1}))
        .with_tags(["course:0"]);
    store.append(vec![defined], None).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(FILL_CHUNK) {
        let events = chunk
            .iter()
            .map(|s| {
                Event::new(
                    "StudentSubscribedToCourse",
                    json!({"courseId": 0, "studentId": s}),
                )
                .with_tags(["course:0".to_owned(), format!("student:{s}")])
            })
            .collect();
        store.append(events, None).await?;
    }
    let decision = (CourseSeats(0), StudentCourses(1));
    let mut report = Vec::new();
    for snapshot in [false, true] {
        if snapshot {
            let model = store.decision_model(&decision).await?;
            let head = model.head().unwrap_or(0);
            store.save_snapshot(&decision, &model.state, head).await?;
        }
        let mut times = Vec::with_capacity(runs);
        let mut applied = 0;
        for _ in 0..runs {
            let fresh = EventStore::connect(config.clone()).await?;
            // Connections up and statements seen (on an empty boundary of the same
            // shape): the time measured is the first decision on this boundary's.
            fresh.ping().await?;
            fresh
                .decision_model(&(CourseSeats(usize::MAX), StudentCourses(usize::MAX)))
                .await?;
            let started = Instant::now();
            let model = fresh.decision_model(&decision).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            applied = model.events_applied();
        }
        times.sort_by(f64::total_cmp);
        let (p50, min, max) = (times[times.len() / 2], times[0], times[times.len() - 1]);
        report.push((snapshot, p50, min, max, applied));
    }
    for (snapshot, p50, min, max, applied) in &report {
        if args.json {
            println!(
                "{}",
                json!({"workload": "cold-start", "events": n, "snapshot": snapshot,
                       "runs": runs, "p50_ms": p50, "min_ms": min, "max_ms": max,
                       "events_applied": applied})
            );
        } else {
            println!(
                "cold start, {n} events in the boundary, {}: first decision p50 {p50:.2} ms (min {min:.2}, max {max:.2}, {runs} runs), {applied} events folded",
                if *snapshot { "with a snapshot" } else { "no snapshot" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
