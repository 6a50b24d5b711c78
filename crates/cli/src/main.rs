//! The `flotilla` binary: `server` (the control plane), `env` (shell exports for AWS
//! clients), and `bench` (benchmarks that print figures).

mod bench;

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
    /// Run the control plane (ECS API and agent protocol).
    Server(ServerArgs),
    /// Print `export AWS_...` lines that point AWS clients at a Flotilla data dir's server.
    Env {
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value_os_t = default_data_dir())]
        data_dir: PathBuf,
    },
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
        Command::Env { data_dir } => print_env(&data_dir),
        Command::Bench(command) => runtime.block_on(bench::run(command)),
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

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let credentials = credentials(&args)?;
    let store = flotilla_store::RedbStore::open(&args.data_dir.join("state.redb"))
        .with_context(|| format!("cannot open the state store in {}", args.data_dir.display()))?;
    let store: Arc<dyn flotilla_store::Store> = Arc::new(store);
    let mut config = ServerConfig::new(args.listen, credentials.clone());
    config.account_id = args.account_id.clone();
    config.disconnect_timeout =
        std::time::Duration::from_secs(args.disconnect_timeout_seconds.max(1));
    let server = flotilla_server::start(config, store).await?;
    let endpoint = server.endpoint();
    let endpoint_file = EndpointFile {
        endpoint: endpoint.clone(),
        region: DEFAULT_REGION.to_owned(),
    };
    std::fs::write(
        args.data_dir.join("endpoint.json"),
        serde_json::to_vec_pretty(&endpoint_file)?,
    )?;
    // A machine-readable first line on stdout, for scripts and tests that start us.
    println!("flotilla listening on {endpoint}");
    eprintln!(
        "Point AWS clients here with:  eval \"$(flotilla env --data-dir {})\"",
        args.data_dir.display()
    );
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
