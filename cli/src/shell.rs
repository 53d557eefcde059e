//! Driving the store from a shell: `read` and `tail` print events as JSON lines;
//! `append` reads appends as JSON lines from standard input and prints each one's
//! positions (or its error) as a JSON line, in input order.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Args;
use dcb_store::{
    AppendCondition, Config, Error, Event, EventStore, Query, QueryItem, ReadOptions,
    SequencedEvent, SubscribeOptions,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Which events: one query item of the given types (any) and tags (all), or every
/// event when neither is given.
#[derive(Args)]
pub struct Filter {
    /// Event types, comma-separated (an event of any of them matches).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Tags, comma-separated (an event must carry all of them).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Only events after this position.
    #[arg(long)]
    after: Option<u64>,
    /// Schema (default: the configured one).
    #[arg(long)]
    schema: Option<String>,
}

impl Filter {
    fn query(&self) -> Query {
        if self.types.is_empty() && self.tags.is_empty() {
            return Query::all();
        }
        Query::new([QueryItem::new()
            .types(self.types.iter().cloned())
            .tags(self.tags.iter().cloned())])
    }

    async fn store(&self, config: Config) -> Result<EventStore, Error> {
        let config = match &self.schema {
            Some(schema) => config.with_schema(schema),
            None => config,
        };
        EventStore::connect(config).await
    }
}

#[derive(Args)]
pub struct ReadArgs {
    #[command(flatten)]
    filter: Filter,
    /// At most this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Newest first.
    #[arg(long)]
    backwards: bool,
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    filter: Filter,
    /// A durable consumer: resume after its checkpoint, acknowledge each batch once
    /// printed; one holder at a time (others wait as standbys).
    #[arg(long)]
    consumer: Option<String>,
    /// Events per batch.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Exit once the head is reached instead of following live.
    #[arg(long)]
    exit_at_head: bool,
}

#[derive(Args)]
pub struct AppendArgs {
    /// Schema (default: the configured one).
    #[arg(long)]
    schema: Option<String>,
    /// Appends in flight at once (output stays in input order; with more than one,
    /// appends of neighbouring lines may be stored in another order).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Add `acknowledged_at_us` to each result: when the store acknowledged the append
    /// (Unix time, microseconds), for measuring delivery from another process.
    #[arg(long)]
    timestamps: bool,
}

/// One event as printed.
#[derive(serde::Serialize)]
struct Printed<'a> {
    position: u64,
    id: uuid::Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    tags: &'a [String],
    data: &'a RawValue,
    metadata: &'a RawValue,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

fn print(out: &mut impl Write, e: &SequencedEvent) -> std::io::Result<()> {
    let raw = |json: &str| RawValue::from_string(json.to_owned()).ok();
    let (Some(data), Some(metadata)) = (raw(e.event.data_json()), raw(e.event.metadata_json()))
    else {
        return Ok(());
    };
    let line = Printed {
        position: e.position,
        id: e.event.id(),
        event_type: e.event.event_type(),
        tags: e.event.tags(),
        data: &data,
        metadata: &metadata,
        occurred_at: e.event.occurred_at(),
        recorded_at: e.recorded_at,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

fn io_error(e: std::io::Error) -> Error {
    Error::InvalidInput {
        reason: format!("standard output: {e}"),
    }
}

pub async fn read(config: Config, args: ReadArgs) -> Result<ExitCode, Error> {
    let store = args.filter.store(config).await?;
    let mut options = ReadOptions::default();
    if let Some(after) = args.filter.after {
        options = options.after(after);
    }
    if let Some(limit) = args.limit {
        options = options.limit(limit);
    }
    if args.backwards {
        options = options.backwards();
    }
    let mut events = store.read_stream(args.filter.query(), options);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(event) = events.next().await {
        print(&mut out, &event?).map_err(io_error)?;
    }
    out.flush().map_err(io_error)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn tail(config: Config, args: TailArgs) -> Result<ExitCode, Error> {
    let store = args.filter.store(config).await?;
    let mut options = SubscribeOptions::default().batch_size(args.batch_size);
    if let Some(after) = args.filter.after {
        options = options.after(after);
    }
    if let Some(consumer) = &args.consumer {
        options = options.consumer(consumer.clone());
    }
    let mut sub = store.subscribe(args.filter.query(), options).await?;
    while let Some(batch) = sub.next().await {
        let batch = batch?;
        {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for e in &batch.events {
                print(&mut out, e).map_err(io_error)?;
            }
            out.flush().map_err(io_error)?;
        }
        // Printed and flushed before acknowledged: a crash prints again, never skips.
        if args.consumer.is_some() {
            sub.ack(batch.scanned_to).await?;
        }
        if args.exit_at_head && batch.caught_up {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `append`'s input: an event, or several under `events`, with an
/// optional condition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendLine {
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    data: Option<Box<RawValue>>,
    id: Option<uuid::Uuid>,
    metadata: Option<Box<RawValue>>,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    events: Option<Vec<AppendLine>>,
    condition: Option<ConditionLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionLine {
    /// Query items; an event matching any of them fails the condition.
    query: Vec<ItemLine>,
    after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemLine {
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

impl AppendLine {
    fn event(self) -> Result<Event, String> {
        let event_type = self.event_type.ok_or("an event needs a \"type\"")?;
        let data = self
            .data
            .map_or_else(|| "{}".to_owned(), |d| d.get().to_owned());
        let mut event = Event::from_json(event_type, data).with_tags(self.tags);
        if let Some(metadata) = self.metadata {
            event = event.with_metadata_json(metadata.get());
        }
        if let Some(id) = self.id {
            event = event.with_id(id);
        }
        if let Some(at) = self.occurred_at {
            event = event.with_occurred_at(at);
        }
        Ok(event)
    }

    fn into_append(mut self) -> Result<(Vec<Event>, Option<AppendCondition>), String> {
        let condition = self.condition.take().map(|c| {
            let items = c
                .query
                .into_iter()
                .map(|i| QueryItem::new().types(i.types).tags(i.tags));
            AppendCondition::new(Query::new(items), c.after)
        });
        let events = match self.events.take() {
            Some(events) => events
                .into_iter()
                .map(AppendLine::event)
                .collect::<Result<_, _>>()?,
            None => vec![self.event()?],
        };
        Ok((events, condition))
    }
}

pub async fn append(config: Config, args: AppendArgs) -> Result<ExitCode, Error> {
    let config = match &args.schema {
        Some(schema) => config.with_schema(schema),
        None => config,
    };
    let store = EventStore::connect(config).await?;
    let (lines, mut input) = tokio::sync::mpsc::channel::<String>(1024);
    // Standard input is read on a thread of its own: it blocks.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if !line.trim().is_empty() && lines.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let timestamps = args.timestamps;
    let appends = futures_util::stream::poll_fn(move |cx| input.poll_recv(cx)).map(move |line| {
        let store = store.clone();
        async move {
            let parsed: Result<AppendLine, String> =
                serde_json::from_str(&line).map_err(|e| format!("line is not an append: {e}"));
            let (events, condition) = match parsed.and_then(AppendLine::into_append) {
                Ok(append) => append,
                Err(reason) => return serde_json::json!({"error": reason, "kind": "invalid_input"}),
            };
            match store.append(events, condition).await {
                Ok(r) => {
                    let mut result = serde_json::json!({
                        "first_position": r.first_position,
                        "last_position": r.last_position,
                    });
                    if timestamps {
                        result["acknowledged_at_us"] = chrono::Utc::now().timestamp_micros().into();
                    }
                    result
                }
                Err(e) => serde_json::json!({"error": e.report(), "kind": e.kind()}),
            }
        }
    });
    let mut results = appends.buffered(args.concurrency.max(1));
    let mut failed = false;
    let stdout = std::io::stdout();
    while let Some(result) = results.next().await {
        failed |= result.get("error").is_some();
        let mut out = stdout.lock();
        writeln!(out, "{result}").map_err(io_error)?;
        out.flush().map_err(io_error)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
