//! Capacity providers and capacity provider strategies: which provider each task of a
//! launch goes to (`base` first, then the rest in proportion to `weight`), decided by a pure
//! function so the split can be checked by property tests.

use serde::{Deserialize, Serialize};

use crate::cluster::CapacityProviderStrategyItem;
use crate::{Tag, Timestamp};

/// The capacity providers every account has; they cannot be created, updated or deleted.
pub const FARGATE: &str = "FARGATE";
pub const FARGATE_SPOT: &str = "FARGATE_SPOT";
pub const BUILT_IN: [&str; 2] = [FARGATE, FARGATE_SPOT];

/// Whether `name` is one of the Fargate capacity providers.
pub fn is_fargate(name: &str) -> bool {
    BUILT_IN.contains(&name)
}

/// A capacity provider the user created (type `EC2_AUTOSCALING`): a named group of
/// container instances, those that registered naming it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapacityProvider {
    pub name: String,
    pub arn: String,
    /// ACTIVE, or INACTIVE once deleted.
    pub status: String,
    /// `autoScalingGroupProvider` as given (Flotilla has no Auto Scaling groups; it is kept
    /// and shown, and its `managedScaling`/`managedTerminationProtection` are not acted on).
    pub auto_scaling_group_provider: serde_json::Value,
    pub update_status: Option<String>,
    pub tags: Vec<Tag>,
    pub created_at: Timestamp,
}

/// How many tasks each strategy item gets when `count` more tasks are launched and
/// `existing[i]` tasks already run on item `i`'s provider (RunTask passes zeros).
///
/// ECS's rule: first the item with a `base` gets tasks until it holds `base`; every further
/// task goes to the item with weight > 0 that is furthest below its weight-proportional
/// share of the tasks above base (ties: the earlier item), which keeps every item within
/// one task of its share. With no item of positive weight, only
/// bases are filled and the rest is not placed (the returned counts then sum to less).
pub fn split_by_strategy(
    strategy: &[CapacityProviderStrategyItem],
    existing: &[u32],
    count: u32,
) -> Vec<u32> {
    let n = strategy.len();
    let mut assigned = vec![0u32; n];
    let held = |i: usize, assigned: &[u32]| existing.get(i).copied().unwrap_or(0) + assigned[i];
    let weight_sum: i64 = strategy.iter().map(|s| i64::from(s.weight.max(0))).sum();
    for _ in 0..count {
        let below_base = (0..n).find(|&i| held(i, &assigned) < strategy[i].base.max(0) as u32);
        let chosen = below_base.or_else(|| {
            // The item furthest below its ideal share once this task is placed:
            // deficit_i = (above_total + 1) * w_i / W - above_i, compared times W.
            let above = |i: usize| {
                i64::from(held(i, &assigned))
                    - i64::from(strategy[i].base.max(0)).min(i64::from(held(i, &assigned)))
            };
            let above_total: i64 = (0..n).map(above).sum();
            (0..n).filter(|&i| strategy[i].weight > 0).max_by(|&a, &b| {
                let deficit = |i: usize| {
                    (above_total + 1) * i64::from(strategy[i].weight) - above(i) * weight_sum
                };
                deficit(a).cmp(&deficit(b)).then(b.cmp(&a))
            })
        });
        match chosen {
            Some(i) => assigned[i] += 1,
            None => break,
        }
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(name: &str, base: i32, weight: i32) -> CapacityProviderStrategyItem {
        CapacityProviderStrategyItem {
            capacity_provider: name.to_owned(),
            base,
            weight,
        }
    }

    #[test]
    fn base_first_then_by_weight() {
        let strategy = [item(FARGATE, 2, 1), item(FARGATE_SPOT, 0, 3)];
        assert_eq!(split_by_strategy(&strategy, &[0, 0], 1), vec![1, 0]);
        assert_eq!(split_by_strategy(&strategy, &[0, 0], 2), vec![2, 0]);
        assert_eq!(split_by_strategy(&strategy, &[0, 0], 6), vec![3, 3]);
        assert_eq!(split_by_strategy(&strategy, &[0, 0], 10), vec![4, 6]);
        // Tasks already running count towards base and shares.
        assert_eq!(split_by_strategy(&strategy, &[2, 0], 4), vec![1, 3]);
        // Weight zero: base only.
        let strategy = [item(FARGATE, 1, 0), item(FARGATE_SPOT, 0, 1)];
        assert_eq!(split_by_strategy(&strategy, &[0, 0], 3), vec![1, 2]);
        assert_eq!(split_by_strategy(&[item(FARGATE, 2, 0)], &[0], 5), vec![2]);
    }

    fn strategies() -> impl Strategy<Value = Vec<CapacityProviderStrategyItem>> {
        (
            prop::collection::vec(0i32..=10, 1..=4),
            0usize..4,
            0i32..=20,
        )
            .prop_map(|(weights, base_at, base)| {
                weights
                    .iter()
                    .enumerate()
                    .map(|(i, w)| item(&format!("p{i}"), if i == base_at { base } else { 0 }, *w))
                    .collect()
            })
    }

    proptest! {
        /// The split places every task when some weight is positive, honours the base, gives
        /// zero-weight items nothing beyond base, and keeps the tasks above base within one
        /// task of the weight-proportional share.
        #[test]
        fn split_honours_base_and_weight(strategy in strategies(), count in 0u32..200) {
            let n = strategy.len();
            let split = split_by_strategy(&strategy, &vec![0; n], count);
            let total: u32 = split.iter().sum();
            let weight_sum: i64 = strategy.iter().map(|s| i64::from(s.weight)).sum();
            let base_sum: u32 = strategy.iter().map(|s| s.base as u32).sum();
            if weight_sum > 0 {
                prop_assert_eq!(total, count);
            } else {
                prop_assert_eq!(total, count.min(base_sum));
            }
            for (i, s) in strategy.iter().enumerate() {
                let base = s.base as u32;
                // Base is filled before anything else.
                prop_assert!(split[i] >= base.min(count));
                if s.weight == 0 {
                    prop_assert!(split[i] <= base);
                }
            }
            if weight_sum > 0 && count > base_sum {
                let above_total = f64::from(count - base_sum);
                for (i, s) in strategy.iter().enumerate() {
                    let above = f64::from(split[i] - (s.base as u32).min(split[i]));
                    let share = above_total * f64::from(s.weight) / weight_sum as f64;
                    prop_assert!((above - share).abs() < 1.0 + 1e-9,
                        "item {i}: {above} tasks above base, share {share}, split {split:?}");
                }
            }
        }

        /// Splitting in two launches gives what one launch gives (the split is incremental).
        #[test]
        fn split_is_incremental(strategy in strategies(), first in 0u32..50, second in 0u32..50) {
            let n = strategy.len();
            let a = split_by_strategy(&strategy, &vec![0; n], first);
            let b = split_by_strategy(&strategy, &a, second);
            let together = split_by_strategy(&strategy, &vec![0; n], first + second);
            let summed: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            prop_assert_eq!(summed, together);
        }
    }
}
