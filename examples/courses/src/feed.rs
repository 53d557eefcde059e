//! `GET /courses/{course}/events`: the course's events as Server-Sent Events, live,
//! fed by a subscription. Each event's SSE `id` is its position, so a client that
//! reconnects with `Last-Event-ID` (browsers do) resumes exactly after the last event
//! it received; `?after=N` does the same explicitly. Empty batches become comments
//! (`: scanned N`), which keep idle connections alive. The subscription ends when the
//! client goes away (actix-web drops the stream).

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use dcb_store::{EventBatch, EventStore, Query, QueryItem, SubscribeOptions};
use futures_util::StreamExt;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct FeedParams {
    after: Option<u64>,
}

pub async fn course_events(
    store: web::Data<EventStore>,
    path: web::Path<String>,
    params: web::Query<FeedParams>,
    request: HttpRequest,
) -> HttpResponse {
    let course = path.into_inner();
    let last_event_id = request
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut options = SubscribeOptions::default();
    if let Some(after) = last_event_id.or(params.after) {
        options = options.after(after);
    }
    let query = Query::new([QueryItem::new().tags([crate::course_tag(&course)])]);
    let subscription = match store.subscribe(query, options).await {
        Ok(subscription) => subscription,
        Err(error) => return crate::error_response(&error),
    };
    let body = subscription.map(|batch| match batch {
        Ok(batch) => Ok::<_, actix_web::Error>(Bytes::from(frames(&batch))),
        Err(error) => Err(actix_web::error::ErrorServiceUnavailable(error.to_string())),
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body)
}

/// One SSE frame per event (`id`, `event`, `data`), or a comment for progress.
fn frames(batch: &EventBatch) -> String {
    if batch.events.is_empty() {
        return format!(": scanned {}\n\n", batch.scanned_to);
    }
    let mut out = String::new();
    for e in &batch.events {
        let data = serde_json::json!({
            "position": e.position,
            "type": e.event.event_type(),
            "tags": e.event.tags(),
            "data": serde_json::from_str::<serde_json::Value>(e.event.data_json())
                .unwrap_or(serde_json::Value::Null),
        });
        // JSON has no raw newlines, so one `data:` line holds it.
        out.push_str(&format!(
            "id: {}\nevent: {}\ndata: {data}\n\n",
            e.position,
            e.event.event_type()
        ));
    }
    out
}
