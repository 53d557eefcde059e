//! The course-subscription scenario from dcb.events, run by many concurrent deciders
//! through the real store: courses with a capacity, students subscribing, at most N
//! courses per student. Every decision reads one two-item query, decides, and appends
//! with the condition built from the read's head, retrying on conflict.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Args;
use dcb_store::{AppendCondition, Config, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;

const COURSE_DEFINED: &str = "CourseDefined";
const SUBSCRIBED: &str = "StudentSubscribedToCourse";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Concurrent deciders.
    #[arg(long, default_value_t = 32)]
    deciders: usize,
    /// How long the deciders run, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Number of courses.
    #[arg(long, default_value_t = 100)]
    courses: usize,
    /// Seats per course.
    #[arg(long, default_value_t = 20)]
    capacity: u64,
    /// Number of students.
    #[arg(long, default_value_t = 1000)]
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
    latency_us: Option<Histogram<u64>>,
}

pub async fn run(config: Config, args: DemoArgs) -> Result<ExitCode, Error> {
    let schema = args
        .schema
        .clone()
        .unwrap_or_else(|| format!("demo_{}", chrono::Utc::now().format("%Y%m%d_%H%M%S_%3f")));
    let embedded = config.database_url().is_none();
    let store = EventStore::connect(config.with_schema(&schema)).await?;
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
    define_courses(&store, &args).await?;

    let tally = Rc::new(RefCell::new(Tally {
        latency_us: Some(Histogram::new(3).map_err(|e| Error::Config(e.to_string()))?),
        ..Tally::default()
    }));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.deciders {
        let (store, tally) = (store.clone(), tally.clone());
        let (courses, students, capacity, max) = (
            args.courses,
            args.students,
            args.capacity,
            args.max_courses_per_student,
        );
        tasks.push(actix::spawn(async move {
            while Instant::now() < deadline {
                let (course, student) = {
                    let mut rng = rand::thread_rng();
                    (rng.gen_range(0..courses), rng.gen_range(0..students))
                };
                let t0 = Instant::now();
                let outcome = subscribe(&store, course, student, capacity, max).await?;
                let mut t = tally.borrow_mut();
                t.conflicts += outcome.conflicts;
                if outcome.accepted {
                    t.accepted += 1;
                } else {
                    t.rejected += 1;
                }
                if let Some(h) = t.latency_us.as_mut() {
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                }
            }
            Ok::<(), Error>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|_| Error::Closed)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tally = Rc::try_unwrap(tally)
        .map_err(|_| Error::Closed)?
        .into_inner();
    let t = &tally;
    let decisions = t.accepted + t.rejected;
    let h = t.latency_us.as_ref().expect("histogram is set above");
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

    let violations = check_invariants(&store, &args, t.accepted).await?;
    if violations.is_empty() {
        println!("invariants: PASS (no course over capacity, no double subscription, no student over {} courses, every accepted subscription stored once)", args.max_courses_per_student);
        Ok(ExitCode::SUCCESS)
    } else {
        for v in &violations {
            println!("violation: {v}");
        }
        println!("invariants: FAIL ({} violations)", violations.len());
        Ok(ExitCode::FAILURE)
    }
}

async fn define_courses(store: &EventStore, args: &DemoArgs) -> Result<(), Error> {
    for c in 0..args.courses {
        let tag = course_tag(c);
        let unique = Query::new([QueryItem::new().types([COURSE_DEFINED]).tags([tag.clone()])]);
        let event = Event::new(
            COURSE_DEFINED,
            json!({"courseId": c, "capacity": args.capacity}),
        )
        .with_tags([tag]);
        match store
            .append(vec![event], Some(AppendCondition::new(unique, None)))
            .await
        {
            Ok(_) | Err(Error::ConditionFailed { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn course_tag(c: usize) -> String {
    format!("course:{c}")
}

fn student_tag(s: usize) -> String {
    format!("student:{s}")
}

struct Outcome {
    accepted: bool,
    conflicts: u64,
}

/// One decision: read the course's and the student's events, decide, append with
/// the condition from the read; on conflict read again and decide again.
async fn subscribe(
    store: &EventStore,
    course: usize,
    student: usize,
    capacity: u64,
    max_courses: u64,
) -> Result<Outcome, Error> {
    let (course_tag, student_tag) = (course_tag(course), student_tag(student));
    let query = Query::new([
        QueryItem::new()
            .types([COURSE_DEFINED, SUBSCRIBED])
            .tags([course_tag.clone()]),
        QueryItem::new()
            .types([SUBSCRIBED])
            .tags([student_tag.clone()]),
    ]);
    let mut conflicts = 0;
    loop {
        let read = store.read(&query, ReadOptions::default()).await?;
        let (mut defined, mut seats_taken, mut student_courses, mut already) = (false, 0, 0, false);
        for e in &read.events {
            let tags = e.event.tags();
            let has_course = tags.contains(&course_tag);
            let has_student = tags.contains(&student_tag);
            match e.event.event_type() {
                COURSE_DEFINED if has_course => defined = true,
                SUBSCRIBED => {
                    seats_taken += u64::from(has_course);
                    student_courses += u64::from(has_student);
                    already |= has_course && has_student;
                }
                _ => {}
            }
        }
        if !defined || already || seats_taken >= capacity || student_courses >= max_courses {
            return Ok(Outcome {
                accepted: false,
                conflicts,
            });
        }
        let event = Event::new(
            SUBSCRIBED,
            json!({"courseId": course, "studentId": student}),
        )
        .with_tags([course_tag.clone(), student_tag.clone()]);
        match store
            .append(
                vec![event],
                Some(AppendCondition::new(query.clone(), read.head)),
            )
            .await
        {
            Ok(_) => {
                return Ok(Outcome {
                    accepted: true,
                    conflicts,
                })
            }
            Err(Error::ConditionFailed { .. }) => conflicts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Reads every event back and checks the three invariants.
async fn check_invariants(
    store: &EventStore,
    args: &DemoArgs,
    accepted: u64,
) -> Result<Vec<String>, Error> {
    let mut per_course: HashMap<u64, u64> = HashMap::new();
    let mut per_student: HashMap<u64, u64> = HashMap::new();
    let mut pairs = HashSet::new();
    let mut violations = Vec::new();
    let mut subscriptions = 0;
    let mut events = store.read_stream(
        Query::new([QueryItem::new().types([SUBSCRIBED])]),
        ReadOptions::default(),
    );
    while let Some(event) = events.next().await {
        let event = event?;
        let data: serde_json::Value = event.event.data()?;
        let (c, s) = (
            data["courseId"].as_u64().unwrap_or(u64::MAX),
            data["studentId"].as_u64().unwrap_or(u64::MAX),
        );
        subscriptions += 1;
        *per_course.entry(c).or_default() += 1;
        *per_student.entry(s).or_default() += 1;
        if !pairs.insert((c, s)) {
            violations.push(format!("student {s} subscribed twice to course {c}"));
        }
    }
    for (c, n) in &per_course {
        if *n > args.capacity {
            violations.push(format!(
                "course {c} has {n} students, capacity {}",
                args.capacity
            ));
        }
    }
    for (s, n) in &per_student {
        if *n > args.max_courses_per_student {
            violations.push(format!(
                "student {s} has {n} courses, limit {}",
                args.max_courses_per_student
            ));
        }
    }
    if subscriptions != accepted {
        violations.push(format!(
            "{accepted} subscriptions were accepted but {subscriptions} are stored"
        ));
    }
    Ok(violations)
}
