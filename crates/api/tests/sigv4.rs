//! SigV4 verification against real signers: the AWS SDK for Rust's `aws-sigv4` (headers and
//! presigned URLs), botocore (the AWS CLI's library) and the AWS SigV4 test suite.

use std::borrow::Cow;
use std::time::Duration;

use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use flotilla_api::sigv4::{
    AuthError, CLOCK_SKEW_MAX, Credentials, CredentialsProvider, RequestParts, VerifiedRequest,
    verify,
};
use time::OffsetDateTime;
use time::macros::datetime;

const AK: &str = "AKIDEXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const T0: OffsetDateTime = datetime!(2024-01-01 00:00:00 UTC);
const TARGET: &str = "AmazonEC2ContainerServiceV20141113.ListClusters";

fn creds() -> Credentials {
    Credentials::new(AK, SK)
}

fn minutes(n: i64) -> time::Duration {
    time::Duration::minutes(n)
}

/// How to sign a request with `aws-sigv4`.
struct Signer {
    secret: &'static str,
    token: Option<&'static str>,
    at: OffsetDateTime,
    settings: SigningSettings,
    /// `None`: the body's bytes.
    body: Option<SignableBody<'static>>,
}

impl Default for Signer {
    fn default() -> Self {
        Self {
            secret: SK,
            token: None,
            at: T0,
            settings: SigningSettings::default(),
            body: None,
        }
    }
}

impl Signer {
    fn presigned(expires: u64) -> Self {
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(expires));
        Self {
            settings,
            body: Some(SignableBody::UnsignedPayload),
            ..Self::default()
        }
    }

    /// Signs `request` in place exactly as the AWS SDK for Rust does (region `eu-west-1`,
    /// service `ecs`).
    fn sign(&self, mut request: http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
        let identity = aws_credential_types::Credentials::new(
            AK,
            self.secret,
            self.token.map(str::to_owned),
            None,
            "test",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name("ecs")
            .time(self.at.into())
            .settings(self.settings.clone())
            .build()
            .unwrap()
            .into();
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        let body = match &self.body {
            Some(SignableBody::UnsignedPayload) => SignableBody::UnsignedPayload,
            Some(SignableBody::Precomputed(hash)) => SignableBody::Precomputed(hash.clone()),
            Some(_) => unreachable!("not used by these tests"),
            None => SignableBody::Bytes(request.body()),
        };
        let signable = SignableRequest::new(
            request.method().as_str(),
            request.uri().to_string(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body,
        )
        .unwrap();
        let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut request);
        request
    }
}

/// An ECS call as the SDK sends it: `POST /` with the awsJson 1.1 headers.
fn ecs_request(body: &str) -> http::Request<Vec<u8>> {
    http::Request::builder()
        .method("POST")
        .uri("http://localhost:4750/")
        .header("host", "localhost:4750")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", TARGET)
        .header("content-length", body.len().to_string())
        .body(body.as_bytes().to_vec())
        .unwrap()
}

fn get(uri: &str) -> http::Request<Vec<u8>> {
    let uri: http::Uri = uri.parse().unwrap();
    http::Request::builder()
        .method("GET")
        .header("host", uri.authority().unwrap().as_str())
        .uri(uri)
        .body(Vec::new())
        .unwrap()
}

fn parts(request: &http::Request<Vec<u8>>) -> RequestParts<'_> {
    RequestParts {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
        body: request.body(),
    }
}

fn check(
    request: &http::Request<Vec<u8>>,
    now: OffsetDateTime,
) -> Result<VerifiedRequest, AuthError> {
    verify(&parts(request), &creds(), now)
}

fn incomplete_message(result: Result<VerifiedRequest, AuthError>) -> String {
    let error = result.unwrap_err();
    assert_eq!(error.code(), "IncompleteSignatureException", "{error}");
    assert_eq!(error.status(), 403);
    error.to_string()
}

#[test]
fn sdk_signed_ecs_calls_verify_and_report_the_scope() {
    let request = Signer::default().sign(ecs_request("{}"));
    let expected = VerifiedRequest {
        access_key_id: AK.to_owned(),
        region: "eu-west-1".to_owned(),
        service: "ecs".to_owned(),
        signed_at: T0,
    };
    assert_eq!(check(&request, T0), Ok(expected.clone()));
    // Up to CLOCK_SKEW_MAX either way is fine.
    assert_eq!(check(&request, T0 + CLOCK_SKEW_MAX), Ok(expected.clone()));
    assert_eq!(check(&request, T0 - CLOCK_SKEW_MAX), Ok(expected));
    // A header the signer did not sign may change (proxies add some).
    let mut extra = request.clone();
    extra
        .headers_mut()
        .insert("user-agent", "proxy/1.0".parse().unwrap());
    extra
        .headers_mut()
        .insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    assert!(check(&extra, T0).is_ok());
}

#[test]
fn every_credentials_provider_shape_works() {
    let request = Signer::default().sign(ecs_request("{}"));
    let other = Credentials::new("AKIDOTHER", "other-secret");
    let list = vec![other.clone(), creds()];
    let now = T0;
    assert!(verify(&parts(&request), &list, now).is_ok());
    assert!(verify(&parts(&request), &list.as_slice(), now).is_ok());
    assert!(verify(&parts(&request), &&list, now).is_ok());
    assert_eq!(list.as_slice().secret_for(AK).as_deref(), Some(SK));
    assert_eq!(
        verify(&parts(&request), &other, now),
        Err(AuthError::UnrecognizedClient)
    );
}

#[test]
fn tampering_is_refused() {
    let request = Signer::default().sign(ecs_request("{}"));
    let mismatch = Err(AuthError::SignatureMismatch);

    let mut body = request.clone();
    *body.body_mut() = br#"{"cluster":"prod"}"#.to_vec();
    assert_eq!(check(&body, T0), mismatch);

    let mut target = request.clone();
    target.headers_mut().insert(
        "x-amz-target",
        "AmazonEC2ContainerServiceV20141113.DeleteCluster"
            .parse()
            .unwrap(),
    );
    assert_eq!(check(&target, T0), mismatch);

    let mut host = request.clone();
    host.headers_mut()
        .insert("host", "evil.example:4750".parse().unwrap());
    assert_eq!(check(&host, T0), mismatch);

    let mut method = request.clone();
    *method.method_mut() = http::Method::PUT;
    assert_eq!(check(&method, T0), mismatch);

    let mut path = request.clone();
    *path.uri_mut() = "http://localhost:4750/other".parse().unwrap();
    assert_eq!(check(&path, T0), mismatch);

    let mut query = request.clone();
    *query.uri_mut() = "http://localhost:4750/?a=1".parse().unwrap();
    assert_eq!(check(&query, T0), mismatch);

    let mut date = request.clone();
    date.headers_mut()
        .insert("x-amz-date", "20240101T000001Z".parse().unwrap());
    assert_eq!(check(&date, T0), mismatch);

    // A signed header that went missing on the way.
    let mut missing = request.clone();
    missing.headers_mut().remove("x-amz-target");
    let message = incomplete_message(check(&missing, T0));
    assert!(message.contains("'x-amz-target'"), "{message}");
}

#[test]
fn a_wrong_secret_or_unknown_key_is_refused_with_aws_wording() {
    let wrong = Signer {
        secret: "not-the-secret",
        ..Signer::default()
    }
    .sign(ecs_request("{}"));
    let error = check(&wrong, T0).unwrap_err();
    assert_eq!(error, AuthError::SignatureMismatch);
    assert_eq!(error.code(), "InvalidSignatureException");
    assert_eq!(error.status(), 403);
    assert_eq!(
        error.to_string(),
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    );

    let request = Signer::default().sign(ecs_request("{}"));
    let error = verify(&parts(&request), &Credentials::new("AKIDOTHER", SK), T0).unwrap_err();
    assert_eq!(error, AuthError::UnrecognizedClient);
    assert_eq!(error.code(), "UnrecognizedClientException");
    assert_eq!(error.status(), 403);
    assert_eq!(
        error.to_string(),
        "The security token included in the request is invalid."
    );
}

#[test]
fn stale_and_future_timestamps_are_refused_with_aws_wording() {
    let request = Signer::default().sign(ecs_request("{}"));
    let error = check(&request, T0 + minutes(30)).unwrap_err();
    assert_eq!(error.code(), "InvalidSignatureException");
    assert_eq!(error.status(), 403);
    assert_eq!(
        error.to_string(),
        "Signature expired: 20240101T000000Z is now earlier than 20240101T001500Z (20240101T003000Z - 15 min.)"
    );
    assert!(check(&request, T0 + CLOCK_SKEW_MAX + time::Duration::SECOND).is_err());

    let future = Signer {
        at: T0 + minutes(30),
        ..Signer::default()
    }
    .sign(ecs_request("{}"));
    let error = check(&future, T0).unwrap_err();
    assert_eq!(error.code(), "InvalidSignatureException");
    assert_eq!(
        error.to_string(),
        "Signature not yet current: 20240101T003000Z is still later than 20240101T001500Z (20240101T000000Z + 15 min.)"
    );
    // `now` in another offset is the same instant.
    let offset = time::UtcOffset::from_hms(2, 0, 0).unwrap();
    assert!(check(&request, T0.to_offset(offset)).is_ok());
}

#[test]
fn session_tokens_are_signed_but_not_checked() {
    let request = Signer {
        token: Some("FQoGZXIvYXdzEXAMPLE+token/=="),
        ..Signer::default()
    }
    .sign(ecs_request("{}"));
    let signed = request.headers()["authorization"].to_str().unwrap();
    assert!(signed.contains("x-amz-security-token"), "{signed}");
    assert!(check(&request, T0).is_ok());
    // The token is covered by the signature like any signed header.
    let mut swapped = request.clone();
    swapped
        .headers_mut()
        .insert("x-amz-security-token", "other".parse().unwrap());
    assert_eq!(check(&swapped, T0), Err(AuthError::SignatureMismatch));
}

#[test]
fn no_authentication_at_all() {
    let request = ecs_request("{}");
    let error = check(&request, T0).unwrap_err();
    assert_eq!(error, AuthError::MissingAuthenticationToken);
    assert_eq!(error.code(), "MissingAuthenticationTokenException");
    assert_eq!(error.status(), 403);
    assert_eq!(error.to_string(), "Missing Authentication Token");
    // Ordinary query parameters are not a presigned URL.
    assert_eq!(
        check(&get("http://localhost:4750/v2/r/tags/list?n=10"), T0),
        Err(AuthError::MissingAuthenticationToken)
    );
}

fn with_authorization(authorization: &str) -> http::Request<Vec<u8>> {
    let mut request = ecs_request("{}");
    let headers = request.headers_mut();
    headers.insert("x-amz-date", "20240101T000000Z".parse().unwrap());
    headers.insert("authorization", authorization.parse().unwrap());
    request
}

const SIGNATURE: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

#[test]
fn malformed_authorization_headers_are_incomplete_signatures() {
    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert!(
        message.starts_with("Authorization header requires 'Credential' parameter. Authorization=AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=5fa00fa3"),
        "{message}"
    );
    assert!(!message.contains(SIGNATURE), "{message}");

    let mut no_date = with_authorization("Bearer abc");
    no_date.headers_mut().remove("x-amz-date");
    assert_eq!(
        incomplete_message(check(&no_date, T0)),
        "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=Bearer abc"
    );

    let mut dateless = Signer::default().sign(ecs_request("{}"));
    dateless.headers_mut().remove("x-amz-date");
    let message = incomplete_message(check(&dateless, T0));
    assert!(
        message.starts_with("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/ecs/aws4_request"),
        "{message}"
    );

    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert!(
        message.starts_with("Credential should be scoped"),
        "{message}"
    );

    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws5_request, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert_eq!(
        message,
        "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'."
    );

    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231231/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert_eq!(
        message,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20231231' != '20240101', from '20240101T000000Z'."
    );

    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=content-type;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert_eq!(
        message,
        "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    );

    let message = incomplete_message(check(
        &with_authorization(&format!(
            "AWS4-ECDSA-P256-SHA256 Credential=AKIDEXAMPLE/20240101/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
        )),
        T0,
    ));
    assert!(message.contains("'AWS4-ECDSA-P256-SHA256'"), "{message}");

    let mut bad_date = with_authorization(&format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
    ));
    bad_date
        .headers_mut()
        .insert("x-amz-date", "2024-01-01T00:00:00Z".parse().unwrap());
    let message = incomplete_message(check(&bad_date, T0));
    assert!(message.contains("X-Amz-Date"), "{message}");
}

#[test]
fn an_http_date_header_may_stand_in_for_x_amz_date() {
    let mut settings = SigningSettings::default();
    settings
        .excluded_headers
        .get_or_insert_with(Vec::new)
        .push(Cow::Borrowed("x-amz-date"));
    let mut request = Signer {
        settings,
        ..Signer::default()
    }
    .sign(ecs_request("{}"));
    request.headers_mut().remove("x-amz-date");
    request
        .headers_mut()
        .insert("date", "Mon, 01 Jan 2024 00:00:00 GMT".parse().unwrap());
    assert_eq!(check(&request, T0).unwrap().signed_at, T0);
}

#[test]
fn paths_and_queries_sign_like_the_sdk() {
    for uri in [
        "http://localhost:4750/v2/my-repo/blobs/uploads/",
        "http://localhost:4750/v2/team/my-repo/blobs/sha256:9f86d081884c7d65",
        "http://localhost:4750/v2/a%20b/c%2Fd/manifests/v1.0",
        "http://localhost:4750/v2/my-repo/tags/list?n=10&last=a%20b&x=%2F%3A&empty=&flag",
        "http://localhost:4750/v2//double//slashes/./here/",
        "http://localhost/v2/default-port",
    ] {
        let request = Signer::default().sign(get(uri));
        assert!(
            check(&request, T0).is_ok(),
            "{uri}: {:?}",
            check(&request, T0)
        );
    }
}

#[test]
fn http2_requests_take_the_host_from_the_authority() {
    let mut request = Signer::default().sign(ecs_request("{}"));
    request.headers_mut().remove("host");
    assert!(check(&request, T0).is_ok());
    *request.uri_mut() = "/".parse().unwrap();
    let message = incomplete_message(check(&request, T0));
    assert!(message.contains("'host'"), "{message}");
}

#[test]
fn x_amz_content_sha256_must_match_the_body() {
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let request = Signer {
        settings: settings.clone(),
        ..Signer::default()
    }
    .sign(ecs_request(r#"{"clusterName":"x"}"#));
    assert!(request.headers().contains_key("x-amz-content-sha256"));
    assert!(check(&request, T0).is_ok());

    let mut tampered = request.clone();
    *tampered.body_mut() = br#"{"clusterName":"y"}"#.to_vec();
    let error = check(&tampered, T0).unwrap_err();
    assert_eq!(error, AuthError::PayloadHashMismatch);
    assert_eq!(error.code(), "InvalidSignatureException");
    assert_eq!(error.status(), 403);

    // UNSIGNED-PAYLOAD leaves the body out of the signature.
    let unsigned = Signer {
        settings,
        body: Some(SignableBody::UnsignedPayload),
        ..Signer::default()
    }
    .sign(ecs_request("{}"));
    assert_eq!(
        unsigned.headers()["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD"
    );
    assert!(check(&unsigned, T0).is_ok());
    let mut other_body = unsigned.clone();
    *other_body.body_mut() = b"anything".to_vec();
    assert!(check(&other_body, T0).is_ok());

    // Chunked (streaming) payload signatures are not supported.
    let mut streaming = request.clone();
    streaming.headers_mut().insert(
        "x-amz-content-sha256",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD".parse().unwrap(),
    );
    let message = incomplete_message(check(&streaming, T0));
    assert!(
        message.contains("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        "{message}"
    );
}

#[test]
fn presigned_urls_verify_until_they_expire() {
    let request = Signer::presigned(60).sign(get(
        "http://localhost:4750/v2/my-repo/manifests/latest?tag=a%20b",
    ));
    assert!(request.uri().query().unwrap().contains("X-Amz-Signature="));
    assert!(!request.headers().contains_key("authorization"));
    let verified = check(&request, T0 + time::Duration::seconds(30)).unwrap();
    assert_eq!(
        (verified.region.as_str(), verified.service.as_str()),
        ("eu-west-1", "ecs")
    );
    assert!(check(&request, T0 + time::Duration::seconds(60)).is_ok());

    let error = check(&request, T0 + time::Duration::seconds(61)).unwrap_err();
    assert_eq!(error.code(), "InvalidSignatureException");
    assert_eq!(
        error.to_string(),
        "Request has expired: signed at 20240101T000000Z for 60 seconds, so valid until 20240101T000100Z; it is now 20240101T000101Z."
    );
    let error = check(&request, T0 - minutes(16)).unwrap_err();
    assert!(
        error.to_string().starts_with("Signature not yet current:"),
        "{error}"
    );

    // The parameters are signed.
    let uri = request.uri().to_string().replace("tag=a%20b", "tag=b");
    let mut tampered = request.clone();
    *tampered.uri_mut() = uri.parse().unwrap();
    assert_eq!(check(&tampered, T0), Err(AuthError::SignatureMismatch));
    let uri = request
        .uri()
        .to_string()
        .replace("X-Amz-Expires=60", "X-Amz-Expires=600");
    let mut longer = request.clone();
    *longer.uri_mut() = uri.parse().unwrap();
    assert_eq!(check(&longer, T0), Err(AuthError::SignatureMismatch));

    // A wrong secret, and a session token carried in the query.
    let wrong = Signer {
        secret: "nope",
        ..Signer::presigned(60)
    }
    .sign(get("http://localhost:4750/"));
    assert_eq!(check(&wrong, T0), Err(AuthError::SignatureMismatch));
    let session = Signer {
        token: Some("session-token"),
        ..Signer::presigned(60)
    }
    .sign(get("http://localhost:4750/"));
    assert!(
        session
            .uri()
            .query()
            .unwrap()
            .contains("X-Amz-Security-Token=session-token")
    );
    assert!(check(&session, T0).is_ok());

    // Presigning may also cover the body's hash (botocore does outside S3).
    let hashed = Signer {
        body: None,
        ..Signer::presigned(60)
    }
    .sign(get("http://localhost:4750/"));
    assert!(check(&hashed, T0).is_ok());
}

#[test]
fn incomplete_presigned_parameters_are_listed() {
    let request =
        get("http://localhost:4750/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20240101T000000Z");
    assert_eq!(
        incomplete_message(check(&request, T0)),
        "AWS query-string parameters must include 'X-Amz-Credential'. AWS query-string parameters must include 'X-Amz-Signature'. AWS query-string parameters must include 'X-Amz-SignedHeaders'. AWS query-string parameters must include 'X-Amz-Expires'. Re-examine the query-string parameters."
    );
    let request = Signer::presigned(60).sign(get("http://localhost:4750/"));
    let uri = request
        .uri()
        .to_string()
        .replace("X-Amz-Expires=60", "X-Amz-Expires=604801");
    let message = incomplete_message(check(&get(&uri), T0));
    assert!(message.contains("604800"), "{message}");
}

/// A request signed by botocore 1.43 (the AWS CLI's library): `SigV4Auth` (or
/// `SigV4QueryAuth` for presigned URLs, expiring after 300 s) for service `ecs` in
/// `us-east-1`, with `AKIDEXAMPLE` (or the session key `ASIAEXAMPLE`, same secret) and the
/// clock fixed at 2024-01-01T00:00:00Z. The HTTP client adds `Host` from the URL.
struct Botocore {
    name: &'static str,
    method: &'static str,
    url: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
}

const BOTOCORE: &[Botocore] = &[
    Botocore {
        name: "json",
        method: "POST",
        url: "http://localhost:4750/",
        headers: &[
            ("Content-Type", "application/x-amz-json-1.1"),
            (
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.CreateCluster",
            ),
            ("X-Amz-Date", "20240101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=b104b0cda744304ccfd47bfe0f2a18a379d6171057f0f036dc63888f9ea24b6a",
            ),
            ("Content-Length", "19"),
        ],
        body: "{\"clusterName\":\"x\"}",
    },
    Botocore {
        name: "query",
        method: "GET",
        url: "http://localhost:4750/v2/my-repo/tags/list?n=10&last=a+b%2Fc&Z=~x",
        headers: &[
            ("X-Amz-Date", "20240101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature=f749d2b3f7f6d2db4127c0c01a91d4d50709c7bc8945043bc703167f1360d656",
            ),
        ],
        body: "",
    },
    Botocore {
        name: "uploads",
        method: "POST",
        url: "http://localhost:4750/v2/my-repo/blobs/uploads/",
        headers: &[
            ("X-Amz-Date", "20240101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature=f6307aaa13e8b286cefa078d28f0bd799c90a686db51d68e8405a2b9f3bcea2f",
            ),
            ("Content-Length", "0"),
        ],
        body: "",
    },
    Botocore {
        name: "session",
        method: "POST",
        url: "http://127.0.0.1:4750/",
        headers: &[
            ("Content-Type", "application/x-amz-json-1.1"),
            (
                "X-Amz-Target",
                "AmazonEC2ContainerServiceV20141113.ListClusters",
            ),
            ("X-Amz-Date", "20240101T000000Z"),
            ("X-Amz-Security-Token", "FQoGZXIvYXdzEXAMPLE+token/=="),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=a42eb1a43829efafa22315a7fe502764ac6915c2b048e73079942b1e95342fab",
            ),
            ("Content-Length", "2"),
        ],
        body: "{}",
    },
    Botocore {
        name: "presigned",
        method: "GET",
        url: "http://localhost:4750/v2/my-repo/manifests/latest?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1%2Fecs%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=b9db168a708e3d4bf961421e218ffb90cd6344a1e21cf7d72fa26a8e4319da41",
        headers: &[],
        body: "",
    },
    Botocore {
        name: "digest",
        method: "GET",
        url: "http://flotilla.local/v2/team/my-repo/blobs/sha256:9f86d081884c7d65",
        headers: &[
            ("X-Amz-Date", "20240101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-date, Signature=03df4c15e9712d83d90166d59e411776ce74642c7cfe976b6d0145a282463e76",
            ),
        ],
        body: "",
    },
    Botocore {
        name: "x-amz-content-sha256",
        method: "PUT",
        url: "http://localhost:4750/v2/my-repo/blobs/uploads/5f3c?digest=sha256%3Aabc",
        headers: &[
            (
                "X-Amz-Content-SHA256",
                "d50fdce899b75695aa4d7bfb84396fbe2fdee1c92f0dd621d245156cad6f51c0",
            ),
            ("X-Amz-Date", "20240101T000000Z"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ecs/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=c2cd4164fe9443f56201e264b11ddfd286575592eebdcd0d43d762890cc6ce27",
            ),
            ("Content-Length", "11"),
        ],
        body: "layer-bytes",
    },
];

fn botocore_request(fixture: &Botocore) -> http::Request<Vec<u8>> {
    let uri: http::Uri = fixture.url.parse().unwrap();
    let host = match uri.port_u16() {
        Some(80) | None => uri.host().unwrap().to_owned(),
        Some(port) => format!("{}:{port}", uri.host().unwrap()),
    };
    let mut builder = http::Request::builder()
        .method(fixture.method)
        .uri(uri)
        .header("Host", host);
    for (name, value) in fixture.headers {
        builder = builder.header(*name, *value);
    }
    builder.body(fixture.body.as_bytes().to_vec()).unwrap()
}

#[test]
fn botocore_signatures_verify() {
    let keys = vec![creds(), Credentials::new("ASIAEXAMPLE", SK)];
    let now = T0 + time::Duration::seconds(30);
    for fixture in BOTOCORE {
        let request = botocore_request(fixture);
        let verified = verify(&parts(&request), &keys, now)
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.name));
        assert_eq!(
            (
                verified.region.as_str(),
                verified.service.as_str(),
                verified.signed_at
            ),
            ("us-east-1", "ecs", T0),
            "{}",
            fixture.name
        );
        // And the same request with its body or URL changed does not.
        let mut tampered = request.clone();
        tampered.body_mut().push(b' ');
        *tampered.uri_mut() = format!(
            "{}{}x=1",
            fixture.url,
            if fixture.url.contains('?') { "&" } else { "?" }
        )
        .parse()
        .unwrap();
        assert!(
            verify(&parts(&tampered), &keys, now).is_err(),
            "{}",
            fixture.name
        );
    }
}

/// Parses a request in the test suite's text form (`METHOD target HTTP/1.1`, `Name:value`
/// lines, a blank line, the body) as a server receives it: non-ASCII in the target arrives
/// percent-encoded and header values arrive without surrounding whitespace.
fn parse_raw(text: &str) -> http::Request<Vec<u8>> {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let (method, target) = request_line.split_once(' ').unwrap();
    let target = target.strip_suffix(" HTTP/1.1").unwrap_or(target);
    let mut encoded = String::new();
    for c in target.chars() {
        if c.is_ascii() {
            encoded.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut builder = http::Request::builder().method(method).uri(encoded);
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        builder = builder.header(name, value.trim());
    }
    builder.body(body.as_bytes().to_vec()).unwrap()
}

#[test]
fn the_aws_sigv4_test_suite_verifies() {
    let now = datetime!(2015-08-30 12:36:00 UTC);
    let mut signatures = 0;
    for (name, header_signed, presigned) in AWS_SUITE {
        for text in [header_signed, presigned] {
            if text.is_empty() {
                continue;
            }
            let request = parse_raw(text);
            let verified = verify(&parts(&request), &creds(), now)
                .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(
                (verified.region.as_str(), verified.service.as_str()),
                ("us-east-1", "service"),
                "{name}"
            );
            signatures += 1;
            let mut tampered = request.clone();
            tampered.body_mut().push(b'!');
            tampered
                .headers_mut()
                .insert("host", "example.amazonaws.org".parse().unwrap());
            assert!(verify(&parts(&tampered), &creds(), now).is_err(), "{name}");
        }
    }
    assert_eq!(signatures, 2 * AWS_SUITE.len() - 1);
}

#[test]
fn get_vanilla_by_hand() {
    // The suite's first vector, spelled out: GET / on example.amazonaws.com.
    let request = http::Request::builder()
        .method("GET")
        .uri("/")
        .header("host", "example.amazonaws.com")
        .header("x-amz-date", "20150830T123600Z")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        )
        .body(Vec::new())
        .unwrap();
    let now = datetime!(2015-08-30 12:36:00 UTC);
    assert!(check(&request, now).is_ok());
    let wrong_secret = Credentials::new(AK, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ");
    assert_eq!(
        verify(&parts(&request), &wrong_secret, now),
        Err(AuthError::SignatureMismatch)
    );
}

/// From the same suite (`double-url-encode`): a Lambda path whose `%3A`s are signed as `%253A`.
#[test]
fn already_encoded_paths_are_encoded_again() {
    let request = parse_raw(
        "POST /2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-west-2%3A892717189312%3Afunction%3Amy-rusty-fun/invocations HTTP/1.1\nHost:lambda.us-east-2.amazonaws.com\nX-Amz-Date:20210511T154045Z\nAuthorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20210511/us-east-2/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=4b93abbcc68be32bd64c18e2c71150660ab4c29bbd6c32a383a7517a88fc1804\n\n",
    );
    let verified = check(&request, datetime!(2021-05-11 15:40:45 UTC)).unwrap();
    assert_eq!(verified.service, "lambda");
}

/// `(name, header-signed request, presigned request)` from the AWS SigV4 test suite
/// (as shipped in the `aws-sigv4` crate's `aws-signing-test-suite/v4`), signed at
/// 20150830T123600Z by `AKIDEXAMPLE` in `us-east-1` for service `service`.
const AWS_SUITE: &[(&str, &str, &str)] = &[
    (
        "get-vanilla",
        r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-query-order-encoded",
        r#"GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac

"#,
        r#"GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=c5f1848ceec943ac2ca68ee720460c23aaae30a2300586597ada94c4a65e4787 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-query-order-key-case",
        r#"GET /?Param2=value2&Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500

"#,
        r#"GET /?Param2=value2&Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=86012e2c9ad4d77369f5d81c11f75158aae4f895a085212cc6d3f923d300bed5 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-query-unreserved",
        r#"GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197

"#,
        r#"GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=8e76a88a7433637b12778d5592799b29ad21ecd6cf6325051c21d86f0acda2bf HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-utf8-query",
        r#"GET /?ሴ=bar HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04

"#,
        r#"GET /?ሴ=bar&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=0bdd809b1519ac4f0c1dc3540e2cc46bd0c7f778eda408b2ebf3b913d21ff600 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-empty-query-key",
        r#"GET /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb

"#,
        r#"GET /?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=49096700cbbaa5753443850f40df10f904fc2fdb544dc9512203cc77c471a9de HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-unreserved",
        r#"GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f

"#,
        r#"GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=95968482db1b9e0fadef6efc1bd24689f77c77d9ef56919c96a28cc92e0d6005 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-header-key-duplicate",
        r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value2
My-Header1:value2
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea

"#,
        r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=3349ee0b81b4b589da0ff28a395c3591e04de515651dd74f298fa992d1507a97 HTTP/1.1
Host:example.amazonaws.com
My-Header1:value2
My-Header1:value2
My-Header1:value1

"#,
    ),
    (
        "get-header-value-order",
        r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value4
My-Header1:value1
My-Header1:value3
My-Header1:value2
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01

"#,
        r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=313720e71ca6202fdcfa9b20f88de01a4eb0638a83c833b1c184359a4eda864e HTTP/1.1
Host:example.amazonaws.com
My-Header1:value4
My-Header1:value1
My-Header1:value3
My-Header1:value2

"#,
    ),
    (
        "get-header-value-trim",
        r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1: value1
My-Header2: "a   b   c"
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736

"#,
        r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1%3Bmy-header2&X-Amz-Expires=3600&X-Amz-Signature=e7bb0fd515e125e1aec2ecc4c0c17484fb06f6846b927c35e46005dd3df3acd4 HTTP/1.1
Host:example.amazonaws.com
My-Header1: value1
My-Header2: "a   b   c"

"#,
    ),
    (
        "get-slashes-normalized",
        r#"GET //example// HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84

"#,
        r#"GET //example//?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=c1834e8fb0307243711f0f907f6ab7311ed300d87f13792d7ee4da89ab93e082 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-slashes-unnormalized",
        r#"GET //example// HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5

"#,
        r#"GET //example//?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=822a5a9ba28072c5ab2bb4a6307d0c88276d40e49fec6b724c03fb4d4ba60fc2 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-slash-dot-slash-normalized",
        r#"GET /./ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        r#"GET /./?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-relative-relative-normalized",
        r#"GET /example1/example2/../.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        r#"GET /example1/example2/../..?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-relative-unnormalized",
        r#"GET /example/.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=eca7ead57bb5aa5c8e28007acd4ff04e1ff9a0ff3b237ec1554a184887ff9282

"#,
        r#"GET /example/..?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=cbcb213b928a077e43275df47b500f1dfaa864ab3f5a18f6b95f4ff0938167ee HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-slash-pointless-dot-normalized",
        r#"GET /./example HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5

"#,
        r#"GET /./example?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=35034b1a0bdd969f346975386daf8aedfd4976573b8348cf4f67eaa41c5857de HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "get-vanilla-with-session-token",
        r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8

"#,
        r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token=6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267&X-Amz-Signature=7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "post-header-key-case",
        r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=2ce6e6d2e0cf2f9d1b55fafec88cd20574c31dc2e7631979f71ba2310083e95b HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "post-header-key-sort",
        r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c

"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=c09d07e0d55871f10f2a6d350d994acf6825a3cae70673d7def55616e6119dd7 HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1

"#,
    ),
    (
        "post-header-value-case",
        r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:VALUE1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d

"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=0698bc9e4f7f9139065ba2909c0e99da257e8e2a42492a097bcd46d792391fed HTTP/1.1
Host:example.amazonaws.com
My-Header1:VALUE1

"#,
    ),
    (
        "post-sts-header-before",
        r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead

"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token=AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D&X-Amz-Signature=46c2e3c63c1dbe7d39f8ada16fe7f001c1f56c5791441565323677f96308871c HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "post-sts-header-after",
        r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        // Its presigned form appends the token after signing (`SessionTokenMode::Exclude`,
        // an IoT quirk), which Flotilla does not support.
        "",
    ),
    (
        "post-vanilla-query",
        r#"POST /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11

"#,
        r#"POST /?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=a9ef26247f293bffe40eeff86a0480ba8c14d31503b2e0c3399e3a16bf1a3682 HTTP/1.1
Host:example.amazonaws.com

"#,
    ),
    (
        "post-x-www-form-urlencoded",
        r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b

Param1=value1"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600&X-Amz-Signature=89a40deed0f26f9461242825a082d2222717248abc7ab41f552ad84a94ad46e9 HTTP/1.1
Content-Type:application/x-www-form-urlencoded
Host:example.amazonaws.com
Content-Length:13

Param1=value1"#,
    ),
    (
        "post-x-www-form-urlencoded-parameters",
        r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded; charset=utf-8
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=328d1b9eaadca9f5818ef05e8392801e091653bafec24fcab71e7344e7f51422

Param1=value1"#,
        r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600&X-Amz-Signature=0dbeb9b026c7b6675f266b8427efec9b4fa8b1f6ef1477d717aea231106eab4d HTTP/1.1
Content-Type:application/x-www-form-urlencoded; charset=utf-8
Host:example.amazonaws.com
Content-Length:13

Param1=value1"#,
    ),
];
