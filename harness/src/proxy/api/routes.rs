//! The HTTP side of the API: Toxiproxy's routes on axum, each a thin call into the
//! [`Registry`], answering with Toxiproxy's status codes and JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;

use super::{ApiError, Registry, MAX_BODY_BYTES, VERSION};

type Reg = State<Arc<Registry>>;

pub(super) fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/reset", axum::routing::post(reset))
        .route("/populate", axum::routing::post(populate))
        .route("/proxies", get(list).post(create))
        .route(
            "/proxies/{proxy}",
            get(show).post(update).patch(update).delete(remove),
        )
        .route("/proxies/{proxy}/toxics", get(toxics).post(add_toxic))
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic)
                .post(update_toxic)
                .patch(update_toxic)
                .delete(remove_toxic),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(no_browsers))
        .with_state(registry)
}

/// Toxiproxy's guard against web pages driving the API through a browser.
async fn no_browsers(request: Request, next: Next) -> Response {
    let browser = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"));
    if browser {
        return (StatusCode::FORBIDDEN, "User agent not allowed\n").into_response();
    }
    next.run(request).await
}

fn json(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn reply(result: Result<Value, ApiError>, ok: u16) -> Response {
    match result {
        Ok(v) => json(ok, &v),
        Err(e) => json(e.status, &e.to_json()),
    }
}

fn no_content(result: Result<(), ApiError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => json(e.status, &e.to_json()),
    }
}

async fn version() -> Response {
    json(200, &serde_json::json!({ "version": VERSION }))
}

async fn reset(State(r): Reg) -> Response {
    no_content(r.reset().await)
}

async fn populate(State(r): Reg, body: Bytes) -> Response {
    match r.populate(&body).await {
        Ok(proxies) => json(201, &serde_json::json!({ "proxies": proxies })),
        Err((e, proxies)) => json(
            e.status,
            &serde_json::json!({"error": e.message, "status": e.status, "proxies": proxies}),
        ),
    }
}

async fn list(State(r): Reg) -> Response {
    json(200, &r.list().await)
}

async fn create(State(r): Reg, body: Bytes) -> Response {
    reply(r.create(&body).await, 201)
}

async fn show(State(r): Reg, Path(proxy): Path<String>) -> Response {
    reply(r.get(&proxy).await, 200)
}

async fn update(State(r): Reg, Path(proxy): Path<String>, body: Bytes) -> Response {
    reply(r.update(&proxy, &body).await, 200)
}

async fn remove(State(r): Reg, Path(proxy): Path<String>) -> Response {
    no_content(r.remove(&proxy).await)
}

async fn toxics(State(r): Reg, Path(proxy): Path<String>) -> Response {
    reply(r.toxics(&proxy).await, 200)
}

async fn add_toxic(State(r): Reg, Path(proxy): Path<String>, body: Bytes) -> Response {
    reply(r.add_toxic(&proxy, &body).await, 200)
}

async fn toxic(State(r): Reg, Path((proxy, toxic)): Path<(String, String)>) -> Response {
    reply(r.toxic(&proxy, &toxic).await, 200)
}

async fn update_toxic(
    State(r): Reg,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    reply(r.update_toxic(&proxy, &toxic, &body).await, 200)
}

async fn remove_toxic(State(r): Reg, Path((proxy, toxic)): Path<(String, String)>) -> Response {
    no_content(r.remove_toxic(&proxy, &toxic).await)
}
