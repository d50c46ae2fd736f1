//! Transport-neutral request/response types and the response builders every
//! handler uses (MidoNet's error body, 201 + Location, 204).

use serde_json::{Value, json};

use crate::media;
use crate::validate::Violation;

/// A request as the emulator sees it: header names lower-cased.
#[derive(Debug, Clone)]
pub struct Request {
    /// Which listener received it (0-based; see `EmulatorOptions::endpoints`).
    pub endpoint: usize,
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response before it is put on the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A JSON body with the given content type.
    pub fn json(status: u16, content_type: &str, body: &Value) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.to_string())],
            body: serde_json::to_vec(body).expect("JSON values serialise"),
        }
    }

    /// MidoNet's error entity: `{"message", "code"}` as `Error-v1+json`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut r = Response::json(
            status,
            media::ERROR,
            &json!({"message": message, "code": status}),
        );
        if status == 401 {
            r = r.with_header("WWW-Authenticate", "Basic  realm=\"BASIC_AUTH_REALM\"");
        }
        r
    }

    /// MidoNet's error entity with a null message (what
    /// `AdminOnlyAuthFilter` sends a non-admin: `setErrorResponse(401,
    /// null)`, without `WWW-Authenticate`).
    pub fn error_without_message(status: u16) -> Self {
        Response::json(
            status,
            media::ERROR,
            &json!({"message": null, "code": status}),
        )
    }

    /// A bean-validation failure (400 with `violations`).
    pub fn validation(violations: &[Violation]) -> Self {
        let list: Vec<Value> = violations
            .iter()
            .map(|v| json!({"property": v.property, "message": v.message}))
            .collect();
        Response::json(
            400,
            media::ERROR,
            &json!({"message": "Validation error(s) found", "code": 400, "violations": list}),
        )
    }

    /// 201 Created, empty body, `Location` when given.
    pub fn created(location: Option<String>) -> Self {
        let r = Response::new(201);
        match location {
            Some(l) => r.with_header("Location", l),
            None => r,
        }
    }

    pub fn no_content() -> Self {
        Response::new(204)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let r = Request {
            endpoint: 0,
            method: "GET".into(),
            path: "/".into(),
            query: Some("a=1&tenant_id=my%20tenant&x".into()),
            headers: vec![],
            body: vec![],
        };
        assert_eq!(r.query_param("tenant_id").as_deref(), Some("my tenant"));
        assert_eq!(r.query_param("x").as_deref(), Some(""));
        assert_eq!(r.query_param("b"), None);
    }
}
