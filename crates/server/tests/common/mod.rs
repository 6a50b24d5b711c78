//! Shared set-up for the API tests: an in-process server on port 0 and an AWS SDK client.

#![allow(dead_code)]

use std::sync::Arc;

use aws_sdk_ecs::Client;
use flotilla_api::sigv4::Credentials;
use flotilla_server::{RunningServer, ServerConfig};
use flotilla_testkit::{TEST_ACCESS_KEY_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY};

pub struct TestServer {
    pub server: RunningServer,
    pub client: Client,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Creates a cluster (the step nearly every test starts with).
    pub async fn cluster(&self, name: &str) {
        self.client
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .expect("CreateCluster");
    }

    /// The plan appliers' batch counters from `/metrics`: (committed, conflicted).
    pub async fn placement_batches(&self) -> (f64, f64) {
        let metrics = reqwest::get(format!("{}/metrics", self.endpoint))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text");
        let counter = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in {metrics}"))
        };
        (
            counter("flotilla_placement_batches_committed_total"),
            counter("flotilla_placement_batch_conflicts_total"),
        )
    }

    /// Starts a fake host that registers with this server.
    pub async fn agent(
        &self,
        host: flotilla_testkit::FakeHost,
        mode: flotilla_testkit::FakeMode,
    ) -> flotilla_testkit::FakeAgent {
        flotilla_testkit::FakeAgent::start(&self.endpoint, host, mode)
            .await
            .expect("the fake agent registers")
    }
}

/// Registers `family` with one essential container "app" (busybox) of `cpu` units and
/// `memory` MiB.
pub async fn register_app(c: &Client, family: &str, cpu: i32, memory: i32) {
    c.register_task_definition()
        .family(family)
        .container_definitions(
            aws_sdk_ecs::types::ContainerDefinition::builder()
                .name("app")
                .image("busybox")
                .cpu(cpu)
                .memory(memory)
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition");
}

/// The outcome of a spawned RunTask call.
pub type RunTaskCall = tokio::task::JoinHandle<
    Result<
        aws_sdk_ecs::operation::run_task::RunTaskOutput,
        aws_sdk_ecs::error::SdkError<aws_sdk_ecs::operation::run_task::RunTaskError>,
    >,
>;

/// Starts a RunTask of `count` tasks of family `family` on cluster `cluster`, `token` its
/// clientToken if given, without waiting for it.
pub fn spawn_run_task(
    c: &Client,
    cluster: &str,
    family: &str,
    count: i32,
    token: Option<&str>,
) -> RunTaskCall {
    let call = c
        .run_task()
        .cluster(cluster)
        .task_definition(family)
        .count(count)
        .set_client_token(token.map(str::to_owned));
    tokio::spawn(call.send())
}

/// Awaits spawned RunTask calls; each must succeed and place everything it asked for.
/// Returns the tasks placed.
pub async fn all_placed<E: std::fmt::Debug>(
    calls: Vec<tokio::task::JoinHandle<Result<aws_sdk_ecs::operation::run_task::RunTaskOutput, E>>>,
) -> usize {
    let mut placed = 0;
    for call in calls {
        let answer = call
            .await
            .expect("the call's task")
            .expect("RunTask succeeds");
        assert!(answer.failures().is_empty(), "{:?}", answer.failures());
        placed += answer.tasks().len();
    }
    placed
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

pub async fn start_with(tune: impl FnOnce(&mut ServerConfig)) -> TestServer {
    start_on(|store| store, tune).await
}

/// A server whose store answers commits 20 ms late (see [`SlowCommits`]), so placement
/// batches pile up in the plan applier's pipeline.
pub async fn start_with_slow_commits() -> TestServer {
    start_on(
        |inner| {
            Arc::new(SlowCommits {
                inner,
                delay: std::time::Duration::from_millis(20),
            })
        },
        |_| {},
    )
    .await
}

/// Like [`start_with`], on the store `wrap` makes of the test's embedded one.
pub async fn start_on(
    wrap: impl FnOnce(Arc<dyn flotilla_store::Store>) -> Arc<dyn flotilla_store::Store>,
    tune: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn flotilla_store::Store> =
        Arc::new(flotilla_store::RedbStore::open(&dir.path().join("state.redb")).expect("store"));
    let store = wrap(store);
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Credentials {
            access_key_id: TEST_ACCESS_KEY_ID.into(),
            secret_access_key: TEST_SECRET_ACCESS_KEY.into(),
        },
    );
    // Tasks count healthy half a second after RUNNING (ECS: 40 s), so rollouts finish in
    // test time while still passing through the window.
    config.engine.healthy_after_running_ms = 500;
    tune(&mut config);
    let server = flotilla_server::start(config, store)
        .await
        .expect("server starts");
    let endpoint = server.endpoint();
    let client = client_for(&endpoint, TEST_SECRET_ACCESS_KEY).await;
    TestServer {
        server,
        client,
        endpoint,
        _dir: dir,
    }
}

pub async fn client_for(endpoint: &str, secret: &str) -> Client {
    let credentials =
        aws_sdk_ecs::config::Credentials::new(TEST_ACCESS_KEY_ID, secret, None, None, "test");
    let config = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new(TEST_REGION))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// The AWS error code of an SDK error.
pub fn code<E: aws_sdk_ecs::error::ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    error: &aws_sdk_ecs::error::SdkError<E, R>,
) -> String {
    match error.as_service_error() {
        Some(service) => service.code().unwrap_or("<none>").to_owned(),
        None => format!("<not a service error: {error:?}>"),
    }
}

pub fn message<
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
>(
    error: &aws_sdk_ecs::error::SdkError<E, R>,
) -> String {
    error
        .as_service_error()
        .and_then(|s| s.message())
        .unwrap_or_default()
        .to_owned()
}

/// A container definition with a name, an image and a memory limit.
pub fn container(name: &str, memory: i32) -> aws_sdk_ecs::types::ContainerDefinition {
    aws_sdk_ecs::types::ContainerDefinition::builder()
        .name(name)
        .image("busybox:latest")
        .memory(memory)
        .build()
}

/// Waits (bounded) until `check` holds, polling; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition never held: {what}");
}

/// A store whose commits answer `delay` late, as on a slow disk: the transaction is queued
/// at once, as the embedded store does, and only its answer waits. Lets a test fill the plan
/// applier's pipeline.
pub struct SlowCommits {
    pub inner: Arc<dyn flotilla_store::Store>,
    pub delay: std::time::Duration,
}

impl flotilla_store::Store for SlowCommits {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> flotilla_store::BoxFuture<
        'a,
        Result<Option<flotilla_store::KeyValue>, flotilla_store::StoreError>,
    > {
        self.inner.get(key)
    }

    fn range(
        &self,
        request: flotilla_store::RangeRequest,
    ) -> flotilla_store::BoxFuture<
        '_,
        Result<flotilla_store::RangeResponse, flotilla_store::StoreError>,
    > {
        self.inner.range(request)
    }

    fn txn(
        &self,
        txn: flotilla_store::Txn,
    ) -> flotilla_store::BoxFuture<'_, Result<flotilla_store::TxnOutcome, flotilla_store::StoreError>>
    {
        let outcome = self.inner.txn(txn);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            outcome.await
        })
    }

    fn watch(
        &self,
        prefix: &str,
        start_revision: flotilla_store::Revision,
    ) -> Result<flotilla_store::Watcher, flotilla_store::StoreError> {
        self.inner.watch(prefix, start_revision)
    }

    fn revision(
        &self,
    ) -> flotilla_store::BoxFuture<'_, Result<flotilla_store::Revision, flotilla_store::StoreError>>
    {
        self.inner.revision()
    }
}
