//! Field extraction and bean-validation-like checks on request bodies.
//!
//! MidoNet deserialises bodies with Jackson (unknown properties ignored) and
//! then runs bean validation; a failure is a 400 whose body lists
//! `violations` as `{property, message}`. [`Fields`] reproduces that: every
//! accessor records a violation naming the field instead of failing fast, so
//! one response lists every bad field, like MidoNet's.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use uuid::Uuid;

/// One bean-validation failure: the JSON property and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: String,
    pub message: String,
}

/// Longest name MidoNet accepts on routers, bridges and chains (`@Size(max=255)`).
pub const MAX_NAME_LEN: usize = 255;

/// Typed, validating view of a JSON object body.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    /// Prefix for nested properties (`natTargets[0].`).
    prefix: String,
    pub violations: Vec<Violation>,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            prefix: String::new(),
            violations: Vec::new(),
        }
    }

    pub fn nested(obj: &'a Map<String, Value>, prefix: String) -> Self {
        Fields {
            obj,
            prefix,
            violations: Vec::new(),
        }
    }

    pub fn violate(&mut self, key: &str, message: impl Into<String>) {
        self.violations.push(Violation {
            property: format!("{}{key}", self.prefix),
            message: message.into(),
        });
    }

    /// The raw value, `None` when absent or JSON `null` (Jackson treats both alike).
    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub fn present(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        match self.raw(key)? {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.violate(key, "must be a string");
                None
            }
        }
    }

    pub fn name(&mut self, key: &str) -> Option<String> {
        let s = self.string(key)?;
        if s.chars().count() > MAX_NAME_LEN {
            self.violate(key, format!("size must be between 0 and {MAX_NAME_LEN}"));
        }
        Some(s)
    }

    pub fn required_string(&mut self, key: &str) -> Option<String> {
        if !self.present(key) {
            self.violate(key, "may not be null");
            return None;
        }
        self.string(key)
    }

    pub fn bool(&mut self, key: &str) -> Option<bool> {
        match self.raw(key)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.violate(key, "must be a boolean");
                None
            }
        }
    }

    pub fn int(&mut self, key: &str) -> Option<i64> {
        match self.raw(key)? {
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::Number(n) if n.is_u64() => {
                self.violate(key, "is out of range");
                None
            }
            _ => {
                self.violate(key, "must be an integer");
                None
            }
        }
    }

    /// An integer in `min..=max`; absent is `None`.
    pub fn int_in(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.int(key)?;
        if v < min || v > max {
            self.violate(key, format!("must be between {min} and {max}"));
            return None;
        }
        Some(v)
    }

    pub fn uuid(&mut self, key: &str) -> Option<Uuid> {
        match self.raw(key)? {
            Value::String(s) => match parse_uuid(s) {
                Some(u) => Some(u),
                None => {
                    self.violate(key, "is not a valid UUID");
                    None
                }
            },
            _ => {
                self.violate(key, "must be a UUID string");
                None
            }
        }
    }

    pub fn uuid_list(&mut self, key: &str) -> Option<Vec<Uuid>> {
        match self.raw(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item.as_str().and_then(parse_uuid) {
                        Some(u) => out.push(u),
                        None => self.violate(&format!("{key}[{i}]"), "is not a valid UUID"),
                    }
                }
                Some(out)
            }
            _ => {
                self.violate(key, "must be an array of UUIDs");
                None
            }
        }
    }

    /// A strict dotted-quad IPv4 address (MidoNet's `IPv4.regex`).
    pub fn ipv4(&mut self, key: &str) -> Option<Ipv4Addr> {
        let s = self.string(key)?;
        match parse_ipv4_strict(&s) {
            Some(a) => Some(a),
            None => {
                self.violate(key, "is an invalid IP format");
                None
            }
        }
    }

    pub fn required_ipv4(&mut self, key: &str) -> Option<Ipv4Addr> {
        if !self.present(key) {
            self.violate(key, "may not be null");
            return None;
        }
        self.ipv4(key)
    }

    /// A prefix length 0..=32; a Java `int` field, so absent means 0.
    pub fn prefix_len(&mut self, key: &str) -> u8 {
        self.int_in(key, 0, 32).unwrap_or(0) as u8
    }

    pub fn object(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.raw(key)? {
            Value::Object(m) => Some(m),
            _ => {
                self.violate(key, "must be an object");
                None
            }
        }
    }

    pub fn array(&mut self, key: &str) -> Option<&'a Vec<Value>> {
        match self.raw(key)? {
            Value::Array(a) => Some(a),
            _ => {
                self.violate(key, "must be an array");
                None
            }
        }
    }

    /// A MAC address `aa:bb:cc:dd:ee:ff` (MidoNet's `MAC.regex`).
    pub fn mac(&mut self, key: &str) -> Option<String> {
        let s = self.string(key)?;
        if is_mac(&s) {
            Some(s.to_ascii_lowercase())
        } else {
            self.violate(key, "is an invalid MAC format");
            None
        }
    }
}

/// Parses a UUID in its canonical hyphenated form only (what Java's
/// `UUID.fromString` and every MidoNet client emit).
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::parse_str(s).ok()
}

/// Strict dotted quad: four decimal octets 0..=255 without leading zeros.
pub fn parse_ipv4_strict(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *octet = p.parse::<u16>().ok().filter(|v| *v <= 255)? as u8;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// `a.b.c.d/n` with a strict address and `n` in 0..=32.
pub fn parse_cidr_strict(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr = parse_ipv4_strict(addr)?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((addr, len))
}

pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Linux interface-name rules (what the MidoNet agent can bind): 1..=15
/// bytes, no `/`, no whitespace, no `:`, not `.` or `..`.
pub fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("may not be empty");
    }
    if name.len() > 15 {
        return Some("must be at most 15 bytes (IFNAMSIZ)");
    }
    if name == "." || name == ".." {
        return Some("may not be '.' or '..'");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Some("may not contain '/', ':', whitespace or control characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_ipv4() {
        assert_eq!(
            parse_ipv4_strict("10.0.0.1"),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(parse_ipv4_strict("0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        for bad in [
            "10.0.0",
            "10.0.0.1.2",
            "010.0.0.1",
            "256.0.0.1",
            "a.b.c.d",
            "1..2.3",
            " 1.2.3.4",
            "1.2.3.4/24",
        ] {
            assert_eq!(parse_ipv4_strict(bad), None, "{bad}");
        }
    }

    #[test]
    fn strict_cidr() {
        assert_eq!(
            parse_cidr_strict("10.1.0.1/24"),
            Some((Ipv4Addr::new(10, 1, 0, 1), 24))
        );
        for bad in [
            "10.1.0.1/33",
            "10.1.0.1/",
            "10.1.0.1",
            "10.1.0.1/024",
            "10.1.0.1/-1",
        ] {
            assert_eq!(parse_cidr_strict(bad), None, "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        assert_eq!(interface_name_problem("vif0123456789a"), None);
        assert!(interface_name_problem("").is_some());
        assert!(interface_name_problem("a-very-long-interface").is_some());
        assert!(interface_name_problem("a/b").is_some());
        assert!(interface_name_problem("a b").is_some());
    }

    #[test]
    fn fields_collect_every_violation() {
        let v: Value = serde_json::json!({"a": "x", "b": 40, "c": "1.2.3"});
        let obj = v.as_object().unwrap();
        let mut f = Fields::new(obj);
        f.int("a");
        f.int_in("b", 0, 32);
        f.ipv4("c");
        f.required_string("d");
        let props: Vec<_> = f.violations.iter().map(|v| v.property.as_str()).collect();
        assert_eq!(props, ["a", "b", "c", "d"]);
    }
}
