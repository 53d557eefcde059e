//! `umadb-bench`: the `append` and `enrolment` workloads of `dcb-store bench`, run
//! against a UmaDB server through the published `umadb-client` crate, so the two
//! stores can be compared side by side on the same machine.
//!
//! - `append`: K closed-loop callers, each appending one ~200-byte event with two tags
//!   and no condition per call (the payload and tags of `cli/src/bench.rs`).
//! - `enrolment`: the course-subscription decision of `cli/src/enrolment.rs` (its
//!   `plain` decider): one read of a two-item query, a fold, an append conditioned on
//!   that query after the read's head, read again and retry on a conflict.
//!
//! Each K prints one JSON line. Calls finishing in the warm-up are not counted. The
//! store is whatever the server holds: a fresh server per K (as `scripts/peers/umadb.sh`
//! does) matches `dcb-store bench`, which takes a fresh schema per measurement.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::future::join_all;
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::json;
use umadb_client::{AsyncUmaDbClient, UmaDbClient};
use umadb_dcb::{
    DcbAppendCondition, DcbError, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem,
};
use uuid::Uuid;

const COURSE_DEFINED: &str = "CourseDefined";
const SUBSCRIBED: &str = "StudentSubscribedToCourse";

#[derive(Parser)]
#[command(
    name = "umadb-bench",
    about = "Closed-loop benchmarks against a UmaDB server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One event per call, two tags, no condition.
    Append(Common),
    /// The course-subscription decision (read, fold, conditional append, retry).
    Enrolment {
        #[command(flatten)]
        common: Common,
        /// Number of courses.
        #[arg(long, default_value_t = 200)]
        courses: usize,
        /// Seats per course.
        #[arg(long, default_value_t = 1000)]
        capacity: u64,
        /// Number of students.
        #[arg(long, default_value_t = 5000)]
        students: usize,
        /// Most courses one student may take.
        #[arg(long, default_value_t = 1000)]
        max_courses: u64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Concurrent callers, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Length of the measured window, in seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Warm-up before the window, in seconds (calls ending in it are not counted).
    #[arg(long)]
    warmup: Option<f64>,
    /// The UmaDB server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// All callers share one client (one HTTP/2 connection) instead of one each.
    #[arg(long)]
    shared_client: bool,
    /// Tokio worker threads of this harness.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What one call did.
struct Outcome {
    /// The call stored something (an append; a decision that subscribed).
    appended: bool,
    /// Appends refused by their condition before the call settled.
    conflicts: u64,
}

/// The counts of one caller, or of all of them merged.
struct Stats {
    ops: u64,
    appended: u64,
    conflicts: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ops: 0,
            appended: 0,
            conflicts: 0,
            errors: 0,
            latency_us: Histogram::new(3).expect("histogram"),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.ops += other.ops;
        self.appended += other.appended;
        self.conflicts += other.conflicts;
        self.errors += other.errors;
        self.latency_us.add(&other.latency_us).expect("histogram");
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Append(c) | Command::Enrolment { common: c, .. } => c.threads.max(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("umadb-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), DcbError> {
    match cli.command {
        Command::Append(common) => {
            let timing = Timing::new(&common, 10.0, 2.0);
            for &k in &common.clients {
                let clients = connect(&common, k).await?;
                let stats = drive(&clients, k, timing, |client, caller| async move {
                    append_one(&client, caller).await
                })
                .await;
                let secs = timing.measured.as_secs_f64();
                println!(
                    "{}",
                    json!({
                        "system": "umadb", "workload": "append", "clients": k,
                        "seconds": secs,
                        "ops_per_s": stats.ops as f64 / secs,
                        "p50_ms": stats.ms(0.5), "p90_ms": stats.ms(0.9), "p99_ms": stats.ms(0.99),
                        "errors": stats.errors,
                    })
                );
            }
        }
        Command::Enrolment {
            common,
            courses,
            capacity,
            students,
            max_courses,
        } => {
            let scenario = Scenario {
                courses,
                capacity,
                students,
                max_courses,
            };
            let timing = Timing::new(&common, 8.0, 6.0);
            for &k in &common.clients {
                let clients = connect(&common, k).await?;
                scenario.define_courses(&clients[0]).await?;
                let stats = drive(&clients, k, timing, move |client, _| async move {
                    let (course, student) = {
                        let mut rng = rand::thread_rng();
                        (
                            rng.gen_range(0..scenario.courses),
                            rng.gen_range(0..scenario.students),
                        )
                    };
                    scenario.subscribe(&client, course, student).await
                })
                .await;
                let violations = scenario.violations(&clients[0]).await?;
                for v in &violations {
                    eprintln!("invariant violated: {v}");
                }
                let secs = timing.measured.as_secs_f64();
                println!(
                    "{}",
                    json!({
                        "system": "umadb", "workload": "enrolment", "clients": k,
                        "seconds": secs,
                        // Decisions that appended a subscription, per second.
                        "ops_per_s": stats.appended as f64 / secs,
                        // Every decision, subscribing or refusing (`dcb-store bench`'s
                        // `ops_per_s`; its `events_per_s` is the one above).
                        "decisions_per_s": stats.ops as f64 / secs,
                        "p50_ms": stats.ms(0.5), "p90_ms": stats.ms(0.9), "p99_ms": stats.ms(0.99),
                        "conflicts": stats.conflicts,
                        "refused": stats.ops - stats.appended,
                        "errors": stats.errors,
                        "invariants": violations.is_empty(),
                    })
                );
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Timing {
    warmup: Duration,
    measured: Duration,
}

impl Timing {
    fn new(common: &Common, seconds: f64, warmup: f64) -> Self {
        Self {
            warmup: Duration::from_secs_f64(common.warmup.unwrap_or(warmup)),
            measured: Duration::from_secs_f64(common.seconds.unwrap_or(seconds)),
        }
    }
}

/// `k` clients, or one shared by all callers with `--shared-client`.
async fn connect(common: &Common, k: usize) -> Result<Vec<Arc<AsyncUmaDbClient>>, DcbError> {
    let n = if common.shared_client { 1 } else { k.max(1) };
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = UmaDbClient::new(common.url.clone()).connect_async().await?;
        clients.push(Arc::new(client));
    }
    Ok(clients)
}

/// Runs `callers` closed-loop callers (spread over `clients`), each starting its next
/// call when the last ends, for the warm-up and the window; counts the calls that end
/// in the window. A failed call is counted as an error and retried after 100 ms, as
/// `dcb-store bench` does.
async fn drive<F, Fut>(
    clients: &[Arc<AsyncUmaDbClient>],
    callers: usize,
    timing: Timing,
    op: F,
) -> Stats
where
    F: Fn(Arc<AsyncUmaDbClient>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Outcome, DcbError>> + Send,
{
    let start = Instant::now();
    let window_start = start + timing.warmup;
    let window_end = window_start + timing.measured;
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let client = clients[caller % clients.len()].clone();
            let op = op.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let mut last_error = None;
                loop {
                    let began = Instant::now();
                    if began >= window_end {
                        break;
                    }
                    let result = op(client.clone(), caller).await;
                    let done = Instant::now();
                    let counted = done >= window_start && done < window_end;
                    match result {
                        Ok(outcome) => {
                            if counted {
                                stats.ops += 1;
                                stats.appended += u64::from(outcome.appended);
                                stats.conflicts += outcome.conflicts;
                                let _ = stats.latency_us.record((done - began).as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            if counted {
                                stats.errors += 1;
                            }
                            last_error = Some(e.to_string());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if let Some(e) = last_error {
                    eprintln!("caller {caller}: last error: {e}");
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::new();
    for task in tasks {
        let stats = task.await.expect("caller task panicked");
        total.merge(&stats);
    }
    total
}

/// The `append` workload's call: one event, two tags, no condition.
async fn append_one(client: &AsyncUmaDbClient, caller: usize) -> Result<Outcome, DcbError> {
    let stream = rand::thread_rng().gen_range(0..100_000u32);
    let data = json!({
        "order": format!("o{stream}"), "customer": format!("c{caller}"),
        "payload": "x".repeat(150),
    });
    let event = DcbEvent::new()
        .event_type("BenchAppended")
        .tags([format!("stream:{stream}"), format!("client:{caller}")])
        .data(serde_json::to_vec(&data).expect("json"))
        .uuid(Uuid::new_v4());
    client.append(vec![event], None, None).await?;
    Ok(Outcome {
        appended: true,
        conflicts: 0,
    })
}

fn course_tag(c: usize) -> String {
    format!("course:{c}")
}

fn student_tag(s: usize) -> String {
    format!("student:{s}")
}

/// The size of the world (as `cli/src/enrolment.rs`).
#[derive(Clone, Copy)]
struct Scenario {
    courses: usize,
    capacity: u64,
    students: usize,
    max_courses: u64,
}

impl Scenario {
    /// Defines every course, uniquely (the condition refuses a second definition, so
    /// a server that already has them is fine), 64 at a time.
    async fn define_courses(&self, client: &AsyncUmaDbClient) -> Result<(), DcbError> {
        let courses: Vec<usize> = (0..self.courses).collect();
        for chunk in courses.chunks(64) {
            let calls = chunk.iter().map(|&c| {
                let tag = course_tag(c);
                let unique = DcbQuery::new().item(
                    DcbQueryItem::new()
                        .types([COURSE_DEFINED])
                        .tags([tag.clone()]),
                );
                let data = json!({"courseId": c, "capacity": self.capacity});
                let event = DcbEvent::new()
                    .event_type(COURSE_DEFINED)
                    .tags([tag])
                    .data(serde_json::to_vec(&data).expect("json"))
                    .uuid(Uuid::new_v4());
                client.append(vec![event], Some(DcbAppendCondition::new(unique)), None)
            });
            for result in join_all(calls).await {
                match result {
                    Ok(_) | Err(DcbError::IntegrityError(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// One decision: subscribe `student` to `course` if the rules allow it (the
    /// `plain` decider of `cli/src/enrolment.rs`).
    async fn subscribe(
        &self,
        client: &AsyncUmaDbClient,
        course: usize,
        student: usize,
    ) -> Result<Outcome, DcbError> {
        let (course_tag, student_tag) = (course_tag(course), student_tag(student));
        let query = DcbQuery::new()
            .item(
                DcbQueryItem::new()
                    .types([COURSE_DEFINED, SUBSCRIBED])
                    .tags([course_tag.clone()]),
            )
            .item(
                DcbQueryItem::new()
                    .types([SUBSCRIBED])
                    .tags([student_tag.clone()]),
            );
        let mut conflicts = 0;
        loop {
            let (events, head) = client
                .read_with_head(Some(query.clone()), None, false, None)
                .await?;
            let (mut defined, mut seats_taken, mut student_courses, mut already) =
                (false, 0u64, 0u64, false);
            for e in &events {
                let has_course = e.event.tags.contains(&course_tag);
                let has_student = e.event.tags.contains(&student_tag);
                match e.event.event_type.as_str() {
                    COURSE_DEFINED if has_course => defined = true,
                    SUBSCRIBED => {
                        seats_taken += u64::from(has_course);
                        student_courses += u64::from(has_student);
                        already |= has_course && has_student;
                    }
                    _ => {}
                }
            }
            if !defined
                || already
                || seats_taken >= self.capacity
                || student_courses >= self.max_courses
            {
                return Ok(Outcome {
                    appended: false,
                    conflicts,
                });
            }
            // The read's head; were it missing with events read, the last of them
            // (never "none", which would make the condition see the events just read).
            let head = head.or_else(|| events.iter().map(|e| e.position).max());
            let data = json!({"courseId": course, "studentId": student});
            let event = DcbEvent::new()
                .event_type(SUBSCRIBED)
                .tags([course_tag.clone(), student_tag.clone()])
                .data(serde_json::to_vec(&data).expect("json"))
                .uuid(Uuid::new_v4());
            let condition = DcbAppendCondition::new(query.clone()).after(head);
            match client.append(vec![event], Some(condition), None).await {
                Ok(_) => {
                    return Ok(Outcome {
                        appended: true,
                        conflicts,
                    })
                }
                Err(DcbError::IntegrityError(_)) => conflicts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads every subscription back and lists what breaks an invariant: a course over
    /// capacity, a double subscription, a student over the limit.
    async fn violations(&self, client: &AsyncUmaDbClient) -> Result<Vec<String>, DcbError> {
        let query = DcbQuery::new().item(DcbQueryItem::new().types([SUBSCRIBED]));
        let (events, _) = client
            .read_with_head(Some(query), None, false, None)
            .await?;
        let mut per_course: HashMap<u64, u64> = HashMap::new();
        let mut per_student: HashMap<u64, u64> = HashMap::new();
        let mut pairs = HashSet::new();
        let mut violations = Vec::new();
        for e in &events {
            let data: serde_json::Value = serde_json::from_slice(&e.event.data)
                .map_err(|err| DcbError::DeserializationError(err.to_string()))?;
            let field = |name: &str| data[name].as_u64().unwrap_or(u64::MAX);
            let (c, s) = (field("courseId"), field("studentId"));
            *per_course.entry(c).or_default() += 1;
            *per_student.entry(s).or_default() += 1;
            if !pairs.insert((c, s)) {
                violations.push(format!("student {s} subscribed twice to course {c}"));
            }
        }
        for (c, n) in &per_course {
            if *n > self.capacity {
                violations.push(format!(
                    "course {c} has {n} students, capacity {}",
                    self.capacity
                ));
            }
        }
        for (s, n) in &per_student {
            if *n > self.max_courses {
                violations.push(format!(
                    "student {s} has {n} courses, limit {}",
                    self.max_courses
                ));
            }
        }
        Ok(violations)
    }
}
