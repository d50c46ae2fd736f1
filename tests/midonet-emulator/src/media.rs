//! Vendor media types per resource and the negotiation rules of MidoNet 5.x
//! (reference/midonet-api.md §1.1, §1.2).

/// Resources with their own media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Router,
    Bridge,
    Port,
    PortLink,
    Route,
    Chain,
    Rule,
    Host,
    HostInterfacePort,
    Tenant,
}

const VND: &str = "application/vnd.org.midonet.";
pub const JSON: &str = "application/json";
pub const ERROR: &str = "application/vnd.org.midonet.Error-v1+json";
pub const TOKEN: &str = "application/vnd.org.midonet.Token-v1+json";
pub const APPLICATION: &str = "application/vnd.org.midonet.Application-v5+json";

impl Resource {
    /// The vendor type names and versions MidoNet 5.x accepts, preferred
    /// first. (The 2015.06 types `Router-v2`, `Bridge-v1`, `Port-v2` are
    /// refused with 406, as by every 5.x release.)
    fn versions(self) -> &'static [&'static str] {
        match self {
            Resource::Router => &["Router-v3"],
            Resource::Bridge => &["Bridge-v4", "Bridge-v5"],
            Resource::Port => &["Port-v3", "Port-v4"],
            Resource::PortLink => &["PortLink-v1"],
            Resource::Route => &["Route-v1"],
            Resource::Chain => &["Chain-v1"],
            Resource::Rule => &["Rule-v2"],
            Resource::Host => &["Host-v3"],
            Resource::HostInterfacePort => &["HostInterfacePort-v1"],
            Resource::Tenant => &["Tenant-v2"],
        }
    }

    /// Types accepted for one object (create `Content-Type`, get `Accept`).
    pub fn single(self) -> Vec<String> {
        let mut v: Vec<String> = self
            .versions()
            .iter()
            .map(|n| format!("{VND}{n}+json"))
            .collect();
        // Tenants are only served in their vendor type.
        if self != Resource::Tenant {
            v.push(JSON.to_string());
        }
        v
    }

    /// Types accepted in `Accept` for a list.
    pub fn collection(self) -> Vec<String> {
        let mut v: Vec<String> = self
            .versions()
            .iter()
            .map(|n| format!("{VND}collection.{n}+json"))
            .collect();
        // The host-binding list produces only its collection type (§1.2);
        // tenants only their vendor types.
        if !matches!(self, Resource::HostInterfacePort | Resource::Tenant) {
            v.push(JSON.to_string());
        }
        v
    }
}

/// A parsed `type/subtype`, parameters dropped (lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaType {
    pub main: String,
    pub sub: String,
}

impl MediaType {
    /// Parses one media type like JAX-RS `MediaType.valueOf`: a comma list,
    /// a missing slash or an empty part is unparsable (`None`).
    pub fn parse(s: &str) -> Option<MediaType> {
        let essence = s.split(';').next()?.trim();
        if essence.contains(',') || essence.contains(char::is_whitespace) {
            return None;
        }
        let (main, sub) = essence.split_once('/')?;
        if main.is_empty() || sub.is_empty() || sub.contains('/') {
            return None;
        }
        Some(MediaType {
            main: main.to_ascii_lowercase(),
            sub: sub.to_ascii_lowercase(),
        })
    }

    /// `MediaType.isCompatible`: equal, or a wildcard on either side.
    pub fn compatible(&self, other: &MediaType) -> bool {
        if self.main == "*" || other.main == "*" {
            return true;
        }
        self.main == other.main && (self.sub == "*" || other.sub == "*" || self.sub == other.sub)
    }
}

/// Outcome of checking a header against an allowed list.
pub enum Negotiated {
    /// The type to answer with (for `Accept`: the client's, or the preferred
    /// one when the client sent a wildcard).
    Ok(String),
    Rejected,
}

/// Checks one header value (or its absence) against `allowed`, like
/// MidoNet's `validateMediaType`: absent or unparsable is rejected.
pub fn negotiate(header: Option<&str>, allowed: &[String]) -> Negotiated {
    let Some(mt) = header.and_then(MediaType::parse) else {
        return Negotiated::Rejected;
    };
    for a in allowed {
        let am = MediaType::parse(a).expect("static media types parse");
        if mt.compatible(&am) {
            let chosen = if mt.main == "*" || mt.sub == "*" {
                a.clone()
            } else {
                format!("{}/{}", mt.main, mt.sub)
            };
            // Answer with the canonical spelling of the allowed type.
            let chosen = allowed
                .iter()
                .find(|x| x.eq_ignore_ascii_case(&chosen))
                .cloned()
                .unwrap_or(chosen);
            return Negotiated::Ok(chosen);
        }
    }
    Negotiated::Rejected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_types() {
        let single = Resource::Router.single();
        assert!(matches!(
            negotiate(
                Some("application/vnd.org.midonet.Router-v3+json; charset=UTF-8"),
                &single
            ),
            Negotiated::Ok(_)
        ));
        assert!(matches!(
            negotiate(Some("application/vnd.org.midonet.Router-v2+json"), &single),
            Negotiated::Rejected
        ));
        assert!(matches!(negotiate(None, &single), Negotiated::Rejected));
        assert!(matches!(
            negotiate(Some("a, b"), &single),
            Negotiated::Rejected
        ));
        match negotiate(Some("*/*"), &single) {
            Negotiated::Ok(t) => assert_eq!(t, "application/vnd.org.midonet.Router-v3+json"),
            Negotiated::Rejected => panic!("wildcard rejected"),
        }
    }

    #[test]
    fn binding_list_has_no_plain_json() {
        let list = Resource::HostInterfacePort.collection();
        assert_eq!(
            list,
            ["application/vnd.org.midonet.collection.HostInterfacePort-v1+json"]
        );
    }
}
