//! The cluster query language of `memberOf` constraints and `ListContainerInstances
//! --filter`: `subject operator [argument]` joined by `and`/`or`/`not` and parentheses.

use std::cmp::Ordering;

use crate::Host;

/// A malformed expression, with the byte offset where the problem starts.
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

#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    AgentConnected,
    AgentVersion,
    Attribute(String),
    Ec2InstanceId,
    RegisteredAt,
    RunningTasksCount,
    TaskGroup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Exists,
    NotExists,
    In,
    NotIn,
    Matches,
    NotMatches,
}

impl Operator {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "==" | "equals" => Self::Equals,
            "!=" | "not_equals" => Self::NotEquals,
            ">" | "greater_than" => Self::Greater,
            ">=" | "greater_than_equal" => Self::GreaterOrEqual,
            "<" | "less_than" => Self::Less,
            "<=" | "less_than_equal" => Self::LessOrEqual,
            "exists" => Self::Exists,
            "!exists" | "not_exists" => Self::NotExists,
            "in" => Self::In,
            "!in" | "not_in" => Self::NotIn,
            "=~" | "matches" => Self::Matches,
            "!~" | "not_matches" => Self::NotMatches,
            _ => return None,
        })
    }

    /// Whether the operator holds for a subject that has no value.
    fn holds_when_missing(self) -> bool {
        matches!(
            self,
            Self::NotExists | Self::NotEquals | Self::NotIn | Self::NotMatches
        )
    }
}

#[derive(Clone, Debug)]
pub enum Argument {
    None,
    Value(String),
    List(Vec<String>),
    Regex(regex::Regex),
}

#[derive(Clone, Debug)]
pub enum Expression {
    Compare {
        subject: Subject,
        operator: Operator,
        argument: Argument,
    },
    Not(Box<Expression>),
    And(Box<Expression>, Box<Expression>),
    Or(Box<Expression>, Box<Expression>),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
    Word(String),
    Quoted(String),
}

const OPERATOR_CHARS: &[char] = &['=', '!', '<', '>', '~', '&', '|'];

fn tokenize(input: &str) -> Result<Vec<(Token, usize)>, QueryError> {
    let mut tokens = Vec::new();
    let chars: Vec<(usize, char)> = input.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => (tokens.push((Token::Open, at)), i += 1).1,
            ')' => (tokens.push((Token::Close, at)), i += 1).1,
            '[' => (tokens.push((Token::OpenList, at)), i += 1).1,
            ']' => (tokens.push((Token::CloseList, at)), i += 1).1,
            ',' => (tokens.push((Token::Comma, at)), i += 1).1,
            '\'' | '"' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        Some((_, ch)) if *ch == quote => break,
                        Some((_, ch)) => text.push(*ch),
                        None => return fail(at, "unterminated quoted value"),
                    }
                    i += 1;
                }
                i += 1;
                tokens.push((Token::Quoted(text), at));
            }
            c if OPERATOR_CHARS.contains(&c) => {
                let mut text = String::new();
                while let Some((_, ch)) = chars.get(i) {
                    if !OPERATOR_CHARS.contains(ch) {
                        break;
                    }
                    text.push(*ch);
                    i += 1;
                }
                tokens.push((Token::Word(text), at));
            }
            _ => {
                let mut text = String::new();
                while let Some((_, ch)) = chars.get(i) {
                    if ch.is_whitespace() || "()[],'\"".contains(*ch) {
                        break;
                    }
                    // `a==b`: an operator ends a word, except `~`/`!` inside regex-ish values.
                    if matches!(ch, '=' | '<' | '>' | '&' | '|')
                        && !text.is_empty()
                        && !text.ends_with('\\')
                    {
                        break;
                    }
                    text.push(*ch);
                    i += 1;
                }
                tokens.push((Token::Word(text), at));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(t, _)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(_, at)| *at)
    }

    fn take(&mut self) -> Option<(Token, usize)> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn is_word(&self, words: &[&str]) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if words.contains(&w.as_str()))
    }

    fn or(&mut self) -> Result<Expression, QueryError> {
        let mut left = self.and()?;
        while self.is_word(&["||", "or"]) {
            self.take();
            left = Expression::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expression, QueryError> {
        let mut left = self.unary()?;
        while self.is_word(&["&&", "and"]) {
            self.take();
            left = Expression::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expression, QueryError> {
        if self.is_word(&["!", "not"]) {
            self.take();
            return Ok(Expression::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            let (_, at) = self.take().unwrap_or((Token::Open, 0));
            let inner = self.or()?;
            match self.take() {
                Some((Token::Close, _)) => return Ok(inner),
                _ => return fail(at, "unbalanced parenthesis: '(' is never closed"),
            }
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expression, QueryError> {
        let at = self.position();
        let subject = match self.take() {
            Some((Token::Word(word), _)) => match word.as_str() {
                "agentConnected" => Subject::AgentConnected,
                "agentVersion" => Subject::AgentVersion,
                "ec2InstanceId" => Subject::Ec2InstanceId,
                "registeredAt" => Subject::RegisteredAt,
                "runningTasksCount" => Subject::RunningTasksCount,
                "task:group" => Subject::TaskGroup,
                w if w.starts_with("attribute:") && w.len() > "attribute:".len() => {
                    Subject::Attribute(w["attribute:".len()..].to_owned())
                }
                w => {
                    return fail(
                        at,
                        format!(
                            "unknown subject '{w}'; expected attribute:NAME, agentConnected, agentVersion, ec2InstanceId, registeredAt, runningTasksCount or task:group"
                        ),
                    );
                }
            },
            Some((_, at)) => return fail(at, "expected a subject"),
            None => return fail(at, "expected a subject"),
        };
        let at = self.position();
        let operator = match self.take() {
            Some((Token::Word(word), _)) => {
                let word = if word == "!" && self.is_word(&["exists", "in"]) {
                    let (next, _) = self.take().unwrap_or((Token::Word(String::new()), 0));
                    match next {
                        Token::Word(w) => format!("!{w}"),
                        _ => word,
                    }
                } else {
                    word
                };
                Operator::parse(&word).ok_or_else(|| QueryError {
                    position: at,
                    message: format!("unknown operator '{word}'"),
                })?
            }
            _ => return fail(at, "expected an operator"),
        };
        let argument = match operator {
            Operator::Exists | Operator::NotExists => Argument::None,
            Operator::In | Operator::NotIn => Argument::List(self.list()?),
            Operator::Matches | Operator::NotMatches => {
                let at = self.position();
                let pattern = self.value()?;
                let regex =
                    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| QueryError {
                        position: at,
                        message: format!("invalid regular expression: {e}"),
                    })?;
                Argument::Regex(regex)
            }
            _ => Argument::Value(self.value()?),
        };
        Ok(Expression::Compare {
            subject,
            operator,
            argument,
        })
    }

    fn value(&mut self) -> Result<String, QueryError> {
        let at = self.position();
        match self.take() {
            Some((Token::Word(w), _)) if !matches!(w.as_str(), "and" | "or" | "&&" | "||") => Ok(w),
            Some((Token::Quoted(q), _)) => Ok(q),
            _ => fail(at, "expected a value"),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, QueryError> {
        let at = self.position();
        let close = match self.take() {
            Some((Token::OpenList, _)) => Token::CloseList,
            Some((Token::Open, _)) => Token::Close,
            _ => return fail(at, "expected a list such as [a, b]"),
        };
        let mut values = vec![self.value()?];
        loop {
            let at = self.position();
            match self.take() {
                Some((Token::Comma, _)) => values.push(self.value()?),
                Some((token, _)) if token == close => return Ok(values),
                _ => return fail(at, "expected ',' or the end of the list"),
            }
        }
    }
}

/// Parses an expression.
pub fn parse(expression: &str) -> Result<Expression, QueryError> {
    let tokens = tokenize(expression)?;
    if tokens.is_empty() {
        return fail(0, "the expression is empty");
    }
    let mut parser = Parser {
        tokens,
        next: 0,
        end: expression.len(),
    };
    let parsed = parser.or()?;
    if parser.next < parser.tokens.len() {
        let at = parser.position();
        return fail(at, "unexpected text after the expression");
    }
    Ok(parsed)
}

fn compare_values(left: &str, right: &str) -> Ordering {
    match (left.parse::<f64>(), right.parse::<f64>()) {
        (Ok(a), Ok(b)) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
        _ => left.cmp(right),
    }
}

fn compare_versions(left: &str, right: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split(['.', '-'])
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect()
    };
    parts(left).cmp(&parts(right))
}

/// Dates as the language accepts them (`2018-06-18` or RFC 3339), in milliseconds.
fn date_millis(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
}

fn holds(
    operator: Operator,
    argument: &Argument,
    value: &str,
    order: &dyn Fn(&str, &str) -> Ordering,
) -> bool {
    let single = || match argument {
        Argument::Value(v) => Some(v.as_str()),
        _ => None,
    };
    match operator {
        Operator::Exists => true,
        Operator::NotExists => false,
        Operator::Equals => single().is_some_and(|v| order(value, v) == Ordering::Equal),
        Operator::NotEquals => single().is_some_and(|v| order(value, v) != Ordering::Equal),
        Operator::Greater => single().is_some_and(|v| order(value, v) == Ordering::Greater),
        Operator::GreaterOrEqual => single().is_some_and(|v| order(value, v) != Ordering::Less),
        Operator::Less => single().is_some_and(|v| order(value, v) == Ordering::Less),
        Operator::LessOrEqual => single().is_some_and(|v| order(value, v) != Ordering::Greater),
        Operator::In => {
            matches!(argument, Argument::List(l) if l.iter().any(|v| order(value, v) == Ordering::Equal))
        }
        Operator::NotIn => {
            matches!(argument, Argument::List(l) if l.iter().all(|v| order(value, v) != Ordering::Equal))
        }
        Operator::Matches => matches!(argument, Argument::Regex(r) if r.is_match(value)),
        Operator::NotMatches => matches!(argument, Argument::Regex(r) if !r.is_match(value)),
    }
}

impl Expression {
    /// Whether `host` satisfies the expression.
    pub fn matches(&self, host: &Host) -> bool {
        match self {
            Self::Not(inner) => !inner.matches(host),
            Self::And(a, b) => a.matches(host) && b.matches(host),
            Self::Or(a, b) => a.matches(host) || b.matches(host),
            Self::Compare {
                subject,
                operator,
                argument,
            } => {
                let value: Option<String> = match subject {
                    Subject::AgentConnected => Some(host.agent_connected.to_string()),
                    Subject::AgentVersion => host.agent_version.clone(),
                    Subject::Attribute(name) => host
                        .attributes
                        .get(name)
                        .map(|value| value.clone().unwrap_or_default()),
                    Subject::Ec2InstanceId => Some(host.ec2_instance_id.clone()),
                    Subject::RegisteredAt => Some(host.registered_at.millis().to_string()),
                    Subject::RunningTasksCount => Some(host.running_tasks_count.to_string()),
                    Subject::TaskGroup => {
                        return host
                            .task_groups
                            .iter()
                            .filter(|(_, count)| **count > 0)
                            .any(|(group, _)| holds(*operator, argument, group, &|a, b| a.cmp(b)));
                    }
                };
                let Some(value) = value else {
                    return operator.holds_when_missing();
                };
                match subject {
                    Subject::AgentVersion => holds(*operator, argument, &value, &compare_versions),
                    Subject::RegisteredAt => holds(*operator, argument, &value, &|a, b| {
                        let a = a.parse::<i64>().unwrap_or(0);
                        match date_millis(b) {
                            Some(b) => a.cmp(&b),
                            None => Ordering::Less,
                        }
                    }),
                    _ => holds(*operator, argument, &value, &compare_values),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::host;

    #[test]
    fn parses_the_guides_examples() {
        let mut h = host(0, 1024, 1024);
        h.attributes
            .insert("ecs.instance-type".into(), Some("t2.small".into()));
        h.attributes
            .insert("ecs.availability-zone".into(), Some("us-east-1a".into()));
        h.attributes.insert("stack".into(), Some("prod".into()));
        h.task_groups.insert("service:production".into(), 1);
        h.running_tasks_count = 2;
        let rows = [
            ("attribute:ecs.instance-type == t2.small", true),
            ("attribute:ecs.instance-type equals t2.micro", false),
            (
                "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]",
                true,
            ),
            (
                "attribute:ecs.availability-zone not_in (us-east-1a, us-east-1b)",
                false,
            ),
            ("attribute:ecs.instance-type =~ t2.*", true),
            ("attribute:ecs.instance-type !~ g2.*", true),
            ("not(attribute:ecs.instance-type == t2.micro)", true),
            ("task:group == service:production", true),
            ("task:group == service:other", false),
            ("agentConnected == true and runningTasksCount > 1", true),
            ("agentConnected == true && runningTasksCount > 2", false),
            ("runningTasksCount >= 2 || attribute:missing exists", true),
            ("registeredAt < 2018-06-18", true),
            ("registeredAt > 2018-06-18T22:28:28Z", false),
            ("ec2InstanceId in ['i-0', 'i-wxyx7890']", true),
            ("attribute:stack exists", true),
            ("attribute:missing !exists", true),
            ("attribute:missing != x", true),
            ("attribute:missing == x", false),
            (
                "((attribute:stack == prod) and (not attribute:stack == dev))",
                true,
            ),
            ("attribute:stack=='prod'", true),
            ("agentVersion >= 1.2.10", false),
        ];
        for (expression, expected) in rows {
            let parsed = parse(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
            assert_eq!(parsed.matches(&h), expected, "{expression}");
        }
    }

    #[test]
    fn malformed_expressions_name_the_position() {
        let rows = [
            ("", 0),
            ("attribute:stack ==", 18),
            ("colour == red", 0),
            ("attribute:stack === x", 16),
            ("(attribute:stack == x", 0),
            ("attribute:stack == x)", 20),
            ("attribute:stack =~ '('", 19),
            ("attribute:a in [x, y", 20),
        ];
        for (expression, position) in rows {
            let error = parse(expression).expect_err(expression);
            assert_eq!(error.position, position, "{expression}: {error}");
        }
    }
}
