//! The HTTP shell: one listener serving the ECS API and the agent protocol on `POST /`
//! (awsJson 1.1, SigV4), plus `GET /metrics` and `GET /healthz`.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::routing::{get, post};
use flotilla_api::sigv4::{self, Credentials, RequestParts};
use flotilla_api::{ApiError, ECS_TARGET_PREFIX, REQUEST_BODY_BYTES_MAX};
use flotilla_model::{Scope, Timestamp};
use flotilla_protocol::AgentCall;

use crate::agents::Agents;
use crate::engine::{Engine, RequestContext};
use crate::metrics::Metrics;

/// Everything a request handler needs.
pub struct AppState {
    pub engine: Engine,
    pub agents: Arc<Agents>,
    pub metrics: Arc<Metrics>,
    pub credentials: Vec<Credentials>,
    pub account_id: String,
    /// The image registry: `/v2/` and the ECR API's actions.
    pub registry: Arc<flotilla_registry::Registry>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let registry = state.registry.router();
    Router::new()
        .route("/", post(handle_api))
        .route("/metrics", get(handle_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(handle_not_found)
        .with_state(state)
        .merge(registry)
}

const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.1";

fn respond(status: u16, body: Vec<u8>, request_id: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE_JSON),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", value);
    }
    response
}

fn respond_error(error: &ApiError, request_id: &str) -> Response<Body> {
    let mut response = respond(error.status, error.body(), request_id);
    if let Ok(value) = HeaderValue::from_str(error.code) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

async fn handle_not_found() -> Response<Body> {
    let error = ApiError::new("UnknownOperationException", 404, "No such endpoint.");
    respond_error(&error, &uuid::Uuid::new_v4().to_string())
}

async fn handle_metrics(State(state): State<Arc<AppState>>) -> Response<Body> {
    state
        .metrics
        .agents_connected
        .set(state.agents.connected_count() as i64);
    let mut response = Response::new(Body::from(state.metrics.render()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

enum Target {
    Ecs(String),
    /// The ECR API (`AmazonEC2ContainerRegistry_V20150921.*`), executed by the registry.
    Ecr(String),
    Agent(AgentCall),
    /// Flotilla's own operator calls (`FlotillaV1.*`).
    Operator(String),
}

fn parse_target(value: Option<&HeaderValue>) -> Result<Target, ApiError> {
    let target = value
        .and_then(|v| v.to_str().ok())
        .ok_or_else(ApiError::missing_target)?;
    let (prefix, name) = target
        .split_once('.')
        .ok_or_else(|| ApiError::unknown_operation(target))?;
    if prefix == ECS_TARGET_PREFIX {
        Ok(Target::Ecs(name.to_owned()))
    } else if prefix == flotilla_api::ecr::ECR_TARGET_PREFIX {
        Ok(Target::Ecr(name.to_owned()))
    } else if prefix == flotilla_protocol::OPERATOR_TARGET_PREFIX
        && matches!(
            name,
            "LocateTaskLogs" | "ExplainPlacement" | "ReclaimSpotCapacity"
        )
    {
        Ok(Target::Operator(name.to_owned()))
    } else if prefix == flotilla_protocol::TARGET_PREFIX {
        AgentCall::parse(name)
            .map(Target::Agent)
            .ok_or_else(|| ApiError::unknown_operation(target))
    } else {
        Err(ApiError::unknown_operation(target))
    }
}

async fn handle_api(State(state): State<Arc<AppState>>, request: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let target = parse_target(parts.headers.get("x-amz-target"));
    let action_name = match &target {
        Ok(Target::Ecs(name)) => name.clone(),
        Ok(Target::Ecr(name)) => format!("ecr.{name}"),
        Ok(Target::Agent(call)) => format!("Agent.{}", call.name()),
        Ok(Target::Operator(name)) => format!("Flotilla.{name}"),
        Err(_) => "Unknown".to_owned(),
    };
    let result = async {
        // Read the whole body (bounded) first: the signature covers it. ECR's layer parts
        // are bigger than any ECS request.
        let limit = match &target {
            Ok(Target::Ecr(_)) => flotilla_api::ecr::ECR_REQUEST_BODY_BYTES_MAX,
            _ => REQUEST_BODY_BYTES_MAX,
        };
        let body = to_bytes(body, limit)
            .await
            .map_err(|_| ApiError::payload_too_large(limit))?;
        let now_system = SystemTime::now();
        let now_millis = now_system
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let now = time::OffsetDateTime::from(now_system);
        let verified = sigv4::verify(
            &RequestParts {
                method: &parts.method,
                uri: &parts.uri,
                headers: &parts.headers,
                body: &body,
            },
            &state.credentials.as_slice(),
            now,
        )?;
        let access_key_id = verified.access_key_id.clone();
        let ctx = RequestContext {
            scope: Scope::new(verified.region, state.account_id.clone()),
            principal_arn: format!("arn:aws:iam::{}:root", state.account_id),
            now: Timestamp::from_millis(now_millis),
        };
        match target? {
            Target::Ecr(name) => {
                let ecr = flotilla_registry::EcrContext {
                    scope: flotilla_registry::Scope::new(&state.account_id, &ctx.scope.region),
                    access_key_id,
                    registry_host: state.registry.host_for(&parts.headers),
                    scheme: state.registry.scheme(),
                    now_ms: now_millis,
                };
                state
                    .registry
                    .execute_ecr(&ecr, &name, &body)
                    .await
                    .map_err(ApiError::from)
            }
            Target::Ecs(name) => {
                let action = flotilla_api::action::parse(&name, &body)?;
                state
                    .engine
                    .execute(&ctx, action)
                    .await
                    .map_err(ApiError::from)
            }
            Target::Agent(call) => state.agents.handle(&ctx, call, &body).await,
            Target::Operator(name) if name == "ExplainPlacement" => {
                let request = flotilla_api::action::decode(&body)?;
                let answer = state.engine.explain_placement(&ctx, request).await?;
                Ok(flotilla_api::responses::encode(&answer))
            }
            Target::Operator(name) if name == "ReclaimSpotCapacity" => {
                let request = flotilla_api::action::decode(&body)?;
                let answer = state.engine.reclaim_spot_capacity(&ctx, request).await?;
                Ok(flotilla_api::responses::encode(&answer))
            }
            Target::Operator(_) => state.agents.locate_task_logs(&ctx, &body).await,
        }
    }
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(body) => {
            state.metrics.observe(&action_name, "ok", elapsed);
            respond(200, body, &request_id)
        }
        Err(error) => {
            state.metrics.observe(&action_name, error.code, elapsed);
            if error.status >= 500 {
                tracing::error!(action = %action_name, code = error.code, message = %error.message, "request failed");
            } else {
                tracing::debug!(action = %action_name, code = error.code, message = %error.message, "request refused");
            }
            respond_error(&error, &request_id)
        }
    }
}
