//! The table's invariants: one meaning per code, every error's code in the
//! table, no numeric code outside it, and the README listing exactly it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::ipam::{AttachmentKey, IpamError};
use crate::netns::NetnsError;
use crate::plan::PlanError;
use crate::plan::node::NodeCheckError;
use crate::policy::{Budget, Failure, PolicyError};
use crate::sdn::SdnError;
use crate::sdn::midonet::client::{ApiError, ApiErrorKind};
use crate::sdn::midonet::records::RecordsError;

#[test]
fn each_code_and_name_has_one_meaning() {
    let mut codes = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut meanings = BTreeSet::new();
    for c in CODES {
        assert!(
            codes.insert(c.code),
            "code {} is in the table twice",
            c.code
        );
        assert!(
            names.insert(c.name),
            "name {} is in the table twice",
            c.name
        );
        assert!(
            meanings.insert(c.meaning),
            "{} has the meaning of another code",
            c.name
        );
        assert!(!c.meaning.is_empty(), "{} has no meaning", c.name);
    }
    // In increasing order, as the README lists them.
    assert!(CODES.windows(2).all(|w| w[0].code < w[1].code));
    assert_eq!(lookup(CLAIM_LOST).map(|c| c.name), Some("CLAIM_LOST"));
    assert_eq!(lookup(9), None);
}

fn ipam_errors() -> Vec<IpamError> {
    let k = AttachmentKey::new("n", "c", "eth0");
    let net: ipnet::IpNet = "10.0.0.0/24".parse().unwrap();
    let ip: std::net::IpAddr = "10.0.0.5".parse().unwrap();
    let all = vec![
        IpamError::Exhausted {
            pool: "p".into(),
            tenant: "t".into(),
            subnet: net,
        },
        IpamError::SubnetsExhausted {
            pool: "p".into(),
            tenant: "t".into(),
            supernet: net,
            subnet_len: 26,
        },
        IpamError::StaticTaken {
            address: ip,
            pool: "p".into(),
            tenant: "t".into(),
            owner: "o".into(),
        },
        IpamError::StaticOutOfRange {
            address: ip,
            pool: "p".into(),
            tenant: "t".into(),
            reason: "r".into(),
        },
        IpamError::InvalidRequest { reason: "r".into() },
        IpamError::AttachmentConflict {
            key: k.clone(),
            detail: "d".into(),
        },
        IpamError::ClaimLost { key: k },
        IpamError::LeaseLost { detail: "d".into() },
        IpamError::PoolConflict {
            pool: "p".into(),
            detail: "d".into(),
        },
        IpamError::LockTimeout {
            network: "n".into(),
            waited: Duration::from_secs(1),
        },
        IpamError::Unavailable { detail: "d".into() },
        IpamError::Corrupt {
            path: "x".into(),
            detail: "d".into(),
        },
        IpamError::io("x", std::io::Error::other("boom")),
    ];
    // Exhaustive on purpose: a new variant does not compile until it is
    // added above.
    for e in &all {
        match e {
            IpamError::Exhausted { .. }
            | IpamError::SubnetsExhausted { .. }
            | IpamError::StaticTaken { .. }
            | IpamError::StaticOutOfRange { .. }
            | IpamError::InvalidRequest { .. }
            | IpamError::AttachmentConflict { .. }
            | IpamError::ClaimLost { .. }
            | IpamError::LeaseLost { .. }
            | IpamError::PoolConflict { .. }
            | IpamError::LockTimeout { .. }
            | IpamError::Unavailable { .. }
            | IpamError::Corrupt { .. }
            | IpamError::Io { .. } => {}
        }
    }
    all
}

fn netns_errors() -> Vec<NetnsError> {
    let p = PathBuf::from("/x");
    let all = vec![
        NetnsError::InvalidNetns {
            path: p.clone(),
            reason: "r".into(),
        },
        NetnsError::NodeNetns { path: p.clone() },
        NetnsError::IfnameExists {
            ifname: "eth0".into(),
            netns: p,
        },
        NetnsError::LinkNotFound {
            ifname: "eth0".into(),
            netns: "n".into(),
        },
        NetnsError::InvalidInput("x".into()),
        NetnsError::netlink("add", rtnetlink::Error::RequestFailed),
        NetnsError::Sysctl {
            key: "k".into(),
            source: std::io::Error::other("x"),
        },
        NetnsError::Namespace {
            op: "setns".into(),
            source: std::io::Error::other("x"),
        },
        NetnsError::Injected("x".into()),
        NetnsError::RouteConflict {
            dst: "0.0.0.0/0".parse().unwrap(),
            ifname: "net1".into(),
            existing: "e".into(),
        },
    ];
    for e in &all {
        match e {
            NetnsError::InvalidNetns { .. }
            | NetnsError::NodeNetns { .. }
            | NetnsError::IfnameExists { .. }
            | NetnsError::LinkNotFound { .. }
            | NetnsError::InvalidInput(_)
            | NetnsError::Netlink { .. }
            | NetnsError::Sysctl { .. }
            | NetnsError::Namespace { .. }
            | NetnsError::Injected(_)
            | NetnsError::RouteConflict { .. } => {}
        }
    }
    all
}

fn api_errors() -> Vec<ApiError> {
    let kinds = [
        ApiErrorKind::BadRequest,
        ApiErrorKind::Unauthorized,
        ApiErrorKind::NotFound,
        ApiErrorKind::NotAcceptable,
        ApiErrorKind::UnsupportedMediaType,
        ApiErrorKind::Conflict,
        ApiErrorKind::Contended,
        ApiErrorKind::Server,
        ApiErrorKind::Status,
        ApiErrorKind::Unreachable,
        ApiErrorKind::InvalidResponse,
    ];
    for k in &kinds {
        match k {
            ApiErrorKind::BadRequest
            | ApiErrorKind::Unauthorized
            | ApiErrorKind::NotFound
            | ApiErrorKind::NotAcceptable
            | ApiErrorKind::UnsupportedMediaType
            | ApiErrorKind::Conflict
            | ApiErrorKind::Contended
            | ApiErrorKind::Server
            | ApiErrorKind::Status
            | ApiErrorKind::Unreachable
            | ApiErrorKind::InvalidResponse => {}
        }
    }
    let mut all: Vec<ApiError> = kinds
        .into_iter()
        .map(|kind| ApiError {
            kind,
            method: "POST".into(),
            path: "/routers".into(),
            status: None,
            message: "m".into(),
        })
        .collect();
    // 503 is "try again later", other 5xx a server error.
    for status in [500, 503] {
        all.push(ApiError {
            kind: ApiErrorKind::Server,
            method: "POST".into(),
            path: "/routers".into(),
            status: Some(status),
            message: "m".into(),
        });
    }
    all
}

fn records_errors() -> Vec<RecordsError> {
    let all = vec![
        RecordsError::Unavailable("x".into()),
        RecordsError::Corrupt {
            key: "k".into(),
            message: "m".into(),
        },
    ];
    for e in &all {
        match e {
            RecordsError::Unavailable(_) | RecordsError::Corrupt { .. } => {}
        }
    }
    all
}

fn sdn_errors() -> Vec<SdnError> {
    let mut all = vec![
        SdnError::InvalidInput("x".into()),
        SdnError::netlink("add", rtnetlink::Error::RequestFailed),
        SdnError::NftUnavailable("x".into()),
        SdnError::Nft {
            op: "x".into(),
            stderr: "y".into(),
        },
        SdnError::Missing {
            resource: "x".into(),
        },
        SdnError::Conflict("x".into()),
        SdnError::Injected("x".into()),
        SdnError::Failpoint {
            step: "s".into(),
            msg: "m".into(),
        },
        SdnError::Busy("x".into()),
        SdnError::LinkPoolExhausted("x".into()),
    ];
    all.extend(netns_errors().into_iter().map(SdnError::Runtime));
    all.extend(api_errors().into_iter().map(SdnError::Midonet));
    all.extend(records_errors().into_iter().map(SdnError::Records));
    for e in &all {
        match e {
            SdnError::InvalidInput(_)
            | SdnError::Netlink { .. }
            | SdnError::NftUnavailable(_)
            | SdnError::Nft { .. }
            | SdnError::Missing { .. }
            | SdnError::Conflict(_)
            | SdnError::Runtime(_)
            | SdnError::Injected(_)
            | SdnError::Failpoint { .. }
            | SdnError::Midonet(_)
            | SdnError::Records(_)
            | SdnError::Busy(_)
            | SdnError::LinkPoolExhausted(_) => {}
        }
    }
    all
}

fn policy_errors() -> Vec<PolicyError> {
    let plan = || PlanError {
        field: "f".into(),
        message: "m".into(),
    };
    let failures = vec![
        Failure::Denied("x".into()),
        Failure::InvalidSettings("x".into()),
        Failure::InvalidInput("x".into()),
        Failure::Internal("x".into()),
        Failure::Trap("x".into()),
        Failure::BudgetExceeded(Budget::Fuel),
        Failure::BudgetExceeded(Budget::Memory),
        Failure::BudgetExceeded(Budget::Time(1)),
        Failure::BudgetExceeded(Budget::Output),
        Failure::ArtifactUnavailable("x".into()),
        Failure::ModuleRefused("x".into()),
        Failure::InvalidPlan(plan()),
    ];
    for f in &failures {
        match f {
            Failure::Denied(_)
            | Failure::InvalidSettings(_)
            | Failure::InvalidInput(_)
            | Failure::Internal(_)
            | Failure::Trap(_)
            | Failure::BudgetExceeded(_)
            | Failure::ArtifactUnavailable(_)
            | Failure::ModuleRefused(_)
            | Failure::InvalidPlan(_) => {}
        }
    }
    failures
        .into_iter()
        .map(|f| PolicyError::new("s", f))
        .collect()
}

/// Every error enum's every variant, with the code it maps to.
fn every_error_code() -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    out.extend(
        ipam_errors()
            .iter()
            .map(|e| (format!("{e:?}"), e.cni_code())),
    );
    out.extend(
        ipam_errors()
            .iter()
            .map(|e| (format!("STATUS {e:?}"), e.status_code())),
    );
    out.extend(
        netns_errors()
            .iter()
            .map(|e| (format!("{e:?}"), e.cni_code())),
    );
    out.extend(
        sdn_errors()
            .iter()
            .map(|e| (format!("{e:?}"), e.cni_code())),
    );
    out.extend(
        policy_errors()
            .iter()
            .map(|e| (format!("{e:?}"), e.cni_code())),
    );
    out.extend(
        [
            NodeCheckError::Plan(PlanError {
                field: "f".into(),
                message: "m".into(),
            }),
            NodeCheckError::Netns(NetnsError::InvalidInput("x".into())),
        ]
        .iter()
        .map(|e| (format!("{e:?}"), e.cni_code())),
    );
    out
}

#[test]
fn every_error_variant_maps_to_a_code_of_the_table() {
    let all = every_error_code();
    assert!(all.len() > 60, "{} errors enumerated", all.len());
    for (what, code) in &all {
        assert!(
            lookup(*code).is_some(),
            "{what} maps to {code}, not in the table"
        );
    }
    // The collisions issue 16 names are gone: an SDN or MidoNet failure
    // never shares a code with the address store.
    let store: BTreeSet<u32> = ipam_errors().iter().map(IpamError::cni_code).collect();
    for e in sdn_errors() {
        if !matches!(
            e,
            SdnError::Busy(_) | SdnError::InvalidInput(_) | SdnError::Runtime(_)
        ) && !matches!(&e, SdnError::Midonet(a) if a.cni_code() == TRY_AGAIN_LATER)
            && !matches!(&e, SdnError::Records(RecordsError::Unavailable(_)))
        {
            assert!(
                !store.contains(&e.cni_code()),
                "{e:?} shares {}",
                e.cni_code()
            );
        }
    }
    let server = ApiError {
        kind: ApiErrorKind::Server,
        method: "POST".into(),
        path: "/".into(),
        status: Some(500),
        message: "m".into(),
    };
    assert_eq!(server.cni_code(), MIDONET_SERVER_ERROR);
    assert_ne!(server.cni_code(), INVALID_REQUEST);
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments (doc comments name codes in prose). A
/// `//` inside a string literal (a URL) cuts the line short, which can only
/// hide a literal, never invent one.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every place `text` spells a CNI code as a number: the argument of a
/// constructor taking a code, a `code:` field (not `"code":` in JSON, which
/// MidoNet's answers use for HTTP statuses), a comparison with a
/// `cni_code()`/`status_code()`/`.code`, and an arm of a code-mapping
/// function. Returns the offending snippets.
fn numeric_codes(text: &str) -> Vec<String> {
    let text = code_only(text);
    let mut found = Vec::new();
    let starts_number = |rest: &str| {
        rest.trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    };
    let snippet = |at: usize| text[at..].chars().take(50).collect::<String>();
    // A needle, and whether it must not follow an identifier character (so
    // `exit_code:` is not `code:`).
    const NEEDLES: &[(&str, bool)] = &[
        ("CniError::new(", false),
        ("ApplyError::new(", false),
        ("ApplyError::caused(", false),
        ("code:", true),
        ("cni_code(),", false),
        ("cni_code() ==", false),
        ("status_code(),", false),
        ("status_code() ==", false),
        (".code,", false),
        (".code ==", false),
        ("error(", true),
    ];
    for (needle, bounded) in NEEDLES {
        for (at, _) in text.match_indices(needle) {
            let before = text[..at].chars().next_back();
            if *bounded && before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if starts_number(&text[at + needle.len()..]) {
                found.push(snippet(at));
            }
        }
    }
    // Arms of the code-mapping functions: `=> 130,`.
    for f in ["fn cni_code", "fn status_code"] {
        for (at, _) in text.match_indices(f) {
            let Some(open) = text[at..].find('{') else {
                continue;
            };
            let body_start = at + open;
            let mut depth = 0usize;
            let mut end = text.len();
            for (i, c) in text[body_start..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = body_start + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let body = &text[body_start..end];
            for (i, _) in body.match_indices("=>") {
                if starts_number(&body[i + 2..]) {
                    found.push(snippet(body_start + i));
                }
            }
        }
    }
    found
}

#[test]
fn the_scanner_finds_each_spelling() {
    for bad in [
        "CniError::new(13, \"m\", \"d\")",
        "CniError::new(\n    7,\n    \"m\",",
        "ApplyError::new(142, step, d)",
        "ApplyError { code: 141, step }",
        "assert_eq!(e.cni_code(), 131);",
        "if e.cni_code() == 130 {}",
        "assert_eq!(err.code, 120);",
        "node.add(&p).error(132);",
        "fn cni_code(&self) -> u32 { match self { A => 7, B => codes::X } }",
    ] {
        assert_eq!(numeric_codes(bad).len(), 1, "{bad}");
    }
    for good in [
        "CniError::new(code::INVALID_ENV, \"m\", \"d\")",
        "exit_code: 1,",
        "// CniError::new(13, …) in a comment",
        "fn prefix_len(&self) -> u8 { match self { V4 => 32, V6 => 128 } }",
        "assert_eq!(e.cni_code(), codes::SDN_MISSING);",
    ] {
        assert!(numeric_codes(good).is_empty(), "{good}");
    }
}

#[test]
fn no_numeric_cni_code_outside_the_table() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let table = src_dir().join("cni").join("codes");
    let mut problems = Vec::new();
    for f in &files {
        if f.starts_with(&table) || f == &src_dir().join("cni").join("codes.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for s in numeric_codes(&text) {
            problems.push(format!("{}: {s:?}", f.display()));
        }
    }
    assert!(files.len() > 50, "{} files scanned", files.len());
    assert!(
        problems.is_empty(),
        "numeric CNI codes outside cni/codes.rs (use the named constants):\n{}",
        problems.join("\n")
    );
}

/// The README's `### Errors` table: (code, meaning) per row.
fn readme_table() -> Vec<(u32, String)> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let section = text
        .split("\n### Errors\n")
        .nth(1)
        .expect("README has an `### Errors` section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let mut cells = l.trim_matches('|').splitn(2, '|');
            let code = cells.next()?.trim().parse().ok()?;
            Some((code, cells.next()?.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_readme_lists_exactly_the_table() {
    let readme = readme_table();
    let table: Vec<(u32, String)> = CODES
        .iter()
        .map(|c| (c.code, c.meaning.to_owned()))
        .collect();
    assert_eq!(
        readme, table,
        "README.md's error table differs from cni/codes.rs (one row per code, same words)"
    );
}
