//! Task placement decided in pure functions: filter hosts by what they have left (CPU,
//! memory, fixed host ports, GPUs) and by constraints, rank the rest by the strategies in
//! order, and pick. No IO, no clock, no global randomness: a seed makes every answer
//! replayable.
//!
//! Two ways in, one engine: [`place`] reads a slice of hosts afresh on every call, and
//! [`HostIndex`] keeps hosts with the columns placement reads, for a control plane that
//! places often on a large cluster (tens of times faster at 10,000 hosts; see the
//! `place_bench` example). Both give the same answer for the same hosts, request and seed.
//!
//! Invariants:
//! * Placement never oversubscribes a host: every placement of one call fits what the host
//!   had left minus the placements before it in the same call.
//! * Constraints are binding, strategies best effort (ECS's order: resources, constraints,
//!   strategies).
//! * The same hosts, request and seed always give the same answer.

mod index;
mod place;
pub mod query;
mod scale_in;

use std::collections::BTreeMap;

use flotilla_model::Timestamp;
use flotilla_model::resources::{Demand, Reservation, Resources, Shortfall};

pub use index::HostIndex;
pub use place::{explain, place};
pub use scale_in::choose_tasks_to_stop;

/// ECS accepts at most five placement strategies per request; ranking uses no more.
const RANKS_MAX: usize = 5;

/// A read-only view of one container instance.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: String,
    pub arn: String,
    pub ec2_instance_id: String,
    /// Status ACTIVE; DRAINING and other states never get new tasks.
    pub active: bool,
    pub agent_connected: bool,
    pub remaining: Resources,
    pub registered: Resources,
    /// Built-in (`ecs.availability-zone`) and custom attributes; some have no value.
    pub attributes: BTreeMap<String, Option<String>>,
    pub agent_version: Option<String>,
    pub registered_at: Timestamp,
    pub running_tasks_count: u32,
    /// Non-stopped tasks on this host by task group (`family:web`, `service:api`).
    pub task_groups: BTreeMap<String, u32>,
}

/// A binding rule: hosts that break it are never chosen.
#[derive(Clone, Debug)]
pub enum Constraint {
    /// At most one task of the request's group per host, counting tasks already there.
    DistinctInstance,
    /// Only hosts the expression matches.
    MemberOf(query::Expression),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinpackField {
    Cpu,
    Memory,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpreadField {
    /// `instanceId` or its alias `host`.
    Instance,
    /// `attribute:NAME`, e.g. `ecs.availability-zone`.
    Attribute(String),
}

/// A best-effort preference; a list of them ranks hosts in order, each breaking the ties of
/// the one before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Prefer the host with the least of the field left after placing.
    Binpack(BinpackField),
    /// Prefer the host, or attribute value, with the fewest tasks of the group.
    Spread(SpreadField),
    /// Choose at random (from the seed); strategies after it cannot matter.
    Random,
}

/// A placement constraint or strategy that is not valid, saying what is accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PlacementError {
    #[error("Invalid placement constraint type '{0}'; accepted: distinctInstance, memberOf.")]
    ConstraintType(String),
    #[error("A memberOf placement constraint needs an expression.")]
    MissingExpression,
    #[error("A distinctInstance placement constraint takes no expression.")]
    UnexpectedExpression,
    #[error(transparent)]
    Expression(#[from] query::QueryError),
    #[error("Invalid placement strategy type '{0}'; accepted: binpack, spread, random.")]
    StrategyType(String),
    #[error("Invalid field '{field}' for the {strategy} placement strategy; accepted: {accepted}.")]
    StrategyField {
        strategy: &'static str,
        field: String,
        accepted: &'static str,
    },
}

/// Parses a placement constraint as ECS's `PlacementConstraint` gives it (`type`, `expression`).
/// An empty expression counts as none, as SDKs and templates often send one.
pub fn parse_constraint(
    kind: &str,
    expression: Option<&str>,
) -> Result<Constraint, PlacementError> {
    let expression = expression.filter(|e| !e.trim().is_empty());
    match (kind, expression) {
        ("distinctInstance", None) => Ok(Constraint::DistinctInstance),
        ("distinctInstance", Some(_)) => Err(PlacementError::UnexpectedExpression),
        ("memberOf", Some(text)) => Ok(Constraint::MemberOf(query::parse(text)?)),
        ("memberOf", None) => Err(PlacementError::MissingExpression),
        (other, _) => Err(PlacementError::ConstraintType(other.to_owned())),
    }
}

/// Parses a placement strategy as ECS's `PlacementStrategy` gives it (`type`, `field`).
/// Field keywords are accepted in any case, as ECS accepts `CPU` and `MEMORY`; attribute
/// names keep theirs.
pub fn parse_strategy(kind: &str, field: Option<&str>) -> Result<Strategy, PlacementError> {
    let field_error = |strategy, accepted| PlacementError::StrategyField {
        strategy,
        field: field.unwrap_or_default().to_owned(),
        accepted,
    };
    let lowercase_field = field.map(str::to_ascii_lowercase);
    match kind {
        "binpack" => match lowercase_field.as_deref() {
            Some("cpu") => Ok(Strategy::Binpack(BinpackField::Cpu)),
            Some("memory") => Ok(Strategy::Binpack(BinpackField::Memory)),
            _ => Err(field_error("binpack", "cpu, memory")),
        },
        "spread" => {
            const ACCEPTED: &str = "instanceId, host, attribute:NAME";
            match (field, lowercase_field.as_deref()) {
                (_, Some("instanceid" | "host")) => Ok(Strategy::Spread(SpreadField::Instance)),
                (Some(f), Some(lower)) if lower.starts_with("attribute:") => {
                    let name = &f["attribute:".len()..];
                    if is_attribute_name(name) {
                        Ok(Strategy::Spread(SpreadField::Attribute(name.to_owned())))
                    } else {
                        Err(field_error("spread", ACCEPTED))
                    }
                }
                _ => Err(field_error("spread", ACCEPTED)),
            }
        }
        "random" if field.is_none_or(|f| f.trim().is_empty()) => Ok(Strategy::Random),
        "random" => Err(field_error("random", "no field")),
        other => Err(PlacementError::StrategyType(other.to_owned())),
    }
}

/// ECS attribute names: 1 to 128 of letters, digits, `-`, `_`, `/` and `.`.
fn is_attribute_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.'))
}

/// What to place: `count` tasks of one group, each needing `demand`.
#[derive(Clone, Debug)]
pub struct PlacementRequest {
    /// Fixed host ports only: dynamic ones are chosen by Docker on the host.
    pub demand: Demand,
    pub count: usize,
    /// The task group placed (`family:NAME` or `service:NAME`): spread and distinctInstance
    /// count its tasks.
    pub group: String,
    pub constraints: Vec<Constraint>,
    /// Applied in order; ECS allows at most five, and ranking uses only the first five.
    pub strategies: Vec<Strategy>,
}

/// One task placed on `hosts[host_index]`, with exactly what it takes from the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub host_index: usize,
    pub reservation: Reservation,
}

/// Why a host cannot take a task, in ECS's order of checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    Inactive,
    AgentDisconnected,
    Resource(Shortfall),
    DistinctInstance,
    MemberOf,
}

impl RejectReason {
    /// The words ECS uses in RunTask's `failures[].reason`.
    pub fn ecs_reason(&self) -> String {
        match self {
            Self::Inactive => "INACTIVE".to_owned(),
            Self::AgentDisconnected => "AGENT".to_owned(),
            Self::Resource(shortfall) => shortfall.reason().to_owned(),
            Self::DistinctInstance => {
                "DistinctInstance placement constraint unsatisfied.".to_owned()
            }
            Self::MemberOf => "MemberOf placement constraint unsatisfied.".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub host_index: usize,
    pub reason: RejectReason,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlacementResult {
    /// In the order the tasks were placed.
    pub placements: Vec<Placement>,
    /// Tasks no host could take.
    pub unplaced: usize,
    /// Only when `unplaced > 0`: for each host, in host order, the first reason it could not
    /// take another task (after this call's placements).
    pub rejections: Vec<Rejection>,
}

/// Maps up to this size are searched by a scan that checks lengths first.
const SCANNED_MAP_LEN_MAX: usize = 16;

/// Looks `key` up in a host's attribute or task-group map. Names share long prefixes
/// (`ecs.`, `com.amazonaws.ecs.capability.`, `service:`), so a B-tree search compares
/// several of them byte by byte; checking the length and the last byte first skips most.
pub(crate) fn lookup<'m, V>(map: &'m BTreeMap<String, V>, key: &str) -> Option<&'m V> {
    if map.len() <= SCANNED_MAP_LEN_MAX {
        let last = key.as_bytes().last();
        map.iter()
            .find(|(name, _)| {
                name.len() == key.len() && name.as_bytes().last() == last && name.as_str() == key
            })
            .map(|(_, value)| value)
    } else {
        map.get(key)
    }
}
