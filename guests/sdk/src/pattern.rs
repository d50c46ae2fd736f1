//! A small regular-expression engine for stage settings, `no_std`.
//!
//! Full-string match (the pattern is implicitly anchored at both ends), with
//! captures. Syntax: literals; `.` (any character, newline included);
//! classes `[a-z0-9_-]` and `[^…]`; escapes `\d \w \s \D \W \S` (ASCII
//! digits, word characters, space/tab/CR/LF; also inside classes, as in
//! `[\w.-]`) and `\` before any ASCII punctuation; groups `( … )` that
//! capture (numbered from 1) and `(?: … )` that do not; alternation `|`;
//! greedy `*`, `+`, `?` and `{n}`, `{n,}`, `{n,m}` (at most 100). `^` and
//! `$` are accepted at the ends and change nothing. Matches and captures are
//! those of the `regex` crate for `\A(?:pattern)\z` with these meanings
//! (checked by the differential fuzz target `fuzz/fuzz_targets/sdk_pattern.rs`),
//! including loops whose body can match nothing: `()*` on `""` captures `""`.
//!
//! Why not the `regex` crate: it adds ~370 KB to a component, which costs
//! every pod creation time to load. Matching is a bounded backtracker: a
//! depth-first search in priority order that enters each (instruction,
//! position) pair at most once. That rule gives the same matches and
//! captures as `regex`'s own engines (its bounded backtracker works the same
//! way), ends loops whose body matched nothing, and bounds the work by
//! instructions × text length; a step and depth budget still turn a
//! pathological pattern into an error (and the stage's fuel bounds it anyway).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Longest pattern accepted.
pub const MAX_PATTERN: usize = 512;
/// Steps one match may take.
pub const MAX_STEPS: u32 = 200_000;
/// Backtracking depth one match may reach (bounds the native stack).
pub const MAX_DEPTH: u32 = 2_000;
/// Instructions a pattern may compile to: counted repetitions multiply
/// (`((a{100}){100}){100}` is 21 bytes and a million instructions), so
/// this, not the length, bounds the memory a pattern takes.
pub const MAX_PROG: usize = 10_000;
/// Instructions × (text length + 1) one match may track (2 MiB of bits):
/// more is refused up front, as it could not finish within `MAX_STEPS`
/// for most patterns anyway.
pub const MAX_PAIRS: usize = 1 << 24;

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Group(Box<Node>, Option<usize>),
    Repeat(Box<Node>, u32, Option<u32>),
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any,
    Class(Vec<(char, char)>, bool),
    Split(usize, usize),
    Jmp(usize),
    Save(usize),
    Match,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    prog: Vec<Inst>,
    groups: usize,
}

/// What a class member stands for.
enum ClassAtom {
    Char(char),
    Set(Vec<(char, char)>),
}

/// The ASCII set of `\d \w \s` (and whether `\D \W \S` negate it).
fn perl_class(c: char) -> Option<(Vec<(char, char)>, bool)> {
    let set = match c.to_ascii_lowercase() {
        'd' => vec![('0', '9')],
        'w' => vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')],
        's' => vec![(' ', ' '), ('\t', '\t'), ('\n', '\n'), ('\r', '\r')],
        _ => return None,
    };
    Some((set, c.is_ascii_uppercase()))
}

/// Every character outside `ranges` (which are ASCII).
fn complement(ranges: &[(char, char)]) -> Vec<(char, char)> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out = Vec::new();
    let mut next = 0u32;
    for (lo, hi) in sorted {
        if lo as u32 > next {
            out.push((
                char::from_u32(next).unwrap_or('\0'),
                char::from_u32(lo as u32 - 1).unwrap_or('\0'),
            ));
        }
        next = next.max(hi as u32 + 1);
    }
    out.push((char::from_u32(next).unwrap_or(char::MAX), char::MAX));
    out
}

struct Parser<'a> {
    chars: Vec<char>,
    pos: usize,
    groups: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn err(&self, m: &str) -> String {
        format!("pattern {:?}: {m} at offset {}", self.src, self.pos)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn alt(&mut self) -> Result<Node, String> {
        let mut branches = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            branches.push(self.concat()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Node::Concat(Vec::new()))
        } else {
            Node::Alt(branches)
        })
    }

    fn concat(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.repeat(atom)?);
        }
        Ok(Node::Concat(items))
    }

    fn number(&mut self) -> Option<u32> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let s: String = self.chars[start..self.pos].iter().collect();
        s.parse().ok()
    }

    fn repeat(&mut self, atom: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.pos += 1;
                let min = self.number().ok_or_else(|| self.err("expected a number"))?;
                let max = if self.peek() == Some(',') {
                    self.pos += 1;
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number().ok_or_else(|| self.err("expected a number"))?)
                    }
                } else {
                    Some(min)
                };
                if self.peek() != Some('}') {
                    return Err(self.err("expected }"));
                }
                if max.is_some_and(|m| m < min) || min > 100 || max.is_some_and(|m| m > 100) {
                    return Err(self.err("bad repetition bounds (at most 100)"));
                }
                (min, max)
            }
            _ => return Ok(atom),
        };
        self.pos += 1;
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    fn escape(&mut self) -> Result<Node, String> {
        let c = self.peek().ok_or_else(|| self.err("dangling \\"))?;
        self.pos += 1;
        match perl_class(c) {
            Some((ranges, negated)) => Ok(Node::Class(ranges, negated)),
            None if c.is_ascii_punctuation() => Ok(Node::Char(c)),
            None => Err(self.err("unknown escape")),
        }
    }

    /// One member of a class: a character, `\` + punctuation, or a Perl
    /// class (`[\w.-]` means word characters, dots and dashes).
    fn class_atom(&mut self) -> Result<ClassAtom, String> {
        let c = self.peek().ok_or_else(|| self.err("unclosed ["))?;
        self.pos += 1;
        if c != '\\' {
            return Ok(ClassAtom::Char(c));
        }
        let e = self.peek().ok_or_else(|| self.err("dangling \\"))?;
        self.pos += 1;
        match perl_class(e) {
            Some((ranges, false)) => Ok(ClassAtom::Set(ranges)),
            Some((ranges, true)) => Ok(ClassAtom::Set(complement(&ranges))),
            None if e.is_ascii_punctuation() => Ok(ClassAtom::Char(e)),
            None => Err(self.err("unknown escape")),
        }
    }

    fn class(&mut self) -> Result<Node, String> {
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            // `]` first is a member, not the end (`[]a]`, `[^]]`).
            if self.peek() == Some(']') && !first {
                self.pos += 1;
                break;
            }
            first = false;
            let lo = self.class_atom()?;
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|n| *n != ']') {
                self.pos += 1;
                match (lo, self.class_atom()?) {
                    (ClassAtom::Char(lo), ClassAtom::Char(hi)) if lo <= hi => ranges.push((lo, hi)),
                    _ => return Err(self.err("bad class range")),
                }
            } else {
                match lo {
                    ClassAtom::Char(c) => ranges.push((c, c)),
                    ClassAtom::Set(r) => ranges.extend(r),
                }
            }
        }
        Ok(Node::Class(ranges, negated))
    }

    fn atom(&mut self) -> Result<Node, String> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
        self.pos += 1;
        match c {
            '.' => Ok(Node::Any),
            '\\' => self.escape(),
            '[' => self.class(),
            '(' => {
                let index = if self.chars.get(self.pos..self.pos + 2) == Some(&['?', ':']) {
                    self.pos += 2;
                    None
                } else {
                    self.groups += 1;
                    Some(self.groups)
                };
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return Err(self.err("unclosed ("));
                }
                self.pos += 1;
                Ok(Node::Group(Box::new(inner), index))
            }
            '*' | '+' | '?' | '{' => Err(self.err("nothing to repeat")),
            ')' => Err(self.err("unmatched )")),
            c => Ok(Node::Char(c)),
        }
    }
}

/// Instructions `node` compiles to (saturating: only compared to MAX_PROG).
fn size(node: &Node) -> usize {
    match node {
        Node::Char(_) | Node::Any | Node::Class(..) => 1,
        Node::Concat(items) => items.iter().fold(0, |n, i| n.saturating_add(size(i))),
        Node::Alt(b) => b.iter().fold(2 * b.len(), |n, i| n.saturating_add(size(i))),
        Node::Group(inner, i) => size(inner).saturating_add(if i.is_some() { 2 } else { 0 }),
        Node::Repeat(inner, min, max) => {
            let one = size(inner).saturating_add(4);
            let times = max.unwrap_or(*min).max(*min).saturating_add(1);
            one.saturating_mul(times as usize)
        }
    }
}

/// Whether `node` can match the empty string.
fn nullable(node: &Node) -> bool {
    match node {
        Node::Char(_) | Node::Any | Node::Class(..) => false,
        Node::Concat(items) => items.iter().all(nullable),
        Node::Alt(b) => b.iter().any(nullable),
        Node::Group(inner, _) => nullable(inner),
        Node::Repeat(inner, min, _) => *min == 0 || nullable(inner),
    }
}

/// Appends `node`'s code. Repetitions are laid out as `regex`'s Thompson
/// compiler lays them out, because with the visit-once rule the shape of a
/// loop decides which empty iterations are taken: `x{n,}` is `x{n-1}` then
/// `x+`, and `x*` is a plain loop when `x` cannot match empty but `(x+)?`
/// when it can (so one empty iteration is taken and its captures kept).
fn emit(node: &Node, prog: &mut Vec<Inst>) {
    match node {
        Node::Char(c) => prog.push(Inst::Char(*c)),
        Node::Any => prog.push(Inst::Any),
        Node::Class(r, n) => prog.push(Inst::Class(r.clone(), *n)),
        Node::Concat(items) => items.iter().for_each(|n| emit(n, prog)),
        Node::Alt(branches) => {
            let mut jumps = Vec::new();
            for (i, b) in branches.iter().enumerate() {
                if i + 1 < branches.len() {
                    let split = prog.len();
                    prog.push(Inst::Split(split + 1, 0));
                    emit(b, prog);
                    jumps.push(prog.len());
                    prog.push(Inst::Jmp(0));
                    let next = prog.len();
                    prog[split] = Inst::Split(split + 1, next);
                } else {
                    emit(b, prog);
                }
            }
            let end = prog.len();
            for j in jumps {
                prog[j] = Inst::Jmp(end);
            }
        }
        Node::Group(inner, Some(i)) => {
            prog.push(Inst::Save(2 * i));
            emit(inner, prog);
            prog.push(Inst::Save(2 * i + 1));
        }
        Node::Group(inner, None) => emit(inner, prog),
        Node::Repeat(inner, min, None) => {
            if *min == 0 && !nullable(inner) {
                // L: split body, out; body; jmp L.
                let l = prog.len();
                prog.push(Inst::Split(l + 1, 0));
                emit(inner, prog);
                prog.push(Inst::Jmp(l));
                let out = prog.len();
                prog[l] = Inst::Split(l + 1, out);
                return;
            }
            for _ in 1..*min {
                emit(inner, prog);
            }
            // `x+`, behind a `?` when min is 0: [split body, out;] body;
            // split body, out.
            let question = (*min == 0).then(|| {
                prog.push(Inst::Split(0, 0));
                prog.len() - 1
            });
            let body = prog.len();
            emit(inner, prog);
            let plus = prog.len();
            prog.push(Inst::Split(body, plus + 1));
            if let Some(q) = question {
                prog[q] = Inst::Split(body, plus + 1);
            }
        }
        Node::Repeat(inner, min, Some(max)) => {
            for _ in 0..*min {
                emit(inner, prog);
            }
            let mut splits = Vec::new();
            for _ in *min..*max {
                splits.push(prog.len());
                prog.push(Inst::Split(0, 0));
                emit(inner, prog);
            }
            let out = prog.len();
            for s in splits {
                prog[s] = Inst::Split(s + 1, out);
            }
        }
    }
}

/// The (instruction, position) pairs a match has entered, one bit each.
/// (A bit set, not a tree or hash set: it adds nothing to a component's
/// size, and every stage that matches a pattern loads it.)
struct Visited(Vec<u64>);

impl Visited {
    /// Marks pair `i`; false when it was marked already.
    fn insert(&mut self, i: usize) -> bool {
        let (w, m) = (i / 64, 1u64 << (i % 64));
        let fresh = self.0[w] & m == 0;
        self.0[w] |= m;
        fresh
    }
}

impl Pattern {
    /// Compiles a pattern; the message names the pattern and the offset.
    pub fn new(src: &str) -> Result<Self, String> {
        if src.len() > MAX_PATTERN {
            return Err(format!("pattern is longer than {MAX_PATTERN} bytes"));
        }
        let body = src.strip_prefix('^').unwrap_or(src);
        // A final `$` is the anchor unless escaped: an odd run of `\`
        // before it (`a\\$` is `a\` then the end).
        let slashes = body
            .strip_suffix('$')
            .map(|b| b.len() - b.trim_end_matches('\\').len());
        let body = if slashes.is_some_and(|n| n % 2 == 0) {
            &body[..body.len() - 1]
        } else {
            body
        };
        let mut p = Parser {
            chars: body.chars().collect(),
            pos: 0,
            groups: 0,
            src,
        };
        let node = p.alt()?;
        if p.pos != p.chars.len() {
            return Err(p.err("unexpected )"));
        }
        if size(&node) > MAX_PROG {
            return Err(format!(
                "pattern {src:?} compiles to more than {MAX_PROG} instructions; simplify it"
            ));
        }
        let mut prog = vec![Inst::Save(0)];
        emit(&node, &mut prog);
        prog.push(Inst::Save(1));
        prog.push(Inst::Match);
        Ok(Pattern {
            prog,
            groups: p.groups,
        })
    }

    /// Number of capturing groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Matches the whole of `text`; on success, the captures (index 0 is the
    /// whole match). `Err` when the step or depth budget runs out, or when
    /// the text is too long for the pattern (`MAX_PAIRS`).
    pub fn captures(&self, text: &str) -> Result<Option<Vec<Option<String>>>, String> {
        let chars: Vec<char> = text.chars().collect();
        let pairs = self.prog.len().saturating_mul(chars.len() + 1);
        if pairs > MAX_PAIRS {
            return Err(format!(
                "a text of {} characters is too long for this pattern ({} instructions); simplify it",
                chars.len(),
                self.prog.len()
            ));
        }
        let mut m = Matcher {
            prog: &self.prog,
            s: &chars,
            saves: vec![None; 2 * (self.groups + 1)],
            visited: Visited(vec![0; pairs.div_ceil(64)]),
            steps: 0,
        };
        if m.run(0, 0, 0)? {
            let saves = m.saves;
            Ok(Some(
                (0..=self.groups)
                    .map(|g| match (saves[2 * g], saves[2 * g + 1]) {
                        (Some(a), Some(b)) if a <= b => Some(chars[a..b].iter().collect()),
                        _ => None,
                    })
                    .collect(),
            ))
        } else {
            Ok(None)
        }
    }

    /// True when the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> Result<bool, String> {
        self.captures(text).map(|c| c.is_some())
    }
}

/// One match in progress.
struct Matcher<'a> {
    prog: &'a [Inst],
    s: &'a [char],
    saves: Vec<Option<usize>>,
    visited: Visited,
    steps: u32,
}

impl Matcher<'_> {
    /// Whether the program matches from `pc` at `sp` (captures in `saves`).
    fn run(&mut self, mut pc: usize, mut sp: usize, depth: u32) -> Result<bool, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "pattern backtracks deeper than {MAX_DEPTH}; simplify it"
            ));
        }
        loop {
            // Entered before: it failed from there (success does not depend
            // on captures), or it is on the current path through a loop
            // whose body matched nothing.
            if !self.visited.insert(pc * (self.s.len() + 1) + sp) {
                return Ok(false);
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(format!(
                    "pattern needs more than {MAX_STEPS} steps; simplify it"
                ));
            }
            match &self.prog[pc] {
                Inst::Char(c) => {
                    if self.s.get(sp) != Some(c) {
                        return Ok(false);
                    }
                    pc += 1;
                    sp += 1;
                }
                Inst::Any => {
                    if sp >= self.s.len() {
                        return Ok(false);
                    }
                    pc += 1;
                    sp += 1;
                }
                Inst::Class(ranges, negated) => {
                    let Some(c) = self.s.get(sp) else {
                        return Ok(false);
                    };
                    if ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) == *negated {
                        return Ok(false);
                    }
                    pc += 1;
                    sp += 1;
                }
                Inst::Jmp(t) => pc = *t,
                Inst::Split(a, b) => {
                    let (a, b) = (*a, *b);
                    if self.run(a, sp, depth + 1)? {
                        return Ok(true);
                    }
                    pc = b;
                }
                Inst::Save(n) => {
                    let n = *n;
                    let old = self.saves[n];
                    self.saves[n] = Some(sp);
                    if self.run(pc + 1, sp, depth + 1)? {
                        return Ok(true);
                    }
                    self.saves[n] = old;
                    return Ok(false);
                }
                Inst::Match => return Ok(sp == self.s.len()),
            }
        }
    }
}

/// Expands `$1`…`$9` in `template` with captures (`$$` is a literal `$`).
pub fn expand(template: &str, caps: &[Option<String>]) -> String {
    let mut out = String::new();
    let mut it = template.chars().peekable();
    while let Some(c) = it.next() {
        if c == '$' {
            match it.peek().copied() {
                Some('$') => {
                    it.next();
                    out.push('$');
                }
                Some(d) if d.is_ascii_digit() => {
                    it.next();
                    let i = d as usize - '0' as usize;
                    if let Some(Some(v)) = caps.get(i) {
                        out.push_str(v);
                    }
                }
                _ => out.push('$'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p).unwrap().is_match(s).unwrap()
    }

    #[test]
    fn whole_string_matching() {
        assert!(m("team-[a-z]+", "team-abc"));
        assert!(!m("team-[a-z]+", "team-abc1"));
        assert!(!m("team", "my-team"));
        assert!(m("^team$", "team"));
        assert!(m(".*-prod", "shop-prod"));
        assert!(m("a|bc|d", "bc"));
        assert!(!m("a|bc|d", "abc"));
        assert!(m("x\\d{2,3}", "x123"));
        assert!(!m("x\\d{2,3}", "x1234"));
        assert!(m("[^-]+", "abc"));
        assert!(!m("[^-]+", "a-c"));
        assert!(m("a\\.b", "a.b"));
        assert!(!m("a\\.b", "axb"));
        assert!(m("(?:ab)+c?", "ababc"));
        assert!(m("", ""));
        assert!(m("[a-]x", "-x"));
    }

    #[test]
    fn captures_and_templates() {
        let p = Pattern::new("(team|org)-([a-z0-9]+)(-.*)?").unwrap();
        assert_eq!(p.groups(), 3);
        let c = p.captures("org-acme-dev").unwrap().unwrap();
        assert_eq!(c[1].as_deref(), Some("org"));
        assert_eq!(c[2].as_deref(), Some("acme"));
        assert_eq!(c[3].as_deref(), Some("-dev"));
        assert_eq!(expand("t-$2$$", &c), "t-acme$");
        let c = p.captures("team-x").unwrap().unwrap();
        assert_eq!(c[3], None);
        assert_eq!(expand("$2$3", &c), "x");
        assert!(p.captures("nope").unwrap().is_none());
    }

    #[test]
    fn bad_patterns_name_the_problem() {
        for (p, needle) in [
            ("(a", "unclosed ("),
            ("a)", "unexpected )"),
            ("*a", "nothing to repeat"),
            ("[a", "unclosed ["),
            ("a{3,1}", "bounds"),
            ("\\q", "escape"),
        ] {
            let e = Pattern::new(p).unwrap_err();
            assert!(e.contains(needle), "{p}: {e}");
        }
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN + 1)).is_err());
    }

    // Regressions found by fuzz/fuzz_targets/sdk_pattern.rs (differential
    // against the `regex` crate).

    #[test]
    fn perl_classes_inside_brackets_are_classes() {
        // Was: `\w` inside `[]` meant the letter `w`.
        assert!(m("[\\w.-]+", "pod-1.a_b"));
        assert!(!m("[\\w.-]+", "a/b"));
        assert!(!m("[\\w]", "é"));
        assert!(m("[\\d\\s]+", "1 2\t3"));
        assert!(!m("[\\d]", "d"));
        assert!(m("[\\D]", "é") && !m("[\\D]", "5"));
        assert!(m("[^\\W]", "a") && !m("[^\\W]", "-"));
        assert!(m("[\\]-\\^]", "^"), "an escaped range end is the character");
        assert!(
            Pattern::new("[\\q]")
                .unwrap_err()
                .contains("unknown escape")
        );
        assert!(
            Pattern::new("[a-\\d]")
                .unwrap_err()
                .contains("bad class range")
        );
    }

    #[test]
    fn an_escaped_backslash_before_the_final_dollar_leaves_it_an_anchor() {
        // Was: `a\\$` required a literal `$`.
        assert!(m("a\\\\$", "a\\"));
        assert!(!m("a\\\\$", "a\\$"));
        assert!(m("a\\$", "a$"));
        assert!(m("a\\\\\\$", "a\\$"));
    }

    #[test]
    fn loops_over_what_can_match_empty_end_instead_of_recursing() {
        // Was: every input failed with the depth budget error.
        assert!(m("(a|b?)+", "ab"));
        assert!(m("(?:a*)*", ""));
        assert!(m("([a-z]*-?)*", "team-a-b"));
        assert!(!m("(a?)*", "b"));
        let c = Pattern::new("(a?)*")
            .unwrap()
            .captures("a")
            .unwrap()
            .unwrap();
        assert_eq!(c[1].as_deref(), Some("a"));
        let c = Pattern::new("(a?)*")
            .unwrap()
            .captures("")
            .unwrap()
            .unwrap();
        // One empty iteration is taken (as `regex` does): group 1 = "".
        assert_eq!(c[1].as_deref(), Some(""));
    }

    #[test]
    fn nested_counted_repetition_is_refused_not_compiled() {
        // Was: 21 bytes compiled to a million instructions (and 10^8 for
        // one more level).
        let e = Pattern::new("((a{100}){100}){100}").unwrap_err();
        assert!(e.contains("instructions"), "{e}");
        assert!(Pattern::new("[a-z0-9]{1,63}(\\.[a-z0-9]{1,63}){0,3}").is_ok());
    }

    #[test]
    fn nested_loops_fail_in_linear_time() {
        // Exponential for a plain backtracker; each (instruction, position)
        // is entered once here, so this fails well within the budget.
        let p = Pattern::new("(a*)*b").unwrap();
        assert_eq!(p.is_match(&"a".repeat(200)), Ok(false));
        assert_eq!(p.is_match(&format!("{}b", "a".repeat(200))), Ok(true));
    }

    #[test]
    fn work_beyond_the_budget_is_an_error() {
        let p = Pattern::new("(a*){100}b").unwrap();
        let e = p.is_match(&"a".repeat(3000)).unwrap_err();
        assert!(e.contains("steps") || e.contains("deeper"), "{e}");
        let e = p.is_match(&"a".repeat(100_000)).unwrap_err();
        assert!(e.contains("too long for this pattern"), "{e}");
    }

    #[test]
    fn loop_captures_follow_regex() {
        // Expected values are the `regex` crate's for `\A(?:p)\z`.
        let caps = |p: &str, t: &str| Pattern::new(p).unwrap().captures(t).unwrap().unwrap();
        assert_eq!(caps("()*", "")[1].as_deref(), Some(""));
        assert_eq!(caps("(a|)*", "a")[1].as_deref(), Some("a"));
        assert_eq!(caps("(a*)+", "aa")[1].as_deref(), Some("aa"));
        assert_eq!(caps("(a?){2,}", "a")[1].as_deref(), Some(""));
        assert_eq!(caps("(?:(a)|b)*", "ab")[1].as_deref(), Some("a"));
    }
}
