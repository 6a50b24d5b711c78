//! Typed access to the state store: the key layout and JSON records on top of the
//! byte-oriented `Store` trait.
//!
//! Key layout (every resource is scoped by account and region):
//! ```text
//! r/{account}/{region}/cluster/{name}                      Cluster
//! r/{account}/{region}/taskdef/{family}/{revision:010}     TaskDefinition
//! r/{account}/{region}/family/{family}                     Family (revision counter)
//! r/{account}/{region}/instance/{cluster}/{id}             ContainerInstance
//! r/{account}/{region}/task/{cluster}/{id}                 Task
//! r/{account}/{region}/setting/{principal|~}/{name}        AccountSetting
//! r/{account}/{region}/token/runtask/{cluster}/{token}     RunTask idempotency record
//! ```
//! The tasks of an instance are found through the state cache ([`crate::cache::HostTasks`]),
//! not a stored index: a stored entry per task landed on a random B-tree page and cost a
//! sixth of a placement. Stores written before keep `itask/{cluster}/{instance}/{task}`
//! entries, which nothing reads; the janitor deletes each with its task.

use std::sync::Arc;

use flotilla_model::{EcsError, Scope};
use flotilla_store::{
    Compare, KeyValue, Op, RangeRequest, Revision, Store, StoreError, Txn, TxnOutcome,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How many times a read-modify-write is retried when another writer got there first.
pub const CAS_RETRIES_MAX: usize = 16;

pub fn store_error(error: StoreError) -> EcsError {
    EcsError::Server(format!("The state store failed: {error}"))
}

fn decode_error(key: &str, error: serde_json::Error) -> EcsError {
    EcsError::Server(format!("Stored record at '{key}' is unreadable: {error}"))
}

/// A record read from the store with the revision needed to write it back with CAS.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: Revision,
}

/// The store plus typed helpers.
#[derive(Clone)]
pub struct Db {
    pub store: Arc<dyn Store>,
}

/// Key builders for one account and region.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(scope: &Scope) -> Self {
        Self {
            root: format!("r/{}/{}/", scope.account_id, scope.region),
        }
    }

    /// `r/{account}/{region}/`: the prefix of everything in this scope.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn clusters(&self) -> String {
        format!("{}cluster/", self.root)
    }
    pub fn cluster(&self, name: &str) -> String {
        format!("{}cluster/{name}", self.root)
    }
    pub fn task_definitions(&self) -> String {
        format!("{}taskdef/", self.root)
    }
    pub fn task_definitions_of(&self, family: &str) -> String {
        format!("{}taskdef/{family}/", self.root)
    }
    pub fn task_definition(&self, family: &str, revision: u32) -> String {
        format!("{}taskdef/{family}/{revision:010}", self.root)
    }
    pub fn families(&self) -> String {
        format!("{}family/", self.root)
    }
    pub fn family(&self, family: &str) -> String {
        format!("{}family/{family}", self.root)
    }
    pub fn instances(&self, cluster: &str) -> String {
        format!("{}instance/{cluster}/", self.root)
    }
    pub fn instance(&self, cluster: &str, id: &str) -> String {
        format!("{}instance/{cluster}/{id}", self.root)
    }
    pub fn tasks(&self, cluster: &str) -> String {
        format!("{}task/{cluster}/", self.root)
    }
    pub fn task(&self, cluster: &str, id: &str) -> String {
        format!("{}task/{cluster}/{id}", self.root)
    }
    pub fn settings(&self) -> String {
        format!("{}setting/", self.root)
    }
    pub fn setting(&self, principal: Option<&str>, name: &str) -> String {
        format!("{}setting/{}/{name}", self.root, principal.unwrap_or("~"))
    }
    pub fn services(&self, cluster: &str) -> String {
        format!("{}service/{cluster}/", self.root)
    }
    pub fn service(&self, cluster: &str, name: &str) -> String {
        format!("{}service/{cluster}/{name}", self.root)
    }
    pub fn run_task_token(&self, cluster: &str, token: &str) -> String {
        format!("{}token/runtask/{cluster}/{token}", self.root)
    }
}

impl Db {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, EcsError> {
        let Some(kv) = self.store.get(key).await.map_err(store_error)? else {
            return Ok(None);
        };
        decode(kv).map(Some)
    }

    /// Reads every record under `prefix` (in key order).
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, EcsError> {
        let mut out = Vec::new();
        let mut start_after = None;
        loop {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.to_owned(),
                    start_after: start_after.take(),
                    limit: 1000,
                })
                .await
                .map_err(store_error)?;
            let more = page.more;
            for kv in page.kvs {
                start_after = Some(kv.key.clone());
                out.push(decode(kv)?);
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// Keys only (values ignored), for index prefixes.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, EcsError> {
        let page = self
            .store
            .range(RangeRequest {
                prefix: prefix.to_owned(),
                start_after: None,
                limit: 0,
            })
            .await
            .map_err(store_error)?;
        Ok(page.kvs.into_iter().map(|kv| kv.key).collect())
    }

    /// Commits `txn`; `Ok(None)` means a compare failed (someone else wrote first).
    pub async fn commit(&self, txn: Txn) -> Result<Option<Revision>, EcsError> {
        match self.store.txn(txn).await.map_err(store_error)? {
            TxnOutcome::Committed { revision } => Ok(Some(revision)),
            TxnOutcome::Conflict { .. } => Ok(None),
        }
    }

    /// Like [`Db::commit`], but the transaction is queued on the store at once, before the
    /// returned future is polled (see [`Store::txn`]): a caller may issue the next one, which
    /// expects what this one writes, before it awaits this one.
    pub fn commit_queued(
        &self,
        txn: Txn,
    ) -> flotilla_store::BoxFuture<'_, Result<Option<Revision>, EcsError>> {
        let outcome = self.store.txn(txn);
        Box::pin(async move {
            match outcome.await.map_err(store_error)? {
                TxnOutcome::Committed { revision } => Ok(Some(revision)),
                TxnOutcome::Conflict { .. } => Ok(None),
            }
        })
    }

    /// Writes `value` over the record `read`, if it is unchanged since; false on a conflict
    /// (the caller reads again and retries).
    pub async fn replace_one<T: Serialize>(
        &self,
        read: &Versioned<T>,
        value: &T,
    ) -> Result<bool, EcsError> {
        let mut txn = TxnBuilder::new();
        txn.replace(read, value);
        Ok(self.commit(txn.build()).await?.is_some())
    }
}

fn decode<T: DeserializeOwned>(kv: KeyValue) -> Result<Versioned<T>, EcsError> {
    let value = serde_json::from_slice(&kv.value).map_err(|e| decode_error(&kv.key, e))?;
    Ok(Versioned {
        key: kv.key,
        value,
        mod_revision: kv.mod_revision,
    })
}

/// Builds a transaction from typed records.
#[derive(Default)]
pub struct TxnBuilder {
    txn: Txn,
}

impl TxnBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The key must still be at `mod_revision` (0: must not exist).
    pub fn expect(&mut self, key: &str, mod_revision: Revision) -> &mut Self {
        self.txn.compares.push(Compare::ModRevision {
            key: key.to_owned(),
            mod_revision,
        });
        self
    }

    /// The key must hold exactly `value` (see [`Compare::Value`]).
    pub fn expect_value(&mut self, key: &str, value: Vec<u8>) -> &mut Self {
        self.txn.compares.push(Compare::Value {
            key: key.to_owned(),
            value,
        });
        self
    }

    /// Writes bytes already encoded as the record's JSON.
    pub fn put_encoded(&mut self, key: &str, value: Vec<u8>) -> &mut Self {
        self.txn.ops.push(Op::Put {
            key: key.to_owned(),
            value,
        });
        self
    }

    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) -> &mut Self {
        let value = serde_json::to_vec(value).unwrap_or_default();
        self.txn.ops.push(Op::Put {
            key: key.to_owned(),
            value,
        });
        self
    }

    /// Writes `value` only if the record is unchanged since it was read.
    pub fn replace<T: Serialize>(&mut self, read: &Versioned<T>, value: &T) -> &mut Self {
        let key = read.key.clone();
        self.expect(&key, read.mod_revision).put(&key, value)
    }

    pub fn delete(&mut self, key: &str) -> &mut Self {
        self.txn.ops.push(Op::Delete {
            key: key.to_owned(),
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.txn.ops.is_empty()
    }

    pub fn build(self) -> Txn {
        self.txn
    }
}
