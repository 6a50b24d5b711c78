//! Group-commit benchmark: concurrent writers doing CAS puts against an on-disk store.
//!
//! ```text
//! cargo run --release -p flotilla-store --example store_bench -- \
//!     [writers=1,16,64,256] [seconds=3] [value_bytes=512] [dir=PATH]
//! ```
//! Each writer owns one key and updates it with a compare-and-swap on its last mod_revision,
//! as the control plane's read-modify-write does, so every txn commits. Prints txns/s and
//! p50/p99 commit latency per writer count, then the latency of inline reads. `dir` should be
//! on the disk the server will use (the default is the system temp dir).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_store::{Compare, Op, RedbStore, Store, Txn, TxnOutcome};

struct Config {
    writers: Vec<usize>,
    seconds: u64,
    value_bytes: usize,
    dir: Option<PathBuf>,
}

fn parse() -> Result<Config, String> {
    let mut config = Config {
        writers: vec![1, 16, 64, 256],
        seconds: 3,
        value_bytes: 512,
        dir: None,
    };
    for arg in std::env::args().skip(1) {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected name=value, got '{arg}'"))?;
        let bad = |e: std::num::ParseIntError| format!("{name}: {e}");
        match name {
            "writers" => {
                config.writers = value
                    .split(',')
                    .map(|w| w.parse().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            "seconds" => config.seconds = value.parse().map_err(bad)?,
            "value_bytes" => config.value_bytes = value.parse().map_err(bad)?,
            "dir" => config.dir = Some(value.into()),
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    Ok(config)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(store: Arc<RedbStore>, writers: usize, seconds: u64, value_bytes: usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = format!("bench/{writers}/{w:05}");
                let value = vec![b'x'; value_bytes];
                let mut revision = 0;
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = store
                        .txn(Txn {
                            compares: vec![Compare::ModRevision {
                                key: key.clone(),
                                mod_revision: revision,
                            }],
                            ops: vec![Op::Put {
                                key: key.clone(),
                                value: value.clone(),
                            }],
                        })
                        .await;
                    match outcome {
                        Ok(TxnOutcome::Committed { revision: r }) => revision = r,
                        other => panic!("a writer's own key cannot conflict: {other:?}"),
                    }
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "{writers:>7} {:>10.0} {:>9.2} {:>9.2} {:>9}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.len(),
    );
}

#[tokio::main]
async fn main() {
    let config = match parse() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("store_bench: {message}");
            std::process::exit(2);
        }
    };
    let dir = match &config.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let path = dir.path().join("state.redb");
    let store = Arc::new(RedbStore::open(&path).expect("open the store"));
    println!(
        "store {} | value {} B | {} s per run | durable commits (fsync)",
        path.display(),
        config.value_bytes,
        config.seconds
    );
    println!("writers     txns/s   p50(ms)   p99(ms)      txns");
    for &writers in &config.writers {
        run(store.clone(), writers, config.seconds, config.value_bytes).await;
    }

    // Reads run inline on the caller's task; show what that costs.
    let keys: Vec<String> = (0..config.writers[0])
        .map(|w| format!("bench/{}/{w:05}", config.writers[0]))
        .collect();
    const READS: u32 = 100_000;
    let started = Instant::now();
    for i in 0..READS {
        let key = &keys[i as usize % keys.len()];
        store.get(key).await.expect("get").expect("the key exists");
    }
    println!(
        "get: {:.1} µs per read (inline, {READS} reads)",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(READS)
    );
}
