//! `dcb-store demo`: many concurrent deciders run the course-subscription scenario
//! through the real store; it prints throughput, conflicts and latency, then checks
//! the invariants over everything stored (so several demos may share a schema) and
//! says PASS or FAIL. A decision that fails (the server restarting, say) is counted
//! with the time it cost, and the deciders go on.

use std::cell::RefCell;
use std::collections::HashSet;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use dcb_store::{Config, Error, EventStore};
use hdrhistogram::Histogram;
use rand::Rng;

use crate::enrolment::{Decider, Scenario};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Concurrent deciders.
    #[arg(long, default_value_t = 32)]
    deciders: usize,
    /// How long the deciders run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Number of courses.
    #[arg(long, default_value_t = 300)]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 30)]
    capacity: u64,
    /// Number of students.
    #[arg(long, default_value_t = 3000)]
    students: usize,
    /// Most courses one student may take.
    #[arg(long, default_value_t = 5)]
    max_courses_per_student: u64,
    /// How decisions are made: `decide` (cached projections through
    /// `EventStore::decide`) or `plain` (read the whole boundary each time).
    #[arg(long, value_enum, default_value_t = Decider::Decide)]
    decider: Decider,
    /// Schema for this run (default: a fresh `demo_<time>` schema).
    #[arg(long)]
    schema: Option<String>,
}

#[derive(Default)]
struct Tally {
    /// Ids of the subscriptions the store acknowledged to this process.
    accepted: HashSet<uuid::Uuid>,
    rejected: u64,
    conflicts: u64,
    errors: u64,
    time_lost: Duration,
    first_error: Option<String>,
}

/// Pause after a failed decision, so a server that is down is not hammered.
const AFTER_ERROR: Duration = Duration::from_millis(100);

pub async fn run(config: Config, args: DemoArgs) -> Result<ExitCode, Error> {
    let schema = args
        .schema
        .clone()
        .unwrap_or_else(|| format!("demo_{}", chrono::Utc::now().format("%Y%m%d_%H%M%S_%3f")));
    let embedded = config.database_url().is_none();
    let store = EventStore::connect(config.with_schema(&schema)).await?;
    let scenario = Scenario {
        courses: args.courses,
        capacity: args.capacity,
        students: args.students,
        max_courses_per_student: args.max_courses_per_student,
    };
    println!(
        "dcb-store demo: {} deciders ({:?}) for {} s, {} courses x {} seats, {} students (max {} courses each), schema {schema}{}",
        args.deciders,
        args.decider,
        args.seconds,
        args.courses,
        args.capacity,
        args.students,
        args.max_courses_per_student,
        if embedded { ", embedded PostgreSQL" } else { "" }
    );
    scenario.define_courses(&store).await?;

    let tally = Rc::new(RefCell::new(Tally::default()));
    let latency = Rc::new(RefCell::new(
        Histogram::<u64>::new(3).map_err(|e| Error::Config(e.to_string()))?,
    ));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.deciders)
        .map(|_| {
            let (store, tally, latency) = (store.clone(), tally.clone(), latency.clone());
            actix::spawn(async move {
                while Instant::now() < deadline {
                    let (course, student) = {
                        let mut rng = rand::thread_rng();
                        (
                            rng.gen_range(0..scenario.courses),
                            rng.gen_range(0..scenario.students),
                        )
                    };
                    let t0 = Instant::now();
                    let outcome = match scenario.decide(args.decider, &store, course, student).await
                    {
                        Ok(outcome) => outcome,
                        Err(e) => {
                            {
                                let mut t = tally.borrow_mut();
                                t.errors += 1;
                                t.time_lost += t0.elapsed();
                                t.first_error.get_or_insert_with(|| e.to_string());
                            }
                            tokio::time::sleep(AFTER_ERROR).await;
                            continue;
                        }
                    };
                    let _ = latency.borrow_mut().record(t0.elapsed().as_micros() as u64);
                    let mut t = tally.borrow_mut();
                    t.conflicts += outcome.conflicts;
                    match outcome.accepted {
                        Some(id) => {
                            t.accepted.insert(id);
                        }
                        None => t.rejected += 1,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|_| Error::Closed {
            may_have_been_written: false,
        })?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.borrow_mut());
    let h = latency.borrow().clone();
    let accepted = t.accepted.len() as u64;
    let decisions = accepted + t.rejected;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "decisions (this process): {decisions} in {elapsed:.1} s = {:.0} decisions/s (accepted {accepted}, rejected {}), conflicts retried: {}",
        decisions as f64 / elapsed,
        t.rejected,
        t.conflicts
    );
    println!(
        "errors: {} decisions failed, {:.1} s lost{}",
        t.errors,
        t.time_lost.as_secs_f64(),
        t.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (first: {e})"))
    );
    println!(
        "decision latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    let m = store.metrics().await?;
    println!(
        "store: {} appends in {} batches (mean {:.1} appends/batch, max {}), {} reads, {} conditions failed, {} deferred rounds, {} statements prepared",
        m.appends, m.batches, m.batch_appends.mean, m.batch_appends.max, m.reads, m.conditions_failed, m.deferred_rounds, m.statements_prepared
    );
    let p50 = |map: &std::collections::BTreeMap<String, dcb_store::LatencySummary>, key: &str| {
        map.get(key).map_or(0.0, |s| s.p50_ms)
    };
    // A batch of one round is one call (its own commit); others BEGIN ... COMMIT.
    let batch: Vec<String> = ["begin", "lock", "append", "commit"]
        .into_iter()
        .filter_map(|name| {
            m.statements
                .get(name)
                .map(|s| format!("{name} {:.2}", s.p50_ms))
        })
        .collect();
    println!(
        "where the time goes (p50 ms): read {:.2} (sql {:.2}), batch: {}",
        p50(&m.methods, "read"),
        p50(&m.components, "read.sql_execution"),
        batch.join(", "),
    );

    let (violations, stored) = scenario.violations(&store, &t.accepted).await?;
    println!("stored: {stored} subscriptions in the schema (every process deciding on it)");
    if violations.is_empty() {
        println!(
            "invariants: PASS (no course over capacity, no double subscription, no student over {} courses, every subscription this process was acknowledged stored once)",
            args.max_courses_per_student
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for v in &violations {
            println!("violation: {v}");
        }
        println!("invariants: FAIL ({} violations)", violations.len());
        Ok(ExitCode::FAILURE)
    }
}
