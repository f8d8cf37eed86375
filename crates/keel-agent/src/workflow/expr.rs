//! The `when` conditions of workflow edges: a small expression language over the state,
//! parsed once when the workflow is read and evaluated after each superstep.

use serde_json::{Map, Value, json};

/// A `when` condition: comparisons (`==`, `!=`, `<`, `<=`, `>`, `>=`, `in`) of state fields
/// (dotted paths), literals (strings in quotes, numbers, `true`, `false`, `null`, lists) and
/// `len(x)`, combined with `and`, `or`, `not` and parentheses.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Field(Vec<String>),
    List(Vec<Expr>),
    Len(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, String, Box<Expr>),
}

pub(crate) trait Truthy {
    fn truthy(&self) -> bool;
}

impl Truthy for Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(f64),
    Op(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..].iter().position(|&d| d == c).ok_or("a string is not closed")? + i + 1;
            tokens.push(Token::Str(chars[i + 1..end].iter().collect()));
            i = end + 1;
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            tokens.push(Token::Num(number.parse().map_err(|_| format!("`{number}` is not a number"))?));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if ["==", "!=", "<=", ">=", "&&", "||"].contains(&two.as_str()) {
                tokens.push(Token::Op(two));
                i += 2;
            } else if "<>()[],!".contains(c) {
                tokens.push(Token::Op(c.to_string()));
                i += 1;
            } else {
                return Err(format!("unexpected `{c}`"));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn is(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Token::Op(o)) if o == op) || matches!(self.peek(), Some(Token::Word(w)) if w == op)
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.is(op) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected `{op}`"))
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.is("or") || self.is("||") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.is("and") || self.is("&&") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, String> {
        if self.is("not") || self.is("!") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Expr, String> {
        let left = self.atom()?;
        for op in ["==", "!=", "<=", ">=", "<", ">", "in"] {
            if self.is(op) {
                self.at += 1;
                return Ok(Expr::Compare(Box::new(left), op.into(), Box::new(self.atom()?)));
            }
        }
        Ok(left)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let token = self.peek().cloned().ok_or("the condition ends too early")?;
        self.at += 1;
        Ok(match token {
            Token::Str(s) => Expr::Literal(Value::String(s)),
            Token::Num(n) => Expr::Literal(json!(n)),
            Token::Word(w) => match w.as_str() {
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "null" => Expr::Literal(Value::Null),
                "len" => {
                    self.expect("(")?;
                    let inner = self.or()?;
                    self.expect(")")?;
                    Expr::Len(Box::new(inner))
                }
                _ => Expr::Field(w.split('.').map(String::from).collect()),
            },
            Token::Op(o) if o == "(" => {
                let inner = self.or()?;
                self.expect(")")?;
                inner
            }
            Token::Op(o) if o == "[" => {
                let mut items = Vec::new();
                while !self.is("]") {
                    items.push(self.or()?);
                    if !self.is("]") {
                        self.expect(",")?;
                    }
                }
                self.expect("]")?;
                Expr::List(items)
            }
            Token::Op(o) => return Err(format!("unexpected `{o}`")),
        })
    }
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

impl Expr {
    pub(crate) fn parse(text: &str) -> Result<Expr, String> {
        let mut parser = Parser { tokens: tokenize(text)?, at: 0 };
        let expr = parser.or()?;
        if parser.at < parser.tokens.len() {
            return Err(format!("unexpected {:?} after the condition", parser.tokens[parser.at]));
        }
        Ok(expr)
    }

    /// The state fields the condition reads.
    pub fn fields(&self) -> Vec<String> {
        match self {
            Expr::Literal(_) => Vec::new(),
            Expr::Field(path) => vec![path[0].clone()],
            Expr::List(items) => items.iter().flat_map(Expr::fields).collect(),
            Expr::Len(inner) | Expr::Not(inner) => inner.fields(),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(a, _, b) => [a.fields(), b.fields()].concat(),
        }
    }

    pub(crate) fn eval(&self, state: &Map<String, Value>) -> Result<Value, String> {
        Ok(match self {
            Expr::Literal(value) => value.clone(),
            Expr::Field(path) => {
                let mut value = state.get(&path[0]).cloned().unwrap_or(Value::Null);
                for key in &path[1..] {
                    value = value.get(key).cloned().unwrap_or(Value::Null);
                }
                value
            }
            Expr::List(items) => Value::Array(items.iter().map(|i| i.eval(state)).collect::<Result<_, _>>()?),
            Expr::Len(inner) => match inner.eval(state)? {
                Value::Array(a) => json!(a.len()),
                Value::String(s) => json!(s.chars().count()),
                Value::Object(o) => json!(o.len()),
                Value::Null => json!(0),
                other => return Err(format!("len() of {other}")),
            },
            Expr::Not(inner) => Value::Bool(!inner.eval(state)?.truthy()),
            Expr::And(a, b) => Value::Bool(a.eval(state)?.truthy() && b.eval(state)?.truthy()),
            Expr::Or(a, b) => Value::Bool(a.eval(state)?.truthy() || b.eval(state)?.truthy()),
            Expr::Compare(a, op, b) => {
                let (a, b) = (a.eval(state)?, b.eval(state)?);
                let equal = match (number(&a), number(&b)) {
                    (Some(x), Some(y)) => x == y,
                    _ => a == b,
                };
                Value::Bool(match op.as_str() {
                    "==" => equal,
                    "!=" => !equal,
                    "in" => match &b {
                        Value::Array(items) => items.iter().any(|i| i == &a || number(i).is_some_and(|n| Some(n) == number(&a))),
                        Value::String(s) => a.as_str().is_some_and(|needle| s.contains(needle)),
                        _ => return Err(format!("`in` needs a list or a string on its right, not {b}")),
                    },
                    _ => {
                        let ordering = match (number(&a), number(&b), a.as_str(), b.as_str()) {
                            (Some(x), Some(y), _, _) => x.partial_cmp(&y),
                            (_, _, Some(x), Some(y)) => Some(x.cmp(y)),
                            // A missing field compares as false, never as an error.
                            _ => None,
                        };
                        match (op.as_str(), ordering) {
                            (_, None) => false,
                            ("<", Some(o)) => o.is_lt(),
                            ("<=", Some(o)) => o.is_le(),
                            (">", Some(o)) => o.is_gt(),
                            (_, Some(o)) => o.is_ge(),
                        }
                    }
                })
            }
        })
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Map<String, Value> {
        json!({"category": "refund", "amount": 120, "notes": ["a", "b"], "customer": {"tier": "gold"}}).as_object().unwrap().clone()
    }

    fn holds(text: &str) -> bool {
        Expr::parse(text).unwrap().eval(&state()).unwrap().truthy()
    }

    #[test]
    fn conditions_compare_combine_and_read_nested_fields() {
        assert!(holds("category == 'refund'"));
        assert!(!holds("category != \"refund\""));
        assert!(holds("amount > 100 and len(notes) == 2"));
        assert!(holds("amount >= 500 or customer.tier in ['gold', 'platinum']"));
        assert!(holds("not (amount < 100) && !missing"));
        assert!(!holds("missing > 3"), "a missing field compares as false");
        assert!(holds("'fun' in category"));
        assert_eq!(Expr::parse("amount > 1 and len(notes) > 0 or x").unwrap().fields(), ["amount", "notes", "x"]);
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        assert!(Expr::parse("category == 'refund").unwrap_err().contains("not closed"));
        assert!(Expr::parse("amount >").unwrap_err().contains("ends too early"));
        assert!(Expr::parse("a == b c").unwrap_err().contains("after the condition"));
        assert!(Expr::parse("a # b").unwrap_err().contains("unexpected `#`"));
    }
}
