//! Module metadata: the `tenet:metadata` custom section that
//! [`export_stage!`](crate::export_stage) writes into every component.
//!
//! The section is one JSON object, written at compile time from the
//! module crate's `Cargo.toml` and its settings schema file:
//!
//! ```json
//! {
//!   "format": 1,
//!   "name": "quota-guard",
//!   "version": "0.1.0",
//!   "description": "…",
//!   "authors": ["Ops <ops@example.com>"],
//!   "sdk": "0.2.0",
//!   "wit": "tenet:policy@0.1.0",
//!   "settingsSchema": { "type": "object", … }   // or null
//! }
//! ```
//!
//! `tenetctl policy inspect` shows it; `tenetctl policy compile`,
//! `tenetctl plan` and the CNI STATUS command validate each stage's
//! settings against `settingsSchema` before any module code runs.
//!
//! Everything here is `const`: the section is a static byte array, so
//! writing it costs the module nothing at run time and needs no build
//! script.

/// Name of the custom section.
pub const SECTION: &str = "tenet:metadata";

/// This SDK's version, recorded as `sdk`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The WIT package the SDK builds components for, recorded as `wit`.
pub const WIT_PACKAGE: &str = "tenet:policy@0.1.0";

/// The fields of the section, in order: name, version, description,
/// authors (Cargo's `:`-separated list), settings schema (JSON text, or
/// empty for none).
pub type Parts = [&'static str; 5];

const KEYS: [&str; 5] = [
    "{\"format\":1,\"name\":\"",
    "\",\"version\":\"",
    "\",\"description\":\"",
    "\",\"authors\":[",
    "],\"sdk\":\"",
];

/// How the text of a field is written.
#[derive(Clone, Copy)]
enum Field {
    /// A JSON string's content.
    Text,
    /// `:`-separated list, written as the items of a JSON array of strings.
    List,
    /// JSON text, copied as is (`null` when empty).
    Raw,
}

/// Appends `bytes` at `at` (or only counts them when `out` is `None`).
const fn put(out: &mut Option<&mut [u8]>, at: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        if let Some(o) = out {
            o[at + i] = bytes[i];
        }
        i += 1;
    }
    at + bytes.len()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes one field; returns the new length.
const fn field(out: &mut Option<&mut [u8]>, mut at: usize, s: &str, how: Field) -> usize {
    let b = s.as_bytes();
    match how {
        Field::Raw => {
            if b.is_empty() {
                return put(out, at, b"null");
            }
            return put(out, at, b);
        }
        Field::List => {
            if b.is_empty() {
                return at;
            }
            at = put(out, at, b"\"");
        }
        Field::Text => {}
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        at = match c {
            b'"' => put(out, at, b"\\\""),
            b'\\' => put(out, at, b"\\\\"),
            b':' if matches!(how, Field::List) => put(out, at, b"\",\""),
            0..=0x1f => put(
                out,
                at,
                &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ],
            ),
            _ => put(out, at, &[c]),
        };
        i += 1;
    }
    if matches!(how, Field::List) {
        at = put(out, at, b"\"");
    }
    at
}

/// Writes the whole section; returns its length.
const fn write(mut out: Option<&mut [u8]>, p: &Parts) -> usize {
    let hows = [Field::Text, Field::Text, Field::Text, Field::List];
    let mut at = 0;
    let mut i = 0;
    while i < 4 {
        at = put(&mut out, at, KEYS[i].as_bytes());
        at = field(&mut out, at, p[i], hows[i]);
        i += 1;
    }
    at = put(&mut out, at, KEYS[4].as_bytes());
    at = field(&mut out, at, SDK_VERSION, Field::Text);
    at = put(&mut out, at, b"\",\"wit\":\"");
    at = field(&mut out, at, WIT_PACKAGE, Field::Text);
    at = put(&mut out, at, b"\",\"settingsSchema\":");
    at = field(&mut out, at, p[4], Field::Raw);
    put(&mut out, at, b"}")
}

/// Length of the encoded section.
pub const fn encoded_len(p: &Parts) -> usize {
    write(None, p)
}

/// The encoded section (`N` is [`encoded_len`]).
pub const fn encode<const N: usize>(p: &Parts) -> [u8; N] {
    let mut out = [0u8; N];
    write(Some(&mut out), p);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_json_with_every_field() {
        const P: Parts = [
            "quota-guard",
            "0.1.0",
            "Denies \"frozen\" tenants\\\n",
            "A <a@x>:B",
            r#"{"type":"object"}"#,
        ];
        const N: usize = encoded_len(&P);
        const BYTES: [u8; N] = encode::<N>(&P);
        let v: serde_json::Value = serde_json::from_slice(&BYTES).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["name"], "quota-guard");
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["description"], "Denies \"frozen\" tenants\\\n");
        assert_eq!(v["authors"], serde_json::json!(["A <a@x>", "B"]));
        assert_eq!(v["sdk"], SDK_VERSION);
        assert_eq!(v["wit"], WIT_PACKAGE);
        assert_eq!(v["settingsSchema"]["type"], "object");
    }

    #[test]
    fn empty_authors_and_schema() {
        const P: Parts = ["m", "1.0.0", "", "", ""];
        const N: usize = encoded_len(&P);
        let v: serde_json::Value = serde_json::from_slice(&encode::<N>(&P)).unwrap();
        assert_eq!(v["authors"], serde_json::json!([]));
        assert!(v["settingsSchema"].is_null());
    }
}
