//! State store benchmark: concurrent writers against an on-disk store, in two workloads.
//!
//! ```text
//! cargo run --release -p flotilla-store --example store_bench -- \
//!     [workload=cas,placement] [writers=1,16,64,256] [placement_writers=1,4] \
//!     [seconds=3] [placement_seconds=10] [value_bytes=512] [dir=PATH] \
//!     [wal=on|off] [preallocate=on|off] [checkpoint_mib=64]
//! ```
//! `wal=off` commits every batch durably in redb (no write-ahead log); `preallocate=off`
//! appends to the log instead of overwriting a preallocated one; `checkpoint_mib` is the log
//! size that triggers a checkpoint.
//! - `cas`: each writer owns one key and updates it with a compare-and-swap on its last
//!   mod_revision, as the control plane's read-modify-write does, so every txn commits.
//!   Afterwards, the latency of inline reads.
//! - `placement`: the scheduler's plan applier: each txn creates ~170 task records of 1.5-2 KB
//!   at random keys, rewrites ~170 of 2,000 container-instance records (~1 KB) and writes ~170
//!   small index keys, ~480 KB in ~510 ops. Runs long enough to cross several checkpoints, so
//!   p99 and max show their stall.
//!
//! Prints txns/s, MB/s of keys and values, and p50/p99/max commit latency per writer count.
//! `dir` should be on the disk the server will use (the default is the system temp dir).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_store::{Compare, Op, RedbStore, Store, StoreOptions, Txn, TxnOutcome};

struct Config {
    workloads: Vec<String>,
    writers: Vec<usize>,
    placement_writers: Vec<usize>,
    seconds: u64,
    placement_seconds: u64,
    value_bytes: usize,
    dir: Option<PathBuf>,
    options: StoreOptions,
}

fn parse() -> Result<Config, String> {
    let mut config = Config {
        workloads: vec!["cas".into(), "placement".into()],
        writers: vec![1, 16, 64, 256],
        placement_writers: vec![1, 4],
        seconds: 3,
        placement_seconds: 10,
        value_bytes: 512,
        dir: None,
        options: StoreOptions::default(),
    };
    let switch = |name: &str, value: &str| match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{name}: expected on or off, got '{other}'")),
    };
    let list = |name: &str, value: &str| -> Result<Vec<usize>, String> {
        value
            .split(',')
            .map(|w| w.parse().map_err(|e| format!("{name}: {e}")))
            .collect()
    };
    for arg in std::env::args().skip(1) {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected name=value, got '{arg}'"))?;
        let bad = |e: std::num::ParseIntError| format!("{name}: {e}");
        match name {
            "workload" => config.workloads = value.split(',').map(str::to_owned).collect(),
            "writers" => config.writers = list(name, value)?,
            "placement_writers" => config.placement_writers = list(name, value)?,
            "seconds" => config.seconds = value.parse().map_err(bad)?,
            "placement_seconds" => config.placement_seconds = value.parse().map_err(bad)?,
            "value_bytes" => config.value_bytes = value.parse().map_err(bad)?,
            "dir" => config.dir = Some(value.into()),
            "wal" => config.options.write_ahead_log = switch(name, value)?,
            "preallocate" => config.options.preallocate_log = switch(name, value)?,
            "checkpoint_mib" => {
                config.options.checkpoint_log_bytes =
                    value.parse::<u64>().map_err(bad)? * 1024 * 1024
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    for workload in &config.workloads {
        if workload != "cas" && workload != "placement" {
            return Err(format!(
                "unknown workload '{workload}'; expected cas or placement"
            ));
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

fn report(writers: usize, elapsed: Duration, bytes: usize, mut latencies: Vec<Duration>) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{writers:>7} {:>10.0} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>9}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6,
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len(),
    );
}

const HEADER: &str = "writers     txns/s     MB/s   p50(ms)   p99(ms)   max(ms)      txns";

async fn run_cas(store: Arc<RedbStore>, writers: usize, seconds: u64, value_bytes: usize) {
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
    let bytes = latencies.len() * (value_bytes + 16);
    report(writers, started.elapsed(), bytes, latencies);
}

/// xorshift64: the benchmark needs cheap, repeatable randomness, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const INSTANCES: u64 = 2000;
const TASKS_PER_TXN: usize = 170;

/// One placement plan: new tasks, the instances they land on, and index keys.
fn placement_txn(rng: &mut Rng, filler: &[u8]) -> (Txn, usize) {
    let mut ops = Vec::with_capacity(3 * TASKS_PER_TXN);
    for _ in 0..TASKS_PER_TXN {
        let id = format!("{:016x}{:016x}", rng.next(), rng.next());
        let value_bytes = 1500 + rng.below(500) as usize;
        ops.push(Op::Put {
            key: format!("tasks/default/{id}"),
            value: filler[..value_bytes].to_vec(),
        });
        let instance = rng.below(INSTANCES);
        ops.push(Op::Put {
            key: format!("instances/default/{instance:08}"),
            value: filler[..900 + rng.below(200) as usize].to_vec(),
        });
        ops.push(Op::Put {
            key: format!("index/instance-tasks/{instance:08}/{id}"),
            value: filler[..40].to_vec(),
        });
    }
    let bytes = ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        })
        .sum();
    (
        Txn {
            compares: vec![],
            ops,
        },
        bytes,
    )
}

async fn run_placement(store: Arc<RedbStore>, writers: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) << 32));
                let filler: Vec<u8> = (0..2048u32).map(|i| b'a' + (i % 26) as u8).collect();
                let mut latencies = Vec::new();
                let mut bytes = 0;
                while Instant::now() < deadline {
                    let (txn, txn_bytes) = placement_txn(&mut rng, &filler);
                    let sent = Instant::now();
                    match store.txn(txn).await {
                        Ok(TxnOutcome::Committed { .. }) => {}
                        other => panic!("a placement without compares cannot conflict: {other:?}"),
                    }
                    latencies.push(sent.elapsed());
                    bytes += txn_bytes;
                }
                (latencies, bytes)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut bytes = 0;
    for task in tasks {
        let (l, b) = task.await.expect("writer task");
        latencies.extend(l);
        bytes += b;
    }
    report(writers, started.elapsed(), bytes, latencies);
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
    let store = Arc::new(RedbStore::open_with(&path, &config.options).expect("open the store"));
    println!("store {} | {:?}", path.display(), config.options);

    if config.workloads.iter().any(|w| w == "cas") {
        println!(
            "cas: value {} B | {} s per run",
            config.value_bytes, config.seconds
        );
        println!("{HEADER}");
        for &writers in &config.writers {
            run_cas(store.clone(), writers, config.seconds, config.value_bytes).await;
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

    if config.workloads.iter().any(|w| w == "placement") {
        // The instances exist before the first plan, as registered hosts would.
        let mut ops = Vec::new();
        for instance in 0..INSTANCES {
            ops.push(Op::Put {
                key: format!("instances/default/{instance:08}"),
                value: vec![b'i'; 1000],
            });
            if ops.len() == 1000 {
                store
                    .txn(Txn {
                        compares: vec![],
                        ops: std::mem::take(&mut ops),
                    })
                    .await
                    .expect("seed the instances");
            }
        }
        println!(
            "placement: {TASKS_PER_TXN} tasks per txn (~510 ops, ~480 KB) | {} s per run",
            config.placement_seconds
        );
        println!("{HEADER}");
        for &writers in &config.placement_writers {
            run_placement(store.clone(), writers, config.placement_seconds).await;
        }
    }
    let started = Instant::now();
    store.shutdown();
    println!("shutdown: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
}
