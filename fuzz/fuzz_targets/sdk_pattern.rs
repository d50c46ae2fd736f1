//! Differential fuzzing of the SDK's pattern matcher
//! (`tenet_policy_sdk::pattern`) against the `regex` crate.
//!
//! A pattern is generated structurally (with `arbitrary`) in the syntax the
//! SDK documents: literals, `.`, classes with ranges, `\d \w \s \D \W \S`
//! (also inside classes), `\` before punctuation, capturing and `(?:…)`
//! groups, alternation, greedy `* + ? {n} {n,} {n,m}` (bounds at most 100),
//! optional `^`/`$` at the ends. It is rendered twice: in the SDK's syntax
//! and as the equivalent `regex` (`\A(?:…)\z`, since the SDK matches the
//! whole text; `.` with `s`; the SDK's ASCII `\d \w \s` spelled as ASCII
//! classes). Texts are sampled from the pattern itself (so most match)
//! plus mutated and free ones.
//!
//! Invariants: the SDK compiles every such pattern (unless it is over its
//! documented size limits), reports the same number of groups, and for each
//! text gives the same match and the same captures as `regex`, or stops
//! with its documented step/depth budget error. No panic; no input may run
//! long (the run's `-timeout` catches super-linear blowups).
//!
//! A second mode feeds the raw fuzz string as a pattern: only "no panic,
//! bounded time" is checked (the two syntaxes differ outside the subset).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tenet_policy_sdk::pattern::{self, Pattern};

/// Characters literals, classes and texts are drawn from: letters, digits,
/// every character special to either syntax, blanks and non-ASCII.
const ALPHABET: [char; 30] = [
    'a', 'b', 'c', 'A', 'z', '0', '9', '_', '-', '.', '\\', '[', ']', '^', '$', '(', ')', '*', '+',
    '?', '{', '}', '|', '/', ',', ' ', '\n', '\t', 'é', '€',
];

/// Nesting kept from the generated tree (deeper nodes become literals).
const MAX_NEST: u32 = 8;

#[derive(Arbitrary, Debug)]
enum Node {
    Lit(u8),
    Any,
    Perl(u8),
    Class(bool, Vec<Item>),
    Group(Box<Node>, bool),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, Rep),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Item {
    Char(u8),
    Range(u8, u8),
    Perl(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Rep {
    Star,
    Plus,
    Opt,
    Exact(u8),
    AtLeast(u8),
    Between(u8, u8),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Structured {
        node: Node,
        caret: bool,
        dollar: bool,
        texts: Vec<Text>,
    },
    Raw {
        pattern: String,
        text: String,
    },
}

#[derive(Arbitrary, Debug)]
enum Text {
    /// Sampled from the pattern with these choices.
    Sample(Vec<u8>),
    /// Sampled, then one character replaced.
    Mutated(Vec<u8>, u8, u8),
    /// Alphabet characters.
    Free(Vec<u8>),
}

fn ch(b: u8) -> char {
    ALPHABET[b as usize % ALPHABET.len()]
}

/// Perl classes: the SDK's escape letter and the ASCII set it stands for.
const PERL: [(char, &str, bool); 6] = [
    ('d', "0-9", false),
    ('D', "0-9", true),
    ('w', "0-9A-Za-z_", false),
    ('W', "0-9A-Za-z_", true),
    ('s', "\\t\\n\\r ", false),
    ('S', "\\t\\n\\r ", true),
];

fn perl(b: u8) -> (char, &'static str, bool) {
    PERL[b as usize % PERL.len()]
}

fn rep(r: Rep) -> (u32, Option<u32>) {
    let n = |b: u8| u32::from(b) % 101;
    match r {
        Rep::Star => (0, None),
        Rep::Plus => (1, None),
        Rep::Opt => (0, Some(1)),
        Rep::Exact(a) => (n(a), Some(n(a))),
        Rep::AtLeast(a) => (n(a), None),
        Rep::Between(a, b) => (n(a).min(n(b)), Some(n(a).max(n(b)))),
    }
}

/// Prunes the generated tree to `MAX_NEST` levels.
fn prune(node: Node, nest: u32) -> Node {
    if nest >= MAX_NEST {
        return match node {
            n @ (Node::Lit(_) | Node::Any | Node::Perl(_) | Node::Class(..)) => n,
            _ => Node::Lit(0),
        };
    }
    match node {
        Node::Group(n, c) => Node::Group(Box::new(prune(*n, nest + 1)), c),
        Node::Concat(v) => Node::Concat(v.into_iter().map(|n| prune(n, nest + 1)).collect()),
        Node::Alt(v) => Node::Alt(v.into_iter().map(|n| prune(n, nest + 1)).collect()),
        Node::Repeat(n, r) => Node::Repeat(Box::new(prune(*n, nest + 1)), r),
        n => n,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    Sdk,
    Regex,
}

/// A character outside a class.
fn lit(c: char, d: Dialect, out: &mut String) {
    match d {
        Dialect::Sdk if c.is_ascii_punctuation() => {
            out.push('\\');
            out.push(c);
        }
        Dialect::Sdk => out.push(c),
        Dialect::Regex => out.push_str(&regex::escape(&c.to_string())),
    }
}

/// A character inside a class (both syntaxes take `\` before punctuation).
fn class_char(c: char, out: &mut String) {
    if c.is_ascii_punctuation() {
        out.push('\\');
    }
    out.push(c);
}

fn render(node: &Node, d: Dialect, out: &mut String) {
    match node {
        Node::Lit(b) => lit(ch(*b), d, out),
        Node::Any => out.push_str(if d == Dialect::Sdk { "." } else { "(?s:.)" }),
        Node::Perl(b) => {
            let (letter, set, negated) = perl(*b);
            match d {
                Dialect::Sdk => {
                    out.push('\\');
                    out.push(letter);
                }
                Dialect::Regex => {
                    out.push_str(if negated { "[^" } else { "[" });
                    out.push_str(set);
                    out.push(']');
                }
            }
        }
        Node::Class(negated, items) if !items.is_empty() => {
            out.push('[');
            if *negated {
                out.push('^');
            }
            for item in items {
                match *item {
                    Item::Char(b) => class_char(ch(b), out),
                    Item::Range(a, b) => {
                        let (lo, hi) = if ch(a) <= ch(b) {
                            (ch(a), ch(b))
                        } else {
                            (ch(b), ch(a))
                        };
                        class_char(lo, out);
                        out.push('-');
                        class_char(hi, out);
                    }
                    Item::Perl(b) => {
                        let (letter, set, negated) = perl(b);
                        match (d, negated) {
                            (Dialect::Sdk, _) => {
                                out.push('\\');
                                out.push(letter);
                            }
                            (Dialect::Regex, false) => out.push_str(set),
                            (Dialect::Regex, true) => {
                                out.push_str("[^");
                                out.push_str(set);
                                out.push(']');
                            }
                        }
                    }
                }
            }
            out.push(']');
        }
        Node::Class(..) => lit('a', d, out),
        Node::Group(inner, capturing) => {
            out.push_str(if *capturing { "(" } else { "(?:" });
            render(inner, d, out);
            out.push(')');
        }
        Node::Concat(items) => {
            for n in items {
                if matches!(n, Node::Alt(v) if v.len() > 1) {
                    out.push_str("(?:");
                    render(n, d, out);
                    out.push(')');
                } else {
                    render(n, d, out);
                }
            }
        }
        Node::Alt(branches) => {
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                render(b, d, out);
            }
        }
        Node::Repeat(inner, r) => {
            let atom = matches!(
                **inner,
                Node::Lit(_) | Node::Any | Node::Perl(_) | Node::Class(..) | Node::Group(..)
            );
            if !atom {
                out.push_str("(?:");
            }
            render(inner, d, out);
            if !atom {
                out.push(')');
            }
            match rep(*r) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (n, None) => out.push_str(&format!("{{{n},}}")),
                (n, Some(m)) if n == m => out.push_str(&format!("{{{n}}}")),
                (n, Some(m)) => out.push_str(&format!("{{{n},{m}}}")),
            }
        }
    }
}

/// Whether `c` is in a Perl class's set.
fn in_perl(b: u8, c: char) -> bool {
    let (letter, _, negated) = perl(b);
    let inside = match letter.to_ascii_lowercase() {
        'd' => c.is_ascii_digit(),
        'w' => c.is_ascii_alphanumeric() || c == '_',
        _ => matches!(c, ' ' | '\t' | '\n' | '\r'),
    };
    inside != negated
}

/// Appends a text the pattern should match, choices taken from `u`.
fn sample(node: &Node, u: &mut Unstructured, out: &mut String) {
    if out.len() > 200 {
        return;
    }
    let pick = |u: &mut Unstructured| ch(u.arbitrary().unwrap_or(0));
    match node {
        Node::Lit(b) => out.push(ch(*b)),
        Node::Any => out.push(pick(u)),
        Node::Perl(b) => {
            let c = (0..8)
                .map(|_| pick(u))
                .find(|c| in_perl(*b, *c))
                .unwrap_or('a');
            out.push(c);
        }
        Node::Class(_, items) if !items.is_empty() => {
            let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % items.len();
            let c = match items[i] {
                Item::Char(b) => ch(b),
                Item::Range(a, b) => {
                    let (lo, hi) = (ch(a).min(ch(b)) as u32, ch(a).max(ch(b)) as u32);
                    let k = u.arbitrary::<u32>().unwrap_or(0) % (hi - lo + 1);
                    char::from_u32(lo + k).unwrap_or(ch(a))
                }
                Item::Perl(b) => (0..8)
                    .map(|_| pick(u))
                    .find(|c| in_perl(b, *c))
                    .unwrap_or('a'),
            };
            out.push(c);
        }
        Node::Class(..) => out.push('a'),
        Node::Group(inner, _) => sample(inner, u, out),
        Node::Concat(items) => items.iter().for_each(|n| sample(n, u, out)),
        Node::Alt(branches) if !branches.is_empty() => {
            let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % branches.len();
            sample(&branches[i], u, out);
        }
        Node::Alt(_) => {}
        Node::Repeat(inner, r) => {
            let (min, max) = rep(*r);
            let extra = u32::from(u.arbitrary::<u8>().unwrap_or(0) % 4);
            let n = max.map_or(min + extra, |m| (min + extra).min(m));
            for _ in 0..n {
                sample(inner, u, out);
            }
        }
    }
}

fn text_of(t: &Text, node: &Node) -> String {
    match t {
        Text::Sample(choices) => {
            let mut s = String::new();
            sample(node, &mut Unstructured::new(choices), &mut s);
            s
        }
        Text::Mutated(choices, at, to) => {
            let mut s = String::new();
            sample(node, &mut Unstructured::new(choices), &mut s);
            let mut chars: Vec<char> = s.chars().collect();
            if !chars.is_empty() {
                let i = usize::from(*at) % chars.len();
                chars[i] = ch(*to);
            }
            chars.into_iter().collect()
        }
        Text::Free(bytes) => bytes.iter().take(64).map(|b| ch(*b)).collect(),
    }
}

/// Whether a capturing group sits under a `{0}` (or `{0,0}`) repetition.
fn has_zero_repeated_group(node: &Node, under_zero: bool) -> bool {
    match node {
        Node::Group(inner, capturing) => {
            (*capturing && under_zero) || has_zero_repeated_group(inner, under_zero)
        }
        Node::Concat(v) | Node::Alt(v) => v.iter().any(|n| has_zero_repeated_group(n, under_zero)),
        Node::Repeat(inner, r) => {
            has_zero_repeated_group(inner, under_zero || rep(*r).1 == Some(0))
        }
        _ => false,
    }
}

/// The SDK's budget errors, which its docs promise instead of a hang.
fn is_budget(e: &str) -> bool {
    e.contains("steps; simplify it")
        || e.contains("backtracks deeper than")
        || e.contains("too long for this pattern")
}

fuzz_target!(|input: Input| {
    let (node, caret, dollar, texts) = match input {
        Input::Raw { pattern, text } => {
            // Outside the common subset: only no panic and bounded time.
            if let Ok(p) = Pattern::new(&pattern) {
                if let Ok(Some(caps)) = p.captures(&text) {
                    assert_eq!(caps.len(), p.groups() + 1);
                    assert_eq!(caps[0].as_deref(), Some(text.as_str()));
                }
            }
            return;
        }
        Input::Structured {
            node,
            caret,
            dollar,
            texts,
        } => (prune(node, 0), caret, dollar, texts),
    };
    let mut sdk_src = String::from(if caret { "^" } else { "" });
    render(&node, Dialect::Sdk, &mut sdk_src);
    if dollar {
        sdk_src.push('$');
    }
    let mut re_src = String::from("\\A(?:");
    render(&node, Dialect::Regex, &mut re_src);
    re_src.push_str(")\\z");

    let ours = match Pattern::new(&sdk_src) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                (sdk_src.len() > pattern::MAX_PATTERN && e.contains("longer than"))
                    || e.contains("compiles to more than"),
                "SDK refused {sdk_src:?} (regex {re_src:?}): {e}"
            );
            return;
        }
    };
    let theirs = match regex::RegexBuilder::new(&re_src)
        .size_limit(1 << 24)
        .build()
    {
        Ok(r) => r,
        Err(regex::Error::CompiledTooBig(_)) => return,
        Err(e) => panic!("regex refused {re_src:?} (SDK {sdk_src:?}): {e}"),
    };
    // `regex` drops a group repeated `{0}` times from its numbering; the SDK
    // keeps it (numbers follow the text): there, compare matches only.
    let zero = has_zero_repeated_group(&node, false);
    if !zero {
        assert_eq!(
            ours.groups() + 1,
            theirs.captures_len(),
            "groups of {sdk_src:?}"
        );
    }
    for t in texts.iter().take(4) {
        let text = text_of(t, &node);
        let want: Option<Vec<Option<String>>> = theirs.captures(&text).map(|c| {
            c.iter()
                .map(|m| m.map(|m| m.as_str().to_string()))
                .collect()
        });
        match ours.captures(&text) {
            Ok(got) if zero => assert_eq!(
                got.is_some(),
                want.is_some(),
                "pattern {sdk_src:?} (regex {re_src:?}) on {text:?}"
            ),
            Ok(got) => assert_eq!(
                got, want,
                "pattern {sdk_src:?} (regex {re_src:?}) on {text:?}"
            ),
            Err(e) => assert!(is_budget(&e), "pattern {sdk_src:?} on {text:?}: {e}"),
        }
    }
});
