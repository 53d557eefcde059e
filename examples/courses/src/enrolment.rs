//! Subscribing a student: one decision on a projection of the course and the
//! student, through `EventStore::decide` (read, decide, append under the model's
//! condition, again on conflict).

use std::collections::BTreeSet;

use dcb_store::{Event, Projection, Query, QueryItem, SequencedEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{course_tag, student_tag, COURSE_DEFINED, MAX_COURSES_PER_STUDENT, SUBSCRIBED};

/// What one subscription decision needs: the course (definition and subscriptions)
/// and how many courses the student has.
pub(crate) struct Enrolment {
    pub course: String,
    pub student: String,
}

/// The state of [`Enrolment`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct EnrolmentState {
    pub capacity: Option<u32>,
    pub students: BTreeSet<String>,
    pub student_courses: usize,
}

impl Projection for Enrolment {
    type State = EnrolmentState;

    fn name(&self) -> &'static str {
        "enrolment"
    }

    fn query(&self) -> Query {
        Query::new([
            QueryItem::new()
                .types([COURSE_DEFINED, SUBSCRIBED])
                .tags([course_tag(&self.course)]),
            QueryItem::new()
                .types([SUBSCRIBED])
                .tags([student_tag(&self.student)]),
        ])
    }

    fn initial(&self) -> EnrolmentState {
        EnrolmentState::default()
    }

    fn apply(&self, state: &mut EnrolmentState, e: &SequencedEvent) {
        let data: serde_json::Value = e.event.data().unwrap_or_default();
        let tags = e.event.tags();
        match e.event.event_type() {
            COURSE_DEFINED if tags.contains(&course_tag(&self.course)) => {
                state.capacity = data["capacity"].as_u64().map(|c| c as u32);
            }
            SUBSCRIBED => {
                if tags.contains(&course_tag(&self.course)) {
                    if let Some(s) = data["studentId"].as_str() {
                        state.students.insert(s.to_owned());
                    }
                }
                if tags.contains(&student_tag(&self.student)) {
                    state.student_courses += 1;
                }
            }
            _ => {}
        }
    }
}

/// Why a subscription is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoSuchCourse,
    AlreadySubscribed,
    Full,
    TooManyCourses,
}

/// The rule: the event to append, or why not.
pub(crate) fn decide(enrolment: &Enrolment, state: &EnrolmentState) -> Result<Vec<Event>, Refusal> {
    let capacity = state.capacity.ok_or(Refusal::NoSuchCourse)?;
    if state.students.contains(&enrolment.student) {
        return Err(Refusal::AlreadySubscribed);
    }
    if state.students.len() >= capacity as usize {
        return Err(Refusal::Full);
    }
    if state.student_courses >= MAX_COURSES_PER_STUDENT {
        return Err(Refusal::TooManyCourses);
    }
    Ok(vec![Event::new(
        SUBSCRIBED,
        json!({"courseId": enrolment.course, "studentId": enrolment.student}),
    )
    .with_tags([
        course_tag(&enrolment.course),
        student_tag(&enrolment.student),
    ])])
}
