//! Pull credentials for the control plane's own image registry: images named
//! `SERVER_HOST/repo:tag` are pulled with a token from `GetAuthorizationToken`, fetched with
//! the agent's keys and cached until an hour before it expires. Nothing to configure.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::client::ServerClient;
use crate::runtime::{RegistryAuth, image_registry};

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// A token is replaced this long before it expires (they last 12 hours).
const REFRESH_MARGIN: Duration = Duration::from_secs(60 * 60);
/// How long a token is assumed valid when the answer gives no expiry.
const LIFETIME_ASSUMED: Duration = Duration::from_secs(6 * 60 * 60);

/// Tokens for the registry at the control plane's address.
#[derive(Debug)]
pub struct ServerRegistryAuth {
    client: ServerClient,
    /// `host:port` images name to be pulled from the control plane's registry.
    host: String,
    cached: tokio::sync::Mutex<Option<(RegistryAuth, Instant)>>,
}

/// The `host:port` of an endpoint URL.
pub fn endpoint_host(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.split('/').next().unwrap_or_default().to_owned()
}

impl ServerRegistryAuth {
    pub fn new(client: ServerClient, endpoint: &str) -> Self {
        Self {
            client,
            host: endpoint_host(endpoint),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Credentials for `image` if it is in the control plane's registry; `None` otherwise
    /// or if no token could be had (the pull then goes without and reports why).
    pub async fn auth_for(&self, image: &str) -> Option<RegistryAuth> {
        if image_registry(image) != self.host {
            return None;
        }
        let mut cached = self.cached.lock().await;
        if let Some((auth, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Some(auth.clone());
        }
        let answer: Value = match self.client.call(TARGET, &json!({})).await {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, "cannot get a registry token from the control plane");
                return None;
            }
        };
        let data = &answer["authorizationData"][0];
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data["authorizationToken"].as_str()?)
            .ok()?;
        let (username, password) = String::from_utf8(decoded)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
        let lifetime = data["expiresAt"]
            .as_f64()
            .and_then(|at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs_f64();
                (at > now).then(|| Duration::from_secs_f64(at - now))
            })
            .unwrap_or(LIFETIME_ASSUMED);
        let auth = RegistryAuth {
            server_address: self.host.clone(),
            username,
            password,
        };
        *cached = Some((
            auth.clone(),
            Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN),
        ));
        Some(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_host_is_the_endpoints() {
        assert_eq!(endpoint_host("http://127.0.0.1:4750"), "127.0.0.1:4750");
        assert_eq!(
            endpoint_host("https://flotilla.example:443/"),
            "flotilla.example:443"
        );
    }
}
