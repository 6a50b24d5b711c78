//! The cluster query language of `memberOf` constraints and `ListContainerInstances --filter`:
//! `subject operator [argument]`, joined by `and`/`or`/`not` and parentheses.
//!
//! ```text
//! expression := any
//! any        := all (("||" | "or") all)*            -- `and` binds tighter than `or`
//! all        := unary (("&&" | "and") unary)*
//! unary      := ("!" | "not") unary | "(" any ")" | comparison
//! comparison := subject operator [argument]
//! argument   := value | list                        -- a list only after in / not_in
//! list       := "[" value ("," value)* "]" | "(" value ("," value)* ")"
//! value      := 'quoted' | "quoted" | bare          -- bare runs to whitespace , ] ) && ||
//! ```
//!
//! Arguments are checked and converted when parsed (numbers, dates, regular expressions), so
//! evaluating an expression against a host neither allocates nor fails in the common cases.
//! A negative operator (`!=`, `!in`, `!~`, `!exists`) is exactly the negation of its positive
//! form, which is why a host without the subject satisfies the negative ones and no others.

use std::cmp::Ordering;
use std::fmt;

use crate::Host;

/// ECS's limit on a constraint expression; longer input is rejected before parsing.
pub const EXPRESSION_LENGTH_MAX: usize = 2000;
/// Deepest nesting of `not` and parentheses, so hostile input cannot exhaust the stack.
const NESTING_DEPTH_MAX: usize = 64;
/// Compiled size of one regular expression, so a pattern cannot claim unbounded memory.
const REGEX_SIZE_MAX_BYTES: usize = 1 << 20;

const SUBJECTS_ACCEPTED: &str = "attribute:NAME, agentConnected, agentVersion, ec2InstanceId, \
     registeredAt, runningTasksCount or task:group";
const OPERATORS_ACCEPTED: &str = "==, !=, >, >=, <, <=, exists, !exists, in, !in, =~, !~ \
     (or equals, not_equals, greater_than, greater_than_equal, less_than, less_than_equal, \
     not_exists, not_in, matches, not_matches)";

/// A malformed expression, with the byte offset (0-based) where the problem starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Invalid expression at position {position}: {message}")]
pub struct QueryError {
    pub position: usize,
    pub message: String,
}

fn fail<T>(position: usize, message: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError {
        position,
        message: message.into(),
    })
}

/// A parsed expression, ready to test hosts with [`Expression::matches`]. Displays as the
/// text it was parsed from.
#[derive(Clone, Debug)]
pub struct Expression {
    source: String,
    root: Node,
}

#[derive(Clone, Debug)]
enum Node {
    Compare(Comparison),
    Not(Box<Node>),
    All(Vec<Node>),
    Any(Vec<Node>),
}

#[derive(Clone, Debug)]
struct Comparison {
    subject: Subject,
    test: Test,
    /// `!=`, `!in`, `!~`, `!exists`: the negation of `test`.
    negated: bool,
    argument: Argument,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    AgentConnected,
    AgentVersion,
    Attribute(String),
    Ec2InstanceId,
    RegisteredAt,
    RunningTasksCount,
    TaskGroup,
}

/// The positive form of an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Equals,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Exists,
    In,
    Matches,
}

#[derive(Clone, Debug)]
enum Argument {
    None,
    One(Operand),
    List(Vec<Operand>),
    Pattern(regex::Regex),
}

/// An argument converted for its subject when parsed.
#[derive(Clone, Debug)]
enum Operand {
    /// Compared numerically when both sides are decimal numbers, else as strings.
    Text {
        text: String,
        number: Option<f64>,
    },
    /// Compared as dotted versions (`1.10.0` > `1.9.2`).
    Version(String),
    Bool(bool),
    Count(i64),
    Millis(i64),
}

/// One host's value for a subject.
enum Value<'a> {
    Missing,
    Text(&'a str),
    Version(&'a str),
    Bool(bool),
    Count(i64),
    Millis(i64),
}

/// Parses `expression`; errors name the byte offset of the problem and what was expected.
pub fn parse(expression: &str) -> Result<Expression, QueryError> {
    if expression.len() > EXPRESSION_LENGTH_MAX {
        return fail(
            EXPRESSION_LENGTH_MAX,
            format!("the expression is longer than {EXPRESSION_LENGTH_MAX} characters"),
        );
    }
    let mut parser = Parser {
        text: expression,
        at: 0,
        depth: 0,
    };
    parser.skip_whitespace();
    if parser.at == expression.len() {
        return fail(0, "the expression is empty");
    }
    let root = parser.any()?;
    parser.skip_whitespace();
    if let Some(c) = parser.peek_char() {
        let message = if c == ')' {
            "unbalanced parenthesis: ')' has no matching '('".to_owned()
        } else {
            format!(
                "unexpected '{}' after a complete expression; expected and, or, && or ||",
                parser.next_token()
            )
        };
        return fail(parser.at, message);
    }
    Ok(Expression {
        source: expression.to_owned(),
        root,
    })
}

/// Whether `host` satisfies `expression`; the form `ListContainerInstances --filter` calls.
pub fn matches_filter(expression: &Expression, host: &Host) -> bool {
    expression.matches(host)
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Expression {
    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `host` satisfies the expression.
    pub fn matches(&self, host: &Host) -> bool {
        self.root.holds(host, None)
    }

    /// Like [`Self::matches`], counting `placed_tasks` more tasks of `group` on the host
    /// (tasks placed earlier in the same call) in `task:group` and `runningTasksCount`.
    pub(crate) fn matches_with_placed(&self, host: &Host, group: &str, placed_tasks: u32) -> bool {
        self.root.holds(host, Some((group, placed_tasks)))
    }

    /// Whether the answer can change as tasks are placed (`task:group`, `runningTasksCount`).
    pub(crate) fn depends_on_tasks(&self) -> bool {
        self.root.depends_on_tasks()
    }
}

impl Node {
    fn holds(&self, host: &Host, placed: Option<(&str, u32)>) -> bool {
        match self {
            Self::Compare(comparison) => comparison.holds(host, placed),
            Self::Not(inner) => !inner.holds(host, placed),
            Self::All(nodes) => nodes.iter().all(|n| n.holds(host, placed)),
            Self::Any(nodes) => nodes.iter().any(|n| n.holds(host, placed)),
        }
    }

    fn depends_on_tasks(&self) -> bool {
        match self {
            Self::Compare(c) => {
                matches!(c.subject, Subject::TaskGroup | Subject::RunningTasksCount)
            }
            Self::Not(inner) => inner.depends_on_tasks(),
            Self::All(nodes) | Self::Any(nodes) => nodes.iter().any(Node::depends_on_tasks),
        }
    }
}

impl Comparison {
    fn holds(&self, host: &Host, placed: Option<(&str, u32)>) -> bool {
        let positive = match &self.subject {
            Subject::TaskGroup => {
                // True when at least one group with a task on the host passes the test.
                let (placed_group, placed_tasks) = placed.unwrap_or(("", 0));
                // The group being placed may be new to the host.
                let new_group_passes = placed_tasks > 0
                    && !host.task_groups.contains_key(placed_group)
                    && self.test_value(&Value::Text(placed_group));
                new_group_passes
                    || host.task_groups.iter().any(|(group, tasks)| {
                        let extra = if group == placed_group {
                            placed_tasks
                        } else {
                            0
                        };
                        *tasks + extra > 0 && self.test_value(&Value::Text(group))
                    })
            }
            subject => self.test_value(&subject_value(subject, host, placed)),
        };
        positive != self.negated
    }

    fn test_value(&self, value: &Value) -> bool {
        if matches!(value, Value::Missing) {
            return false;
        }
        let single = |accept: fn(Ordering) -> bool| match &self.argument {
            Argument::One(operand) => order(value, operand).is_some_and(accept),
            _ => false,
        };
        match self.test {
            Test::Exists => true,
            Test::Equals => single(Ordering::is_eq),
            Test::Greater => single(Ordering::is_gt),
            Test::GreaterOrEqual => single(Ordering::is_ge),
            Test::Less => single(Ordering::is_lt),
            Test::LessOrEqual => single(Ordering::is_le),
            Test::In => match &self.argument {
                Argument::List(operands) => operands
                    .iter()
                    .any(|operand| order(value, operand) == Some(Ordering::Equal)),
                _ => false,
            },
            Test::Matches => match &self.argument {
                Argument::Pattern(pattern) => match value {
                    Value::Text(text) | Value::Version(text) => pattern.is_match(text),
                    Value::Bool(b) => pattern.is_match(if *b { "true" } else { "false" }),
                    Value::Count(n) => pattern.is_match(&n.to_string()),
                    Value::Millis(ms) => {
                        pattern.is_match(&flotilla_model::Timestamp(*ms).to_rfc3339())
                    }
                    Value::Missing => false,
                },
                _ => false,
            },
        }
    }
}

fn subject_value<'h>(subject: &Subject, host: &'h Host, placed: Option<(&str, u32)>) -> Value<'h> {
    match subject {
        Subject::AgentConnected => Value::Bool(host.agent_connected),
        Subject::AgentVersion => host
            .agent_version
            .as_deref()
            .map_or(Value::Missing, Value::Version),
        Subject::Attribute(name) => match crate::lookup(&host.attributes, name) {
            Some(value) => Value::Text(value.as_deref().unwrap_or_default()),
            None => Value::Missing,
        },
        Subject::Ec2InstanceId if host.ec2_instance_id.is_empty() => Value::Missing,
        Subject::Ec2InstanceId => Value::Text(&host.ec2_instance_id),
        Subject::RegisteredAt => Value::Millis(host.registered_at.millis()),
        Subject::RunningTasksCount => {
            // Tasks placed earlier in the same call count as running, so a cap such as
            // `runningTasksCount < 10` holds for the whole call.
            let placed_tasks = placed.map_or(0, |(_, n)| n);
            Value::Count(i64::from(host.running_tasks_count) + i64::from(placed_tasks))
        }
        Subject::TaskGroup => Value::Missing,
    }
}

/// How a host's value compares with an operand; `None` when they are not comparable.
fn order(value: &Value, operand: &Operand) -> Option<Ordering> {
    match (value, operand) {
        (
            Value::Text(text),
            Operand::Text {
                text: wanted,
                number,
            },
        ) => match (number, decimal(text)) {
            (Some(wanted_number), Some(number)) => number.partial_cmp(wanted_number),
            _ => Some(text.cmp(&wanted.as_str())),
        },
        (Value::Version(version), Operand::Version(wanted)) => {
            Some(compare_versions(version, wanted))
        }
        (Value::Bool(b), Operand::Bool(wanted)) => Some(b.cmp(wanted)),
        (Value::Count(n), Operand::Count(wanted)) => Some(n.cmp(wanted)),
        (Value::Millis(ms), Operand::Millis(wanted)) => Some(ms.cmp(wanted)),
        _ => None,
    }
}

/// A plain decimal number (`42`, `-1.5`); not `inf`, `NaN` or `1e3`, which Rust's float
/// parser would accept but which are ordinary strings in attribute values.
fn decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || digits.ends_with('.') {
        return None;
    }
    text.parse().ok()
}

/// Compares dotted versions part by part: numerically where both parts start with digits,
/// then by what follows; a missing part counts as `0` (`1.2` == `1.2.0`).
fn compare_versions(left: &str, right: &str) -> Ordering {
    let trim = |v: &str| v.trim().trim_start_matches(['v', 'V']).to_owned();
    let (left, right) = (trim(left), trim(right));
    let mut left_parts = left.split('.');
    let mut right_parts = right.split('.');
    loop {
        let (l, r) = match (left_parts.next(), right_parts.next()) {
            (None, None) => return Ordering::Equal,
            (l, r) => (l.unwrap_or("0"), r.unwrap_or("0")),
        };
        let split = |part: &str| {
            let digits_end = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            let number = part[..digits_end].parse::<u64>().unwrap_or(0);
            (number, part[digits_end..].to_owned())
        };
        match split(l).cmp(&split(r)) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
    }
}

/// Dates as the language accepts them: `2018-06-18`, `2018-06-18T22:28:28` (UTC) or any
/// RFC 3339 time, in milliseconds since the epoch.
fn date_millis(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let millis = |at: time::OffsetDateTime| (at.unix_timestamp_nanos() / 1_000_000) as i64;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some(millis(at));
    }
    let local = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    if let Ok(at) = time::PrimitiveDateTime::parse(text, local) {
        return Some(millis(at.assume_utc()));
    }
    let day = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, day)
        .ok()
        .map(|d| millis(d.midnight().assume_utc()))
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next unread character.
    at: usize,
    depth: usize,
}

fn is_subject_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.' | b':')
}

fn is_operator_byte(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'<' | b'>' | b'~')
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_whitespace(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// The next run of non-space characters, for error messages.
    fn next_token(&self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        &rest[..end]
    }

    /// Consumes `symbol` if it comes next.
    fn eat(&mut self, symbol: &str) -> bool {
        if self.rest().starts_with(symbol) {
            self.at += symbol.len();
            true
        } else {
            false
        }
    }

    /// Consumes `keyword` (any case) if it comes next as a whole word.
    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let rest = self.rest().as_bytes();
        let whole_word = rest.len() >= keyword.len()
            && rest[..keyword.len()].eq_ignore_ascii_case(keyword.as_bytes())
            && rest.get(keyword.len()).is_none_or(|b| !is_subject_byte(*b));
        if whole_word {
            self.at += keyword.len();
        }
        whole_word
    }

    fn any(&mut self) -> Result<Node, QueryError> {
        let mut nodes = vec![self.all()?];
        loop {
            self.skip_whitespace();
            if !(self.eat("||") || self.eat_keyword("or")) {
                break;
            }
            nodes.push(self.all()?);
        }
        Ok(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Node::Any(nodes)
        })
    }

    fn all(&mut self) -> Result<Node, QueryError> {
        let mut nodes = vec![self.unary()?];
        loop {
            self.skip_whitespace();
            if !(self.eat("&&") || self.eat_keyword("and")) {
                break;
            }
            nodes.push(self.unary()?);
        }
        Ok(if nodes.len() == 1 {
            nodes.remove(0)
        } else {
            Node::All(nodes)
        })
    }

    fn unary(&mut self) -> Result<Node, QueryError> {
        self.skip_whitespace();
        self.depth += 1;
        if self.depth > NESTING_DEPTH_MAX {
            return fail(
                self.at,
                format!("nested deeper than {NESTING_DEPTH_MAX} levels"),
            );
        }
        let node = if self.eat("!") || self.eat_keyword("not") {
            Node::Not(Box::new(self.unary()?))
        } else if self.peek() == Some(b'(') {
            let open_at = self.at;
            self.at += 1;
            let inner = self.any()?;
            self.skip_whitespace();
            if !self.eat(")") {
                return fail(
                    self.at,
                    format!("expected ')' to close the '(' at position {open_at}"),
                );
            }
            inner
        } else {
            Node::Compare(self.comparison()?)
        };
        self.depth -= 1;
        Ok(node)
    }

    fn comparison(&mut self) -> Result<Comparison, QueryError> {
        let subject_at = self.at;
        let length = self
            .rest()
            .bytes()
            .take_while(|b| is_subject_byte(*b))
            .count();
        let word = &self.rest()[..length];
        let subject = match word.to_ascii_lowercase().as_str() {
            "" => {
                return fail(
                    subject_at,
                    format!("expected a subject: {SUBJECTS_ACCEPTED}"),
                );
            }
            "agentconnected" => Subject::AgentConnected,
            "agentversion" => Subject::AgentVersion,
            "ec2instanceid" => Subject::Ec2InstanceId,
            "registeredat" => Subject::RegisteredAt,
            "runningtaskscount" => Subject::RunningTasksCount,
            "task:group" => Subject::TaskGroup,
            lower if lower.starts_with("attribute:") && length > "attribute:".len() => {
                let name = &word["attribute:".len()..];
                if name.contains(':') {
                    return fail(
                        subject_at,
                        format!(
                            "attribute name '{name}' may hold only letters, digits, '-', '_', '/' and '.'"
                        ),
                    );
                }
                Subject::Attribute(name.to_owned())
            }
            _ => {
                return fail(
                    subject_at,
                    format!("unknown subject '{word}'; expected {SUBJECTS_ACCEPTED}"),
                );
            }
        };
        self.at += length;
        let (test, negated) = self.operator(word)?;
        let argument = match test {
            Test::Exists => Argument::None,
            Test::In => Argument::List(self.list(&subject)?),
            Test::Matches => {
                let (pattern, at) = self.value()?;
                Argument::Pattern(compile_pattern(&pattern, at)?)
            }
            _ => {
                let (text, at) = self.value()?;
                Argument::One(operand(&subject, text, at)?)
            }
        };
        Ok(Comparison {
            subject,
            test,
            negated,
            argument,
        })
    }

    fn operator(&mut self, subject: &str) -> Result<(Test, bool), QueryError> {
        self.skip_whitespace();
        let at = self.at;
        let mut length = self
            .rest()
            .bytes()
            .take_while(|b| is_operator_byte(*b))
            .count();
        if length == 0 {
            length = self
                .rest()
                .bytes()
                .take_while(|b| b.is_ascii_alphabetic() || *b == b'_')
                .count();
        } else if &self.rest()[..length] == "!" {
            // `!exists` and `!in` are written without a space.
            length += self.rest()[1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphabetic())
                .count();
        }
        let word = &self.rest()[..length];
        let operator = match word.to_ascii_lowercase().as_str() {
            "==" | "equals" => (Test::Equals, false),
            "!=" | "not_equals" => (Test::Equals, true),
            ">" | "greater_than" => (Test::Greater, false),
            ">=" | "greater_than_equal" => (Test::GreaterOrEqual, false),
            "<" | "less_than" => (Test::Less, false),
            "<=" | "less_than_equal" => (Test::LessOrEqual, false),
            "exists" => (Test::Exists, false),
            "!exists" | "not_exists" => (Test::Exists, true),
            "in" => (Test::In, false),
            "!in" | "not_in" => (Test::In, true),
            "=~" | "matches" => (Test::Matches, false),
            "!~" | "not_matches" => (Test::Matches, true),
            "" => {
                return fail(
                    at,
                    format!("expected an operator after '{subject}': {OPERATORS_ACCEPTED}"),
                );
            }
            _ => {
                return fail(
                    at,
                    format!("unknown operator '{word}'; expected {OPERATORS_ACCEPTED}"),
                );
            }
        };
        self.at += length;
        Ok(operator)
    }

    /// A quoted or bare value, and the byte offset where it starts.
    fn value(&mut self) -> Result<(String, usize), QueryError> {
        self.skip_whitespace();
        let at = self.at;
        match self.peek() {
            None => fail(at, "expected a value, found the end of the expression"),
            Some(quote @ (b'\'' | b'"')) => {
                let body = &self.rest()[1..];
                match body.find(quote as char) {
                    Some(end) => {
                        self.at += end + 2;
                        Ok((body[..end].to_owned(), at))
                    }
                    None => fail(at, format!("the quote {} is never closed", quote as char)),
                }
            }
            Some(_) => {
                let length = bare_value_length(self.rest());
                if length == 0 {
                    return fail(
                        at,
                        format!("expected a value, found '{}'", self.next_token()),
                    );
                }
                self.at += length;
                Ok((self.text[at..at + length].to_owned(), at))
            }
        }
    }

    fn list(&mut self, subject: &Subject) -> Result<Vec<Operand>, QueryError> {
        self.skip_whitespace();
        let close = match self.peek() {
            Some(b'[') => ']',
            Some(b'(') => ')',
            _ => return fail(self.at, "expected a list such as [a, b] or (a, b)"),
        };
        self.at += 1;
        let mut operands = Vec::new();
        loop {
            let (text, at) = self.value()?;
            operands.push(operand(subject, text, at)?);
            self.skip_whitespace();
            if self.eat(",") {
                continue;
            }
            if self.peek() == Some(close as u8) {
                self.at += 1;
                return Ok(operands);
            }
            return fail(
                self.at,
                format!("expected ',' or '{close}' to end the list"),
            );
        }
    }
}

/// Length of a bare value at the start of `rest`: up to whitespace, `,`, `]`, `)`, `&&` or
/// `||`, except inside balanced brackets so `(a|b).*` and `[0-9]{1,2}` stay whole.
fn bare_value_length(rest: &str) -> usize {
    let mut depth = 0usize;
    for (at, c) in rest.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth > 0 => depth -= 1,
            ')' | ']' | ',' if depth == 0 => return at,
            c if c.is_whitespace() && depth == 0 => return at,
            '&' | '|' if depth == 0 && rest[at + 1..].starts_with(c) => return at,
            _ => {}
        }
    }
    rest.len()
}

/// Converts an argument for its subject, rejecting values that could never compare.
fn operand(subject: &Subject, text: String, at: usize) -> Result<Operand, QueryError> {
    match subject {
        Subject::AgentConnected => match text.to_ascii_lowercase().as_str() {
            "true" => Ok(Operand::Bool(true)),
            "false" => Ok(Operand::Bool(false)),
            _ => fail(
                at,
                format!("agentConnected compares with true or false, not '{text}'"),
            ),
        },
        Subject::RunningTasksCount => match text.parse::<i64>() {
            Ok(count) => Ok(Operand::Count(count)),
            Err(_) => fail(
                at,
                format!("runningTasksCount compares with a whole number, not '{text}'"),
            ),
        },
        Subject::RegisteredAt => match date_millis(&text) {
            Some(millis) => Ok(Operand::Millis(millis)),
            None => fail(
                at,
                format!(
                    "registeredAt compares with a date such as 2018-06-18 or 2018-06-18T22:28:28Z, not '{text}'"
                ),
            ),
        },
        Subject::AgentVersion => Ok(Operand::Version(text)),
        Subject::Attribute(_) | Subject::Ec2InstanceId | Subject::TaskGroup => Ok(Operand::Text {
            number: decimal(&text),
            text,
        }),
    }
}

/// Compiles a pattern anchored at both ends, as Java's `String.matches` is.
fn compile_pattern(pattern: &str, at: usize) -> Result<regex::Regex, QueryError> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_MAX_BYTES)
        .build()
        .or_else(|error| {
            // The regex crate's syntax errors draw a diagram over several lines; keep the
            // line that says what is wrong.
            let text = error.to_string();
            let reason = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("error: "))
                .unwrap_or(text.trim());
            fail(
                at,
                format!("invalid regular expression '{pattern}': {reason}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_plain_numbers_only() {
        for (text, expected) in [
            ("42", Some(42.0)),
            ("-1.5", Some(-1.5)),
            ("+3", Some(3.0)),
            ("1.", None),
            (".5", None),
            ("inf", None),
            ("NaN", None),
            ("1e3", None),
            ("", None),
            ("t2.small", None),
        ] {
            assert_eq!(decimal(text), expected, "{text}");
        }
    }

    #[test]
    fn versions_compare_part_by_part() {
        for (left, right, expected) in [
            ("1.10.0", "1.9.2", Ordering::Greater),
            ("1.2", "1.2.0", Ordering::Equal),
            ("v1.2.3", "1.2.3", Ordering::Equal),
            ("1.2.3-rc1", "1.2.3", Ordering::Greater),
            ("0.9", "1", Ordering::Less),
        ] {
            assert_eq!(compare_versions(left, right), expected, "{left} vs {right}");
        }
    }

    #[test]
    fn bare_values_keep_balanced_brackets() {
        for (rest, expected) in [
            ("abc def", "abc"),
            ("g2.*)", "g2.*"),
            ("(a|b).*) and x", "(a|b).*"),
            ("[0-9]{1,2}, x", "[0-9]{1,2}"),
            ("a&&b", "a"),
            ("a&b", "a&b"),
            ("service:web]", "service:web"),
        ] {
            assert_eq!(&rest[..bare_value_length(rest)], expected, "{rest}");
        }
    }

    #[test]
    fn only_task_subjects_depend_on_tasks() {
        assert!(
            parse("not (runningTasksCount < 3)")
                .unwrap()
                .depends_on_tasks()
        );
        assert!(
            parse("attribute:a exists or task:group == x")
                .unwrap()
                .depends_on_tasks()
        );
        assert!(
            !parse("attribute:a exists and agentConnected == true")
                .unwrap()
                .depends_on_tasks()
        );
    }
}
