//! Course subscriptions over HTTP, on one shared [`EventStore`].
//!
//! Every decision is the DCB loop: read what the rule depends on (the course's events
//! and the student's), decide, append with the condition "nothing of this changed since
//! my read", and on `ConditionFailed` read again and decide anew (a few times). So two
//! requests for the last seat can never both get it, in one process or in many.
//!
//! | method and path | does |
//! |---|---|
//! | `POST /courses` `{"id", "capacity"}` | defines a course (201; 409 if it exists) |
//! | `POST /courses/{course}/students/{student}` | subscribes (201; 404 no course; 409 full, already in, or the student has 5 courses) |
//! | `GET /courses/{course}` | the course with its students (404 if not defined) |
//! | `GET /students/{student}/courses` | the student's courses |
//! | `GET /courses/{course}/events` | the course's events, live, as Server-Sent Events (`id` = position; resumes after `Last-Event-ID` or `?after=N`) |
//! | `GET /metrics` | the store's metrics, Prometheus text |
//! | `GET /health` | `store.ping()`: 200, or 503 |
//!
//! Store errors map to HTTP as [`error_response`] says.

mod feed;

use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, Responder};
use dcb_store::{AppendCondition, Error, Event, EventStore, Query, QueryItem, ReadOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The most courses one student may take.
pub const MAX_COURSES_PER_STUDENT: usize = 5;
/// How long a request keeps deciding again after conflicts before giving up (409).
/// Under contention for one course, each batch of the store lets one of the rival
/// decisions through, so the others need a few rounds.
const DECISION_TIME: Duration = Duration::from_secs(5);

const COURSE_DEFINED: &str = "CourseDefined";
const SUBSCRIBED: &str = "StudentSubscribed";

/// The routes, for `App::new().configure(routes)`, with the store as `web::Data`.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/courses", web::post().to(define_course))
        .route(
            "/courses/{course}/students/{student}",
            web::post().to(subscribe),
        )
        .route("/courses/{course}", web::get().to(show_course))
        .route(
            "/courses/{course}/events",
            web::get().to(feed::course_events),
        )
        .route(
            "/students/{student}/courses",
            web::get().to(student_courses),
        )
        .route("/metrics", web::get().to(metrics))
        .route("/health", web::get().to(health));
}

/// A course to define.
#[derive(Debug, Deserialize, Serialize)]
pub struct NewCourse {
    pub id: String,
    pub capacity: u32,
}

/// A course as `GET /courses/{course}` shows it.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct CourseView {
    pub id: String,
    pub capacity: u32,
    pub students: Vec<String>,
}

fn course_tag(course: &str) -> String {
    format!("course:{course}")
}

fn student_tag(student: &str) -> String {
    format!("student:{student}")
}

async fn define_course(store: web::Data<EventStore>, body: web::Json<NewCourse>) -> HttpResponse {
    let course = body.into_inner();
    let tag = course_tag(&course.id);
    // Defined once: the condition fails if any definition of it exists at all.
    let unique = Query::new([QueryItem::new().types([COURSE_DEFINED]).tags([tag.clone()])]);
    let event = Event::new(
        COURSE_DEFINED,
        json!({"courseId": course.id, "capacity": course.capacity}),
    )
    .with_tags([tag]);
    match store
        .append(vec![event], Some(AppendCondition::new(unique, None)))
        .await
    {
        Ok(_) => HttpResponse::Created().json(json!({"id": course.id})),
        Err(Error::ConditionFailed { .. }) => {
            message(StatusCode::CONFLICT, "the course is already defined")
        }
        Err(e) => error_response(&e),
    }
}

/// What a subscription decision reads: the course (definition and subscriptions) and
/// the student's subscriptions.
fn decision_query(course: &str, student: &str) -> Query {
    Query::new([
        QueryItem::new()
            .types([COURSE_DEFINED, SUBSCRIBED])
            .tags([course_tag(course)]),
        QueryItem::new()
            .types([SUBSCRIBED])
            .tags([student_tag(student)]),
    ])
}

async fn subscribe(
    store: web::Data<EventStore>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (course, student) = path.into_inner();
    let query = decision_query(&course, &student);
    let give_up = std::time::Instant::now() + DECISION_TIME;
    for attempt in 0u32.. {
        if attempt > 0 {
            if std::time::Instant::now() >= give_up {
                break;
            }
            // A short pause, staggered per request so rivals do not collide again in
            // lockstep.
            let mut hasher = std::hash::DefaultHasher::new();
            std::hash::Hash::hash(&(&student, attempt), &mut hasher);
            let stagger = std::hash::Hasher::finish(&hasher) % 5;
            actix_web::rt::time::sleep(Duration::from_millis(1 + stagger)).await;
        }
        let seen = match store.read(&query, ReadOptions::default()).await {
            Ok(seen) => seen,
            Err(e) => return error_response(&e),
        };
        let state = CourseState::from_events(&course, &student, &seen.events);
        let Some(capacity) = state.capacity else {
            return message(StatusCode::NOT_FOUND, "no such course");
        };
        if state.students.contains(&student) {
            return message(StatusCode::CONFLICT, "the student is already subscribed");
        }
        if state.students.len() >= capacity as usize {
            return message(StatusCode::CONFLICT, "the course is full");
        }
        if state.student_courses >= MAX_COURSES_PER_STUDENT {
            return message(
                StatusCode::CONFLICT,
                "the student has the most courses allowed",
            );
        }
        let event = Event::new(
            SUBSCRIBED,
            json!({"courseId": course, "studentId": student}),
        )
        .with_tags([course_tag(&course), student_tag(&student)]);
        let condition = AppendCondition::new(query.clone(), seen.head);
        match store.append(vec![event], Some(condition)).await {
            Ok(at) => {
                return HttpResponse::Created().json(
                    json!({"course": course, "student": student, "position": at.first_position}),
                )
            }
            // Someone decided first: read again and decide anew.
            Err(Error::ConditionFailed { .. }) => continue,
            Err(e) => return error_response(&e),
        }
    }
    error_response(&Error::ConditionFailed { after: None })
}

/// The state one decision needs, folded from the events of [`decision_query`].
#[derive(Default)]
struct CourseState {
    capacity: Option<u32>,
    students: BTreeSet<String>,
    student_courses: usize,
}

impl CourseState {
    fn from_events(course: &str, student: &str, events: &[dcb_store::SequencedEvent]) -> Self {
        let (course_tag, student_tag) = (course_tag(course), student_tag(student));
        let mut state = CourseState::default();
        for e in events {
            let data: serde_json::Value = e.event.data().unwrap_or_default();
            let tags = e.event.tags();
            match e.event.event_type() {
                COURSE_DEFINED if tags.contains(&course_tag) => {
                    state.capacity = data["capacity"].as_u64().map(|c| c as u32);
                }
                SUBSCRIBED => {
                    if tags.contains(&course_tag) {
                        if let Some(s) = data["studentId"].as_str() {
                            state.students.insert(s.to_owned());
                        }
                    }
                    if tags.contains(&student_tag) {
                        state.student_courses += 1;
                    }
                }
                _ => {}
            }
        }
        state
    }
}

async fn show_course(store: web::Data<EventStore>, path: web::Path<String>) -> HttpResponse {
    let course = path.into_inner();
    let query = Query::new([QueryItem::new()
        .types([COURSE_DEFINED, SUBSCRIBED])
        .tags([course_tag(&course)])]);
    match store.read(&query, ReadOptions::default()).await {
        Ok(read) => {
            let state = CourseState::from_events(&course, "", &read.events);
            match state.capacity {
                None => message(StatusCode::NOT_FOUND, "no such course"),
                Some(capacity) => HttpResponse::Ok().json(CourseView {
                    id: course,
                    capacity,
                    students: state.students.into_iter().collect(),
                }),
            }
        }
        Err(e) => error_response(&e),
    }
}

async fn student_courses(store: web::Data<EventStore>, path: web::Path<String>) -> HttpResponse {
    let student = path.into_inner();
    let query = Query::new([QueryItem::new()
        .types([SUBSCRIBED])
        .tags([student_tag(&student)])]);
    match store.read(&query, ReadOptions::default()).await {
        Ok(read) => {
            let courses: Vec<String> = read
                .events
                .iter()
                .filter_map(|e| {
                    let data: serde_json::Value = e.event.data().ok()?;
                    data["courseId"].as_str().map(str::to_owned)
                })
                .collect();
            HttpResponse::Ok().json(json!({"student": student, "courses": courses}))
        }
        Err(e) => error_response(&e),
    }
}

async fn metrics(store: web::Data<EventStore>) -> HttpResponse {
    match store.metrics().await {
        Ok(snapshot) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(snapshot.to_prometheus()),
        Err(e) => error_response(&e),
    }
}

async fn health(store: web::Data<EventStore>) -> impl Responder {
    match store.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok"})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "error": e.to_string()})),
    }
}

/// A JSON error body with `status`.
fn message(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": text}))
}

/// How a store error answers an HTTP request: a conflict that outlived its retries and
/// a duplicate event id are 409, input the store refuses is 400 with its message, an
/// overloaded writer is 503 with `Retry-After`, a timeout 504; anything else 500.
pub fn error_response(error: &Error) -> HttpResponse {
    match error {
        Error::ConditionFailed { .. } => message(
            StatusCode::CONFLICT,
            "too many concurrent changes to this course; try again",
        ),
        Error::DuplicateEventId { .. } => message(StatusCode::CONFLICT, &error.to_string()),
        Error::InvalidInput { reason } => message(StatusCode::BAD_REQUEST, reason),
        Error::Overloaded => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({"error": error.to_string()})),
        Error::Timeout { .. } => message(StatusCode::GATEWAY_TIMEOUT, &error.to_string()),
        _ => {
            tracing::error!(%error, "request failed");
            message(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// How long shutdown waits for the store to write what is queued.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
