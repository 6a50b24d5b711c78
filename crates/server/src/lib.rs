//! The control-plane process: the ECS API and agent protocol over HTTP, the engine that
//! executes actions on the state store, and the background loops (agent liveness, change
//! routing, housekeeping). `start` takes its listener address and store as arguments and
//! returns a handle that shuts it down, so tests run servers in-process on port 0.

pub mod agents;
pub mod cache;
pub mod db;
pub mod engine;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod janitor;
pub mod listener;
pub mod metrics;
pub mod placement;
pub mod services;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::sigv4::Credentials;
use flotilla_store::Store;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use engine::{Engine, EngineConfig, RequestContext};

/// The default API address (`flotilla server` with no `--listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4750";
pub const DEFAULT_ACCOUNT_ID: &str = "000000000000";
pub const DEFAULT_REGION: &str = "us-east-1";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound (in use, or not a local address).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The image registry's storage or key could not be opened.
    #[error("registry: {0}")]
    Registry(String),
    /// HTTPS was asked for but its certificate could not be loaded or generated.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The credentials file in the data dir could not be read or written.
    #[error("credentials file {path}: {message}")]
    Credentials { path: String, message: String },
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub account_id: String,
    pub credentials: Vec<Credentials>,
    pub heartbeat_interval: Duration,
    pub disconnect_timeout: Duration,
    pub engine: EngineConfig,
    /// The image registry (default: blobs in memory, for in-process tests).
    pub registry: flotilla_registry::RegistryConfig,
    /// HTTPS beside plain HTTP on the same port (default: plain HTTP only).
    pub tls: Option<tls::TlsSource>,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, credentials: Credentials) -> Self {
        Self {
            listen,
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            credentials: vec![credentials],
            heartbeat_interval: Duration::from_secs(5),
            disconnect_timeout: Duration::from_secs(30),
            engine: EngineConfig::default(),
            registry: flotilla_registry::RegistryConfig::default(),
            tls: None,
        }
    }
}

/// A running control plane.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// Whether the listener also speaks HTTPS.
    pub tls: bool,
    pub engine: Engine,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningServer {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The same listener over HTTPS, when TLS is configured.
    pub fn https_endpoint(&self) -> Option<String> {
        self.tls.then(|| format!("https://{}", self.local_addr))
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting requests, lets in-flight ones finish and ends the background loops.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (after `shutdown_token().cancel()`).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds the listener and starts serving.
pub async fn start(
    config: ServerConfig,
    store: Arc<dyn Store>,
) -> Result<RunningServer, ServerError> {
    // Certificates first: a bad certificate path should fail before anything listens.
    let tls_config = config.tls.as_ref().map(tls::server_config).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            address: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        address: config.listen,
        source,
    })?;
    let shutdown = CancellationToken::new();
    let cache = Arc::new(cache::StateCache::new());
    let engine = Engine::new(
        db::Db::new(store.clone()),
        config.engine.clone(),
        cache.clone(),
    )
    .with_shutdown(shutdown.clone());
    let agents = Arc::new(agents::Agents::new(
        engine.clone(),
        config.heartbeat_interval,
        config.disconnect_timeout,
    ));
    let host_changes: Arc<dyn cache::HostChanges> = agents.clone();
    cache.tell_host_changes(&host_changes);
    let mut registry_config = config.registry.clone();
    // Clients are told to log in over HTTPS when the listener speaks it.
    registry_config.tls |= tls_config.is_some();
    let registry = flotilla_registry::Registry::open(
        registry_config,
        store.clone(),
        config.credentials.clone(),
        config.account_id.clone(),
    )
    .map_err(|e| ServerError::Registry(e.to_string()))?;
    let state = Arc::new(http::AppState {
        engine: engine.clone(),
        agents: agents.clone(),
        metrics: Arc::new(metrics::Metrics::new(&engine.placement_counters)),
        credentials: config.credentials.clone(),
        account_id: config.account_id.clone(),
        registry: registry.clone(),
    });
    let app = http::router(state);
    let mut tasks = Vec::new();
    let serves_tls = tls_config.is_some();
    tasks.push(tokio::spawn(listener::serve(
        listener,
        app,
        tls_config,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(
        agents.clone().run_liveness_monitor(shutdown.clone()),
    ));
    tasks.push(tokio::spawn(janitor::run(engine.clone(), shutdown.clone())));
    tasks.push(tokio::spawn(registry.run_sweeper(shutdown.clone())));
    // Subscribed before the cache loads, so the controller hears of every stored service.
    tasks.push(tokio::spawn(services::run(
        engine.clone(),
        cache.subscribe(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(cache.run(store.clone(), shutdown.clone())));
    tracing::info!(%local_addr, "control plane listening");
    Ok(RunningServer {
        local_addr,
        tls: serves_tls,
        engine,
        shutdown,
        tasks,
    })
}

/// The key pair kept in the data dir when none is configured.
#[derive(Serialize, Deserialize)]
struct StoredCredentials {
    access_key_id: String,
    secret_access_key: String,
}

/// Loads the data dir's key pair, generating and saving one on first start.
pub fn load_or_create_credentials(data_dir: &Path) -> Result<Credentials, ServerError> {
    let path = data_dir.join("credentials.json");
    let error = |message: String| ServerError::Credentials {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: StoredCredentials =
                serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))?;
            Ok(Credentials {
                access_key_id: stored.access_key_id,
                secret_access_key: stored.secret_access_key,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::Rng;
            const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
            const SECRET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut rng = rand::rng();
            let access_key_id: String = "FLOT"
                .chars()
                .chain((0..16).map(|_| UPPER[rng.random_range(0..UPPER.len())] as char))
                .collect();
            let secret_access_key: String = (0..40)
                .map(|_| SECRET[rng.random_range(0..SECRET.len())] as char)
                .collect();
            let stored = StoredCredentials {
                access_key_id,
                secret_access_key,
            };
            let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| error(e.to_string()))?;
            std::fs::create_dir_all(data_dir).map_err(|e| error(e.to_string()))?;
            // Write then rename, so a crash never leaves a half-written key file.
            let temporary = data_dir.join("credentials.json.tmp");
            std::fs::write(&temporary, bytes).map_err(|e| error(e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ =
                    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600));
            }
            std::fs::rename(&temporary, &path).map_err(|e| error(e.to_string()))?;
            Ok(Credentials {
                access_key_id: stored.access_key_id,
                secret_access_key: stored.secret_access_key,
            })
        }
        Err(e) => Err(error(e.to_string())),
    }
}
