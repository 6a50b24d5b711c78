//! The OCI Distribution API (v1.1) under `/v2/`: an axum router the server merges into its
//! own. Requests authenticate with `Authorization: Basic base64("AWS:" + token)`, the token
//! `GetAuthorizationToken` mints (what `docker login` stores); the token's region is the
//! scope the request acts in.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::routing::any;
use futures::StreamExt;
use serde_json::json;

use crate::Registry;
use crate::digest::Digest;
use crate::engine::{MANIFEST_BYTES_MAX, MEDIA_OCI_INDEX};
use crate::error::RegistryError;
use crate::meta::Scope;
use crate::token;

/// The query parameter that may carry a token instead of the header (download URLs).
pub const TOKEN_QUERY_PARAMETER: &str = "X-Flotilla-Registry-Token";
/// Tags per page when the client gives no `n`.
const TAGS_PAGE_DEFAULT: usize = 10_000;
/// Repositories per `_catalog` page when the client gives no `n`.
const CATALOG_PAGE_DEFAULT: usize = 1000;

/// An error as an OCI client sees it.
#[derive(Debug)]
pub struct OciError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for OciError {
    fn from(error: RegistryError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match &error {
            RegistryError::RepositoryNotFound(_) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            RegistryError::NameInvalid(_) => (S::BAD_REQUEST, "NAME_INVALID"),
            RegistryError::BlobUnknown(_) => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            RegistryError::UploadUnknown => (S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            RegistryError::UploadInvalid(_) => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            RegistryError::RangeInvalid { .. } => (S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            RegistryError::DigestInvalid(_) | RegistryError::DigestMismatch { .. } => {
                (S::BAD_REQUEST, "DIGEST_INVALID")
            }
            RegistryError::ManifestInvalid(_) => (S::BAD_REQUEST, "MANIFEST_INVALID"),
            RegistryError::ManifestBlobUnknown(_) => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            RegistryError::ManifestUnknown(_) => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RegistryError::TagImmutable { .. } | RegistryError::TagInvalid(_) => {
                (S::BAD_REQUEST, "TAG_INVALID")
            }
            RegistryError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            RegistryError::RepositoryAlreadyExists(_)
            | RegistryError::RepositoryNotEmpty(_)
            | RegistryError::InvalidParameter(_)
            | RegistryError::LifecyclePolicyNotFound(_)
            | RegistryError::RepositoryPolicyNotFound(_) => (S::BAD_REQUEST, "UNSUPPORTED"),
            RegistryError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        };
        if status.is_server_error() {
            tracing::error!(%message, "registry request failed");
        }
        Self::new(status, code, message)
    }
}

fn base_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

fn error_response(error: OciError, registry: &Registry, headers: &HeaderMap) -> Response<Body> {
    let body = serde_json::to_vec(&json!({
        "errors": [{ "code": error.code, "message": error.message, "detail": null }]
    }))
    .unwrap_or_default();
    let mut response = base_response(error.status, Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if error.status == StatusCode::UNAUTHORIZED {
        let realm = format!(
            "Basic realm=\"{}://{}/\",service=\"ecr.amazonaws.com\"",
            registry.scheme(),
            registry.host_for(headers)
        );
        if let Ok(value) = HeaderValue::from_str(&realm) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

fn set(response: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The router for `/v2/`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v2", any(handle))
        .route("/v2/", any(handle))
        .route("/v2/{*rest}", any(handle))
        .with_state(registry)
}

enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    Uploads(String),
    Upload(String, String),
    Referrers(String, String),
}

fn parse_route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?.trim_start_matches('/');
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.to_owned()));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads") {
        let id = id.trim_start_matches('/');
        return Some(if id.is_empty() {
            Route::Uploads(name.to_owned())
        } else {
            Route::Upload(name.to_owned(), id.to_owned())
        });
    }
    for (marker, make) in [
        (
            "/manifests/",
            Route::Manifest as fn(String, String) -> Route,
        ),
        ("/blobs/", Route::Blob),
        ("/referrers/", Route::Referrers),
    ] {
        if let Some((name, reference)) = rest.rsplit_once(marker)
            && !reference.is_empty()
            && !reference.contains('/')
        {
            return Some(make(name.to_owned(), reference.to_owned()));
        }
    }
    None
}

fn query_map(request: &Request<Body>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    Some((percent_decode(k)?, percent_decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks the request's token; the scope it grants.
fn authenticate(
    registry: &Registry,
    headers: &HeaderMap,
    query_params: &[(String, String)],
) -> Result<Scope, OciError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(token::from_basic_auth)
        .or_else(|| query(query_params, TOKEN_QUERY_PARAMETER).map(str::to_owned))
        .ok_or_else(|| {
            OciError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required: log in with `aws ecr get-login-password | docker login --username AWS --password-stdin HOST`",
            )
        })?;
    let claims = token::verify(&token, &registry.credentials, now_ms() / 1000)
        .map_err(|e| OciError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", e.to_string()))?;
    Ok(Scope::new(registry.account_id.clone(), claims.region))
}

async fn handle(State(registry): State<Arc<Registry>>, request: Request<Body>) -> Response<Body> {
    let headers = request.headers().clone();
    match dispatch(&registry, request).await {
        Ok(response) => response,
        Err(error) => error_response(error, &registry, &headers),
    }
}

fn parse_range(header: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, OciError> {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let invalid = || {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
            format!("invalid range '{value}' for {size} bytes"),
        )
    };
    let spec = value.strip_prefix("bytes=").ok_or_else(invalid)?;
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| invalid())?;
            if n == 0 {
                return Err(invalid());
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (
            start.parse().map_err(|_| invalid())?,
            size.saturating_sub(1),
        ),
        (start, end) => {
            let end: u64 = end.parse().map_err(|_| invalid())?;
            (
                start.parse().map_err(|_| invalid())?,
                end.min(size.saturating_sub(1)),
            )
        }
    };
    if size == 0 || start > end || start >= size {
        return Err(invalid());
    }
    Ok(Some((start, end)))
}

/// `start` of a `Content-Range: start-end` header (OCI's chunk form, `bytes ` tolerated).
fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>, OciError> {
    let Some(value) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let spec = value
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let start = spec.split(['-', '/']).next().unwrap_or("");
    start.parse().map(Some).map_err(|_| {
        OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("invalid Content-Range '{value}'"),
        )
    })
}

fn upload_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response<Body> {
    let mut response = base_response(status, Body::empty());
    set(
        &mut response,
        "location",
        &format!("/v2/{name}/blobs/uploads/{id}"),
    );
    set(
        &mut response,
        "range",
        &format!("0-{}", size.saturating_sub(1)),
    );
    set(&mut response, "docker-upload-uuid", id);
    set(&mut response, "content-length", "0");
    response
}

fn blob_created(name: &str, digest: &str) -> Response<Body> {
    let mut response = base_response(StatusCode::CREATED, Body::empty());
    set(
        &mut response,
        "location",
        &format!("/v2/{name}/blobs/{digest}"),
    );
    set(&mut response, "docker-content-digest", digest);
    set(&mut response, "content-length", "0");
    response
}

async fn dispatch(registry: &Registry, request: Request<Body>) -> Result<Response<Body>, OciError> {
    let route = parse_route(request.uri().path()).ok_or_else(|| {
        OciError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such registry endpoint",
        )
    })?;
    let params = query_map(&request);
    let scope = authenticate(registry, request.headers(), &params)?;
    let engine = &registry.engine;
    let method = request.method().clone();
    let not_allowed = || {
        OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "method not allowed here",
        )
    };
    match route {
        Route::Base => {
            let mut response = base_response(StatusCode::OK, Body::from("{}"));
            set(&mut response, "content-type", "application/json");
            Ok(response)
        }
        Route::Catalog => {
            let limit: usize = query(&params, "n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(CATALOG_PAGE_DEFAULT);
            let mut names: Vec<String> = engine
                .repositories(&scope)
                .await?
                .into_iter()
                .map(|r| r.name)
                .collect();
            names.sort();
            if let Some(last) = query(&params, "last") {
                names.retain(|n| n.as_str() > last);
            }
            let more = names.len() > limit;
            names.truncate(limit);
            let mut response = base_response(
                StatusCode::OK,
                Body::from(
                    serde_json::to_vec(&json!({ "repositories": names })).unwrap_or_default(),
                ),
            );
            set(&mut response, "content-type", "application/json");
            if more && let Some(last) = names.last() {
                set(
                    &mut response,
                    "link",
                    &format!("</v2/_catalog?n={limit}&last={last}>; rel=\"next\""),
                );
            }
            Ok(response)
        }
        Route::Tags(name) => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            let limit: usize = query(&params, "n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(TAGS_PAGE_DEFAULT);
            let (tags, more) = if limit == 0 {
                (Vec::new(), false)
            } else {
                engine
                    .tags(&scope, &name, query(&params, "last"), limit)
                    .await?
            };
            let mut response = base_response(
                StatusCode::OK,
                Body::from(
                    serde_json::to_vec(&json!({ "name": name, "tags": tags })).unwrap_or_default(),
                ),
            );
            set(&mut response, "content-type", "application/json");
            if more && let Some(last) = tags.last() {
                set(
                    &mut response,
                    "link",
                    &format!("</v2/{name}/tags/list?n={limit}&last={last}>; rel=\"next\""),
                );
            }
            Ok(response)
        }
        Route::Manifest(name, reference) => match method {
            Method::GET | Method::HEAD => {
                let manifest = engine.manifest(&scope, &name, &reference).await?;
                let len = manifest.bytes.len();
                let body = if method == Method::HEAD {
                    Body::empty()
                } else {
                    Body::from(manifest.bytes)
                };
                let mut response = base_response(StatusCode::OK, body);
                set(&mut response, "content-type", &manifest.media_type);
                set(&mut response, "content-length", &len.to_string());
                set(&mut response, "docker-content-digest", &manifest.digest);
                set(&mut response, "etag", &format!("\"{}\"", manifest.digest));
                Ok(response)
            }
            Method::PUT => {
                let content_type = request
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = to_bytes(request.into_body(), MANIFEST_BYTES_MAX)
                    .await
                    .map_err(|_| {
                        OciError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "SIZE_INVALID",
                            format!("manifests are limited to {MANIFEST_BYTES_MAX} bytes"),
                        )
                    })?;
                let now = now_ms();
                let digest = engine
                    .put_manifest(
                        &scope,
                        &name,
                        &reference,
                        content_type.as_deref(),
                        &bytes,
                        now,
                    )
                    .await?;
                if let Err(error) = engine.apply_lifecycle(&scope, &name, now).await {
                    tracing::warn!(%error, repository = %name, "lifecycle policy not applied");
                }
                let mut response = base_response(StatusCode::CREATED, Body::empty());
                set(
                    &mut response,
                    "location",
                    &format!("/v2/{name}/manifests/{digest}"),
                );
                set(&mut response, "docker-content-digest", &digest);
                set(&mut response, "content-length", "0");
                if let Some(subject) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/subject/digest")
                            .and_then(|d| d.as_str())
                            .map(str::to_owned)
                    })
                {
                    set(&mut response, "oci-subject", &subject);
                }
                Ok(response)
            }
            Method::DELETE => {
                if reference.starts_with("sha256:") {
                    engine.repository(&scope, &name).await?;
                    let deleted = engine
                        .delete_images(&scope, &name, std::slice::from_ref(&reference))
                        .await?;
                    if deleted.is_empty() {
                        return Err(RegistryError::ManifestUnknown(reference).into());
                    }
                } else {
                    engine.repository(&scope, &name).await?;
                    engine.delete_tag(&scope, &name, &reference).await?;
                }
                Ok(base_response(StatusCode::ACCEPTED, Body::empty()))
            }
            _ => Err(not_allowed()),
        },
        Route::Blob(name, digest) => match method {
            Method::GET | Method::HEAD => {
                if Digest::parse(&digest).is_none() {
                    return Err(
                        RegistryError::DigestInvalid(format!("invalid digest '{digest}'")).into(),
                    );
                }
                engine.repository(&scope, &name).await?;
                let blob = engine.blob(&scope, &name, &digest).await?;
                let range = parse_range(request.headers().get(header::RANGE), blob.size)?;
                let (status, start, end) = match range {
                    Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
                    None => (StatusCode::OK, 0, blob.size),
                };
                let body = if method == Method::HEAD || start == end {
                    Body::empty()
                } else {
                    Body::from_stream(engine.read_blob(&blob, start..end))
                };
                let mut response = base_response(status, body);
                set(&mut response, "content-length", &(end - start).to_string());
                set(&mut response, "content-type", "application/octet-stream");
                set(&mut response, "docker-content-digest", &digest);
                set(&mut response, "accept-ranges", "bytes");
                set(&mut response, "etag", &format!("\"{digest}\""));
                if status == StatusCode::PARTIAL_CONTENT {
                    set(
                        &mut response,
                        "content-range",
                        &format!("bytes {start}-{}/{}", end - 1, blob.size),
                    );
                }
                Ok(response)
            }
            Method::DELETE => {
                engine.repository(&scope, &name).await?;
                engine.unlink_blob(&scope, &name, &digest).await?;
                Ok(base_response(StatusCode::ACCEPTED, Body::empty()))
            }
            _ => Err(not_allowed()),
        },
        Route::Uploads(name) => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            let now = now_ms();
            if let (Some(mount), Some(from)) = (query(&params, "mount"), query(&params, "from")) {
                engine.repository(&scope, &name).await?;
                if Digest::parse(mount).is_some()
                    && engine.mount_blob(&scope, &name, from, mount).await?
                {
                    return Ok(blob_created(&name, mount));
                }
            }
            if let Some(digest) = query(&params, "digest").map(str::to_owned) {
                let body = request.into_body().into_data_stream();
                engine.put_blob(&scope, &name, &digest, body, now).await?;
                return Ok(blob_created(&name, &digest));
            }
            let upload = engine.start_upload(&scope, &name, now).await?;
            let mut response = upload_response(StatusCode::ACCEPTED, &name, &upload.id, 0);
            set(&mut response, "oci-chunk-min-length", "0");
            Ok(response)
        }
        Route::Upload(name, id) => match method {
            Method::GET => {
                let upload = engine.upload(&scope, &name, &id).await?;
                Ok(upload_response(
                    StatusCode::NO_CONTENT,
                    &name,
                    &id,
                    upload.value.size,
                ))
            }
            Method::PATCH => {
                let start = content_range_start(request.headers())?;
                let body = request.into_body().into_data_stream();
                let size = engine
                    .append_upload(&scope, &name, &id, start, body)
                    .await?;
                Ok(upload_response(StatusCode::ACCEPTED, &name, &id, size))
            }
            Method::PUT => {
                let digest = query(&params, "digest").map(str::to_owned).ok_or_else(|| {
                    OciError::new(
                        StatusCode::BAD_REQUEST,
                        "DIGEST_INVALID",
                        "the digest query parameter is required",
                    )
                })?;
                let body = request.into_body().into_data_stream();
                engine
                    .complete_upload(&scope, &name, &id, &digest, Some(body), now_ms())
                    .await?;
                Ok(blob_created(&name, &digest))
            }
            Method::DELETE => {
                engine.cancel_upload(&scope, &name, &id).await?;
                Ok(base_response(StatusCode::NO_CONTENT, Body::empty()))
            }
            _ => Err(not_allowed()),
        },
        Route::Referrers(name, digest) => {
            if method != Method::GET {
                return Err(not_allowed());
            }
            if Digest::parse(&digest).is_none() {
                return Err(
                    RegistryError::DigestInvalid(format!("invalid digest '{digest}'")).into(),
                );
            }
            let mut descriptors = engine.referrers(&scope, &name, &digest).await?;
            let filter = query(&params, "artifactType").map(str::to_owned);
            if let Some(kind) = &filter {
                descriptors
                    .retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(kind));
            }
            let index = json!({ "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors });
            let mut response = base_response(
                StatusCode::OK,
                Body::from(serde_json::to_vec(&index).unwrap_or_default()),
            );
            set(&mut response, "content-type", MEDIA_OCI_INDEX);
            if filter.is_some() {
                set(&mut response, "oci-filters-applied", "artifactType");
            }
            Ok(response)
        }
    }
}

/// Drains a body stream (tests).
#[doc(hidden)]
pub async fn collect_body(body: Body) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_slashes_in_names() {
        assert!(matches!(parse_route("/v2/"), Some(Route::Base)));
        assert!(matches!(parse_route("/v2/a/b/tags/list"), Some(Route::Tags(n)) if n == "a/b"));
        assert!(
            matches!(parse_route("/v2/a/b/manifests/v1"), Some(Route::Manifest(n, r)) if n == "a/b" && r == "v1")
        );
        assert!(matches!(parse_route("/v2/a/blobs/uploads/"), Some(Route::Uploads(n)) if n == "a"));
        assert!(
            matches!(parse_route("/v2/a/blobs/uploads/xyz"), Some(Route::Upload(n, i)) if n == "a" && i == "xyz")
        );
        assert!(
            matches!(parse_route("/v2/a/blobs/sha256:00"), Some(Route::Blob(n, d)) if n == "a" && d == "sha256:00")
        );
        assert!(matches!(
            parse_route("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers(..))
        ));
        assert!(parse_route("/v2/a/unknown").is_none());
    }

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_range(Some(&h("bytes=0-9")), 100).unwrap(),
            Some((0, 9))
        );
        assert_eq!(
            parse_range(Some(&h("bytes=90-")), 100).unwrap(),
            Some((90, 99))
        );
        assert_eq!(
            parse_range(Some(&h("bytes=-10")), 100).unwrap(),
            Some((90, 99))
        );
        assert_eq!(
            parse_range(Some(&h("bytes=50-500")), 100).unwrap(),
            Some((50, 99))
        );
        assert!(parse_range(Some(&h("bytes=100-")), 100).is_err());
        assert!(parse_range(Some(&h("bytes=5-1")), 100).is_err());
        assert_eq!(parse_range(None, 100).unwrap(), None);
        assert_eq!(percent_decode("a%3Ab+c").as_deref(), Some("a:b c"));
    }
}
