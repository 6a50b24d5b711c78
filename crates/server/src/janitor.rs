//! Housekeeping: forgets STOPPED tasks after their retention period (ECS shows them for
//! about an hour) together with their index entries, and expired RunTask client tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_model::{Task, TaskStatus, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::db::TxnBuilder;
use crate::engine::Engine;

const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Bound on deletions per sweep so one sweep never holds the writer for long.
const DELETIONS_PER_SWEEP_MAX: usize = 1000;

pub async fn run(engine: Engine, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        if let Err(error) = sweep(&engine, Timestamp::from_millis(now)).await {
            tracing::warn!(%error, "housekeeping sweep failed");
        }
    }
}

/// One sweep at time `now`; returns how many records (tasks, tokens) were forgotten.
pub async fn sweep(engine: &Engine, now: Timestamp) -> Result<usize, flotilla_model::EcsError> {
    let retention = engine.config.stopped_task_retention_ms;
    let all = engine.db().list::<serde_json::Value>("r/").await?;
    let mut txn = TxnBuilder::new();
    let mut forgotten = 0;
    for kv in all {
        if forgotten >= DELETIONS_PER_SWEEP_MAX {
            break;
        }
        if kv.key.contains("/token/runtask/") {
            // A RunTask clientToken is remembered for a while, then forgotten.
            let expired = serde_json::from_value::<crate::engine::RunTaskToken>(kv.value)
                .is_ok_and(|token| token.expires_at <= now);
            if expired {
                txn.expect(&kv.key, kv.mod_revision).delete(&kv.key);
                forgotten += 1;
            }
            continue;
        }
        if !kv.key.contains("/task/") {
            continue;
        }
        let Ok(task) = serde_json::from_value::<Task>(kv.value) else {
            continue;
        };
        let expired = task.last_status == TaskStatus::Stopped
            && task
                .stopped_at
                .is_some_and(|at| now.millis_since(at) > retention);
        if !expired {
            continue;
        }
        txn.expect(&kv.key, kv.mod_revision).delete(&kv.key);
        // Stores written before tasks were found through the state cache hold an index
        // entry per task; deleting one that does not exist is a no-op.
        if let Some(instance_id) = &task.container_instance_id {
            let root = &kv.key[..kv.key.find("/task/").unwrap_or(0)];
            txn.delete(&format!(
                "{root}/itask/{}/{instance_id}/{}",
                task.cluster_name, task.id
            ));
        }
        forgotten += 1;
    }
    if !txn.is_empty() {
        engine.db().commit(txn.build()).await?;
    }
    Ok(forgotten)
}
