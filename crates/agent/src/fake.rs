//! [`FakeRuntime`]: a [`Runtime`] that keeps containers in memory, for fast tests of the
//! task logic. Tests drive what real containers would do on their own: exit with a code,
//! turn healthy or unhealthy, get OOM-killed, vanish.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_model::Timestamp;
use flotilla_model::task::{HealthStatus, NetworkBinding, TaskNetwork};
use tokio::sync::broadcast;

use crate::runtime::*;

/// Exit code of a process killed by SIGTERM / SIGKILL.
pub const EXIT_SIGTERM: i32 = 143;
pub const EXIT_SIGKILL: i32 = 137;
const EVENTS_BUFFER: usize = 1024;
const FIRST_DYNAMIC_PORT: u16 = 32768;

/// A container the fake runtime holds.
#[derive(Clone, Debug)]
pub struct FakeContainer {
    pub spec: ContainerSpec,
    pub observed: ObservedContainer,
}

#[derive(Default)]
struct State {
    images: BTreeMap<String, ImageInfo>,
    unpullable: BTreeMap<String, String>,
    start_failures: BTreeMap<String, String>,
    ignores_sigterm: BTreeSet<String>,
    containers: BTreeMap<String, FakeContainer>,
    volumes: BTreeMap<String, VolumeSpec>,
    logs: BTreeMap<String, Vec<LogChunk>>,
    calls: Vec<String>,
    next_id: u64,
    next_port: u16,
    unavailable: bool,
    /// awsvpc sandboxes by name.
    sandboxes: BTreeMap<String, TaskNetwork>,
}

/// An in-memory runtime. Every image can be pulled unless [`FakeRuntime::fail_pull`] said
/// otherwise; stopped containers exit with 143, or 137 if they ignore SIGTERM.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime").finish_non_exhaustive()
    }
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(crate::system_now))
    }

    /// A fake whose start and finish times come from `clock`.
    pub fn with_clock(clock: Arc<dyn Fn() -> Timestamp + Send + Sync>) -> Self {
        let (events, _) = broadcast::channel(EVENTS_BUFFER);
        Self {
            state: Arc::new(Mutex::new(State::default())),
            events,
            clock,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, container: &ObservedContainer, kind: RuntimeEventKind) {
        let _ = self.events.send(RuntimeEvent {
            container_id: container.id.clone(),
            task_arn: container.task_arn().map(str::to_owned),
            container_name: container.container_name().map(str::to_owned),
            kind,
        });
    }

    /// Pulls of `image` fail with `message`.
    pub fn fail_pull(&self, image: &str, message: &str) {
        self.state()
            .unpullable
            .insert(image.to_owned(), message.to_owned());
    }

    /// Starts of containers named `container` (the ECS name) fail with `message`.
    pub fn fail_start(&self, container: &str, message: &str) {
        self.state()
            .start_failures
            .insert(container.to_owned(), message.to_owned());
    }

    /// Containers named `container` ignore SIGTERM: a stop kills them after the timeout.
    pub fn ignore_sigterm(&self, container: &str) {
        self.state().ignores_sigterm.insert(container.to_owned());
    }

    /// Every call fails as if the engine were down (or works again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state().unavailable = unavailable;
    }

    /// The calls made so far, e.g. `pull busybox`, `create app`, `start app`, `stop app 30s`.
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    pub fn containers(&self) -> Vec<FakeContainer> {
        self.state().containers.values().cloned().collect()
    }

    pub fn volumes(&self) -> Vec<String> {
        self.state().volumes.keys().cloned().collect()
    }

    /// The container of `task_arn` named `container`, if it exists.
    pub fn container(&self, task_arn: &str, container: &str) -> Option<FakeContainer> {
        self.state()
            .containers
            .values()
            .find(|c| {
                c.observed.task_arn() == Some(task_arn)
                    && c.observed.container_name() == Some(container)
            })
            .cloned()
    }

    fn update(
        &self,
        task_arn: &str,
        container: &str,
        change: impl FnOnce(&mut ObservedContainer) -> Option<RuntimeEventKind>,
    ) {
        let (observed, event) = {
            let mut state = self.state();
            let Some(found) = state.containers.values_mut().find(|c| {
                c.observed.task_arn() == Some(task_arn)
                    && c.observed.container_name() == Some(container)
            }) else {
                return;
            };
            let event = change(&mut found.observed);
            (found.observed.clone(), event)
        };
        if let Some(event) = event {
            self.emit(&observed, event);
        }
    }

    /// The container's process exits with `code`.
    pub fn exit(&self, task_arn: &str, container: &str, code: i32) {
        let now = (self.clock)();
        self.update(task_arn, container, |o| {
            if o.status != ContainerStatus::Running {
                return None;
            }
            o.status = ContainerStatus::Exited;
            o.exit_code = Some(code);
            o.finished_at = Some(now);
            o.network_bindings.clear();
            Some(RuntimeEventKind::Died {
                exit_code: Some(code),
            })
        });
    }

    /// The kernel kills the container for exceeding its memory limit.
    pub fn oom_kill(&self, task_arn: &str, container: &str) {
        self.update(task_arn, container, |o| {
            o.oom_killed = true;
            None
        });
        self.exit(task_arn, container, EXIT_SIGKILL);
    }

    /// The container's health check result changes.
    pub fn set_health(&self, task_arn: &str, container: &str, health: HealthStatus) {
        self.update(task_arn, container, |o| {
            o.health = Some(health);
            Some(RuntimeEventKind::Health(health))
        });
    }

    /// The container disappears behind the agent's back.
    pub fn vanish(&self, task_arn: &str, container: &str) {
        let removed = {
            let mut state = self.state();
            let id = state
                .containers
                .iter()
                .find(|(_, c)| {
                    c.observed.task_arn() == Some(task_arn)
                        && c.observed.container_name() == Some(container)
                })
                .map(|(id, _)| id.clone());
            id.and_then(|id| state.containers.remove(&id))
        };
        if let Some(removed) = removed {
            self.emit(&removed.observed, RuntimeEventKind::Removed);
        }
    }

    /// Appends output to a container's log.
    pub fn write_log(&self, task_arn: &str, container: &str, stream: LogStream, text: &str) {
        let mut state = self.state();
        let id = state
            .containers
            .values()
            .find(|c| {
                c.observed.task_arn() == Some(task_arn)
                    && c.observed.container_name() == Some(container)
            })
            .map(|c| c.observed.id.clone());
        if let Some(id) = id {
            state.logs.entry(id).or_default().push(LogChunk {
                stream,
                bytes: text.as_bytes().to_vec(),
            });
        }
    }

    fn available(&self) -> Result<(), RuntimeError> {
        if self.state().unavailable {
            return Err(RuntimeError::Unavailable(
                "the fake runtime is down".to_owned(),
            ));
        }
        Ok(())
    }

    fn check_available(&self, call: String) -> Result<(), RuntimeError> {
        let mut state = self.state();
        if state.unavailable {
            return Err(RuntimeError::Unavailable(
                "the fake runtime is down".to_owned(),
            ));
        }
        state.calls.push(call);
        Ok(())
    }

    /// Finds a container by id or name and records the call as `<verb> <container name>`.
    fn resolve(state: &mut State, verb: &str, id: &str) -> Result<String, RuntimeError> {
        if state.unavailable {
            return Err(RuntimeError::Unavailable(
                "the fake runtime is down".to_owned(),
            ));
        }
        let key = Self::find_id(state, id).ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        let name = Self::container_label(&state.containers[&key]);
        state.calls.push(format!("{verb} {name}"));
        Ok(key)
    }

    fn find_id(state: &State, id_or_name: &str) -> Option<String> {
        state
            .containers
            .iter()
            .find(|(id, c)| *id == id_or_name || c.observed.runtime_name == id_or_name)
            .map(|(id, _)| id.clone())
    }

    fn container_label(c: &FakeContainer) -> String {
        c.observed.container_name().unwrap_or_default().to_owned()
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Runtime for FakeRuntime {
    fn info(&self) -> BoxFuture<'_, Result<RuntimeInfo, RuntimeError>> {
        ready(Ok(RuntimeInfo {
            version: "Fake 1.0".to_owned(),
            api_version: Some("1.41".to_owned()),
        }))
    }

    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        _auth: Option<&'a RegistryAuth>,
    ) -> BoxFuture<'a, Result<ImageInfo, RuntimeError>> {
        let result = self
            .check_available(format!("pull {image}"))
            .and_then(|()| {
                let mut state = self.state();
                if let Some(message) = state.unpullable.get(image) {
                    return Err(RuntimeError::Pull {
                        image: image.to_owned(),
                        message: message.clone(),
                    });
                }
                let n = state.images.len();
                let info = state
                    .images
                    .entry(image.to_owned())
                    .or_insert_with(|| ImageInfo {
                        id: format!("sha256:image{n}"),
                        digest: format!("sha256:digest{n}"),
                    })
                    .clone();
                Ok(info)
            });
        ready(result)
    }

    fn create_volume<'a>(
        &'a self,
        volume: &'a VolumeSpec,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let result = self
            .check_available(format!("create volume {}", volume.name))
            .map(|()| {
                self.state()
                    .volumes
                    .entry(volume.name.clone())
                    .or_insert_with(|| volume.clone());
            });
        ready(result)
    }

    fn remove_volume<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let result = self
            .check_available(format!("remove volume {name}"))
            .map(|()| {
                self.state().volumes.remove(name);
            });
        ready(result)
    }

    fn list_volumes<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<String>, RuntimeError>> {
        let result = self.available().map(|()| {
            let state = self.state();
            state
                .volumes
                .values()
                .filter(|v| filter.matches(&v.labels))
                .map(|v| v.name.clone())
                .collect()
        });
        ready(result)
    }

    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<String, RuntimeError>> {
        let name = spec
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        let result = self
            .check_available(format!("create {name}"))
            .and_then(|()| {
                let mut state = self.state();
                if state
                    .containers
                    .values()
                    .any(|c| c.observed.runtime_name == spec.name)
                {
                    return Err(RuntimeError::Conflict(format!(
                        "the name {} is already in use",
                        spec.name
                    )));
                }
                let Some(image) = state.images.get(&spec.image).cloned() else {
                    return Err(RuntimeError::NotFound(format!(
                        "no such image: {}",
                        spec.image
                    )));
                };
                state.next_id += 1;
                let id = format!("fake{:08}", state.next_id);
                let observed = ObservedContainer {
                    id: id.clone(),
                    runtime_name: spec.name.clone(),
                    labels: spec.labels.clone(),
                    status: ContainerStatus::Created,
                    exit_code: None,
                    oom_killed: false,
                    error: None,
                    health: None,
                    started_at: None,
                    finished_at: None,
                    image: spec.image.clone(),
                    image_digest: Some(image.digest),
                    network_bindings: Vec::new(),
                };
                state.containers.insert(
                    id.clone(),
                    FakeContainer {
                        spec: spec.clone(),
                        observed,
                    },
                );
                Ok(id)
            });
        if let Ok(id) = &result
            && let Some(c) = self.state().containers.get(id).cloned()
        {
            self.emit(&c.observed, RuntimeEventKind::Created);
        }
        ready(result)
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let now = (self.clock)();
        let result = (|| {
            let mut guard = self.state();
            let state = &mut *guard;
            let key = Self::resolve(state, "start", id)?;
            let container = state.containers.get_mut(&key).expect("resolved");
            let name = Self::container_label(container);
            if let Some(message) = state.start_failures.get(&name) {
                container.observed.error = Some(message.clone());
                return Err(RuntimeError::Refused(message.clone()));
            }
            if container.observed.status == ContainerStatus::Running {
                return Ok(None);
            }
            let mut next_port = state.next_port.max(FIRST_DYNAMIC_PORT);
            let observed = &mut container.observed;
            observed.status = ContainerStatus::Running;
            observed.started_at = Some(now);
            observed.finished_at = None;
            observed.exit_code = None;
            observed.oom_killed = false;
            observed.health = container
                .spec
                .health_check
                .as_ref()
                .map(|_| HealthStatus::Unknown);
            observed.network_bindings = container
                .spec
                .ports
                .iter()
                .map(|p| {
                    let host_port = p.host_port.unwrap_or_else(|| {
                        next_port += 1;
                        next_port - 1
                    });
                    NetworkBinding {
                        bind_ip: Some("0.0.0.0".to_owned()),
                        container_port: Some(i32::from(p.container_port)),
                        host_port: Some(i32::from(host_port)),
                        protocol: Some(p.protocol),
                    }
                })
                .collect();
            state.next_port = next_port;
            Ok(Some(observed.clone()))
        })();
        let result = result.map(|started| {
            if let Some(observed) = started {
                self.emit(&observed, RuntimeEventKind::Started);
            }
        });
        ready(result)
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let result = (|| {
            let mut guard = self.state();
            let state = &mut *guard;
            let key = Self::resolve(state, "stop", id)?;
            let container = &state.containers[&key];
            let name = Self::container_label(container);
            let task_arn = container.observed.task_arn().unwrap_or_default().to_owned();
            let code = if state.ignores_sigterm.contains(&name) {
                EXIT_SIGKILL
            } else {
                EXIT_SIGTERM
            };
            if let Some(call) = state.calls.last_mut() {
                call.push_str(&format!(" {}s", timeout.as_secs()));
            }
            Ok((task_arn, name, code))
        })();
        let result = result.map(|(task_arn, name, code)| self.exit(&task_arn, &name, code));
        ready(result)
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ObservedContainer, RuntimeError>> {
        let result = (|| {
            let mut guard = self.state();
            let state = &mut *guard;
            if state.unavailable {
                return Err(RuntimeError::Unavailable(
                    "the fake runtime is down".to_owned(),
                ));
            }
            let key =
                Self::find_id(state, id).ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
            Ok(state.containers[&key].observed.clone())
        })();
        ready(result)
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        let result = (|| {
            let mut guard = self.state();
            let state = &mut *guard;
            if state.sandboxes.remove(id).is_some() {
                state.calls.push(format!("remove_sandbox {id}"));
                return Ok(None);
            }
            let key = match Self::resolve(state, "remove", id) {
                Ok(key) => key,
                Err(RuntimeError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(state.containers.remove(&key))
        })();
        let result = result.map(|removed| {
            if let Some(removed) = removed {
                self.emit(&removed.observed, RuntimeEventKind::Removed);
            }
        });
        ready(result)
    }

    fn list<'a>(
        &'a self,
        filter: &'a ListFilter,
    ) -> BoxFuture<'a, Result<Vec<ObservedContainer>, RuntimeError>> {
        let result = {
            let state = self.state();
            if state.unavailable {
                Err(RuntimeError::Unavailable(
                    "the fake runtime is down".to_owned(),
                ))
            } else {
                Ok(state
                    .containers
                    .values()
                    .filter(|c| filter.matches(&c.observed.labels))
                    .map(|c| c.observed.clone())
                    .collect())
            }
        };
        ready(result)
    }

    /// What [`FakeRuntime::write_log`] wrote so far; `follow` is not simulated.
    fn logs(&self, id: &str, _follow: bool) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let chunks = {
            let state = self.state();
            Self::find_id(&state, id)
                .and_then(|key| state.logs.get(&key).cloned())
                .unwrap_or_default()
        };
        Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)))
    }

    fn events(&self) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let receiver = self.events.subscribe();
        Box::pin(futures::stream::unfold(
            receiver,
            |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) => return Some((Ok(event), receiver)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    fn ensure_cluster_network<'a>(
        &'a self,
        cluster: &'a str,
    ) -> BoxFuture<'a, Result<ClusterNetwork, RuntimeError>> {
        ready(Ok(ClusterNetwork {
            name: format!("flotilla-{cluster}"),
            id: format!("fake-network-{cluster}"),
            subnet_cidr: "10.99.0.0/16".to_owned(),
            gateway: "127.0.0.1".to_owned(),
        }))
    }

    fn ensure_sandbox<'a>(
        &'a self,
        spec: &'a SandboxSpec,
    ) -> BoxFuture<'a, Result<TaskNetwork, RuntimeError>> {
        let mut state = self.state();
        if state.unavailable {
            return ready(Err(RuntimeError::Unavailable(
                "fake runtime is down".into(),
            )));
        }
        state.calls.push(format!("ensure_sandbox {}", spec.name));
        let n = state.sandboxes.len() + 2;
        let network = state
            .sandboxes
            .entry(spec.name.clone())
            .or_insert_with(|| TaskNetwork {
                private_ipv4_address: format!("10.99.{}.{}", n / 250, n % 250),
                mac_address: format!("02:42:0a:63:{:02x}:{:02x}", n / 250, n % 250),
                subnet_cidr: "10.99.0.0/16".to_owned(),
                gateway_ipv4_address: "10.99.0.1".to_owned(),
            })
            .clone();
        ready(Ok(network))
    }
}
