//! Container logs of a task: read them through the runtime ([`logs`]), serve them over a
//! small HTTP endpoint of the agent ([`serve_logs`]), fetch them from that endpoint
//! ([`fetch_logs`]).
//!
//! Endpoint: `GET /v1/tasks/{task}/logs?container=NAME&follow=true`, where `task` is a task
//! ARN (percent-encoded) or id. The body is the raw output; with several containers every
//! chunk is prefixed by `NAME | `.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::runtime::{BoxStream, ListFilter, LogStream, Runtime, RuntimeError, labels};
use crate::spec::task_id;

/// A piece of one container's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLogChunk {
    pub container: String,
    pub stream: LogStream,
    pub bytes: Vec<u8>,
}

/// Why logs cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no container of task {0} is on this host")]
    NoSuchTask(String),
    #[error("task {task} has no container named {container}; it has: {available}")]
    NoSuchContainer {
        task: String,
        container: String,
        available: String,
    },
    #[error("cannot read logs: {0}")]
    Runtime(#[from] RuntimeError),
    /// The agent's logs endpoint could not be reached or refused.
    #[error("logs endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
}

/// The output of a task's containers (one, or all of them interleaved), from the start;
/// with `follow`, the stream goes on until the containers stop.
pub async fn logs(
    runtime: &dyn Runtime,
    task: &str,
    container: Option<&str>,
    follow: bool,
) -> Result<BoxStream<'static, Result<TaskLogChunk, RuntimeError>>, LogsError> {
    let filter = if task.starts_with("arn:") {
        ListFilter::task(task)
    } else {
        ListFilter::all().label(labels::TASK_ID, task_id(task))
    };
    let mut containers = runtime.list(&filter).await?;
    if containers.is_empty() {
        return Err(LogsError::NoSuchTask(task.to_owned()));
    }
    containers.sort_by(|a, b| a.container_name().cmp(&b.container_name()));
    if let Some(wanted) = container {
        let available: Vec<String> = containers
            .iter()
            .filter_map(|c| c.container_name().map(str::to_owned))
            .collect();
        containers.retain(|c| c.container_name() == Some(wanted));
        if containers.is_empty() {
            return Err(LogsError::NoSuchContainer {
                task: task.to_owned(),
                container: wanted.to_owned(),
                available: available.join(", "),
            });
        }
    }
    let streams = containers.into_iter().map(|c| {
        let name = c.container_name().unwrap_or_default().to_owned();
        runtime
            .logs(&c.id, follow)
            .map(move |chunk| {
                chunk.map(|chunk| TaskLogChunk {
                    container: name.clone(),
                    stream: chunk.stream,
                    bytes: chunk.bytes,
                })
            })
            .boxed()
    });
    Ok(futures::stream::select_all(streams).boxed())
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    container: Option<String>,
    #[serde(default)]
    follow: bool,
}

async fn get_logs(
    State(runtime): State<Arc<dyn Runtime>>,
    Path(task): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    match logs(&*runtime, &task, query.container.as_deref(), query.follow).await {
        Ok(stream) => {
            let prefix = query.container.is_none();
            let body = stream.map(move |chunk| {
                chunk.map(|chunk| {
                    if prefix {
                        let mut bytes = format!("{} | ", chunk.container).into_bytes();
                        bytes.extend_from_slice(&chunk.bytes);
                        Bytes::from(bytes)
                    } else {
                        Bytes::from(chunk.bytes)
                    }
                })
            });
            (
                [("content-type", "text/plain; charset=utf-8")],
                Body::from_stream(body),
            )
                .into_response()
        }
        Err(error @ (LogsError::NoSuchTask(_) | LogsError::NoSuchContainer { .. })) => {
            (StatusCode::NOT_FOUND, format!("{error}\n")).into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response(),
    }
}

/// The logs endpoint's routes.
pub fn logs_router(runtime: Arc<dyn Runtime>) -> Router {
    Router::new()
        .route("/v1/tasks/{task}/logs", get(get_logs))
        .route("/v1/ping", get(|| async { "ok\n" }))
        .with_state(runtime)
}

/// Serves the logs endpoint on `listener` until `shutdown`.
pub async fn serve_logs(
    listener: tokio::net::TcpListener,
    runtime: Arc<dyn Runtime>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, logs_router(runtime))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Percent-encodes everything but unreserved characters (for a task ARN in a path).
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a task's logs from an agent's logs endpoint (`http://host:port`), as raw bytes.
pub async fn fetch_logs(
    endpoint: &str,
    task: &str,
    container: Option<&str>,
    follow: bool,
) -> Result<BoxStream<'static, Result<Bytes, LogsError>>, LogsError> {
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let mut url = format!(
        "{endpoint}/v1/tasks/{}/logs?follow={follow}",
        encode_segment(task)
    );
    if let Some(container) = container {
        url.push_str(&format!("&container={}", encode_segment(container)));
    }
    let failed = |message: String| LogsError::Endpoint {
        endpoint: endpoint.clone(),
        message,
    };
    // No overall timeout: a followed log stays open as long as the container runs.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return Err(failed(format!("{status}: {}", text.trim())));
    }
    let stream = futures::stream::unfold(Some(response), move |response| {
        let endpoint = endpoint.clone();
        async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(response))),
                Ok(None) => None,
                Err(e) => Some((
                    Err(LogsError::Endpoint {
                        endpoint,
                        message: e.to_string(),
                    }),
                    None,
                )),
            }
        }
    });
    Ok(stream.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_are_encoded_as_one_segment() {
        assert_eq!(
            encode_segment("arn:aws:ecs:r:a:task/c/id"),
            "arn%3Aaws%3Aecs%3Ar%3Aa%3Atask%2Fc%2Fid"
        );
        assert_eq!(encode_segment("abc-1_2.3~"), "abc-1_2.3~");
    }
}
