//! The SDK for tenet policy stages.
//!
//! A stage is a pure function: `(request, settings, plan so far) -> plan`.
//! Write only the decision logic:
//!
//! ```ignore
//! use tenet_policy_sdk::{Plan, PolicyError, Request, Stage, export_stage};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(deny_unknown_fields, rename_all = "camelCase")]
//! struct Settings { tenant: String }
//!
//! struct Fixed;
//! impl Stage for Fixed {
//!     type Settings = Settings;
//!     fn evaluate(_: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
//!         plan.tenant = s.tenant.clone();
//!         Ok(plan)
//!     }
//! }
//! export_stage!(Fixed);
//! ```
//!
//! Built for `wasm32-wasip2`, the SDK makes the component `no_std` with a
//! bump allocator (an instance lives for one call), so its only import is
//! `tenet:policy/host.log`: no WASI at all. Natively it is ordinary Rust, so
//! stages are unit-tested with `cargo test`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod json;
pub mod net;
pub mod pattern;
#[cfg(target_arch = "wasm32")]
mod rt;

use alloc::string::{String, ToString};

/// The generated bindings (in a module: wit-bindgen's exported macro and its
/// re-export would collide at the crate root).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "stage",
        pub_export_macro: true,
        export_macro_name: "__export_stage_world",
        default_bindings_module: "tenet_policy_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

#[doc(hidden)]
pub use bindings::Guest;
pub use bindings::tenet::policy::host::Level;
pub use bindings::tenet::policy::types::{
    AddressRequest, Bandwidth, Command, Dns, Interface, InterfaceKind, IpFamily, Kv, NextHop, Plan,
    PolicyError, Pool, PortMapping, Request, Route,
};

/// One pipeline stage.
pub trait Stage {
    /// The stage's settings, parsed from the pipeline's JSON. Use
    /// `#[serde(deny_unknown_fields)]` so typos are reported, not ignored.
    type Settings: serde::de::DeserializeOwned + Default;

    /// Checks settings beyond their shape (called before every evaluate and
    /// once when a pipeline is compiled). Name the field in the message.
    fn validate(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }

    /// Refines the plan.
    fn evaluate(
        request: &Request,
        settings: &Self::Settings,
        plan: Plan,
    ) -> Result<Plan, PolicyError>;
}

/// Parses and validates settings (empty string = defaults).
pub fn parse_settings<S: Stage>(settings: &str) -> Result<S::Settings, String> {
    let parsed: S::Settings = if settings.trim().is_empty() {
        S::Settings::default()
    } else {
        json::from_str(settings).map_err(|e| alloc::format!("settings: {e}"))?
    };
    S::validate(&parsed)?;
    Ok(parsed)
}

/// The exported `validate-settings`, for [`export_stage!`].
#[doc(hidden)]
pub fn __validate<S: Stage>(settings: &str) -> Result<(), String> {
    parse_settings::<S>(settings).map(|_| ())
}

/// The exported `evaluate`, for [`export_stage!`].
#[doc(hidden)]
pub fn __evaluate<S: Stage>(
    request: Request,
    settings: &str,
    plan: Plan,
) -> Result<Plan, PolicyError> {
    let s = parse_settings::<S>(settings).map_err(PolicyError::InvalidSettings)?;
    S::evaluate(&request, &s, plan)
}

/// Exports a [`Stage`] as the component's `tenet:policy/stage` world.
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __TenetStageExport;
            impl $crate::Guest for __TenetStageExport {
                fn validate_settings(settings: ::alloc::string::String) -> ::core::result::Result<(), ::alloc::string::String> {
                    $crate::__validate::<$stage>(&settings)
                }
                fn evaluate(
                    request: $crate::Request,
                    settings: ::alloc::string::String,
                    plan: $crate::Plan,
                ) -> ::core::result::Result<$crate::Plan, $crate::PolicyError> {
                    $crate::__evaluate::<$stage>(request, &settings, plan)
                }
            }
            $crate::bindings::__export_stage_world!(__TenetStageExport with_types_in $crate::bindings);
        };
    };
}

/// Writes a line to tenet's log (never stdout). Natively, lines are kept in
/// [`test_log`] so tests can assert on them.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::tenet::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    TEST_LOG.with(|l| l.borrow_mut().push((level, message.to_string())));
}

#[cfg(not(target_arch = "wasm32"))]
std::thread_local! {
    static TEST_LOG: core::cell::RefCell<alloc::vec::Vec<(Level, String)>> = const { core::cell::RefCell::new(alloc::vec::Vec::new()) };
}

/// Lines logged on this thread so far (native builds only), then cleared.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_log() -> alloc::vec::Vec<(Level, String)> {
    TEST_LOG.with(|l| core::mem::take(&mut *l.borrow_mut()))
}

/// The value of `key` in a key/value list.
pub fn kv_get<'a>(list: &'a [Kv], key: &str) -> Option<&'a str> {
    list.iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.as_str())
}

/// The plan's interface named `name`.
pub fn interface_mut<'a>(plan: &'a mut Plan, name: &str) -> Option<&'a mut Interface> {
    plan.interfaces.iter_mut().find(|i| i.name == name)
}

/// An empty request for tests (ADD of container "c", eth0, network "net").
pub fn test_request() -> Request {
    Request {
        command: Command::Add,
        container_id: "c".to_string(),
        ifname: "eth0".to_string(),
        netns: "/var/run/netns/test".to_string(),
        network: "net".to_string(),
        pod_namespace: None,
        pod_name: None,
        pod_uid: None,
        cni_args: alloc::vec::Vec::new(),
        args_ips: alloc::vec::Vec::new(),
        runtime_ips: alloc::vec::Vec::new(),
        mac: None,
        runtime_dns: None,
        port_mappings: alloc::vec::Vec::new(),
        bandwidth: None,
        labels: alloc::vec::Vec::new(),
        annotations: alloc::vec::Vec::new(),
        extra: alloc::vec::Vec::new(),
    }
}

/// The plan the host gives the first stage: one sdn-port named `ifname`.
pub fn initial_plan(ifname: &str) -> Plan {
    Plan {
        tenant: String::new(),
        interfaces: alloc::vec![Interface {
            name: ifname.to_string(),
            kind: InterfaceKind::SdnPort,
            addresses: alloc::vec::Vec::new(),
            mac: None,
            mtu: None,
        }],
        routes: alloc::vec::Vec::new(),
        dns: Dns {
            nameservers: alloc::vec::Vec::new(),
            domain: None,
            search: alloc::vec::Vec::new(),
            options: alloc::vec::Vec::new(),
        },
        sysctls: alloc::vec::Vec::new(),
        annotations: alloc::vec::Vec::new(),
    }
}
