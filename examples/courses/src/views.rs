//! What runs beside the requests, exactly once per event: the `course_seats` read
//! model (tables of its own, written in the consumer's transaction, so they move with
//! its checkpoint) that `GET /courses/{course}` answers from, and the welcome process
//! manager, which appends one `WelcomeSent` per subscription (a tracked append: a
//! redelivered subscription finds its welcome already tracked).

use std::sync::{Arc, Mutex};

use dcb_store::tokio_postgres::{Client, Transaction};
use dcb_store::{
    DeliveryError, Error, Event, EventBatch, EventStore, ProcessManager, Query, QueryItem,
    Reaction, ReadModel, ReadModelHandle, SequencedEvent, SubscribeOptions, SubscriptionHandle,
};
use serde_json::json;

use crate::{student_tag, COURSE_DEFINED, SUBSCRIBED};

/// The read model's consumer name: its checkpoint is the position the tables reflect.
pub const SEATS: &str = "course-seats";
/// The process manager's consumer name.
pub const WELCOME: &str = "welcome";
/// The event the process manager appends, once per subscription.
pub const WELCOME_SENT: &str = "WelcomeSent";

/// The read model: `course_seats(course, capacity, taken)` and
/// `course_students(course, student, position)` in the store's schema.
struct CourseSeats {
    schema: String,
}

fn text(data: &serde_json::Value, key: &str) -> Result<String, DeliveryError> {
    data[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| DeliveryError::new(format!("no {key} in the event")))
}

impl ReadModel for CourseSeats {
    async fn apply(
        &mut self,
        batch: &EventBatch,
        tx: &Transaction<'_>,
    ) -> Result<(), DeliveryError> {
        let s = &self.schema;
        for e in &batch.events {
            let data: serde_json::Value = e.event.data()?;
            match e.event.event_type() {
                COURSE_DEFINED => {
                    let capacity = data["capacity"].as_i64().unwrap_or(0) as i32;
                    tx.execute(
                        &format!(
                            "INSERT INTO \"{s}\".course_seats (course, capacity, taken)
                             VALUES ($1, $2, 0)"
                        ),
                        &[&text(&data, "courseId")?, &capacity],
                    )
                    .await?;
                }
                SUBSCRIBED => {
                    let course = text(&data, "courseId")?;
                    // No ON CONFLICT: an event applied twice would fail here.
                    tx.execute(
                        &format!(
                            "INSERT INTO \"{s}\".course_students (course, student, position)
                             VALUES ($1, $2, $3)"
                        ),
                        &[&course, &text(&data, "studentId")?, &(e.position as i64)],
                    )
                    .await?;
                    tx.execute(
                        &format!(
                            "UPDATE \"{s}\".course_seats SET taken = taken + 1 WHERE course = $1"
                        ),
                        &[&course],
                    )
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn reset(&mut self, tx: &Transaction<'_>) -> Result<(), DeliveryError> {
        let s = &self.schema;
        tx.batch_execute(&format!(
            "DELETE FROM \"{s}\".course_students; DELETE FROM \"{s}\".course_seats"
        ))
        .await?;
        Ok(())
    }
}

/// The process manager: a welcome for each subscription, appended once.
struct Welcome;

impl ProcessManager for Welcome {
    async fn react(
        &mut self,
        event: &SequencedEvent,
        reaction: &Reaction<'_>,
    ) -> Result<(), DeliveryError> {
        let data: serde_json::Value = event.event.data()?;
        let (course, student) = (text(&data, "courseId")?, text(&data, "studentId")?);
        let welcome = Event::new(
            WELCOME_SENT,
            json!({"courseId": course, "studentId": student, "subscription": event.position}),
        )
        // The student's, not the course's: the course's feed shows its own events.
        .with_tags([student_tag(&student)]);
        // `None`: this subscription's welcome was appended before (a redelivery).
        reaction.append(vec![welcome], None).await?;
        Ok(())
    }
}

/// The running read model and process manager, and the connection the read model's
/// tables are read on.
pub struct Views {
    store: EventStore,
    client: Mutex<Arc<Client>>,
    seats: ReadModelHandle,
    welcome: SubscriptionHandle,
}

/// Why the read model could not be read.
#[derive(Debug)]
pub(crate) enum ViewError {
    Store(Error),
    Database(dcb_store::tokio_postgres::Error),
}

impl From<Error> for ViewError {
    fn from(error: Error) -> Self {
        ViewError::Store(error)
    }
}

/// A course as the read model has it.
pub(crate) struct SeatsRow {
    pub capacity: u32,
    pub students: Vec<String>,
}

impl Views {
    /// Creates the read model's tables (if new) and starts the read model and the
    /// process manager on this thread's arbiter.
    ///
    /// # Errors
    /// When the tables cannot be created or a consumer cannot start.
    pub async fn start(store: &EventStore) -> Result<Views, Error> {
        let client = store.open_connection().await?;
        let s = store.config().schema();
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{s}\".course_seats (
                     course text PRIMARY KEY, capacity int NOT NULL, taken int NOT NULL);
                 CREATE TABLE IF NOT EXISTS \"{s}\".course_students (
                     course text NOT NULL, student text NOT NULL, position bigint NOT NULL,
                     PRIMARY KEY (course, student))"
            ))
            .await
            .map_err(|e| Error::Config(format!("cannot create the read model's tables: {e}")))?;
        let seats = store
            .run_read_model(
                Query::new([QueryItem::new().types([COURSE_DEFINED, SUBSCRIBED])]),
                SubscribeOptions::default().consumer(SEATS),
                CourseSeats {
                    schema: s.to_owned(),
                },
            )
            .await?;
        let welcome = store
            .run_process_manager(
                Query::new([QueryItem::new().types([SUBSCRIBED])]),
                SubscribeOptions::default().consumer(WELCOME),
                Welcome,
            )
            .await?;
        Ok(Views {
            store: store.clone(),
            client: Mutex::new(Arc::new(client)),
            seats,
            welcome,
        })
    }

    /// The connection for the read model's tables, made again if it was lost.
    async fn client(&self) -> Result<Arc<Client>, Error> {
        let current = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if !current.is_closed() {
            return Ok(current);
        }
        let fresh = Arc::new(self.store.open_connection().await?);
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh.clone();
        Ok(fresh)
    }

    /// The course from the read model, and the position it reflects at least (the
    /// checkpoint, read before the rows).
    pub(crate) async fn course(&self, course: &str) -> Result<(Option<SeatsRow>, u64), ViewError> {
        let position = self.store.checkpoint(SEATS).await?.unwrap_or(0);
        let client = self.client().await?;
        let s = self.store.config().schema();
        let database = ViewError::Database;
        let Some(row) = client
            .query_opt(
                &format!("SELECT capacity FROM \"{s}\".course_seats WHERE course = $1"),
                &[&course],
            )
            .await
            .map_err(database)?
        else {
            return Ok((None, position));
        };
        let students = client
            .query(
                &format!(
                    "SELECT student FROM \"{s}\".course_students WHERE course = $1 ORDER BY student"
                ),
                &[&course],
            )
            .await
            .map_err(database)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let capacity: i32 = row.get(0);
        Ok((
            Some(SeatsRow {
                capacity: capacity.max(0) as u32,
                students,
            }),
            position,
        ))
    }

    /// Stops the read model and the process manager.
    pub async fn stop(self) {
        self.seats.stop().await;
        self.welcome.stop().await;
    }
}
