//! A small JSON decoder for stage settings, driving `serde::Deserialize`.
//!
//! Why not `serde_json`: in a component it was the largest single part of
//! every module (its generic reader, number parsing and float formatting),
//! and module size is load time on every pod creation (the `.cwasm` is
//! mapped, paged in and type-registered per exec). Settings are small
//! documents the host itself produced from TOML, so this decoder covers what
//! they contain: objects, arrays, strings (all escapes), integers, booleans
//! and `null`. Numbers with a fraction or exponent are refused: no standard
//! setting is fractional, and leaving floats out keeps float parsing and
//! formatting out of every module.
//!
//! Size is the point, so the lexer ([`Decoder::token`]) is not generic: only
//! the thin dispatch to each serde visitor is instantiated per settings type.
//! Errors name what went wrong and the byte offset; serde's messages
//! ("unknown field `x`, expected one of …") pass through.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, DeserializeOwned, Expected, IntoDeserializer, Unexpected, Visitor};

/// A decoding error: what went wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(Box<str>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl de::StdError for Error {}

/// Describes an unexpected value without serde's `Display for Unexpected`,
/// which would link float formatting into every module.
fn unexpected(u: &Unexpected<'_>) -> String {
    match *u {
        Unexpected::Bool(b) => format!("boolean `{b}`"),
        Unexpected::Unsigned(n) => format!("integer `{n}`"),
        Unexpected::Signed(n) => format!("integer `{n}`"),
        Unexpected::Str(s) => format!("string {s:?}"),
        Unexpected::Unit => "null".to_string(),
        Unexpected::Seq => "array".to_string(),
        Unexpected::Map => "object".to_string(),
        Unexpected::Float(_) => "floating point number".to_string(),
        Unexpected::Char(c) => format!("character `{c}`"),
        Unexpected::Option => "option".to_string(),
        _ => "value".to_string(),
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string().into_boxed_str())
    }

    fn invalid_type(u: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Error(format!("invalid type: {}, expected {exp}", unexpected(&u)).into_boxed_str())
    }

    fn invalid_value(u: Unexpected<'_>, exp: &dyn Expected) -> Self {
        Error(format!("invalid value: {}, expected {exp}", unexpected(&u)).into_boxed_str())
    }
}

/// Nesting depth accepted (bounds the native stack of the recursive decoder).
const MAX_DEPTH: u32 = 64;

/// Decodes `text` as a `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    let mut d = Decoder {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = T::deserialize(&mut d).and_then(|v| d.end().map(|()| v));
    v.map_err(|e| d.at(e))
}

struct Decoder<'a> {
    s: &'a [u8],
    pos: usize,
    depth: u32,
}

fn err(m: &str) -> Error {
    Error(m.into())
}

/// One lexical item: a scalar, or the opening of an array or object.
enum Token<'a> {
    Null,
    Bool(bool),
    Borrowed(&'a str),
    Owned(String),
    Unsigned(u64),
    Signed(i64),
    Array,
    Object,
}

impl<'a> Decoder<'a> {
    #[inline(never)]
    fn at(&self, e: Error) -> Error {
        Error(format!("{e} at byte {}", self.pos).into_boxed_str())
    }

    fn end(&mut self) -> Result<(), Error> {
        self.ws();
        if self.pos == self.s.len() {
            Ok(())
        } else {
            Err(err("trailing characters"))
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next non-blank byte, not consumed.
    fn peek(&mut self) -> Result<u8, Error> {
        self.ws();
        self.s
            .get(self.pos)
            .copied()
            .ok_or_else(|| err("unexpected end of input"))
    }

    fn expect(&mut self, b: u8) -> Result<(), Error> {
        if self.peek()? == b {
            self.pos += 1;
            Ok(())
        } else {
            Err(Error(format!("expected `{}`", b as char).into_boxed_str()))
        }
    }

    /// Closes an array or object opened by [`Decoder::token`].
    #[inline(never)]
    fn close(&mut self, b: u8) -> Result<(), Error> {
        self.expect(b)?;
        self.depth -= 1;
        Ok(())
    }

    /// Before an element or key: `None` at the closing bracket, else
    /// consumes the separating comma when `!first`.
    #[inline(never)]
    fn item(&mut self, close: u8, first: &mut bool) -> Result<Option<()>, Error> {
        if self.peek()? == close {
            return Ok(None);
        }
        if !*first {
            self.expect(b',')?;
        }
        *first = false;
        Ok(Some(()))
    }

    /// Lexes the next value, consuming the opening bracket of an array or
    /// object (the caller then reads its items and calls [`Self::close`]).
    #[inline(never)]
    fn token(&mut self) -> Result<Token<'a>, Error> {
        let word = |d: &mut Self, w: &[u8], t: Token<'a>| {
            if d.s[d.pos..].starts_with(w) {
                d.pos += w.len();
                Ok(t)
            } else {
                Err(err("expected a value"))
            }
        };
        match self.peek()? {
            b'n' => word(self, b"null", Token::Null),
            b't' => word(self, b"true", Token::Bool(true)),
            b'f' => word(self, b"false", Token::Bool(false)),
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b @ (b'[' | b'{') => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(err("nested too deeply"));
                }
                Ok(if b == b'[' {
                    Token::Array
                } else {
                    Token::Object
                })
            }
            _ => Err(err("expected a value")),
        }
    }

    /// A string starting at the opening quote. Borrowed when it has no
    /// escapes, else unescaped into a new `String`.
    fn string(&mut self) -> Result<Token<'a>, Error> {
        self.pos += 1;
        let s: &'a [u8] = self.s;
        let start = self.pos;
        let mut out: Option<Vec<u8>> = None;
        loop {
            let b = *s.get(self.pos).ok_or_else(|| err("unterminated string"))?;
            self.pos += 1;
            match b {
                b'"' => {
                    return match out {
                        None => core::str::from_utf8(&s[start..self.pos - 1])
                            .map(Token::Borrowed)
                            .map_err(|_| err("invalid UTF-8")),
                        Some(v) => String::from_utf8(v)
                            .map(Token::Owned)
                            .map_err(|_| err("invalid UTF-8")),
                    };
                }
                b'\\' => {
                    let buf = out.get_or_insert_with(|| s[start..self.pos - 1].to_vec());
                    let e = *s.get(self.pos).ok_or_else(|| err("unterminated string"))?;
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = hex4(s, &mut self.pos)?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(err("unpaired surrogate"));
                                }
                                self.pos += 2;
                                let lo = hex4(s, &mut self.pos)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(err("unpaired surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or_else(|| err("unpaired surrogate"))?
                        }
                        _ => return Err(err("invalid escape")),
                    };
                    let mut utf8 = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                b if b < 0x20 => return Err(err("control character in string")),
                b => {
                    if let Some(buf) = out.as_mut() {
                        buf.push(b);
                    }
                }
            }
        }
    }

    fn number(&mut self) -> Result<Token<'a>, Error> {
        let neg = self.s[self.pos] == b'-';
        if neg {
            self.pos += 1;
        }
        let digits = self.pos;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.s.get(self.pos).copied() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| err("integer out of range"))?;
            self.pos += 1;
        }
        if self.pos == digits {
            return Err(err("expected a value"));
        }
        // JSON has no leading zeros (`01`, `-00`): refuse, as serde_json does.
        if self.s[digits] == b'0' && self.pos - digits > 1 {
            return Err(err("leading zero in a number"));
        }
        if let Some(b'.' | b'e' | b'E') = self.s.get(self.pos) {
            return Err(err("settings numbers must be integers"));
        }
        if !neg {
            return Ok(Token::Unsigned(n));
        }
        if n > 1 << 63 {
            return Err(err("integer out of range"));
        }
        Ok(Token::Signed((n as i64).wrapping_neg()))
    }
}

fn hex4(s: &[u8], pos: &mut usize) -> Result<u32, Error> {
    let digits = s.get(*pos..*pos + 4).ok_or_else(|| err("bad \\u escape"))?;
    let mut v = 0u32;
    for d in digits {
        v = v * 16
            + (*d as char)
                .to_digit(16)
                .ok_or_else(|| err("bad \\u escape"))?;
    }
    *pos += 4;
    Ok(v)
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.token()? {
            Token::Null => v.visit_unit(),
            Token::Bool(b) => v.visit_bool(b),
            Token::Borrowed(s) => v.visit_borrowed_str(s),
            Token::Owned(s) => v.visit_string(s),
            Token::Unsigned(n) => v.visit_u64(n),
            Token::Signed(n) => v.visit_i64(n),
            Token::Array => {
                let out = v.visit_seq(Items {
                    d: &mut *self,
                    first: true,
                })?;
                self.close(b']')?;
                Ok(out)
            }
            Token::Object => {
                let out = v.visit_map(Items {
                    d: &mut *self,
                    first: true,
                })?;
                self.close(b'}')?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if self.peek()? == b'n' {
            self.token()?;
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        // Unit variants only, written as strings (`"ipv4"`).
        match self.token()? {
            Token::Borrowed(s) => v.visit_enum(s.into_deserializer()),
            Token::Owned(s) => v.visit_enum(s.into_deserializer()),
            _ => Err(err("expected a string naming a variant")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// The items of an array or the entries of an object.
struct Items<'a, 'de> {
    d: &'a mut Decoder<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.d.item(b']', &mut self.first)? {
            None => Ok(None),
            Some(()) => seed.deserialize(&mut *self.d).map(Some),
        }
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.d.item(b'}', &mut self.first)?.is_none() {
            return Ok(None);
        }
        if self.d.peek()? != b'"' {
            return Err(err("expected a string key"));
        }
        seed.deserialize(&mut *self.d).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        self.d.expect(b':')?;
        seed.deserialize(&mut *self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::string::ToString;
    use alloc::vec;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Fam {
        Ipv4,
        Ipv6,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct S {
        name: String,
        len: u8,
        #[serde(default)]
        neg: i32,
        on: bool,
        opt: Option<String>,
        fam: Fam,
        list: Vec<String>,
        map: BTreeMap<String, Vec<u32>>,
    }

    #[test]
    fn decodes_what_settings_contain() {
        let s: S = from_str(
            r#" { "name": "a\"b\\c\u00e9\ud83d\ude00\n", "len": 24, "neg": -3,
                 "on": true, "opt": null, "fam": "ipv6", "list": ["x", "y"],
                 "map": {"k": [1, 2], "e": []} } "#,
        )
        .unwrap();
        assert_eq!(s.name, "a\"b\\c\u{e9}\u{1F600}\n");
        assert_eq!((s.len, s.neg, s.on), (24, -3, true));
        assert_eq!(s.opt, None);
        assert_eq!(s.fam, Fam::Ipv6);
        assert_eq!(s.list, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(s.map["k"], vec![1, 2]);
        assert!(s.map["e"].is_empty());
        let o: Option<String> = from_str(r#""v""#).unwrap();
        assert_eq!(o.as_deref(), Some("v"));
        assert_eq!(from_str::<Fam>(r#""ipv4""#).unwrap(), Fam::Ipv4);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = from_str::<S>(r#"{"nmae": "x"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `nmae`"), "{e}");
        let e = from_str::<S>(r#"{"name": 5}"#).unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = from_str::<u8>("300").unwrap_err().to_string();
        assert!(e.contains("300"), "{e}");
        let e = from_str::<u32>("1.5").unwrap_err().to_string();
        assert!(e.contains("integers"), "{e}");
        assert_eq!(from_str::<i64>("-9223372036854775808").unwrap(), i64::MIN);
        assert!(from_str::<u64>("18446744073709551616").is_err());
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "\"abc",
            "tru",
            "1 2",
            "\"\\x\"",
            "\"\\ud800\"",
            "-",
            "{1:2}",
            "01",
            "-00",
            "[007]",
        ] {
            assert!(from_str::<serde::de::IgnoredAny>(bad).is_err(), "{bad:?}");
        }
        let e = from_str::<Vec<u8>>("[1, x]").unwrap_err().to_string();
        assert!(e.contains("at byte 4"), "{e}");
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(
            from_str::<serde::de::IgnoredAny>(&deep)
                .unwrap_err()
                .to_string()
                .contains("nested too deeply")
        );
    }
}
