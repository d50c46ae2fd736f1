//! Hostile: returns a plan that breaks a host invariant, chosen by
//! `{"mode": "…"}`. The host must refuse it ("invalid plan", code 104)
//! whatever the mode.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::{String, ToString};

use serde::Deserialize;
use tenet_policy_sdk::{
    AddressRequest, Interface, InterfaceKind, IpFamily, NextHop, Plan, PolicyError, Pool, Request,
    Route, Stage, export_stage,
};

/// Settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Which invariant to break.
    pub mode: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: "bad-cidr".into(),
        }
    }
}

/// The stage.
pub struct Evil;

fn route(dst: &str, ifname: &str, via: NextHop) -> Route {
    Route {
        dst: dst.into(),
        interface: ifname.into(),
        via,
        metric: None,
        mtu: None,
    }
}

impl Stage for Evil {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        const MODES: &[&str] = &[
            "bad-cidr",
            "long-ifname",
            "slash-ifname",
            "duplicate-ifname",
            "bad-tenant",
            "gateway-off-subnet",
            "static-outside-pool",
            "oversize",
        ];
        if MODES.contains(&s.mode.as_str()) {
            Ok(())
        } else {
            Err(alloc::format!("mode: unknown {:?}", s.mode))
        }
    }

    fn evaluate(req: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        let eth = req.ifname.clone();
        let link = |name: &str| Interface {
            name: name.into(),
            kind: InterfaceKind::HostLink,
            addresses: alloc::vec::Vec::new(),
            mac: None,
            mtu: None,
        };
        match s.mode.as_str() {
            "bad-cidr" => plan
                .routes
                .push(route("10.0.0.0/33", &eth, NextHop::OnLink)),
            "long-ifname" => plan.interfaces.push(link("a-very-long-ifname0")),
            "slash-ifname" => plan.interfaces.push(link("eth/0")),
            "duplicate-ifname" => plan.interfaces.push(link(&eth)),
            "bad-tenant" => plan.tenant = "Tenant A/../x".into(),
            "gateway-off-subnet" => {
                if let Some(i) = plan.interfaces.iter_mut().find(|i| i.name == eth) {
                    i.addresses = alloc::vec![AddressRequest {
                        family: IpFamily::Ipv4,
                        pool: None,
                        static_address: Some("10.1.0.5/24".into())
                    }];
                }
                plan.routes.push(route(
                    "0.0.0.0/0",
                    &eth,
                    NextHop::Address("192.168.9.1".into()),
                ));
            }
            "static-outside-pool" => {
                if let Some(i) = plan.interfaces.iter_mut().find(|i| i.name == eth) {
                    i.addresses = alloc::vec![AddressRequest {
                        family: IpFamily::Ipv4,
                        pool: Some(Pool {
                            name: "p".into(),
                            supernet: "10.1.0.0/16".into(),
                            subnet_len: 24,
                            exclude: alloc::vec::Vec::new()
                        }),
                        static_address: Some("10.9.0.5".into()),
                    }];
                }
            }
            "oversize" => {
                for i in 0..10_000u32 {
                    plan.routes.push(route(
                        &alloc::format!("10.{}.{}.0/24", i / 256, i % 256),
                        &eth,
                        NextHop::OnLink,
                    ));
                }
            }
            other => return Err(PolicyError::InvalidSettings(other.to_string())),
        }
        Ok(plan)
    }
}

export_stage!(Evil);
