//! Lifecycle policies, ECR's rules for expiring images: parsing with ECR's validation, and
//! the pure evaluation `expired(policy, images, now)`.
//!
//! Rules are applied in `rulePriority` order, lowest first. Each image is looked at by the
//! first rule whose selection (`tagStatus`, `tagPrefixList`, `tagPatternList`) matches it and
//! by no later rule, whether that first rule expires it or keeps it. `imageCountMoreThan N`
//! keeps the N most recently pushed images the rule selects and expires the others;
//! `sinceImagePushed N days` expires those pushed more than N days ago.

use serde::Deserialize;

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq)]
pub struct LifecyclePolicy {
    /// Sorted by priority, lowest first.
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub priority: i64,
    pub tag_status: TagStatus,
    pub tag_prefixes: Vec<String>,
    pub tag_patterns: Vec<String>,
    pub count: Count,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagStatus {
    Tagged,
    Untagged,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    ImageCountMoreThan(u64),
    SinceImagePushedDays(u64),
}

/// What the evaluation needs to know of an image.
#[derive(Clone, Debug)]
pub struct ImageFacts {
    pub digest: String,
    pub tags: Vec<String>,
    pub pushed_at_ms: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    rule_priority: i64,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    selection: RawSelection,
    action: RawAction,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelection {
    tag_status: String,
    #[serde(default)]
    tag_prefix_list: Vec<String>,
    #[serde(default)]
    tag_pattern_list: Vec<String>,
    count_type: String,
    #[serde(default)]
    count_unit: Option<String>,
    count_number: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(rename = "type")]
    kind: String,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Parses and validates a policy text; the error says what is wrong.
pub fn parse(text: &str) -> Result<LifecyclePolicy, String> {
    let raw: RawPolicy =
        serde_json::from_str(text).map_err(|e| format!("Invalid lifecycle policy JSON: {e}"))?;
    if raw.rules.is_empty() {
        return Err("A lifecycle policy needs at least one rule.".into());
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    for rule in raw.rules {
        let priority = rule.rule_priority;
        let context = |m: &str| format!("Rule with rulePriority {priority}: {m}");
        if priority < 1 {
            return Err(context("rulePriority must be a positive integer."));
        }
        if rule.action.kind != "expire" {
            return Err(context("action.type must be 'expire'."));
        }
        let selection = rule.selection;
        let tag_status = match selection.tag_status.as_str() {
            "tagged" => TagStatus::Tagged,
            "untagged" => TagStatus::Untagged,
            "any" => TagStatus::Any,
            _ => return Err(context("tagStatus must be one of tagged, untagged, any.")),
        };
        if tag_status == TagStatus::Tagged
            && selection.tag_prefix_list.is_empty()
            && selection.tag_pattern_list.is_empty()
        {
            return Err(context(
                "tagPrefixList or tagPatternList is required when tagStatus is 'tagged'.",
            ));
        }
        if tag_status != TagStatus::Tagged
            && (!selection.tag_prefix_list.is_empty() || !selection.tag_pattern_list.is_empty())
        {
            return Err(context(
                "tagPrefixList and tagPatternList are only allowed when tagStatus is 'tagged'.",
            ));
        }
        if selection.count_number < 1 {
            return Err(context("countNumber must be a positive integer."));
        }
        let number = selection.count_number as u64;
        let count = match (
            selection.count_type.as_str(),
            selection.count_unit.as_deref(),
        ) {
            ("imageCountMoreThan", None) => Count::ImageCountMoreThan(number),
            ("imageCountMoreThan", Some(_)) => {
                return Err(context("countUnit is not allowed with imageCountMoreThan."));
            }
            ("sinceImagePushed", Some("days")) => Count::SinceImagePushedDays(number),
            ("sinceImagePushed", _) => {
                return Err(context("countUnit must be 'days' with sinceImagePushed."));
            }
            _ => {
                return Err(context(
                    "countType must be imageCountMoreThan or sinceImagePushed.",
                ));
            }
        };
        rules.push(Rule {
            priority,
            tag_status,
            tag_prefixes: selection.tag_prefix_list,
            tag_patterns: selection.tag_pattern_list,
            count,
        });
    }
    rules.sort_by_key(|r| r.priority);
    if rules.windows(2).any(|w| w[0].priority == w[1].priority) {
        return Err("Every rule needs a distinct rulePriority.".into());
    }
    if let Some(index) = rules.iter().position(|r| r.tag_status == TagStatus::Any)
        && index + 1 != rules.len()
    {
        return Err("A rule with tagStatus 'any' must have the highest rulePriority.".into());
    }
    Ok(LifecyclePolicy { rules })
}

/// `*` matches any run of characters; everything else is literal.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    let first = pieces[0];
    let Some(after) = rest.strip_prefix(first) else {
        return false;
    };
    rest = after;
    let last = pieces[pieces.len() - 1];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Rule {
    fn selects(&self, image: &ImageFacts) -> bool {
        match self.tag_status {
            TagStatus::Any => true,
            TagStatus::Untagged => image.tags.is_empty(),
            TagStatus::Tagged => {
                !image.tags.is_empty()
                    && self
                        .tag_prefixes
                        .iter()
                        .all(|p| image.tags.iter().any(|t| t.starts_with(p.as_str())))
                    && self
                        .tag_patterns
                        .iter()
                        .all(|p| image.tags.iter().any(|t| wildcard_match(p, t)))
            }
        }
    }
}

/// The digests the policy expires among `images` at `now_ms`, sorted.
pub fn expired(policy: &LifecyclePolicy, images: &[ImageFacts], now_ms: i64) -> Vec<String> {
    let mut claimed = vec![false; images.len()];
    let mut expire = Vec::new();
    for rule in &policy.rules {
        let mut selected: Vec<usize> = (0..images.len())
            .filter(|&i| !claimed[i] && rule.selects(&images[i]))
            .collect();
        for &i in &selected {
            claimed[i] = true;
        }
        match rule.count {
            Count::ImageCountMoreThan(keep) => {
                // Newest first; ties broken by digest so the result is deterministic.
                selected.sort_by(|&a, &b| {
                    images[b]
                        .pushed_at_ms
                        .cmp(&images[a].pushed_at_ms)
                        .then_with(|| images[a].digest.cmp(&images[b].digest))
                });
                expire.extend(
                    selected
                        .iter()
                        .skip(keep as usize)
                        .map(|&i| images[i].digest.clone()),
                );
            }
            Count::SinceImagePushedDays(days) => {
                let cutoff = now_ms.saturating_sub(days as i64 * DAY_MS);
                expire.extend(
                    selected
                        .iter()
                        .filter(|&&i| images[i].pushed_at_ms < cutoff)
                        .map(|&i| images[i].digest.clone()),
                );
            }
        }
    }
    expire.sort();
    expire.dedup();
    expire
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(digest: &str, tags: &[&str], pushed_at_ms: i64) -> ImageFacts {
        ImageFacts {
            digest: digest.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed_at_ms,
        }
    }

    fn check(policy: &str, images: &[ImageFacts], now_ms: i64, want: &[&str]) {
        let policy = parse(policy).unwrap();
        assert_eq!(expired(&policy, images, now_ms), want);
    }

    #[test]
    fn count_keeps_the_newest() {
        let images = [
            image("a", &["v1"], 1),
            image("b", &["v2"], 2),
            image("c", &["v3"], 3),
            image("d", &[], 4),
        ];
        check(
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#,
            &images,
            10,
            &["a", "b"],
        );
        check(
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            &images,
            10,
            &[],
        );
    }

    #[test]
    fn prefixes_patterns_and_age() {
        let day = DAY_MS;
        let images = [
            image("old-prod", &["prod-1"], 0),
            image("new-prod", &["prod-2"], 9 * day),
            image("old-dev", &["dev-1"], 0),
            image("old-untagged", &[], day),
        ];
        let policy = r#"{"rules":[
            {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"sinceImagePushed","countUnit":"days","countNumber":5},"action":{"type":"expire"}},
            {"rulePriority":2,"selection":{"tagStatus":"tagged","tagPatternList":["d*-*"],"countType":"imageCountMoreThan","countNumber":5},"action":{"type":"expire"}},
            {"rulePriority":3,"selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}}]}"#;
        check(policy, &images, 10 * day, &["old-prod", "old-untagged"]);
    }

    #[test]
    fn an_image_is_claimed_by_its_first_matching_rule() {
        // Rule 1 keeps the only prod image; rule 2 never sees it, so it keeps `y` and expires `x`.
        let images = [
            image("p", &["prod"], 1),
            image("x", &["x"], 2),
            image("y", &[], 3),
        ];
        check(
            r#"{"rules":[
            {"rulePriority":1,"selection":{"tagStatus":"tagged","tagPrefixList":["prod"],"countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
            {"rulePriority":2,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            &images,
            10,
            &["x"],
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        for text in [
            "not json",
            r#"{"rules":[]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countNumber":1},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":0},"action":{"type":"expire"}}]}"#,
            r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"delete"}}]}"#,
            r#"{"rules":[
              {"rulePriority":1,"selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}},
              {"rulePriority":2,"selection":{"tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1},"action":{"type":"expire"}}]}"#,
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("prod*", "prod-1"));
        assert!(wildcard_match("*-1", "prod-1"));
        assert!(wildcard_match("p*d*1", "prod-1"));
        assert!(!wildcard_match("p*x", "prod-1"));
        assert!(wildcard_match("prod", "prod"));
        assert!(!wildcard_match("a*a", "a"));
    }

    proptest! {
        #[test]
        fn count_rule_keeps_exactly_n(n in 1u64..6, pushes in proptest::collection::vec(0i64..100, 0..12)) {
            let images: Vec<ImageFacts> = pushes
                .iter()
                .enumerate()
                .map(|(i, &t)| image(&format!("d{i:02}"), &[], t))
                .collect();
            let policy = parse(&format!(
                r#"{{"rules":[{{"rulePriority":1,"selection":{{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":{n}}},"action":{{"type":"expire"}}}}]}}"#
            )).unwrap();
            let gone = expired(&policy, &images, 0);
            prop_assert_eq!(gone.len(), images.len().saturating_sub(n as usize));
            // Nothing kept is older than anything expired.
            let kept_min = images.iter().filter(|i| !gone.contains(&i.digest)).map(|i| i.pushed_at_ms).min();
            let gone_max = images.iter().filter(|i| gone.contains(&i.digest)).map(|i| i.pushed_at_ms).max();
            if let (Some(k), Some(g)) = (kept_min, gone_max) {
                prop_assert!(k >= g);
            }
        }
    }
}
