//! The 20-line embedding of README.md, compiled here so that it stays true.

use actix_web::{web, App, HttpResponse, HttpServer};
use dcb_store::{Config, EventStore, Query, QueryItem, ReadOptions};

async fn course(store: web::Data<EventStore>, id: web::Path<String>) -> HttpResponse {
    let query = Query::new([QueryItem::new().tags([format!("course:{id}")])]);
    match store.read(&query, ReadOptions::default()).await {
        Ok(read) => HttpResponse::Ok().json(read.events.len()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // config.toml when there is one; DATABASE_URL (and DCB_STORE_SCHEMA) override it.
    let store = EventStore::connect(Config::load_or_default("config.toml")?).await?;
    let data = web::Data::new(store.clone());
    HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/courses/{id}", web::get().to(course))
    })
    .bind("127.0.0.1:8080")?
    .run()
    .await?;
    store.shutdown().await; // write what is still queued
    Ok(())
}
