//! The `flotilla` binary: `up` (a whole cluster in one process), `server` (the control
//! plane), `agent` (a host), `env` (shell exports for AWS clients), `logs`, and `bench`.

mod bench;
mod registry_bench;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flotilla_api::sigv4::Credentials;
use flotilla_server::{DEFAULT_ACCOUNT_ID, DEFAULT_LISTEN, DEFAULT_REGION, ServerConfig};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A self-hosted container platform that speaks Amazon ECS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in one process: the control plane plus an agent on the local
    /// Docker Engine, cluster `default`.
    Up {
        #[command(flatten)]
        server: ServerArgs,
        /// The cluster the local agent joins.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Extra attributes of the local container instance (K=V).
        #[arg(long = "attribute", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// The availability zone the local host reports.
        #[arg(long)]
        zone: Option<String>,
        #[command(flatten)]
        fargate: FargateArgs,
    },
    /// Run the control plane (ECS API and agent protocol).
    Server(ServerArgs),
    /// Run an agent: register this host with a control plane and run its tasks on Docker.
    Agent(AgentArgs),
    /// Print a task's container logs (all containers, or one).
    Logs {
        /// Task id or ARN.
        task: String,
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        container: Option<String>,
        /// Keep printing new output until the container stops.
        #[arg(long, short)]
        follow: bool,
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Print `export AWS_...` lines that point AWS clients at a Flotilla data dir's server.
    Env {
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Show, host by host, whether a task of a definition would be placed there and why not.
    ExplainPlacement {
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        task_definition: String,
        /// The task group (default family:FAMILY).
        #[arg(long)]
        group: Option<String>,
        /// A memberOf constraint in the cluster query language.
        #[arg(long)]
        member_of: Option<String>,
        #[arg(long)]
        distinct_instance: bool,
        /// Strategies in order, as TYPE or TYPE:FIELD (spread:attribute:ecs.availability-zone, binpack:memory, random).
        #[arg(long = "strategy")]
        strategies: Vec<String>,
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Take FARGATE_SPOT capacity back: running FARGATE_SPOT tasks get the two-minute
    /// warning (SIGTERM, SIGKILL after 120 s) and stop with stopCode SpotInterruption.
    ReclaimSpot {
        #[arg(long)]
        cluster: Option<String>,
        /// How many tasks to interrupt.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
}

/// Fargate settings of an agent (or of `flotilla up`).
#[derive(Args, Clone, Debug, Default)]
struct FargateArgs {
    /// The OCI runtime Fargate tasks run under (e.g. `runsc` for gVisor, `kata-runtime`),
    /// when it is installed in the Docker Engine; default: the engine's default runtime.
    #[arg(long)]
    fargate_runtime: Option<String>,
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Address of the API listener.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where state (the embedded store) and generated credentials live.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// The AWS account id resources belong to.
    #[arg(long, default_value = DEFAULT_ACCOUNT_ID)]
    account_id: String,
    /// Access key id clients sign with (else the data dir's generated key).
    #[arg(long, env = "FLOTILLA_ACCESS_KEY_ID", requires = "secret_access_key")]
    access_key_id: Option<String>,
    #[arg(
        long,
        env = "FLOTILLA_SECRET_ACCESS_KEY",
        requires = "access_key_id",
        hide_env_values = true
    )]
    secret_access_key: Option<String>,
    /// Seconds without a heartbeat before an agent is marked disconnected.
    #[arg(long, default_value_t = 30)]
    disconnect_timeout_seconds: u64,
    /// The registry's host[:port] as clients push to it (repositoryUri); default: the
    /// host the client used.
    #[arg(long, env = "FLOTILLA_REGISTRY_HOST")]
    registry_host: Option<String>,
    /// Where registry blobs go: a directory, or `s3://BUCKET[/PREFIX]` for an S3-compatible
    /// store configured from the environment like the AWS CLI (`AWS_ENDPOINT_URL_S3`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...). Default: DIR/registry.
    #[arg(long, env = "FLOTILLA_REGISTRY_STORAGE")]
    registry_storage: Option<String>,
    /// The registry's data key, 64 hex digits (default: DIR/registry.key, generated).
    #[arg(long, env = "FLOTILLA_REGISTRY_KEY", hide_env_values = true)]
    registry_key: Option<String>,
    /// First gap, in milliseconds, of a service's restart throttle after a task fails to
    /// start; it doubles with each failure in a row, up to 15 minutes (ECS: 1000).
    #[arg(long, default_value_t = 1000)]
    service_restart_delay_ms: u64,
    /// How long, in milliseconds, a service task without container health checks must be
    /// RUNNING before it counts healthy: before then a rolling update stops no old task for
    /// it and its deployment cannot complete (ECS: 40000).
    #[arg(long, default_value_t = 40_000)]
    service_healthy_after_ms: u32,
    /// PEM certificate chain for HTTPS (default: DIR/tls/cert.pem, signed by the CA
    /// DIR/tls/ca.pem, both generated on first start).
    #[arg(long, env = "FLOTILLA_TLS_CERTIFICATE", requires = "tls_key")]
    tls_certificate: Option<PathBuf>,
    /// PEM private key of --tls-certificate.
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_certificate")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP only (HTTPS is served on the same port otherwise).
    #[arg(long, conflicts_with_all = ["tls_certificate", "tls_key"])]
    no_tls: bool,
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// The control plane's endpoint.
    #[arg(long, env = "FLOTILLA_SERVER", default_value = "http://127.0.0.1:4750")]
    server: String,
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Attributes of this container instance (K=V), for memberOf constraints.
    #[arg(long = "attribute", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// The availability zone this host reports (`ecs.availability-zone`).
    #[arg(long)]
    zone: Option<String>,
    /// Where the agent keeps its identity.
    #[arg(long, env = "FLOTILLA_AGENT_DATA_DIR", default_value_os_t = default_data_dir().join("agent"))]
    data_dir: PathBuf,
    #[arg(long, env = "FLOTILLA_ACCESS_KEY_ID")]
    access_key_id: String,
    #[arg(long, env = "FLOTILLA_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: String,
    #[arg(long, env = "AWS_DEFAULT_REGION", default_value = DEFAULT_REGION)]
    region: String,
    /// Serve container logs here (for `flotilla logs`).
    #[arg(long, default_value = "127.0.0.1:0")]
    logs_listen: SocketAddr,
    /// The URL the control plane hands out for this agent's logs (default: the bound address).
    #[arg(long)]
    logs_advertise_url: Option<String>,
    /// Offer this host as Fargate capacity: it runs FARGATE and FARGATE_SPOT tasks only and
    /// is hidden from ListContainerInstances/DescribeContainerInstances.
    #[arg(long)]
    fargate: bool,
    #[command(flatten)]
    fargate_settings: FargateArgs,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected NAME=VALUE, got '{text}'"))
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".flotilla")
}

/// What `flotilla env` needs to know about a running server.
#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointFile {
    endpoint: String,
    region: String,
}

/// The control plane allocates and frees many small records per placement across threads;
/// under glibc's malloc a quarter of `bench scheduler`'s CPU samples were in malloc and free
/// (arena locks, consolidation). With mimalloc the same bench placed 22% more per second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(args) => runtime.block_on(run_server(args)),
        Command::Up {
            server,
            cluster,
            attributes,
            zone,
            fargate,
        } => runtime.block_on(run_up(server, cluster, attributes, zone, fargate)),
        Command::ReclaimSpot {
            cluster,
            count,
            data_dir,
        } => runtime.block_on(reclaim_spot(&data_dir, cluster, count)),
        Command::Agent(args) => runtime.block_on(run_agent(args)),
        Command::Logs {
            task,
            cluster,
            container,
            follow,
            data_dir,
        } => runtime.block_on(print_logs(&data_dir, &task, cluster, container, follow)),
        Command::Env { data_dir } => print_env(&data_dir),
        Command::Bench(command) => runtime.block_on(bench::run(command)),
        Command::ExplainPlacement {
            cluster,
            task_definition,
            group,
            member_of,
            distinct_instance,
            strategies,
            data_dir,
        } => runtime.block_on(explain_placement(
            &data_dir,
            cluster,
            task_definition,
            group,
            member_of,
            distinct_instance,
            strategies,
        )),
    }
}

fn credentials(args: &ServerArgs) -> anyhow::Result<Credentials> {
    match (&args.access_key_id, &args.secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
        }),
        _ => Ok(flotilla_server::load_or_create_credentials(&args.data_dir)?),
    }
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let identity = flotilla_agent::SigningIdentity {
        access_key_id: args.access_key_id.clone(),
        secret_access_key: args.secret_access_key.clone(),
        region: args.region.clone(),
    };
    let mut config = flotilla_agent::AgentConfig::new(
        &args.server,
        &args.cluster,
        identity,
        args.data_dir.clone(),
    );
    config.attributes = args.attributes.clone();
    config.zone = args.zone.clone();
    config.logs_listen = Some(args.logs_listen);
    config.logs_advertise_url = args.logs_advertise_url.clone();
    config.fargate_capacity = args.fargate;
    config.fargate_runtime = args.fargate_settings.fargate_runtime.clone();
    let runtime: Arc<dyn flotilla_agent::Runtime> = Arc::new(
        flotilla_docker::DockerRuntime::connect()
            .await
            .context("cannot reach the Docker Engine")?,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    flotilla_agent::run(config, runtime, shutdown).await?;
    Ok(())
}

/// The control plane and one agent on the local Docker Engine, in one process.
async fn run_up(
    args: ServerArgs,
    cluster: String,
    attributes: Vec<(String, String)>,
    zone: Option<String>,
    fargate: FargateArgs,
) -> anyhow::Result<()> {
    let server = start_server(&args).await?;
    let credentials = credentials(&args)?;
    let endpoint = server.endpoint();
    let identity = flotilla_agent::SigningIdentity {
        access_key_id: credentials.access_key_id.clone(),
        secret_access_key: credentials.secret_access_key.clone(),
        region: DEFAULT_REGION.to_owned(),
    };
    // The local agent's cluster exists before it registers (CreateCluster is idempotent).
    let client = flotilla_agent::ServerClient::new(&endpoint, identity.clone());
    client
        .call::<_, serde_json::Value>(
            "AmazonEC2ContainerServiceV20141113.CreateCluster",
            &serde_json::json!({ "clusterName": cluster }),
        )
        .await
        .with_context(|| format!("cannot create cluster {cluster}"))?;
    let mut config = flotilla_agent::AgentConfig::new(
        &endpoint,
        &cluster,
        identity,
        args.data_dir.join("agent"),
    );
    config.attributes = attributes;
    config.zone = zone.or_else(|| Some(format!("{DEFAULT_REGION}a")));
    config.logs_listen = Some("127.0.0.1:0".parse()?);
    // The same Docker Engine is also the cluster's Fargate capacity: a second agent,
    // hidden from the instance lists, runs FARGATE and FARGATE_SPOT tasks.
    let mut fargate_config = config.clone();
    fargate_config.data_dir = args.data_dir.join("agent-fargate");
    fargate_config.attributes = Vec::new();
    fargate_config.fargate_capacity = true;
    fargate_config.fargate_runtime = fargate.fargate_runtime;
    let runtime: Arc<dyn flotilla_agent::Runtime> = Arc::new(
        flotilla_docker::DockerRuntime::connect()
            .await
            .context("cannot reach the Docker Engine")?,
    );
    // A closed stdout (a detached terminal, a reader that left) must not stop the server.
    let banner = format!(
        "flotilla listening on {endpoint}\n\
         cluster: {cluster} (this host runs its tasks on the local Docker Engine)\n\
         export AWS_ENDPOINT_URL={endpoint}\n\
         export AWS_ACCESS_KEY_ID={}\n\
         export AWS_SECRET_ACCESS_KEY={}\n\
         export AWS_DEFAULT_REGION={DEFAULT_REGION}",
        credentials.access_key_id, credentials.secret_access_key
    );
    let _ = writeln!(std::io::stdout(), "{banner}");
    print_https_note(&args, &server);
    let shutdown = server.shutdown_token();
    let agent_shutdown = shutdown.child_token();
    let fargate_agent = tokio::spawn(flotilla_agent::run(
        fargate_config,
        runtime.clone(),
        agent_shutdown.clone(),
    ));
    let agent = tokio::spawn(flotilla_agent::run(config, runtime, agent_shutdown));
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    // The agent stops first (its containers keep running and are adopted next time),
    // then the server.
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            shutdown.cancel();
            server.wait().await;
            return Err(error.into());
        }
        Err(error) => tracing::error!(%error, "agent task failed"),
    }
    shutdown.cancel();
    match fargate_agent.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(%error, "the Fargate capacity agent failed"),
        Err(error) => tracing::error!(%error, "the Fargate capacity agent task failed"),
    }
    server.wait().await;
    Ok(())
}

/// `flotilla reclaim-spot`: the operator takes FARGATE_SPOT capacity back.
async fn reclaim_spot(
    data_dir: &std::path::Path,
    cluster: Option<String>,
    count: u32,
) -> anyhow::Result<()> {
    let client = operator_client(data_dir)?;
    let answer: flotilla_protocol::ReclaimSpotCapacityResponse = client
        .call(
            &format!(
                "{}.ReclaimSpotCapacity",
                flotilla_protocol::OPERATOR_TARGET_PREFIX
            ),
            &flotilla_protocol::ReclaimSpotCapacityRequest {
                cluster,
                count: Some(count),
            },
        )
        .await?;
    if answer.task_arns.is_empty() {
        println!("no running FARGATE_SPOT task to interrupt");
    }
    for arn in &answer.task_arns {
        println!("interrupted {arn} (two-minute warning, stopCode SpotInterruption)");
    }
    Ok(())
}

async fn start_server(args: &ServerArgs) -> anyhow::Result<flotilla_server::RunningServer> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let credentials = credentials(args)?;
    let store = flotilla_store::RedbStore::open(&args.data_dir.join("state.redb"))
        .with_context(|| format!("cannot open the state store in {}", args.data_dir.display()))?;
    let store: Arc<dyn flotilla_store::Store> = Arc::new(store);
    let mut config = ServerConfig::new(args.listen, credentials);
    config.account_id = args.account_id.clone();
    config.disconnect_timeout =
        std::time::Duration::from_secs(args.disconnect_timeout_seconds.max(1));
    config.registry = flotilla_registry::RegistryConfig::on_disk(&args.data_dir);
    config.registry.public_host = args.registry_host.clone();
    match args.registry_storage.as_deref() {
        Some(url) if url.starts_with("s3://") => {
            config.registry.storage = flotilla_registry::StorageConfig::S3(url.to_owned());
        }
        Some(directory) => {
            config.registry.storage = flotilla_registry::StorageConfig::Directory(directory.into());
        }
        None => {}
    }
    if let Some(key) = &args.registry_key {
        config.registry.key = flotilla_registry::KeyConfig::Hex(key.clone());
    }
    config.engine.restart_delay_base_ms = args.service_restart_delay_ms.max(1);
    config.engine.healthy_after_running_ms = i64::from(args.service_healthy_after_ms);
    config.tls = tls_source(args);
    let server = flotilla_server::start(config, store).await?;
    let endpoint_file = EndpointFile {
        endpoint: server.endpoint(),
        region: DEFAULT_REGION.to_owned(),
    };
    std::fs::write(
        args.data_dir.join("endpoint.json"),
        serde_json::to_vec_pretty(&endpoint_file)?,
    )?;
    Ok(server)
}

/// Tells the operator where HTTPS is and which certificate clients should trust.
fn print_https_note(args: &ServerArgs, server: &flotilla_server::RunningServer) {
    if let Some(https) = server.https_endpoint() {
        let trust = match &args.tls_certificate {
            Some(certificate) => certificate.display().to_string(),
            None => args
                .data_dir
                .join("tls")
                .join("ca.pem")
                .display()
                .to_string(),
        };
        eprintln!("HTTPS on the same port ({https}); clients trust it with {trust}");
    }
}

/// Where HTTPS gets its certificate: the operator's files, or a set generated in the data
/// dir that covers the listen address and the registry host.
fn tls_source(args: &ServerArgs) -> Option<flotilla_server::tls::TlsSource> {
    if args.no_tls {
        return None;
    }
    if let (Some(certificate), Some(key)) = (&args.tls_certificate, &args.tls_key) {
        return Some(flotilla_server::tls::TlsSource::Files {
            certificate: certificate.clone(),
            key: key.clone(),
        });
    }
    let mut names = vec![args.listen.ip().to_string()];
    names.extend(args.registry_host.clone());
    Some(flotilla_server::tls::TlsSource::Generated {
        directory: args.data_dir.join("tls"),
        names,
    })
}

/// Reads a task's logs through the agent that runs it.
async fn print_logs(
    data_dir: &std::path::Path,
    task: &str,
    cluster: Option<String>,
    container: Option<String>,
    follow: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let client = operator_client(data_dir)?;
    let located: flotilla_protocol::LocateTaskLogsResponse = client
        .call(
            &format!(
                "{}.LocateTaskLogs",
                flotilla_protocol::OPERATOR_TARGET_PREFIX
            ),
            &flotilla_protocol::LocateTaskLogsRequest {
                cluster,
                task: task.to_owned(),
            },
        )
        .await?;
    let mut stream = flotilla_agent::fetch_logs(
        &located.endpoint,
        &located.task_arn,
        container.as_deref(),
        follow,
    )
    .await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        stdout.write_all(&chunk?)?;
        stdout.flush()?;
    }
    Ok(())
}

async fn explain_placement(
    data_dir: &std::path::Path,
    cluster: Option<String>,
    task_definition: String,
    group: Option<String>,
    member_of: Option<String>,
    distinct_instance: bool,
    strategies: Vec<String>,
) -> anyhow::Result<()> {
    use flotilla_model::task_definition::{PlacementConstraint, PlacementStrategy};
    let client = operator_client(data_dir)?;
    let mut placement_constraints = Vec::new();
    if let Some(expression) = member_of {
        placement_constraints.push(PlacementConstraint {
            kind: Some("memberOf".into()),
            expression: Some(expression),
        });
    }
    if distinct_instance {
        placement_constraints.push(PlacementConstraint {
            kind: Some("distinctInstance".into()),
            expression: None,
        });
    }
    let placement_strategy = strategies
        .iter()
        .map(|s| {
            let (kind, field) = s
                .split_once(':')
                .map_or((s.as_str(), None), |(k, f)| (k, Some(f.to_owned())));
            PlacementStrategy {
                kind: Some(kind.to_owned()),
                field,
            }
        })
        .collect();
    let answer: flotilla_protocol::ExplainPlacementResponse = client
        .call(
            &format!(
                "{}.ExplainPlacement",
                flotilla_protocol::OPERATOR_TARGET_PREFIX
            ),
            &flotilla_protocol::ExplainPlacementRequest {
                cluster,
                task_definition,
                group,
                placement_constraints,
                placement_strategy,
            },
        )
        .await?;
    println!(
        "one task needs {} CPU units and {} MiB",
        answer.cpu, answer.memory
    );
    println!(
        "{:<34} {:<21} {:>8} {:>10}  VERDICT",
        "CONTAINER INSTANCE", "EC2 INSTANCE ID", "CPU LEFT", "MEM LEFT"
    );
    for host in &answer.hosts {
        let id = host
            .container_instance_arn
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let verdict = if host.fits {
            "fits".to_owned()
        } else {
            host.reason.clone().unwrap_or_default()
        };
        println!(
            "{id:<34} {:<21} {:>8} {:>10}  {verdict}",
            host.ec2_instance_id, host.remaining_cpu, host.remaining_memory
        );
    }
    match &answer.chosen {
        Some(arn) => println!(
            "RunTask would place it on {}",
            arn.rsplit('/').next().unwrap_or_default()
        ),
        None => println!("RunTask could not place it now"),
    }
    Ok(())
}

/// A signed client of the running server, for the CLI's own calls.
fn operator_client(data_dir: &std::path::Path) -> anyhow::Result<flotilla_agent::ServerClient> {
    let (endpoint, credentials) = client_settings(data_dir)?;
    Ok(flotilla_agent::ServerClient::new(
        &endpoint,
        flotilla_agent::SigningIdentity {
            access_key_id: credentials.access_key_id,
            secret_access_key: credentials.secret_access_key,
            region: DEFAULT_REGION.to_owned(),
        },
    ))
}

/// The endpoint and keys for CLI calls: AWS_* variables if set, else the data dir's.
fn client_settings(data_dir: &std::path::Path) -> anyhow::Result<(String, Credentials)> {
    let from_env = (
        std::env::var("AWS_ENDPOINT_URL").ok(),
        std::env::var("AWS_ACCESS_KEY_ID").ok(),
        std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
    );
    if let (Some(endpoint), Some(access_key_id), Some(secret_access_key)) = from_env {
        return Ok((
            endpoint,
            Credentials {
                access_key_id,
                secret_access_key,
            },
        ));
    }
    let credentials = flotilla_server::load_or_create_credentials(data_dir)?;
    let endpoint: EndpointFile = serde_json::from_slice(
        &std::fs::read(data_dir.join("endpoint.json"))
            .context("no running Flotilla found in the data dir")?,
    )?;
    Ok((endpoint.endpoint, credentials))
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let server = start_server(&args).await?;
    let endpoint = server.endpoint();
    // A machine-readable first line on stdout, for scripts and tests that start us.
    let _ = writeln!(std::io::stdout(), "flotilla listening on {endpoint}");
    eprintln!(
        "Point AWS clients here with:  eval \"$(flotilla env --data-dir {})\"",
        args.data_dir.display()
    );
    print_https_note(&args, &server);
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn print_env(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let credentials = flotilla_server::load_or_create_credentials(data_dir)?;
    let endpoint: EndpointFile = match std::fs::read(data_dir.join("endpoint.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => EndpointFile {
            endpoint: format!("http://{DEFAULT_LISTEN}"),
            region: DEFAULT_REGION.to_owned(),
        },
    };
    println!("export AWS_ENDPOINT_URL={}", endpoint.endpoint);
    println!("export AWS_ACCESS_KEY_ID={}", credentials.access_key_id);
    println!(
        "export AWS_SECRET_ACCESS_KEY={}",
        credentials.secret_access_key
    );
    println!("export AWS_DEFAULT_REGION={}", endpoint.region);
    println!("export AWS_REGION={}", endpoint.region);
    Ok(())
}
