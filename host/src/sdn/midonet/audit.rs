//! What `tenetctl midonet ls` and `tenetctl midonet check` show: a tenant's
//! topology from the records with each object looked up in MidoNet, and the
//! differences between the records and MidoNet (missing objects, orphaned
//! objects and records).

use std::collections::HashSet;
use std::fmt;

use uuid::Uuid;

use super::MidonetSdn;
use super::client::Resource;
use super::records::{PortRecord, TenantRecord};
use super::topology::NAME_PREFIX;
use crate::sdn::SdnError;

/// What MidoNet says about one recorded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// It exists.
    Present,
    /// 404.
    Missing,
    /// The lookup failed otherwise.
    Unknown(String),
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presence::Present => f.write_str("ok"),
            Presence::Missing => f.write_str("MISSING"),
            Presence::Unknown(e) => write!(f, "unknown ({e})"),
        }
    }
}

/// One recorded object and its presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectView {
    /// What it is (`router`, `chain in`, `bridge 10.1.0.0/24`, …).
    pub what: String,
    /// Its id.
    pub id: Uuid,
    /// The REST path it was looked up at.
    pub path: String,
    /// What MidoNet said.
    pub presence: Presence,
}

/// A tenant's topology as recorded, looked up in MidoNet.
#[derive(Debug, Clone)]
pub struct TenantView {
    /// The record.
    pub record: TenantRecord,
    /// Its objects, in creation order.
    pub objects: Vec<ObjectView>,
    /// Its ports.
    pub ports: Vec<(PortRecord, Presence)>,
}

fn objects_of(rec: &TenantRecord, provider: Uuid) -> Vec<(String, Uuid, String, Resource)> {
    let mut v = vec![
        (
            "chain in".to_string(),
            rec.in_chain,
            "chains",
            Resource::Chain,
        ),
        ("chain out".into(), rec.out_chain, "chains", Resource::Chain),
        ("router".into(), rec.router, "routers", Resource::Router),
        (
            format!("provider port (on {provider})"),
            rec.provider_port,
            "ports",
            Resource::Port,
        ),
        (
            "uplink port".into(),
            rec.tenant_port,
            "ports",
            Resource::Port,
        ),
        (
            "default route".into(),
            rec.default_route,
            "routes",
            Resource::Route,
        ),
        (
            "provider route".into(),
            rec.provider_route,
            "routes",
            Resource::Route,
        ),
        (
            "rule return-flow".into(),
            rec.return_rule,
            "rules",
            Resource::Rule,
        ),
        ("rule snat".into(), rec.snat_rule, "rules", Resource::Rule),
        (
            "rule rev_snat".into(),
            rec.rev_snat_rule,
            "rules",
            Resource::Rule,
        ),
    ];
    for b in &rec.bridges {
        let s = b.subnet;
        v.push((format!("bridge {s}"), b.bridge, "bridges", Resource::Bridge));
        v.push((
            format!("gateway port {}", b.gateway),
            b.router_port,
            "ports",
            Resource::Port,
        ));
        v.push((
            format!("bridge uplink port {s}"),
            b.bridge_port,
            "ports",
            Resource::Port,
        ));
        v.push((format!("route {s}"), b.route, "routes", Resource::Route));
        if let Some(r) = b.provider_route {
            // From an earlier build; the tenant's next ADD deletes it.
            v.push((
                format!("legacy provider route {s}"),
                r,
                "routes",
                Resource::Route,
            ));
        }
    }
    v.into_iter()
        .map(|(w, id, coll, r)| (w, id, format!("/{coll}/{id}"), r))
        .collect()
}

impl MidonetSdn {
    fn presence(&self, r: Resource, path: &str) -> Presence {
        match self.api().get(r, path) {
            Ok(_) => Presence::Present,
            Err(e) if e.is_not_found() => Presence::Missing,
            Err(e) => Presence::Unknown(e.to_string()),
        }
    }

    /// The recorded topology of one tenant (or all), looked up in MidoNet.
    pub fn topology(&self, tenant: Option<&str>) -> Result<Vec<TenantView>, SdnError> {
        let recs = match tenant {
            Some(t) => self
                .records()
                .tenant(t)?
                .map(|(r, _)| r)
                .into_iter()
                .collect(),
            None => self.records().tenants()?,
        };
        let provider = self.settings().provider_router;
        let mut out = Vec::new();
        for rec in recs {
            let objects = objects_of(&rec, provider)
                .into_iter()
                .map(|(what, id, path, r)| ObjectView {
                    presence: self.presence(r, &path),
                    what,
                    id,
                    path,
                })
                .collect();
            let ports = self
                .records()
                .ports(Some(&rec.tenant))?
                .into_iter()
                .map(|p| {
                    let pr = self.presence(Resource::Port, &format!("/ports/{}", p.port));
                    (p, pr)
                })
                .collect();
            out.push(TenantView {
                record: rec,
                objects,
                ports,
            });
        }
        Ok(out)
    }

    /// Differences between the records and MidoNet.
    pub fn audit(&self) -> Result<Audit, SdnError> {
        let mut a = Audit::default();
        let views = self.topology(None)?;
        let mut known: HashSet<Uuid> = HashSet::new();
        let mut tenants = HashSet::new();
        for v in &views {
            tenants.insert(v.record.tenant.clone());
            for o in &v.objects {
                known.insert(o.id);
                if o.presence != Presence::Present {
                    a.missing.push(format!(
                        "tenant {:?} ({:?}): {} {} {}: {}",
                        v.record.tenant, v.record.phase, o.what, o.id, o.path, o.presence
                    ));
                }
            }
            for (p, pr) in &v.ports {
                known.insert(p.port);
                if *pr != Presence::Present {
                    a.missing.push(format!(
                        "tenant {:?}: port {} of attachment {}: {pr}",
                        v.record.tenant, p.port, p.key
                    ));
                }
            }
        }
        // Objects tenet named but no record knows.
        for (r, coll) in [
            (Resource::Router, "routers"),
            (Resource::Bridge, "bridges"),
            (Resource::Chain, "chains"),
        ] {
            for o in self.api().list(r, &format!("/{coll}"))? {
                let name = o["name"].as_str().unwrap_or_default();
                let id: Option<Uuid> = o["id"].as_str().and_then(|s| s.parse().ok());
                if let Some(id) = id
                    && name.starts_with(NAME_PREFIX)
                    && !known.contains(&id)
                {
                    a.orphaned
                        .push(format!("MidoNet {coll} {id} {name:?}: in no record"));
                }
            }
        }
        // Ports tenet made on the provider router (in the link pool) or on
        // tenet's bridges that no record knows.
        let provider = self.settings().provider_router;
        let pool = self.settings().link_pool;
        for p in self
            .api()
            .list(Resource::Port, &format!("/routers/{provider}/ports"))?
        {
            let id: Option<Uuid> = p["id"].as_str().and_then(|s| s.parse().ok());
            let in_pool = p["portAddress"]
                .as_str()
                .and_then(|s| s.parse::<std::net::Ipv4Addr>().ok())
                .is_some_and(|a| pool.contains(&a));
            if let Some(id) = id
                && in_pool
                && !known.contains(&id)
            {
                a.orphaned.push(format!(
                    "MidoNet port {id} on the provider router ({}): in no record",
                    p["portAddress"].as_str().unwrap_or_default()
                ));
            }
        }
        for v in &views {
            for b in &v.record.bridges {
                let ports = match self
                    .api()
                    .list(Resource::Port, &format!("/bridges/{}/ports", b.bridge))
                {
                    Ok(p) => p,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                };
                for p in ports {
                    let id: Option<Uuid> = p["id"].as_str().and_then(|s| s.parse().ok());
                    if let Some(id) = id
                        && !known.contains(&id)
                    {
                        a.orphaned.push(format!(
                            "MidoNet port {id} on bridge {} of tenant {:?}: in no record",
                            b.bridge, v.record.tenant
                        ));
                    }
                }
            }
        }
        // Records without their owner.
        for (net, t) in self.records().links()? {
            if !views
                .iter()
                .any(|v| v.record.tenant == t && v.record.link == net)
            {
                a.orphaned.push(format!(
                    "record: link network {net} of tenant {t:?} without its tenant"
                ));
            }
        }
        for p in self.records().ports(None)? {
            if !tenants.contains(&p.tenant) {
                a.orphaned.push(format!(
                    "record: port {} of attachment {} of tenant {:?} without its tenant",
                    p.port, p.key, p.tenant
                ));
            }
        }
        Ok(a)
    }
}

/// The result of [`MidonetSdn::audit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    /// Recorded objects MidoNet does not have.
    pub missing: Vec<String>,
    /// MidoNet objects (named by tenet) or records that nothing owns.
    pub orphaned: Vec<String>,
}

impl Audit {
    /// No difference.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.orphaned.is_empty()
    }
}
