//! Hostile: attacks the host boundary rather than the sandbox, written from
//! `wit/policy.wit` with `wit-bindgen` alone. Settings (JSON) choose the
//! attack:
//!
//! | `mode` | does | the host must |
//! |---|---|---|
//! | `pool` | eth0 from a pool of `value` (`len`-bit subnets) | refuse ranges outside `[addresses]`, special ones, and the node's |
//! | `static` | eth0 with the static address `value` (no pool) | the same |
//! | `host-link` | adds eth1 (host link) with static `value` and/or pool `pool` | never let a plan pick a host-link address |
//! | `log-bomb` | one `bytes`-byte string logged `calls` times | charge fuel, stop it with 102 |
//! | `deny` | denies with a `bytes`-byte message | clip it (code 100, small stdout) |
//! | `pad` | 64 excludes, each padded with spaces to `bytes` | refuse it as stored (104), store nothing |
//! | `huge-annotation` | `n` annotations of `bytes` bytes | refuse without copying them |
//! | `deny-or-trap` | denies, or traps when the pod has label `bypass` | (documents `failure = "ignore"`) |
// no_std on wasm32 (no WASI imports); natively an ordinary crate, so the
// workspace builds and lints on the host.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::Deserialize;

wit_bindgen::generate!({ path: "../../../wit", world: "stage" });

use tenet::policy::host::{Level, log};
use tenet::policy::types::{AddressRequest, Interface, InterfaceKind, IpFamily, Kv, Pool};

// The allocator and panic handler.
use hostile_rt as _;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    mode: String,
    value: String,
    pool: String,
    len: u8,
    bytes: usize,
    calls: u32,
    n: usize,
}

fn pool(supernet: &str, len: u8) -> Pool {
    Pool {
        name: "evil".into(),
        supernet: supernet.into(),
        subnet_len: len,
        exclude: Vec::new(),
    }
}

fn v4(pool: Option<Pool>, static_address: Option<String>) -> AddressRequest {
    AddressRequest {
        family: IpFamily::Ipv4,
        pool,
        static_address,
    }
}

struct Evil;

impl Guest for Evil {
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(req: Request, settings: String, mut plan: Plan) -> Result<Plan, PolicyError> {
        let s: Settings = serde_json::from_str(&settings)
            .map_err(|e| PolicyError::InvalidSettings(e.to_string()))?;
        plan.tenant = "evil".into();
        let len = if s.len == 0 { 24 } else { s.len };
        let eth0 = &mut plan.interfaces[0];
        match s.mode.as_str() {
            "pool" => eth0.addresses = vec![v4(Some(pool(&s.value, len)), None)],
            "static" => eth0.addresses = vec![v4(None, Some(s.value))],
            "host-link" => {
                eth0.addresses = vec![v4(Some(pool("10.64.0.0/12", 24)), None)];
                plan.interfaces.push(Interface {
                    name: "eth1".into(),
                    kind: InterfaceKind::HostLink,
                    addresses: vec![v4(
                        (!s.pool.is_empty()).then(|| pool(&s.pool, len)),
                        (!s.value.is_empty()).then_some(s.value),
                    )],
                    mac: None,
                    mtu: None,
                });
            }
            "log-bomb" => {
                let line = "x".repeat(s.bytes);
                for _ in 0..s.calls {
                    log(Level::Info, &line);
                }
                eth0.addresses = vec![v4(Some(pool("10.64.0.0/12", 24)), None)];
            }
            "deny" => {
                let mut m = String::from("forged\nlog line\u{1b}[31m ");
                m.push_str(&"d".repeat(s.bytes));
                return Err(PolicyError::Denied(m));
            }
            "pad" => {
                let mut p = pool("10.64.0.0/12", 24);
                p.name = "pods-v4".into();
                p.exclude = (0..64)
                    .map(|i| {
                        let mut x = alloc::format!("10.64.{i}.0/24");
                        let pad = s.bytes.saturating_sub(x.len());
                        x.push_str(&" ".repeat(pad));
                        x
                    })
                    .collect();
                eth0.addresses = vec![v4(Some(p), None)];
            }
            "huge-annotation" => {
                eth0.addresses = vec![v4(Some(pool("10.64.0.0/12", 24)), None)];
                let value = "a".repeat(s.bytes);
                plan.annotations = (0..s.n)
                    .map(|i| Kv {
                        key: alloc::format!("k{i}"),
                        value: value.clone(),
                    })
                    .collect();
            }
            "deny-or-trap" => {
                if req.labels.iter().any(|l| l.key == "bypass") {
                    // Pod input makes the stage trap.
                    let empty: Vec<u8> = Vec::new();
                    let i = core::hint::black_box(req.labels.len());
                    plan.tenant = empty[i].to_string();
                }
                return Err(PolicyError::Denied("this pod is not allowed".into()));
            }
            other => {
                return Err(PolicyError::InvalidSettings(alloc::format!(
                    "mode {other:?}"
                )));
            }
        }
        Ok(plan)
    }
}

export!(Evil);
