//! `oci://` module references: a Wasm component published to an OCI
//! registry (`tenetctl policy push`), named by the digest of its manifest.
//!
//! A pipeline stage may say `module = "oci://registry[:port]/repo@sha256:…"`.
//! The CNI exec never goes to the network for it: it looks for the file
//! [`OciRef::file_name`] (`oci-sha256-<manifest hex>.wasm`) in the module
//! dirs, which `tenetctl policy pull`, `tenetctl policy compile` or
//! `tenetctl install` wrote there after checking the manifest, the layer and
//! a signature. The file is named by the manifest digest alone, not the
//! registry: a manifest digest names the same bytes wherever they are
//! served from, and so the same module.
//!
//! This module only parses references (the CNI binary needs that much); the
//! registry client and the signatures are in `ctl::oci` (tenetctl only).

use serde::{Deserialize, Serialize};

/// The URL scheme of OCI module references.
pub const SCHEME: &str = "oci://";

/// A parsed `oci://` reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRef {
    /// `host[:port]` of the registry.
    pub registry: String,
    /// Repository path in the registry (`team/quota-guard`).
    pub repository: String,
    /// The tag, if one was written (`:v1`).
    pub tag: Option<String>,
    /// The manifest digest, lower-case hex of its sha256, if one was written
    /// (`@sha256:…`). When both are given the digest decides.
    pub digest: Option<String>,
}

impl OciRef {
    /// Parses `oci://host[:port]/repo[:tag][@sha256:hex]`; the message says
    /// which part is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{s:?} does not start with {SCHEME}"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!("{s:?}: expected oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]")
        })?;
        if !valid_registry(registry) {
            return Err(format!("{s:?}: {registry:?} is not a registry host[:port]"));
        }
        let (name, digest) = match path.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("{s:?}: the digest must be sha256:<64 hex digits>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{s:?}: the digest must be sha256:<64 hex digits>"));
                }
                (n, Some(hex.to_ascii_lowercase()))
            }
            None => (path, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last..].find(':') {
            Some(i) => (&name[..last + i], Some(&name[last + i + 1..])),
            None => (name, None),
        };
        if !valid_repository(repository) {
            return Err(format!(
                "{s:?}: {repository:?} is not a repository name (lower-case [a-z0-9] components separated by '/', with '.', '_', '-' inside)"
            ));
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(format!(
                "{s:?}: {t:?} is not a tag (1-128 of [A-Za-z0-9_.-], not starting with '.' or '-')"
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "{s:?}: name a tag (:TAG) or, to pin the content, a digest (@sha256:…)"
            ));
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The same reference pinned to `digest` (lower-case hex), tag dropped.
    pub fn pinned(&self, digest: &str) -> Self {
        Self {
            tag: None,
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// `registry/repository`: what the signature payload's
    /// `docker-reference` names.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The file a pulled module is stored as in a module dir:
    /// `oci-sha256-<manifest hex>.wasm` (digest references only).
    pub fn file_name(&self) -> Option<String> {
        self.digest.as_deref().map(file_name_for)
    }
}

/// The module file name for a manifest digest (lower-case hex).
pub fn file_name_for(digest_hex: &str) -> String {
    format!("oci-sha256-{digest_hex}.wasm")
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@sha256:{d}")?;
        }
        Ok(())
    }
}

fn valid_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

fn valid_repository(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        })
}

fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().next().is_some_and(|b| b != b'.' && b != b'-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_tag_and_port_forms_parse() {
        let r =
            OciRef::parse(&format!("oci://127.0.0.1:5000/team/quota-guard@sha256:{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/quota-guard");
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(D)));
        assert_eq!(r.file_name().unwrap(), format!("oci-sha256-{D}.wasm"));
        assert_eq!(r.repo_name(), "127.0.0.1:5000/team/quota-guard");

        let t = OciRef::parse("oci://reg.example/q:v1.2").unwrap();
        assert_eq!(
            (t.repository.as_str(), t.tag.as_deref()),
            ("q", Some("v1.2"))
        );
        assert_eq!(t.file_name(), None);
        assert_eq!(t.to_string(), "oci://reg.example/q:v1.2");
        let p = t.pinned(D);
        assert_eq!(p.to_string(), format!("oci://reg.example/q@sha256:{D}"));
        assert_eq!(OciRef::parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (s, want) in [
            ("http://r/x:1", "does not start with"),
            ("oci://r", "expected oci://"),
            ("oci://r/x", "name a tag"),
            ("oci://r/X:1", "not a repository"),
            ("oci://r/x//y:1", "not a repository"),
            ("oci://r:99999/x:1", "not a registry"),
            ("oci://r/x:-bad", "not a tag"),
            ("oci://r/x@sha256:abc", "64 hex"),
            ("oci://r/x@md5:abc", "sha256:"),
        ] {
            let e = OciRef::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
