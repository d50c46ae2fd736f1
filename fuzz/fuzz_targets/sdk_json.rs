//! Differential fuzzing of the SDK's JSON decoder (`tenet_policy_sdk::json`)
//! against `serde_json` on the same bytes.
//!
//! Both decode into `serde_json::Value` (the same visitor, so duplicate keys
//! and key order are handled identically) and into a settings-like struct
//! (which reaches the SDK's `deserialize_option` and `deserialize_enum`).
//! They must make the same accept/reject decision and, when both accept,
//! produce the same value, except for the SDK's documented limits, which
//! are encoded here (each one named in an `Allowed` reason):
//!
//! - nesting deeper than 64 arrays/objects is refused (serde_json: 128);
//! - numbers with a fraction or an exponent are refused;
//! - integers outside u64/i64 are refused (serde_json makes them f64);
//! - `-0` is the integer 0 (serde_json: the float -0.0, which a struct's
//!   integer field then refuses);
//! - enum variants only as strings (serde_json also takes `{"v": null}`).
//!
//! Input that is not UTF-8 cannot reach the SDK (it takes `&str`);
//! serde_json must refuse it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use tenet_policy_sdk::json;

/// `json::MAX_DEPTH` (private to the SDK): arrays/objects nested deeper fail.
const SDK_MAX_DEPTH: usize = 64;

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Fam {
    Ipv4,
    Ipv6,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    name: Option<String>,
    len: Option<u8>,
    neg: Option<i32>,
    on: Option<bool>,
    fam: Option<Fam>,
    list: Option<Vec<String>>,
    map: Option<BTreeMap<String, Vec<u32>>>,
    #[serde(default)]
    extra: Vec<Option<i64>>,
}

/// Containers nested in `v` (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether valid JSON text has a number with a fraction or an exponent.
/// Outside strings, `.` only occurs in numbers and `e`/`E` after a digit
/// only in numbers (`true`/`false` have it after a letter).
fn has_fraction_or_exponent(text: &[u8]) -> bool {
    let mut in_str = false;
    let mut escaped = false;
    let mut prev = 0u8;
    for &b in text {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'.' => return true,
                b'e' | b'E' if prev.is_ascii_digit() => return true,
                _ => {}
            }
        }
        prev = b;
    }
    false
}

/// Floats in serde_json's value: (any that is not -0.0, any -0.0). In text
/// without fraction/exponent, a float is an out-of-range integer or `-0`.
fn floats(v: &Value, out: &mut (bool, bool)) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f == 0.0 && f.is_sign_negative() {
                out.1 = true;
            } else {
                out.0 = true;
            }
        }
        Value::Array(a) => a.iter().for_each(|v| floats(v, out)),
        Value::Object(m) => m.values().for_each(|v| floats(v, out)),
        _ => {}
    }
}

/// serde_json's value `a` and the SDK's `b` are the same, `-0` being 0.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() => {
            x.as_f64() == Some(0.0) && y.as_u64() == Some(0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => a == b,
    }
}

/// What of the input lies beyond the SDK's documented limits.
struct Beyond {
    deep: bool,
    fraction: bool,
    out_of_range: bool,
    minus_zero: bool,
}

impl Beyond {
    fn of(data: &[u8], v: &Value) -> Self {
        let fraction = has_fraction_or_exponent(data);
        let mut f = (false, false);
        floats(v, &mut f);
        Beyond {
            deep: depth(v) > SDK_MAX_DEPTH,
            fraction,
            out_of_range: !fraction && f.0,
            minus_zero: f.1,
        }
    }

    /// Whether the SDK's refusal `e` is one of the documented ones that apply.
    fn explains(&self, e: &str) -> bool {
        (self.deep && e.contains("nested too deeply"))
            || (self.fraction && e.contains("settings numbers must be integers"))
            // `18446744073709551616e-24`: the SDK stops at the digits.
            || ((self.out_of_range || self.fraction) && e.contains("integer out of range"))
    }
}

fuzz_target!(|data: &[u8]| {
    let theirs = serde_json::from_slice::<Value>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(theirs.is_err(), "serde_json accepted non-UTF-8 input");
        return;
    };
    let ours = json::from_str::<Value>(text);
    match (&theirs, &ours) {
        (Ok(a), Ok(b)) => {
            let beyond = Beyond::of(data, a);
            assert!(
                !beyond.deep && !beyond.fraction && !beyond.out_of_range,
                "SDK accepted input beyond its limits: {b:?}"
            );
            assert!(same(a, b), "values differ: serde_json {a:?}, SDK {b:?}");
        }
        (Ok(a), Err(e)) => {
            let beyond = Beyond::of(data, a);
            assert!(
                beyond.explains(&e.to_string()),
                "SDK refused valid JSON within its limits: {e} (serde_json: {a:?})"
            );
        }
        (Err(e), Ok(b)) => panic!("SDK accepted invalid JSON as {b:?} (serde_json: {e})"),
        (Err(_), Err(_)) => {}
    }

    // The typed path: same decision, same value.
    let theirs_t = serde_json::from_str::<Settings>(text);
    let ours_t = json::from_str::<Settings>(text);
    match (&theirs_t, &ours_t) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Ok(a), Err(e)) => {
            let e = e.to_string();
            let v = theirs
                .as_ref()
                .expect("serde_json took it as a struct, not as a value");
            let beyond = Beyond::of(data, v);
            let enum_as_map = e.contains("expected a string naming a variant");
            assert!(
                beyond.explains(&e) || enum_as_map,
                "SDK refused settings serde_json took: {e} ({a:?})"
            );
        }
        (Err(e), Ok(b)) => {
            // `-0` in an integer field: serde_json sees a float.
            let minus_zero = theirs
                .as_ref()
                .is_ok_and(|v| Beyond::of(data, v).minus_zero);
            assert!(
                minus_zero && e.to_string().contains("floating point"),
                "SDK took settings serde_json refused: {b:?} (serde_json: {e})"
            );
        }
        (Err(_), Err(_)) => {}
    }
});
