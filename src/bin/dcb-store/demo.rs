//! `dcb-store demo`: many concurrent deciders run the course-subscription scenario
//! through the real store; it prints throughput, conflicts and latency, then checks
//! the invariants and says PASS or FAIL.

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use dcb_store::{Config, Error, EventStore};
use hdrhistogram::Histogram;
use rand::Rng;

use crate::enrolment::Scenario;

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
    /// Schema for this run (default: a fresh `demo_<time>` schema).
    #[arg(long)]
    schema: Option<String>,
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    conflicts: u64,
}

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
        "dcb-store demo: {} deciders for {} s, {} courses x {} seats, {} students (max {} courses each), schema {schema}{}",
        args.deciders,
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
                    let outcome = scenario.subscribe(&store, course, student).await?;
                    let _ = latency.borrow_mut().record(t0.elapsed().as_micros() as u64);
                    let mut t = tally.borrow_mut();
                    t.conflicts += outcome.conflicts;
                    if outcome.accepted {
                        t.accepted += 1;
                    } else {
                        t.rejected += 1;
                    }
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|_| Error::Closed {
            may_have_been_written: false,
        })??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.borrow_mut());
    let h = latency.borrow().clone();
    let decisions = t.accepted + t.rejected;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "decisions: {decisions} in {elapsed:.1} s = {:.0} decisions/s (accepted {}, rejected {}), conflicts retried: {}",
        decisions as f64 / elapsed,
        t.accepted,
        t.rejected,
        t.conflicts
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
    println!(
        "where the time goes (p50 ms): read {:.2} (sql {:.2}), batch: begin {:.2}, lock {:.2}, append {:.2}, commit {:.2}",
        p50(&m.methods, "read"),
        p50(&m.components, "read.sql_execution"),
        p50(&m.statements, "begin"),
        p50(&m.statements, "lock"),
        p50(&m.statements, "append"),
        p50(&m.statements, "commit"),
    );

    let violations = scenario.violations(&store, t.accepted).await?;
    if violations.is_empty() {
        println!(
            "invariants: PASS (no course over capacity, no double subscription, no student over {} courses, every accepted subscription stored once)",
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
