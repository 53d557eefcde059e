//! Course subscriptions over HTTP, on one shared [`EventStore`].
//!
//! Every decision is the DCB loop, through `EventStore::decide`: a projection of what
//! the rule depends on (the course's events and the student's, `enrolment.rs`), the
//! rule, and an append under the condition "nothing of this changed since the model's
//! head", decided again on conflict. So two requests for the last seat can never both
//! get it, in one process or in many. Beside the requests (`views.rs`), a read model
//! keeps `course_seats` exactly once per event, and a process manager appends one
//! `WelcomeSent` per subscription.
//!
//! | method and path | does |
//! |---|---|
//! | `POST /courses` `{"id", "capacity"}` | defines a course (201; 409 if it exists) |
//! | `POST /courses/{course}/students/{student}` | subscribes (201 with the event's `position`; 404 no course; 409 full, already in, or the student has 5 courses) |
//! | `GET /courses/{course}` | the course from the read model, with the `position` it reflects (404 if not defined); `?at_least=P` first waits (up to 5 s, else 504) until the read model has applied position `P` |
//! | `GET /students/{student}/courses` | the student's courses |
//! | `GET /courses/{course}/events` | the course's events, live, as Server-Sent Events (`id` = position; resumes after `Last-Event-ID` or `?after=N`) |
//! | `GET /metrics` | the store's metrics, Prometheus text |
//! | `GET /health` | `store.ping()`: 200, or 503 |
//!
//! Store errors map to HTTP as [`error_response`] says.

mod enrolment;
mod feed;
mod views;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, Responder};
use dcb_store::{
    AppendCondition, Decided, Error, Event, EventStore, Query, QueryItem, ReadOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use views::{Views, SEATS, WELCOME, WELCOME_SENT};

use enrolment::{Enrolment, Refusal};
use views::ViewError;

/// The most courses one student may take.
pub const MAX_COURSES_PER_STUDENT: usize = 5;
/// How long a request keeps deciding again after conflicts before giving up (409).
/// Under contention for one course, each batch of the store lets one of the rival
/// decisions through, so the others need a few rounds.
const DECISION_TIME: Duration = Duration::from_secs(5);

const COURSE_DEFINED: &str = "CourseDefined";
/// The event of a subscription.
pub const SUBSCRIBED: &str = "StudentSubscribed";
/// How long `?at_least=P` waits for the read model.
const READ_YOUR_WRITES: Duration = Duration::from_secs(5);

/// The routes, for `App::new().configure(routes)`, with the store and the
/// [`Views`] as `web::Data`.
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
    /// The read model has applied every event up to here (at least).
    pub position: u64,
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

async fn subscribe(
    store: web::Data<EventStore>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (course, student) = path.into_inner();
    let enrolment = Enrolment { course, student };
    let give_up = std::time::Instant::now() + DECISION_TIME;
    loop {
        // `decide` retries conflicts itself (`decide_retries`); under heavy contention
        // for one course this keeps deciding until the request's time is up.
        let decided = store
            .decide(&enrolment, |state| enrolment::decide(&enrolment, state))
            .await;
        return match decided {
            Ok(Decided::Appended(at)) => HttpResponse::Created().json(json!({
                "course": enrolment.course,
                "student": enrolment.student,
                "position": at.first_position,
            })),
            Ok(Decided::Rejected(refusal)) => refused(&refusal),
            Ok(_unchanged) => message(StatusCode::CONFLICT, "nothing to do"),
            Err(Error::ConditionFailed { .. }) if std::time::Instant::now() < give_up => continue,
            Err(e) => error_response(&e),
        };
    }
}

fn refused(refusal: &Refusal) -> HttpResponse {
    match refusal {
        Refusal::NoSuchCourse => message(StatusCode::NOT_FOUND, "no such course"),
        Refusal::AlreadySubscribed => {
            message(StatusCode::CONFLICT, "the student is already subscribed")
        }
        Refusal::Full => message(StatusCode::CONFLICT, "the course is full"),
        Refusal::TooManyCourses => message(
            StatusCode::CONFLICT,
            "the student has the most courses allowed",
        ),
    }
}

/// `?at_least=P` of `GET /courses/{course}`.
#[derive(Debug, Deserialize)]
struct AtLeast {
    at_least: Option<u64>,
}

async fn show_course(
    store: web::Data<EventStore>,
    views: web::Data<Views>,
    path: web::Path<String>,
    at: web::Query<AtLeast>,
) -> HttpResponse {
    let course = path.into_inner();
    if let Some(position) = at.at_least {
        // Read your writes: the read model has applied the caller's append.
        if let Err(e) = store
            .wait_for_checkpoint(SEATS, position, READ_YOUR_WRITES)
            .await
        {
            return error_response(&e);
        }
    }
    match views.course(&course).await {
        Ok((Some(row), position)) => HttpResponse::Ok().json(CourseView {
            id: course,
            capacity: row.capacity,
            students: row.students,
            position,
        }),
        Ok((None, _)) => message(StatusCode::NOT_FOUND, "no such course"),
        Err(ViewError::Store(e)) => error_response(&e),
        Err(ViewError::Database(e)) => {
            tracing::error!(error = %e, "reading the read model failed");
            message(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
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
