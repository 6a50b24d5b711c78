//! SigV4 request verification: rebuilds the canonical request from the request's own
//! `SignedHeaders` (header auth) or `X-Amz-SignedHeaders` (presigned URLs), derives the signing
//! key and signature with the maintained `aws-sigv4` crate, and compares in constant time.
//!
//! Canonicalisation follows the AWS SDKs for non-S3 services (`aws-sigv4`'s defaults and
//! botocore's `SigV4Auth`):
//! - the path is normalised (dot segments and empty segments removed) and then URI-encoded once
//!   more, so the `%` of an already-encoded path becomes `%25` ("double encoding"); a signer that
//!   does not normalise is accepted too;
//! - query parameters are form-decoded (`+` is a space), RFC 3986-encoded and sorted by key, then
//!   value; for presigned URLs `X-Amz-Signature` is left out;
//! - header values are trimmed and runs of spaces collapsed; repeated headers are joined by `,`;
//! - the payload hash is the `x-amz-content-sha256` header when present (which must then match
//!   the body, unless it is `UNSIGNED-PAYLOAD`), else the body's SHA-256; presigned URLs may sign
//!   either `UNSIGNED-PAYLOAD` or the body's hash.
//!
//! Neither the secret nor a full signature is ever logged or put in an error message.

use std::borrow::Cow;
use std::fmt;

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use sha2::{Digest, Sha256};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash a signer uses when it does not sign the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How far a request's signing time may be from the server's clock.
pub const CLOCK_SKEW_MAX: time::Duration = time::Duration::minutes(15);
/// The longest a presigned URL may be valid (AWS: 7 days), in seconds.
pub const PRESIGNED_EXPIRES_MAX_SECONDS: i64 = 604_800;

/// `X-Amz-Date`'s ISO 8601 basic format, e.g. `20150830T123600Z`.
const AMZ_DATE: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");
/// The HTTP `Date` header's IMF-fixdate format, e.g. `Sun, 30 Aug 2015 12:36:00 GMT`.
const HTTP_DATE: &[BorrowedFormatItem<'static>] = format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// An access key pair the server accepts. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Looks up the secret of an access key id; `None` for a key the server does not know.
pub trait CredentialsProvider {
    fn secret_for(&self, access_key_id: &str) -> Option<String>;
}

impl CredentialsProvider for Credentials {
    fn secret_for(&self, access_key_id: &str) -> Option<String> {
        (self.access_key_id == access_key_id).then(|| self.secret_access_key.clone())
    }
}

impl CredentialsProvider for [Credentials] {
    fn secret_for(&self, access_key_id: &str) -> Option<String> {
        self.iter().find_map(|c| c.secret_for(access_key_id))
    }
}

impl CredentialsProvider for Vec<Credentials> {
    fn secret_for(&self, access_key_id: &str) -> Option<String> {
        self.as_slice().secret_for(access_key_id)
    }
}

impl<T: CredentialsProvider + ?Sized> CredentialsProvider for &T {
    fn secret_for(&self, access_key_id: &str) -> Option<String> {
        (**self).secret_for(access_key_id)
    }
}

/// What a verified signature tells the caller. `region` and `service` are the credential
/// scope's, as the client chose them; the caller decides whether they are acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRequest {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
    pub signed_at: OffsetDateTime,
}

/// Everything needed from the HTTP request, exactly as received: the method, the URI (path
/// and query as sent; the authority is used only when there is no `Host` header, as in
/// HTTP/2), the headers (unmodified, including `Host`) and the complete raw body.
#[derive(Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

/// Why a request's authentication was refused, with AWS's codes and wording.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Neither an `Authorization` header nor presigned query parameters
    /// (`MissingAuthenticationTokenException`).
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The `Authorization` header or presigned parameters are malformed, the date is missing
    /// or inconsistent with the credential scope, or `host` is not signed; the text says which
    /// (`IncompleteSignatureException`).
    #[error("{0}")]
    IncompleteSignature(String),
    /// The access key id is not one this server knows (`UnrecognizedClientException`).
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    /// The signature does not match the one computed with the key's secret
    /// (`InvalidSignatureException`).
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )]
    SignatureMismatch,
    /// The `x-amz-content-sha256` header is neither `UNSIGNED-PAYLOAD` nor the body's SHA-256
    /// (`InvalidSignatureException`).
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    PayloadHashMismatch,
    /// The signing time is more than [`CLOCK_SKEW_MAX`] from the server's clock, or a
    /// presigned URL has expired; the text gives the times (`InvalidSignatureException`).
    #[error("{0}")]
    Expired(String),
}

impl AuthError {
    /// The AWS exception name (`__type`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::SignatureMismatch | Self::PayloadHashMismatch | Self::Expired(_) => {
                "InvalidSignatureException"
            }
        }
    }

    /// The HTTP status: AWS answers every authentication failure with 403.
    pub fn status(&self) -> u16 {
        403
    }
}

fn incomplete(message: impl Into<String>) -> AuthError {
    AuthError::IncompleteSignature(message.into())
}

/// The signature's parameters, from the `Authorization` header or the query string.
struct Signed {
    access_key_id: String,
    /// The credential scope's date, `YYYYMMDD`.
    scope_date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    /// The signing time as it enters the string to sign (`YYYYMMDD'T'HHMMSS'Z'`).
    amz_date: String,
    signed_at: OffsetDateTime,
    /// `Some(seconds)` for a presigned URL.
    expires: Option<i64>,
}

/// Verifies `request`'s SigV4 signature (header or presigned) with the secret `credentials`
/// holds for its access key, at server time `now`.
pub fn verify(
    request: &RequestParts<'_>,
    credentials: &impl CredentialsProvider,
    now: OffsetDateTime,
) -> Result<VerifiedRequest, AuthError> {
    let raw_query = request.uri.query().unwrap_or("");
    let signed = match request.headers.get(http::header::AUTHORIZATION) {
        Some(authorization) => from_header(authorization, request.headers)?,
        None => {
            let query = parse_query(raw_query);
            if !query.iter().any(|(k, _)| is_presign_parameter(k)) {
                return Err(AuthError::MissingAuthenticationToken);
            }
            from_query(&query)?
        }
    };
    if !signed.amz_date.starts_with(&signed.scope_date) || signed.scope_date.len() != 8 {
        return Err(incomplete(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{}'.",
            signed.scope_date,
            signed.amz_date.get(..8).unwrap_or_default(),
            signed.amz_date
        )));
    }
    if !signed.signed_headers.iter().any(|h| h == "host") {
        return Err(incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    check_time(&signed, now)?;
    let secret = credentials
        .secret_for(&signed.access_key_id)
        .ok_or(AuthError::UnrecognizedClient)?;

    let payload_hashes = payload_hashes(request, signed.expires.is_some())?;
    let canonical_headers = canonical_headers(request, &signed.signed_headers)?;
    let signed_header_list = signed.signed_headers.join(";");
    let canonical_query = canonical_query(raw_query, signed.expires.is_some());
    let path = request.uri.path();
    let mut canonical_uris = vec![canonical_uri(&normalize_path(path))];
    let unnormalized = canonical_uri(if path.is_empty() { "/" } else { path });
    if unnormalized != canonical_uris[0] {
        canonical_uris.push(unnormalized);
    }

    let scope = format!(
        "{}/{}/{}/aws4_request",
        signed.scope_date, signed.region, signed.service
    );
    let signing_key = generate_signing_key(
        &secret,
        signed.signed_at.into(),
        &signed.region,
        &signed.service,
    );
    let mut first_canonical_request_hash = None;
    let mut matched = false;
    for uri in &canonical_uris {
        for payload_hash in &payload_hashes {
            let mut canonical_request = Vec::with_capacity(256 + canonical_headers.len());
            for part in [
                request.method.as_str().as_bytes(),
                uri.as_bytes(),
                canonical_query.as_bytes(),
                &canonical_headers,
                signed_header_list.as_bytes(),
            ] {
                canonical_request.extend_from_slice(part);
                canonical_request.push(b'\n');
            }
            canonical_request.extend_from_slice(payload_hash.as_bytes());
            let canonical_request_hash = hex::encode(Sha256::digest(&canonical_request));
            let string_to_sign = format!(
                "{ALGORITHM}\n{}\n{scope}\n{canonical_request_hash}",
                signed.amz_date
            );
            let expected = calculate_signature(&signing_key, string_to_sign.as_bytes());
            matched |= constant_time_eq(expected.as_bytes(), signed.signature.as_bytes());
            first_canonical_request_hash.get_or_insert(canonical_request_hash);
        }
    }
    if !matched {
        tracing::debug!(
            access_key_id = %signed.access_key_id,
            scope = %scope,
            signed_headers = %signed_header_list,
            canonical_request_sha256 = first_canonical_request_hash.as_deref().unwrap_or(""),
            presigned = signed.expires.is_some(),
            "SigV4 signature mismatch"
        );
        return Err(AuthError::SignatureMismatch);
    }
    Ok(VerifiedRequest {
        access_key_id: signed.access_key_id,
        region: signed.region,
        service: signed.service,
        signed_at: signed.signed_at,
    })
}

/// The `Authorization` header as echoed in error messages, with the signature cut short.
fn redacted(authorization: &str) -> String {
    match authorization.find("Signature=") {
        Some(at) => {
            let start = at + "Signature=".len();
            let end = authorization[start..]
                .find(|c: char| c == ',' || c.is_whitespace())
                .map_or(authorization.len(), |i| start + i);
            let signature = &authorization[start..end];
            let shown: String = signature.chars().take(8).collect();
            let ellipsis = if signature.len() > shown.len() {
                "..."
            } else {
                ""
            };
            format!(
                "{}{shown}{ellipsis}{}",
                &authorization[..start],
                &authorization[end..]
            )
        }
        None => authorization.to_owned(),
    }
}

fn from_header(
    authorization: &http::HeaderValue,
    headers: &http::HeaderMap,
) -> Result<Signed, AuthError> {
    let authorization = String::from_utf8_lossy(authorization.as_bytes());
    let authorization = authorization.trim();
    let (algorithm, rest) = authorization
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((authorization, ""));
    if algorithm != ALGORITHM && algorithm.starts_with("AWS4-") {
        return Err(incomplete(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'; only '{ALGORITHM}' is accepted."
        )));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    if algorithm == ALGORITHM {
        for part in rest.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            let slot = match key.trim() {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed_headers,
                "Signature" => &mut signature,
                _ => continue,
            };
            slot.get_or_insert(value.trim());
        }
    }
    let date = signing_date(headers);
    let mut problems = String::new();
    for (name, value) in [
        ("Credential", credential),
        ("Signature", signature),
        ("SignedHeaders", signed_headers),
    ] {
        if value.is_none_or(str::is_empty) {
            problems.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    if date.is_none() {
        problems.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    let refuse = || {
        incomplete(format!(
            "{problems}Authorization={}",
            redacted(authorization)
        ))
    };
    let (Some(credential), Some(signature), Some(signed_headers), Some(date)) =
        (credential, signature, signed_headers, date)
    else {
        return Err(refuse());
    };
    if !problems.is_empty() {
        return Err(refuse());
    }
    let (access_key_id, scope_date, region, service) = parse_scope(credential)?;
    let (amz_date, signed_at) = date?;
    Ok(Signed {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: signed_headers.split(';').map(str::to_owned).collect(),
        signature: signature.to_owned(),
        amz_date,
        signed_at,
        expires: None,
    })
}

/// The signing time from `X-Amz-Date`, else `Date`: `None` if neither is present, an error if
/// the one present cannot be parsed.
fn signing_date(headers: &http::HeaderMap) -> Option<Result<(String, OffsetDateTime), AuthError>> {
    if let Some(value) = headers.get("x-amz-date") {
        let value = String::from_utf8_lossy(value.as_bytes());
        return Some(
            parse_amz_date(value.trim())
                .map(|t| (value.trim().to_owned(), t))
                .ok_or_else(|| {
                    incomplete(format!(
                        "Invalid X-Amz-Date '{value}': expected the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'."
                    ))
                }),
        );
    }
    let value = headers.get(http::header::DATE)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    let value = value.trim();
    let parsed = parse_amz_date(value).or_else(|| {
        PrimitiveDateTime::parse(value, HTTP_DATE)
            .ok()
            .map(PrimitiveDateTime::assume_utc)
    });
    Some(parsed.map(|t| (format_amz_date(t), t)).ok_or_else(|| {
        incomplete(format!(
            "Invalid Date header '{value}': expected an HTTP date or YYYYMMDD'T'HHMMSS'Z'."
        ))
    }))
}

fn is_presign_parameter(key: &str) -> bool {
    matches!(
        key,
        "X-Amz-Algorithm" | "X-Amz-Credential" | "X-Amz-Signature" | "X-Amz-SignedHeaders"
    )
}

fn from_query(query: &[(String, String)]) -> Result<Signed, AuthError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut problems = String::new();
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Signature",
        "X-Amz-SignedHeaders",
        "X-Amz-Date",
        "X-Amz-Expires",
    ] {
        if get(name).is_none() {
            problems.push_str(&format!(
                "AWS query-string parameters must include '{name}'. "
            ));
        }
    }
    if !problems.is_empty() {
        return Err(incomplete(format!(
            "{problems}Re-examine the query-string parameters."
        )));
    }
    let param = |name: &str| get(name).unwrap_or_default();
    if param("X-Amz-Algorithm") != ALGORITHM {
        return Err(incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'; only '{ALGORITHM}' is accepted.",
            param("X-Amz-Algorithm")
        )));
    }
    let (access_key_id, scope_date, region, service) = parse_scope(param("X-Amz-Credential"))?;
    let amz_date = param("X-Amz-Date");
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        incomplete(format!(
            "Invalid X-Amz-Date '{amz_date}': expected the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'."
        ))
    })?;
    let expires = param("X-Amz-Expires")
        .parse::<i64>()
        .map_err(|_| incomplete("X-Amz-Expires should be a number."))?;
    if !(0..=PRESIGNED_EXPIRES_MAX_SECONDS).contains(&expires) {
        return Err(incomplete(format!(
            "X-Amz-Expires must be non-negative and less than a week (in seconds) that is {PRESIGNED_EXPIRES_MAX_SECONDS}."
        )));
    }
    Ok(Signed {
        access_key_id,
        scope_date,
        region,
        service,
        signed_headers: param("X-Amz-SignedHeaders")
            .split(';')
            .map(str::to_owned)
            .collect(),
        signature: param("X-Amz-Signature").to_owned(),
        amz_date: amz_date.to_owned(),
        signed_at,
        expires: Some(expires),
    })
}

/// Splits `AKID/YYYYMMDD/REGION/SERVICE/aws4_request`.
fn parse_scope(credential: &str) -> Result<(String, String, String, String), AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"]
            if [key, date, region, service].iter().all(|p| !p.is_empty()) =>
        {
            Ok((
                (*key).to_owned(),
                (*date).to_owned(),
                (*region).to_owned(),
                (*service).to_owned(),
            ))
        }
        [_, _, _, _, terminator] if !terminator.is_empty() && *terminator != "aws4_request" => {
            Err(incomplete(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )))
        }
        _ => Err(incomplete(format!(
            "Credential should be scoped to a valid region, service and date: expected 'ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request', got '{credential}'."
        ))),
    }
}

/// Parses `YYYYMMDD'T'HHMMSS'Z'` strictly.
fn parse_amz_date(value: &str) -> Option<OffsetDateTime> {
    let bytes = value.as_bytes();
    let shaped = bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[..8]
            .iter()
            .chain(&bytes[9..15])
            .all(u8::is_ascii_digit);
    if !shaped {
        return None;
    }
    PrimitiveDateTime::parse(value, AMZ_DATE)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

fn format_amz_date(time: OffsetDateTime) -> String {
    time.to_offset(UtcOffset::UTC)
        .format(AMZ_DATE)
        .unwrap_or_default()
}

fn check_time(signed: &Signed, now: OffsetDateTime) -> Result<(), AuthError> {
    let at = signed.signed_at;
    if at > now + CLOCK_SKEW_MAX {
        return Err(AuthError::Expired(format!(
            "Signature not yet current: {} is still later than {} ({} + 15 min.)",
            format_amz_date(at),
            format_amz_date(now + CLOCK_SKEW_MAX),
            format_amz_date(now)
        )));
    }
    match signed.expires {
        Some(expires) => {
            let until = at
                .checked_add(time::Duration::seconds(expires))
                .unwrap_or(at);
            if now > until {
                return Err(AuthError::Expired(format!(
                    "Request has expired: signed at {} for {expires} seconds, so valid until {}; it is now {}.",
                    format_amz_date(at),
                    format_amz_date(until),
                    format_amz_date(now)
                )));
            }
        }
        None => {
            if at < now - CLOCK_SKEW_MAX {
                return Err(AuthError::Expired(format!(
                    "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                    format_amz_date(at),
                    format_amz_date(now - CLOCK_SKEW_MAX),
                    format_amz_date(now)
                )));
            }
        }
    }
    Ok(())
}

/// The payload hashes the signer may have used, most likely first.
fn payload_hashes<'a>(
    request: &'a RequestParts<'_>,
    presigned: bool,
) -> Result<Vec<Cow<'a, str>>, AuthError> {
    let body_hash = || hex::encode(Sha256::digest(request.body));
    let Some(declared) = request.headers.get("x-amz-content-sha256") else {
        return Ok(if presigned {
            vec![Cow::Borrowed(UNSIGNED_PAYLOAD), Cow::Owned(body_hash())]
        } else {
            vec![Cow::Owned(body_hash())]
        });
    };
    let declared = declared
        .to_str()
        .map_err(|_| AuthError::PayloadHashMismatch)?;
    if declared == UNSIGNED_PAYLOAD {
        return Ok(vec![Cow::Borrowed(declared)]);
    }
    if declared.starts_with("STREAMING-") {
        return Err(incomplete(format!(
            "x-amz-content-sha256 '{declared}' (chunked payload signing) is not supported; sign the whole body."
        )));
    }
    if !declared.eq_ignore_ascii_case(&body_hash()) {
        return Err(AuthError::PayloadHashMismatch);
    }
    Ok(vec![Cow::Borrowed(declared)])
}

/// `name:value\n` for every signed header, in the order the signer listed them.
fn canonical_headers(
    request: &RequestParts<'_>,
    signed_headers: &[String],
) -> Result<Vec<u8>, AuthError> {
    let mut out = Vec::with_capacity(256);
    for name in signed_headers {
        let mut values = request.headers.get_all(name.as_str()).iter().peekable();
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        if values.peek().is_none() {
            // HTTP/2 carries the host in the `:authority` pseudo-header, i.e. the URI.
            match request.uri.authority().filter(|_| name == "host") {
                Some(authority) => out.extend_from_slice(authority.as_str().as_bytes()),
                None => {
                    return Err(incomplete(format!(
                        "Header '{name}' is listed in SignedHeaders but is missing from the request."
                    )));
                }
            }
        }
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            trim_all(value.as_bytes(), &mut out);
        }
        out.push(b'\n');
    }
    Ok(out)
}

/// SigV4's Trimall: leading and trailing spaces removed, runs of spaces collapsed to one.
fn trim_all(value: &[u8], out: &mut Vec<u8>) {
    let start = value.iter().position(|&b| b != b' ' && b != b'\t');
    let end = value.iter().rposition(|&b| b != b' ' && b != b'\t');
    let (Some(start), Some(end)) = (start, end) else {
        return;
    };
    let mut previous_space = false;
    for &b in &value[start..=end] {
        if b == b' ' && previous_space {
            continue;
        }
        previous_space = b == b' ';
        out.push(b);
    }
}

/// Removes dot segments and empty segments from an absolute path, as `aws-sigv4` and botocore
/// do for every service but S3 (e.g. `//a/./b/../c/` becomes `/a/c/`).
fn normalize_path(path: &str) -> Cow<'_, str> {
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    let path: Cow<'_, str> = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("/{path}"))
    };
    if !path.contains('.') && !path.contains("//") {
        return path;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    let ends_with_slash = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|suffix| path.ends_with(suffix));
    if ends_with_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    Cow::Owned(normalized)
}

/// The canonical URI: the path as sent (already percent-encoded) encoded once more, keeping
/// `/` (non-S3 services' "double encoding").
fn canonical_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    uri_encode(path.as_bytes(), true, &mut out);
    out
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, `/` kept if asked, every
/// other byte as `%XX` (upper-case hex).
fn uri_encode(input: &[u8], keep_slash: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in input {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(byte >> 4)] as char);
                out.push(HEX[usize::from(byte & 0xf)] as char);
            }
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a `%` not
/// followed by two hex digits stays as it is.
fn form_decode(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| (b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|&b| (b as char).to_digit(16)),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// The raw query's `key=value` pairs, each side split at the first `=` and form-decoded;
/// empty pairs (`&&`) are skipped.
fn query_pairs(raw: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    raw.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key), form_decode(value))
    })
}

fn parse_query(raw: &str) -> Vec<(String, String)> {
    query_pairs(raw)
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

/// Every parameter re-encoded, sorted by key then value, joined by `&`; presigned URLs leave
/// out `X-Amz-Signature`.
fn canonical_query(raw: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(raw)
        .filter(|(key, _)| !(presigned && key == b"X-Amz-Signature"))
        .map(|(key, value)| {
            let (mut k, mut v) = (String::new(), String::new());
            uri_encode(&key, false, &mut k);
            uri_encode(&value, false, &mut v);
            (k, v)
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_like_the_sdks_and_encode_once_more() {
        for (path, normalized) in [
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/./", "/"),
            ("/example/..", "/"),
            ("/a/b/../../..", "/"),
            ("//example//", "/example/"),
            ("/./example", "/example"),
            ("/foo/bar/.", "/foo/bar/"),
            ("/v2/my-repo/blobs/uploads/", "/v2/my-repo/blobs/uploads/"),
            ("/v1.2/x", "/v1.2/x"),
        ] {
            assert_eq!(normalize_path(path), normalized, "{path:?}");
        }
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(
            canonical_uri("/test/@connections/JBDvjfGEIAMCERw%3D"),
            "/test/%40connections/JBDvjfGEIAMCERw%253D"
        );
        assert_eq!(
            canonical_uri("/v2/r/blobs/sha256:ab~c"),
            "/v2/r/blobs/sha256%3Aab~c"
        );
    }

    #[test]
    fn query_strings_decode_sort_and_reencode() {
        assert_eq!(canonical_query("", false), "");
        assert_eq!(
            canonical_query("Param2=value2&Param1=value1&b&a=2&a=1", false),
            "Param1=value1&Param2=value2&a=1&a=2&b="
        );
        assert_eq!(
            canonical_query("last=a+b%2Fc&Z=~x&k=%e1%88%b4&bad=%zz&&", false),
            "Z=~x&bad=%25zz&k=%E1%88%B4&last=a%20b%2Fc"
        );
        assert_eq!(
            canonical_query("X-Amz-Signature=ab&X-Amz-Date=1", true),
            "X-Amz-Date=1"
        );
        assert_eq!(form_decode("%FF%4"), vec![0xff, b'%', b'4']);
    }

    #[test]
    fn header_values_are_trimmed_and_space_runs_collapsed() {
        let mut out = Vec::new();
        trim_all(b"  \"a   b \t c\"  ", &mut out);
        assert_eq!(out, b"\"a b \t c\"");
        let mut empty = Vec::new();
        trim_all(b"   ", &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn dates_parse_strictly() {
        assert!(parse_amz_date("20150830T123600Z").is_some());
        for bad in [
            "2015-08-30T12:36:00Z",
            "20150830T123600",
            "+2015083T123600Z",
            "20151330T123600Z",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
        let t = PrimitiveDateTime::parse("Sun, 30 Aug 2015 12:36:00 GMT", HTTP_DATE)
            .unwrap()
            .assume_utc();
        assert_eq!(format_amz_date(t), "20150830T123600Z");
    }

    #[test]
    fn error_messages_never_carry_the_whole_signature() {
        let signature = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let header = format!("AWS4-HMAC-SHA256 SignedHeaders=host, Signature={signature}");
        let shown = redacted(&header);
        assert!(!shown.contains(signature), "{shown}");
        assert!(shown.ends_with("Signature=5fa00fa3..."), "{shown}");
        assert_eq!(redacted("Bearer x"), "Bearer x");
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let shown = format!("{:?}", Credentials::new("AKID", "very-secret"));
        assert!(
            shown.contains("AKID") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
