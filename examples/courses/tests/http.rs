//! The example application over real HTTP: started on a free port with one shared
//! store, driven with a real client (`awc`); and the built binary shut down with
//! SIGTERM.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use courses_example::{error_response, CourseView, Views, SUBSCRIBED, WELCOME_SENT};
use dcb_store::{Config, EmbeddedPostgres, Error, EventStore, Query, QueryItem, ReadOptions};
use serde_json::{json, Value};

/// The database of this file's tests (`DATABASE_URL`, or else a throwaway server).
fn database_url() -> String {
    static SERVER: OnceLock<(String, Option<EmbeddedPostgres>)> = OnceLock::new();
    SERVER
        .get_or_init(|| EmbeddedPostgres::url_from_env_or_start().expect("a database"))
        .0
        .clone()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("t_{prefix}_{}_{nanos}", std::process::id())
}

/// The application on a free port of its own; its base URL.
async fn start_app(schema: &str) -> String {
    start_app_with_store(schema).await.0
}

/// The application on a free port of its own: its base URL and its store.
async fn start_app_with_store(schema: &str) -> (String, EventStore) {
    let config = Config::default()
        .with_database_url(database_url())
        .with_schema(schema);
    let connected = EventStore::connect(config).await.expect("connect");
    let views = web::Data::new(Views::start(&connected).await.expect("views"));
    let store = web::Data::new(connected.clone());
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("address").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(store.clone())
            .app_data(views.clone())
            .configure(courses_example::routes)
    })
    .workers(2)
    .listen(listener)
    .expect("listen")
    .run();
    actix_rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), connected)
}

async fn post(client: &awc::Client, url: String, body: Option<Value>) -> (u16, Value) {
    let request = client.post(url);
    let mut response = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(client: &awc::Client, url: String) -> (u16, Value) {
    let mut response = client.get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[actix_rt::test]
async fn courses_are_defined_shown_and_subscribed_over_http() {
    let base = start_app(&unique("http")).await;
    let client = awc::Client::default();
    let define = |id: &str, capacity: u32| json!({"id": id, "capacity": capacity});
    assert_eq!(
        post(&client, format!("{base}/courses"), Some(define("c1", 2)))
            .await
            .0,
        201
    );
    let again = post(&client, format!("{base}/courses"), Some(define("c1", 5))).await;
    assert_eq!(again.0, 409, "{}", again.1);
    let (status, course) = get(&client, format!("{base}/courses/c1?at_least=1")).await;
    assert_eq!(status, 200, "{course}");
    let course: CourseView = serde_json::from_value(course).unwrap();
    assert_eq!((course.capacity, course.students.len()), (2, 0));

    assert_eq!(
        post(&client, format!("{base}/courses/c1/students/s1"), None)
            .await
            .0,
        201
    );
    let twice = post(&client, format!("{base}/courses/c1/students/s1"), None).await;
    assert_eq!(twice.0, 409, "{}", twice.1);
    assert_eq!(
        post(&client, format!("{base}/courses/nope/students/s1"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        get(&client, format!("{base}/courses/nope?at_least=2"))
            .await
            .0,
        404
    );
    let (status, course) = get(&client, format!("{base}/courses/c1?at_least=2")).await;
    assert_eq!(status, 200, "{course}");
    assert_eq!(course["students"], json!(["s1"]));
    let (status, courses) = get(&client, format!("{base}/students/s1/courses")).await;
    assert_eq!((status, courses["courses"].clone()), (200, json!(["c1"])));

    // Input the store refuses is a 400 saying why.
    let long = "x".repeat(3_000);
    let (status, body) = post(&client, format!("{base}/courses"), Some(define(&long, 1))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("bytes"),
        "{body}"
    );
}

#[actix_rt::test]
async fn concurrent_subscriptions_never_overbook_a_course() {
    let base = start_app(&unique("overbook")).await;
    let client = awc::Client::default();
    let define = json!({"id": "hot", "capacity": 10});
    assert_eq!(
        post(&client, format!("{base}/courses"), Some(define))
            .await
            .0,
        201
    );
    let calls = (0..40).map(|i| {
        let (client, base) = (client.clone(), base.clone());
        async move { post(&client, format!("{base}/courses/hot/students/s{i}"), None).await }
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let created = outcomes.iter().filter(|(s, _)| *s == 201).count();
    let refused = outcomes.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((created, refused), (10, 30), "{outcomes:?}");
    let last = outcomes
        .iter()
        .filter_map(|(_, body)| body["position"].as_u64())
        .max()
        .unwrap();
    let (_, course) = get(&client, format!("{base}/courses/hot?at_least={last}")).await;
    assert_eq!(course["students"].as_array().map(Vec::len), Some(10));
}

/// Read your writes through the read model, and one welcome per subscription from the
/// process manager.
#[actix_rt::test]
async fn the_read_model_answers_at_the_callers_position_and_each_subscription_is_welcomed_once() {
    let (base, store) = start_app_with_store(&unique("views")).await;
    // Longer than the 5 s the service waits for the read model.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(15))
        .finish();
    for id in ["a", "b"] {
        let define = json!({"id": id, "capacity": 3});
        assert_eq!(
            post(&client, format!("{base}/courses"), Some(define))
                .await
                .0,
            201
        );
    }
    for i in 0..6 {
        let course = if i % 2 == 0 { "a" } else { "b" };
        let (status, body) = post(
            &client,
            format!("{base}/courses/{course}/students/s{i}"),
            None,
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let position = body["position"].as_u64().unwrap();
        // Right after the append, the read model is asked to reflect it.
        let (status, view) = get(
            &client,
            format!("{base}/courses/{course}?at_least={position}"),
        )
        .await;
        assert_eq!(status, 200, "{view}");
        assert!(view["position"].as_u64().unwrap() >= position, "{view}");
        assert!(
            view["students"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("s{i}"))),
            "{view}"
        );
    }
    let (_, a) = get(&client, format!("{base}/courses/a")).await;
    assert_eq!(a["students"], json!(["s0", "s2", "s4"]));
    // A position far ahead: the read model cannot reach it, 504.
    let (status, _) = get(&client, format!("{base}/courses/a?at_least=1000000")).await;
    assert_eq!(status, 504);
    // One welcome per subscription, once the process manager has caught up.
    let subscriptions = store
        .read(
            &Query::new([QueryItem::new().types([SUBSCRIBED])]),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events;
    let last = subscriptions.last().unwrap().position;
    store
        .wait_for_checkpoint(courses_example::WELCOME, last, Duration::from_secs(10))
        .await
        .unwrap();
    let welcomes = store
        .read(
            &Query::new([QueryItem::new().types([WELCOME_SENT])]),
            ReadOptions::default(),
        )
        .await
        .unwrap()
        .events;
    let mut of: Vec<u64> = welcomes
        .iter()
        .map(|w| {
            w.event.data::<serde_json::Value>().unwrap()["subscription"]
                .as_u64()
                .unwrap()
        })
        .collect();
    of.sort_unstable();
    let positions: Vec<u64> = subscriptions.iter().map(|s| s.position).collect();
    assert_eq!(of, positions, "exactly one welcome per subscription");
}

#[actix_rt::test]
async fn metrics_and_health_are_served() {
    let base = start_app(&unique("ops")).await;
    let client = awc::Client::default();
    let define = json!({"id": "m", "capacity": 1});
    assert_eq!(
        post(&client, format!("{base}/courses"), Some(define))
            .await
            .0,
        201
    );
    let mut response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    assert!(body.contains("dcb_appends_total"), "{body}");
    let (status, health) = get(&client, format!("{base}/health")).await;
    assert_eq!((status, health["status"].clone()), (200, json!("ok")));
}

#[test]
fn store_errors_map_to_the_statuses_users_expect() {
    let status = |e: Error| error_response(&e).status().as_u16();
    assert_eq!(status(Error::ConditionFailed { after: Some(3) }), 409);
    assert_eq!(
        status(Error::DuplicateEventId {
            id: Default::default()
        }),
        409
    );
    assert_eq!(
        status(Error::InvalidInput {
            reason: "event 0: type is empty".into()
        }),
        400
    );
    assert_eq!(
        status(Error::Timeout {
            after: Duration::from_secs(1),
            may_have_been_written: false
        }),
        504
    );
    let busy = error_response(&Error::Overloaded);
    assert_eq!(busy.status().as_u16(), 503);
    assert_eq!(
        busy.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(status(Error::Config("x".into())), 500);
}

#[test]
fn the_service_stops_gracefully_on_sigterm() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(env!("CARGO_BIN_EXE_courses"))
        .env("DATABASE_URL", database_url())
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the service");
    let system = actix_rt::System::new();
    let base = format!("http://127.0.0.1:{port}");
    system.block_on(async {
        let client = awc::Client::default();
        let mut up = false;
        for _ in 0..100 {
            if let Ok(r) = client.get(format!("{base}/health")).send().await {
                up = r.status().is_success();
                if up {
                    break;
                }
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "the service answers /health");
        let course = json!({"id": unique("term"), "capacity": 3});
        let (status, _) = post(&client, format!("{base}/courses"), Some(course)).await;
        assert!(status == 201 || status == 409);
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = child.wait_with_output().expect("the service exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("every queued append was written"),
        "{stdout}"
    );
}

/// README's embedding snippet (the `minimal` binary, which the tidy test keeps equal to
/// it) starts as written, from a directory without `config.toml`, with only
/// `DATABASE_URL` set, and serves its route on port 8080.
#[test]
fn the_readme_snippet_starts_with_only_database_url() {
    let empty = std::env::temp_dir().join(unique("readme"));
    std::fs::create_dir_all(&empty).expect("an empty directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_minimal"))
        .current_dir(&empty)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the snippet");
    let system = actix_rt::System::new();
    let answered = system.block_on(async {
        let client = awc::Client::default();
        for _ in 0..100 {
            if let Ok(mut r) = client.get("http://127.0.0.1:8080/courses/c1").send().await {
                return Some((r.status().as_u16(), r.body().await.unwrap_or_default()));
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    let _ = child.kill();
    let output = child.wait_with_output().expect("the snippet exits");
    let _ = std::fs::remove_dir_all(&empty);
    let (status, body) = answered.unwrap_or_else(|| {
        panic!(
            "the snippet never answered on 8080: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Reads Server-Sent Events from `response` until `want` events arrived: (id, type).
async fn sse_events<S>(body: &mut S, want: usize) -> Vec<(u64, String)>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    use futures_util::StreamExt;
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < want {
        let chunk = tokio_timeout(body.next()).await.expect("the feed ended");
        text.push_str(std::str::from_utf8(&chunk.expect("a chunk")).expect("UTF-8"));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(id), Some(kind)) = (field("id: "), field("event: ")) {
                events.push((id.parse().expect("a position id"), kind));
            }
        }
    }
    events
}

async fn tokio_timeout<F: std::future::Future>(future: F) -> F::Output {
    actix_rt::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the feed is too slow")
}

#[actix_rt::test]
async fn a_course_feed_streams_its_events_live_and_resumes_after_last_event_id() {
    let base = start_app(&unique("feed")).await;
    let client = awc::Client::default();
    let mut feed = client
        .get(format!("{base}/courses/c9/events"))
        .send()
        .await
        .expect("open the feed");
    assert_eq!(feed.status().as_u16(), 200);
    assert_eq!(
        feed.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    // Written after the feed opened: delivered live.
    let define = json!({"id": "c9", "capacity": 3});
    assert_eq!(
        post(&client, format!("{base}/courses"), Some(define))
            .await
            .0,
        201
    );
    for student in ["s1", "s2"] {
        let url = format!("{base}/courses/c9/students/{student}");
        assert_eq!(post(&client, url, None).await.0, 201);
    }
    // Another course's events never appear.
    let other = json!({"id": "c10", "capacity": 3});
    assert_eq!(
        post(&client, format!("{base}/courses"), Some(other))
            .await
            .0,
        201
    );
    let events = sse_events(&mut feed, 3).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["CourseDefined", "StudentSubscribed", "StudentSubscribed"]
    );
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));

    // A reconnecting client resumes after the last event it saw.
    let mut resumed = client
        .get(format!("{base}/courses/c9/events"))
        .insert_header(("Last-Event-ID", events[0].0.to_string()))
        .send()
        .await
        .expect("reopen the feed");
    let again = sse_events(&mut resumed, 2).await;
    assert_eq!(again, events[1..].to_vec());
}
