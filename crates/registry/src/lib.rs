//! Flotilla's image registry, ECR-compatible: the OCI Distribution API under `/v2/`
//! ([`oci`]), the ECR API ([`ecr`]), login tokens ([`token`]), encrypted content-addressed
//! blob storage on `object_store` ([`blobs`], [`crypto`]), metadata in the state store
//! ([`meta`]), the core operations ([`engine`]), lifecycle policies ([`lifecycle`]) and
//! garbage collection ([`gc`]). The server merges [`Registry::router`] into its listener and
//! hands ECR actions to [`Registry::execute_ecr`].

pub mod blobs;
pub mod crypto;
pub mod digest;
pub mod ecr;
pub mod engine;
pub mod error;
pub mod gc;
pub mod lifecycle;
pub mod meta;
pub mod oci;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::sigv4::Credentials;
use flotilla_store::Store;
use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

pub use ecr::EcrContext;
pub use error::RegistryError;
pub use meta::Scope;

/// Where blob bytes go.
#[derive(Clone, Debug, Default)]
pub enum StorageConfig {
    /// In memory, lost on exit (in-process tests).
    #[default]
    Memory,
    /// A directory on the local filesystem.
    Directory(PathBuf),
    /// An S3-compatible bucket, `s3://BUCKET[/PREFIX]`; the endpoint, region and keys come
    /// from the environment as for the AWS CLI (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...; `AWS_ALLOW_HTTP=true` for a plain-HTTP
    /// endpoint).
    S3(String),
    /// Any `object_store` backend (S3-compatible, ...), built by the caller.
    Custom(Arc<dyn ObjectStore>),
}

/// Where the data key comes from.
#[derive(Clone, Debug, Default)]
pub enum KeyConfig {
    /// A random key for this process (with in-memory storage).
    #[default]
    Random,
    /// A file holding 64 hex digits, created with a random key if missing.
    File(PathBuf),
    /// 64 hex digits given by the operator.
    Hex(String),
}

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub storage: StorageConfig,
    pub key: KeyConfig,
    /// `host[:port]` clients push to (repositoryUri); default: the Host the request used.
    pub public_host: Option<String>,
    /// Whether clients reach the registry over HTTPS (proxyEndpoint's scheme).
    pub tls: bool,
    /// How often garbage collection and lifecycle policies run.
    pub sweep_interval: Duration,
    /// Blobs and objects younger than this are never collected.
    pub gc_grace: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            storage: StorageConfig::Memory,
            key: KeyConfig::Random,
            public_host: None,
            tls: false,
            sweep_interval: Duration::from_secs(10 * 60),
            gc_grace: Duration::from_secs(60 * 60),
        }
    }
}

impl RegistryConfig {
    /// Blobs in `data_dir/registry`, the key in `data_dir/registry.key`.
    pub fn on_disk(data_dir: &std::path::Path) -> Self {
        Self {
            storage: StorageConfig::Directory(data_dir.join("registry")),
            key: KeyConfig::File(data_dir.join("registry.key")),
            ..Self::default()
        }
    }
}

/// Builds the object store of an `s3://BUCKET[/PREFIX]` URL from the environment.
fn s3_store(url: &str) -> Result<Arc<dyn ObjectStore>, RegistryError> {
    let invalid = |why: String| RegistryError::Internal(format!("registry storage {url}: {why}"));
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("expected s3://BUCKET[/PREFIX]".into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket named".into()));
    }
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    // The AWS CLI's name for a service-specific endpoint; object_store reads AWS_ENDPOINT.
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL_S3") {
        builder = builder.with_endpoint(endpoint);
    }
    let store: Arc<dyn ObjectStore> =
        Arc::new(builder.build().map_err(|e| invalid(e.to_string()))?);
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(store);
    }
    Ok(Arc::new(object_store::prefix::PrefixStore::new(
        store, prefix,
    )))
}

/// The registry: shared by the OCI router and the ECR API.
pub struct Registry {
    pub engine: engine::Engine,
    pub credentials: Vec<Credentials>,
    pub account_id: String,
    pub config: RegistryConfig,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("account_id", &self.account_id)
            .field("storage", &self.config.storage)
            .finish()
    }
}

impl Registry {
    /// Opens the blob storage and key.
    pub fn open(
        config: RegistryConfig,
        store: Arc<dyn Store>,
        credentials: Vec<Credentials>,
        account_id: String,
    ) -> Result<Arc<Self>, RegistryError> {
        let objects: Arc<dyn ObjectStore> = match &config.storage {
            StorageConfig::Memory => Arc::new(object_store::memory::InMemory::new()),
            StorageConfig::Directory(path) => {
                std::fs::create_dir_all(path).map_err(|e| {
                    RegistryError::Internal(format!("cannot create {}: {e}", path.display()))
                })?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| RegistryError::Internal(e.to_string()))?
                        .with_automatic_cleanup(true),
                )
            }
            StorageConfig::S3(url) => s3_store(url)?,
            StorageConfig::Custom(store) => store.clone(),
        };
        let key = match &config.key {
            KeyConfig::Random => {
                crypto::DataKey::random().map_err(|e| RegistryError::Internal(e.to_string()))?
            }
            KeyConfig::File(path) => crypto::DataKey::load_or_create(path)
                .map_err(|e| RegistryError::Internal(e.to_string()))?,
            KeyConfig::Hex(hex) => crypto::DataKey::from_hex(hex)
                .map_err(|e| RegistryError::Internal(format!("registry key: {e}")))?,
        };
        let engine = engine::Engine::new(meta::Meta { store }, blobs::Blobs::new(objects, key));
        Ok(Arc::new(Self {
            engine,
            credentials,
            account_id,
            config,
        }))
    }

    /// The `/v2/` router.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        oci::router(self.clone())
    }

    pub fn scheme(&self) -> &'static str {
        if self.config.tls { "https" } else { "http" }
    }

    /// The host clients push to: the configured one, else the request's `Host`.
    pub fn host_for(&self, headers: &http::HeaderMap) -> String {
        self.config.public_host.clone().unwrap_or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost")
                .to_owned()
        })
    }

    /// Garbage collection and lifecycle policies, every `sweep_interval` until cancelled.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.sweep_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = oci::now_ms();
            if let Err(error) = self.engine.apply_all_lifecycles(now).await {
                tracing::warn!(%error, "applying lifecycle policies failed");
            }
            match gc::sweep(&self.engine, now, self.config.gc_grace.as_millis() as i64).await {
                Ok(report) if report != gc::GcReport::default() => {
                    tracing::info!(?report, "registry garbage collected");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "registry garbage collection failed"),
            }
        }
    }
}
