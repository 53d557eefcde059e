//! `courses`: the course-subscription service. Needs `DATABASE_URL` (or
//! `database_url` in `config.toml`); listens on `LISTEN` (default 127.0.0.1:8080).
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p courses-example
//! curl -X POST localhost:8080/courses -H 'content-type: application/json' -d '{"id":"c1","capacity":2}'
//! curl -X POST localhost:8080/courses/c1/students/s1
//! curl localhost:8080/courses/c1
//! ```

use std::process::ExitCode;

use actix_web::{web, App, HttpServer};
use dcb_store::{Config, EventStore};

#[actix_web::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("courses: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load_or_default("config.toml")?.with_schema("courses");
    // One store for the whole process: every worker shares its actors.
    let store = EventStore::connect(config).await?;
    // The read model and the process manager, beside the requests.
    let views = web::Data::new(courses_example::Views::start(&store).await?);
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let data = web::Data::new(store.clone());
    let served = views.clone();
    println!("courses: listening on http://{listen}");
    // Stops on SIGINT/SIGTERM after in-flight requests finish ...
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(served.clone())
            .configure(courses_example::routes)
    })
    .bind(&listen)?
    .run()
    .await?;
    // ... then the consumers stop after the batch in hand ...
    if let Ok(views) = std::sync::Arc::try_unwrap(views.into_inner()) {
        views.stop().await;
    }
    // ... then the store writes what is still queued, within a deadline.
    if tokio_timeout(courses_example::SHUTDOWN_DEADLINE, store.shutdown()).await {
        println!("courses: stopped; every queued append was written");
    } else {
        eprintln!("courses: the store did not drain within the shutdown deadline");
    }
    Ok(())
}

/// Whether `future` finished within `limit`.
async fn tokio_timeout(
    limit: std::time::Duration,
    future: impl std::future::Future<Output = ()>,
) -> bool {
    actix_web::rt::time::timeout(limit, future).await.is_ok()
}
