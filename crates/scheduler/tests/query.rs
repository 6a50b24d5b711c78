//! The cluster query language: the developer guide's examples and more, valid and not.

mod common;

use flotilla_model::Timestamp;
use flotilla_scheduler::Host;
use flotilla_scheduler::query::{EXPRESSION_LENGTH_MAX, matches_filter, parse};

/// One host with a bit of everything the language can ask about.
fn sample_host() -> Host {
    let mut host = common::host(0, 1024, 1024);
    for (name, value) in [
        ("ecs.instance-type", "t2.small"),
        ("ecs.availability-zone", "us-east-1a"),
        ("stack", "prod"),
        ("cores", "8"),
        ("team/owner", "payments_core"),
    ] {
        host = common::with_attribute(host, name, value);
    }
    host.attributes
        .insert("ecs.capability.secrets".to_owned(), None);
    host = common::with_group_tasks(host, "service:production", 1);
    host = common::with_group_tasks(host, "family:batch", 1);
    host.ec2_instance_id = "i-abcd1234".to_owned();
    host.agent_version = Some("1.51.0".to_owned());
    // 2018-06-18T10:00:00Z
    host.registered_at = Timestamp::from_millis(1_529_316_000_000);
    host
}

fn check(rows: &[(&str, bool)]) {
    let host = sample_host();
    for (expression, expected) in rows {
        let parsed = parse(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
        assert_eq!(parsed.matches(&host), *expected, "{expression}");
        assert_eq!(matches_filter(&parsed, &host), *expected, "{expression}");
    }
}

#[test]
fn the_developer_guide_examples() {
    check(&[
        ("attribute:ecs.instance-type == t2.small", true),
        (
            "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]",
            true,
        ),
        ("attribute:ecs.instance-type =~ g2.*", false),
        ("attribute:ecs.instance-type =~ t2.*", true),
        ("not(attribute:ecs.instance-type == t2.micro)", true),
        ("task:group == service:production", true),
        ("agentConnected == true and runningTasksCount > 1", true),
        ("registeredAt < 2018-06-18", false),
        ("registeredAt > 2018-06-18T22:28:28Z", false),
        ("ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']", true),
        ("attribute:stack exists", true),
        (
            "attribute:ecs.instance-type =~ t2.* and attribute:ecs.availability-zone != us-east-1d",
            true,
        ),
        ("not(task:group == database)", true),
    ]);
}

#[test]
fn word_and_symbol_operators_agree() {
    check(&[
        ("attribute:stack equals prod", true),
        ("attribute:stack not_equals prod", false),
        ("attribute:cores greater_than 4", true),
        ("attribute:cores greater_than_equal 8", true),
        ("attribute:cores less_than 8", false),
        ("attribute:cores less_than_equal 8", true),
        ("attribute:stack not_exists", false),
        ("attribute:stack !exists", false),
        ("attribute:stack not_in [prod, dev]", false),
        ("attribute:stack !in [qa, dev]", true),
        ("attribute:stack matches pr.d", true),
        ("attribute:stack not_matches pr.d", false),
        ("attribute:stack !~ 'qa|dev'", true),
        ("attribute:stack EQUALS prod AND attribute:cores > 4", true),
    ]);
}

#[test]
fn comparisons_by_subject() {
    check(&[
        // Numbers compare as numbers when both sides are numbers ("8" > "10" as strings).
        ("attribute:cores > 10", false),
        ("attribute:cores == 8.0", true),
        ("attribute:cores in [7, 8.0]", true),
        // Otherwise as strings.
        ("attribute:ecs.instance-type > t2.a", true),
        ("attribute:ecs.instance-type < t2.a", false),
        // Regular expressions match the whole value, as Java's matches does.
        ("attribute:ecs.instance-type =~ t2", false),
        ("attribute:ecs.instance-type =~ '(t2|t3)\\.small'", true),
        ("attribute:ecs.instance-type =~ (t2|t3)\\.small", true),
        ("attribute:ecs.instance-type =~ \"t[0-9]{1,2}\\..*\"", true),
        ("attribute:team/owner =~ payments_.*", true),
        // Versions compare part by part.
        ("agentVersion >= 1.9.0", true),
        ("agentVersion < 1.51.1", true),
        ("agentVersion == 1.51", true),
        ("agentConnected == TRUE", true),
        ("agentConnected != false", true),
        ("agentConnected =~ tr.*", true),
        ("runningTasksCount == 2", true),
        ("runningTasksCount in [1, 2, 3]", true),
        ("runningTasksCount <= 1", false),
        ("registeredAt < 2018-06-19", true),
        ("registeredAt >= 2018-06-18T10:00:00Z", true),
        ("registeredAt > 2018-06-18T09:59:59", true),
        ("registeredAt == 2018-06-18T12:00:00+02:00", true),
        ("registeredAt =~ 2018-06-18T.*", true),
        ("ec2InstanceId == i-abcd1234", true),
        ("ec2InstanceId =~ i-[0-9a-f]{8}", true),
        // task:group holds when some group on the host passes; its negations hold when none does.
        ("task:group == service:other", false),
        ("task:group =~ service:prod.*", true),
        ("task:group in [family:batch, service:x]", true),
        ("task:group != service:production", false),
        ("task:group !in [service:x, service:y]", true),
        ("task:group exists", true),
        // An attribute without a value exists and equals the empty string.
        ("attribute:ecs.capability.secrets exists", true),
        ("attribute:ecs.capability.secrets == ''", true),
    ]);
}

#[test]
fn a_missing_subject_satisfies_only_the_negative_operators() {
    check(&[
        ("attribute:missing exists", false),
        ("attribute:missing == x", false),
        ("attribute:missing > 1", false),
        ("attribute:missing < 1", false),
        ("attribute:missing in [x]", false),
        ("attribute:missing =~ .*", false),
        ("attribute:missing !exists", true),
        ("attribute:missing != x", true),
        ("attribute:missing !in [x]", true),
        ("attribute:missing !~ .*", true),
    ]);
    let mut host = sample_host();
    host.agent_version = None;
    host.task_groups.clear();
    for (expression, expected) in [
        ("agentVersion exists", false),
        ("agentVersion != 1.0", true),
        ("task:group == service:production", false),
        ("task:group != service:production", true),
        ("task:group !exists", true),
    ] {
        assert_eq!(
            parse(expression).unwrap().matches(&host),
            expected,
            "{expression}"
        );
    }
}

#[test]
fn compound_expressions_precedence_and_whitespace() {
    check(&[
        (
            "((attribute:stack == prod) and (not attribute:stack == dev))",
            true,
        ),
        ("(((attribute:stack == prod)))", true),
        ("attribute:stack=='prod'", true),
        ("attribute:stack==prod&&attribute:cores>4", true),
        ("  attribute:stack \t==\n prod  ", true),
        // `and` binds tighter than `or`.
        (
            "attribute:stack == prod or attribute:x == y and attribute:z == w",
            true,
        ),
        (
            "attribute:stack == dev and attribute:x == y or attribute:cores == 8",
            true,
        ),
        (
            "attribute:stack == dev and (attribute:x == y or attribute:cores == 8)",
            false,
        ),
        (
            "(attribute:stack == dev || attribute:stack == prod) && runningTasksCount == 2",
            true,
        ),
        ("!attribute:stack == dev", true),
        ("! (attribute:stack == prod)", false),
        ("not not attribute:stack == prod", true),
        ("attribute:stack in ( prod , dev )", true),
        ("attribute:stack in ['prod','dev']", true),
    ]);
}

#[test]
fn malformed_expressions_name_the_position() {
    let rows = [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("attribute:stack ==", 18, "expected a value"),
        ("colour == red", 0, "unknown subject 'colour'"),
        ("attribute: == x", 0, "unknown subject"),
        ("attribute:stack === x", 16, "unknown operator '==='"),
        ("attribute:stack is x", 16, "unknown operator 'is'"),
        ("attribute:stack", 15, "expected an operator"),
        (
            "(attribute:stack == x",
            21,
            "expected ')' to close the '(' at position 0",
        ),
        ("attribute:stack == x)", 20, "')' has no matching '('"),
        ("attribute:stack =~ '('", 19, "invalid regular expression"),
        (
            "attribute:stack =~ a(?=b)",
            19,
            "invalid regular expression",
        ),
        ("attribute:a in [x, y", 20, "expected ',' or ']'"),
        ("attribute:a in x", 15, "expected a list"),
        ("attribute:a in []", 16, "expected a value"),
        ("attribute:a in [x,]", 18, "expected a value"),
        ("attribute:a == b c", 17, "unexpected 'c'"),
        ("attribute:a == b andx", 17, "unexpected 'andx'"),
        ("attribute:a == b and", 20, "expected a subject"),
        ("not", 3, "expected a subject"),
        ("runningTasksCount > many", 20, "whole number"),
        ("registeredAt < yesterday", 15, "date"),
        ("agentConnected == maybe", 18, "true or false"),
        ("attribute:a == 'open", 15, "never closed"),
        ("== x", 0, "expected a subject"),
    ];
    for (expression, position, fragment) in rows {
        let error = parse(expression).expect_err(expression);
        assert_eq!(error.position, position, "{expression}: {error}");
        assert!(error.message.contains(fragment), "{expression}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("Invalid expression at position {position}: ")),
            "{error}"
        );
    }
}

#[test]
fn hostile_input_is_bounded() {
    let deep = format!("{}attribute:a exists{}", "(".repeat(100), ")".repeat(100));
    assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    let nots = format!("{}attribute:a exists", "! ".repeat(100));
    assert!(parse(&nots).is_err());
    let long = format!("attribute:a in [{}]", "x,".repeat(EXPRESSION_LENGTH_MAX));
    assert_eq!(parse(&long).unwrap_err().position, EXPRESSION_LENGTH_MAX);
    // Depth within the limit is fine.
    let nested = format!("{}attribute:stack exists{}", "(".repeat(30), ")".repeat(30));
    assert!(parse(&nested).unwrap().matches(&sample_host()));
}

#[test]
fn positions_are_byte_offsets() {
    // 'é' takes two bytes, so the stray `??` starts at byte 20, character 19.
    let error = parse("attribute:a == 'é' ?? x").unwrap_err();
    assert_eq!(error.position, 20, "{error}");
}

#[test]
fn expressions_display_as_written() {
    let text = "attribute:stack == prod  and runningTasksCount < 3";
    assert_eq!(parse(text).unwrap().to_string(), text);
}
