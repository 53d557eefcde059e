//! The course-subscription scenario from dcb.events, shared by `demo` and `bench
//! enrolment`: courses with a capacity, students subscribing, at most N courses per
//! student. Two ways to decide, compared by the benchmarks:
//! - `plain`: read one two-item query from the start, fold it, append with the
//!   condition built from the read's head, reading again and retrying on conflict. An
//!   append whose outcome is unknown (`may_have_been_written`) is sent again
//!   unchanged, same id, which returns its positions if it was written.
//! - `decide`: `EventStore::decide` with two projections, the course's seats and the
//!   student's courses: cached states, and only what is new read per decision.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clap::ValueEnum;
use dcb_store::{
    AppendCondition, Decided, Error, Event, EventStore, Projection, Query, QueryItem, ReadOptions,
    SequencedEvent,
};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

const COURSE_DEFINED: &str = "CourseDefined";
const SUBSCRIBED: &str = "StudentSubscribedToCourse";

/// How a decision is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decider {
    /// Read the whole boundary, fold, append with the read's condition.
    Plain,
    /// `EventStore::decide` with cached projections.
    Decide,
}

/// The size of the world.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub courses: usize,
    pub capacity: u64,
    pub students: usize,
    pub max_courses_per_student: u64,
}

/// What one decision did.
pub struct Outcome {
    /// The id of the subscription event, when the decision was to subscribe and the
    /// store acknowledged it.
    pub accepted: Option<Uuid>,
    /// Appends refused by their condition before the decision settled.
    pub conflicts: u64,
}

/// Times an append whose outcome is unknown is sent again before the decision gives up.
const UNKNOWN_OUTCOME_RETRIES: u32 = 3;

fn course_tag(c: usize) -> String {
    format!("course:{c}")
}

fn student_tag(s: usize) -> String {
    format!("student:{s}")
}

impl Scenario {
    /// Defines every course (uniquely: the condition refuses a second definition),
    /// 64 at a time.
    pub async fn define_courses(&self, store: &EventStore) -> Result<(), Error> {
        let courses: Vec<usize> = (0..self.courses).collect();
        for chunk in courses.chunks(64) {
            let calls = chunk.iter().map(|&c| {
                let tag = course_tag(c);
                let unique =
                    Query::new([QueryItem::new().types([COURSE_DEFINED]).tags([tag.clone()])]);
                let event = Event::new(
                    COURSE_DEFINED,
                    json!({"courseId": c, "capacity": self.capacity}),
                )
                .with_tags([tag]);
                store.append(vec![event], Some(AppendCondition::new(unique, None)))
            });
            for result in join_all(calls).await {
                match result {
                    Ok(_) | Err(Error::ConditionFailed { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Stores `n` subscriptions before a run, as if earlier decisions had made them:
    /// subscription i is student `i % students` to course `(i % students + i /
    /// students) % courses`, so courses and students get even shares and no pair
    /// repeats. Refuses an `n` the rules would not allow.
    pub async fn prefill(&self, store: &EventStore, n: u64) -> Result<(), Error> {
        let (courses, students) = (self.courses as u64, self.students as u64);
        let per_student = n.div_ceil(students);
        let per_course = per_student * students.div_ceil(courses);
        if per_student > courses.min(self.max_courses_per_student) || per_course > self.capacity {
            return Err(Error::Config(format!(
                "{n} subscriptions do not fit {courses} courses x {} seats, {students} students of at most {} courses",
                self.capacity, self.max_courses_per_student
            )));
        }
        let subscriptions: Vec<u64> = (0..n).collect();
        for chunk in subscriptions.chunks(1_000) {
            let events = chunk
                .iter()
                .map(|&i| {
                    let student = i % students;
                    let course = (student + i / students) % courses;
                    let (course, student) = (course as usize, student as usize);
                    Event::new(
                        SUBSCRIBED,
                        json!({"courseId": course, "studentId": student}),
                    )
                    .with_tags([course_tag(course), student_tag(student)])
                })
                .collect();
            store.append(events, None).await?;
        }
        Ok(())
    }

    /// One decision, made the way `decider` says.
    pub async fn decide(
        &self,
        decider: Decider,
        store: &EventStore,
        course: usize,
        student: usize,
    ) -> Result<Outcome, Error> {
        match decider {
            Decider::Plain => self.subscribe(store, course, student).await,
            Decider::Decide => self.subscribe_by_decide(store, course, student).await,
        }
    }

    /// One decision through `decide`: the course's seats and the student's courses.
    async fn subscribe_by_decide(
        &self,
        store: &EventStore,
        course: usize,
        student: usize,
    ) -> Result<Outcome, Error> {
        let mut attempts = 0u64;
        let mut id = None;
        let decided = store
            .decide(
                &(CourseSeats(course), StudentCourses(student)),
                |(seats, courses)| {
                    attempts += 1;
                    if !seats.defined
                        || courses.contains(&course)
                        || seats.taken >= self.capacity
                        || courses.len() as u64 >= self.max_courses_per_student
                    {
                        return Err(());
                    }
                    let event = Event::new(
                        SUBSCRIBED,
                        json!({"courseId": course, "studentId": student}),
                    )
                    .with_tags([course_tag(course), student_tag(student)]);
                    id = Some(event.id());
                    Ok(vec![event])
                },
            )
            .await?;
        Ok(Outcome {
            accepted: match decided {
                Decided::Appended(_) => id,
                _ => None,
            },
            conflicts: attempts.saturating_sub(1),
        })
    }

    /// One decision: subscribe `student` to `course` if the rules allow it.
    pub async fn subscribe(
        &self,
        store: &EventStore,
        course: usize,
        student: usize,
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
            let (mut defined, mut seats_taken, mut student_courses, mut already) =
                (false, 0, 0, false);
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
            if !defined
                || already
                || seats_taken >= self.capacity
                || student_courses >= self.max_courses_per_student
            {
                return Ok(Outcome {
                    accepted: None,
                    conflicts,
                });
            }
            let event = Event::new(
                SUBSCRIBED,
                json!({"courseId": course, "studentId": student}),
            )
            .with_tags([course_tag.clone(), student_tag.clone()]);
            let condition = AppendCondition::new(query.clone(), read.head);
            match append_until_known(store, event.clone(), condition).await {
                Ok(()) => {
                    return Ok(Outcome {
                        accepted: Some(event.id()),
                        conflicts,
                    })
                }
                Err(Error::ConditionFailed { .. }) => conflicts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads every subscription back (of all processes deciding on this schema) and
    /// lists what breaks an invariant: a course over capacity, a double subscription,
    /// a student over the limit, or a subscription this process was told is stored
    /// (`acknowledged`) that is not. Returns them with the number of subscriptions.
    pub async fn violations(
        &self,
        store: &EventStore,
        acknowledged: &HashSet<Uuid>,
    ) -> Result<(Vec<String>, u64), Error> {
        let mut per_course: HashMap<u64, u64> = HashMap::new();
        let mut per_student: HashMap<u64, u64> = HashMap::new();
        let mut pairs = HashSet::new();
        let mut violations = Vec::new();
        let mut subscriptions = 0;
        let mut found = 0;
        let query = Query::new([QueryItem::new().types([SUBSCRIBED])]);
        let mut events = store.read_stream(query, ReadOptions::default());
        while let Some(event) = events.next().await {
            let event = event?;
            let data: serde_json::Value = event.event.data()?;
            let field = |name: &str| data[name].as_u64().unwrap_or(u64::MAX);
            let (c, s) = (field("courseId"), field("studentId"));
            subscriptions += 1;
            found += u64::from(acknowledged.contains(&event.event.id()));
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
            if *n > self.max_courses_per_student {
                violations.push(format!(
                    "student {s} has {n} courses, limit {}",
                    self.max_courses_per_student
                ));
            }
        }
        // Ids are unique in the store, so each acknowledged one is there once or not.
        if found != acknowledged.len() as u64 {
            violations.push(format!(
                "{} subscriptions were acknowledged but only {found} of them are stored",
                acknowledged.len()
            ));
        }
        Ok((violations, subscriptions))
    }
}

/// Appends `event` under `condition`; when the outcome is unknown, sends the very same
/// append again (same id: a stored one comes back with its positions).
async fn append_until_known(
    store: &EventStore,
    event: Event,
    condition: AppendCondition,
) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        match store
            .append(vec![event.clone()], Some(condition.clone()))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.may_have_been_written() && attempt < UNKNOWN_OUTCOME_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A course: defined or not, and its seats taken.
pub struct CourseSeats(pub usize);

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Seats {
    defined: bool,
    taken: u64,
}

impl Projection for CourseSeats {
    type State = Seats;

    fn name(&self) -> &'static str {
        "course-seats"
    }

    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types([COURSE_DEFINED, SUBSCRIBED])
            .tags([course_tag(self.0)])])
    }

    fn initial(&self) -> Seats {
        Seats::default()
    }

    fn apply(&self, seats: &mut Seats, event: &SequencedEvent) {
        match event.event.event_type() {
            COURSE_DEFINED => seats.defined = true,
            _ => seats.taken += 1,
        }
    }
}

/// The courses a student has subscribed to.
pub struct StudentCourses(pub usize);

impl Projection for StudentCourses {
    type State = Vec<usize>;

    fn name(&self) -> &'static str {
        "student-courses"
    }

    fn query(&self) -> Query {
        Query::new([QueryItem::new()
            .types([SUBSCRIBED])
            .tags([student_tag(self.0)])])
    }

    fn initial(&self) -> Vec<usize> {
        Vec::new()
    }

    fn apply(&self, courses: &mut Vec<usize>, event: &SequencedEvent) {
        // The course is the event's course tag (the data says the same).
        let course = event
            .event
            .tags()
            .iter()
            .find_map(|t| t.strip_prefix("course:")?.parse().ok());
        if let Some(course) = course {
            courses.push(course);
        }
    }
}
