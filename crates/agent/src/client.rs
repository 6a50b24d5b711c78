//! A SigV4-signing client of the control plane's agent protocol (and any awsJson call).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use flotilla_protocol::AgentCall;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke; retrying may help.
    #[error("cannot reach the control plane at {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
    /// The server answered with an AWS-shaped error.
    #[error("{code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The request could not be signed or the answer could not be read.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Refused { status, .. } => *status >= 500 || *status == 429,
            Self::Protocol(_) => false,
        }
    }
}

/// Access keys and region used to sign requests.
#[derive(Clone)]
pub struct SigningIdentity {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct ServerClient {
    http: reqwest::Client,
    endpoint: String,
    identity: SigningIdentity,
}

/// Longest time any single call may take (polls wait up to 30 s on the server).
const CALL_TIMEOUT: Duration = Duration::from_secs(45);

impl ServerClient {
    pub fn new(endpoint: impl Into<String>, identity: SigningIdentity) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(8)
            .build()
            .unwrap_or_default();
        Self {
            http,
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            identity,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One agent protocol call.
    pub async fn agent<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        call: AgentCall,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        self.call(&call.target(), request).await
    }

    /// One awsJson 1.1 call with an explicit `X-Amz-Target`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &str,
        request: &Req,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let url = format!("{}/", self.endpoint);
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let content_type = "application/x-amz-json-1.1";
        let headers = [
            ("host", host.as_str()),
            ("content-type", content_type),
            ("x-amz-target", target),
        ];
        let identity = Credentials::new(
            &self.identity.access_key_id,
            &self.identity.secret_access_key,
            None,
            None,
            "flotilla-agent",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.identity.region)
            .name("ecs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .into_parts();
        let mut builder = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .header("x-amz-target", target)
            .body(body.clone());
        for (name, value) in instructions.headers() {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(|e| ClientError::Transport {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| ClientError::Transport {
            endpoint: self.endpoint.clone(),
            message: e.to_string(),
        })?;
        if status != 200 {
            let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Refused {
                status,
                code: error
                    .get("__type")
                    .and_then(|v| v.as_str())
                    .unwrap_or("Unknown")
                    .to_owned(),
                message: error
                    .get("message")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("unreadable answer: {e}")))
    }
}
