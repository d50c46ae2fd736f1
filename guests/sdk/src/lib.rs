//! The SDK for tenet policy stages.
//!
//! A stage is a pure function: `(request, settings, plan so far) -> plan`.
//! Write only the decision logic, implement [`Stage`] and call
//! [`export_stage!`]. This is the whole of a working module (it is
//! `examples/fixed_tenant.rs`, built as a component by the repository's
//! `make test`):
//!
#![doc = concat!("```rust\n", include_str!("../examples/fixed_tenant.rs"), "```")]
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (the crate
//! is a `cdylib`; see `docs/policy-authoring.md` in the tenet repository,
//! or let `tenetctl policy new NAME` write a crate that builds and passes
//! its golden tests as generated).
//!
//! Built for `wasm32-wasip2`, the SDK makes the component `no_std` with a
//! bump allocator (an instance lives for one call), so its only import is
//! `tenet:policy/host.log`: no WASI at all. Natively it is ordinary Rust, so
//! stages are unit-tested with `cargo test`.
//!
//! `export_stage!` also writes the module's metadata (name, version,
//! description and authors from `Cargo.toml`, and the settings' JSON
//! Schema) into the component, as the custom section described in
//! [`metadata`]. tenet validates settings against that schema before any
//! module code runs, and `tenetctl policy inspect` shows it.
//!
//! The WIT the bindings are generated from ships inside this crate
//! (`wit/policy.wit`), so the SDK builds anywhere: as a path dependency
//! or from a registry.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod json;
pub mod metadata;
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
        path: "wit",
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
/// Re-exported so a module can derive `JsonSchema` on its settings with
/// the SDK's version of `schemars` (`#[derive(tenet_policy_sdk::JsonSchema)]`
/// needs `#[schemars(crate = "tenet_policy_sdk::schemars")]`; a direct
/// `schemars = "1"` dependency, as `tenetctl policy new` writes, needs
/// neither).
pub use schemars;
pub use schemars::JsonSchema;

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

/// Exports a [`Stage`] as the component's `tenet:policy/stage` world, and
/// writes the module's metadata section ([`metadata`]).
///
/// * `export_stage!(MyStage)`: metadata without a settings schema;
/// * `export_stage!(MyStage, settings_schema = "settings.schema.json")`:
///   with the schema in that file (relative to the crate's `Cargo.toml`).
///   Keep the file current with a native test calling
///   [`check_settings_schema`] (`tenetctl policy new` writes one).
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        $crate::export_stage!(@export $stage, "");
    };
    ($stage:ty, settings_schema = $path:literal) => {
        $crate::export_stage!(@export $stage, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)));
    };
    (@export $stage:ty, $schema:expr) => {
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

            const __TENET_META: $crate::metadata::Parts = [
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                env!("CARGO_PKG_DESCRIPTION"),
                env!("CARGO_PKG_AUTHORS"),
                $schema,
            ];
            const __TENET_META_LEN: usize = $crate::metadata::encoded_len(&__TENET_META);
            #[used]
            #[unsafe(link_section = "tenet:metadata")]
            static __TENET_METADATA: [u8; __TENET_META_LEN] =
                $crate::metadata::encode::<__TENET_META_LEN>(&__TENET_META);
        };
    };
}

/// The JSON Schema of a stage's settings, derived from its `Settings` type
/// (natively only: this is what `settings.schema.json` should contain).
#[cfg(not(target_arch = "wasm32"))]
pub fn settings_schema<S: Stage>() -> String
where
    S::Settings: schemars::JsonSchema,
{
    let schema = schemars::schema_for!(S::Settings);
    // Pretty, so the file reads well in review diffs.
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// For a native test: the schema file at `path` (relative to the crate's
/// `Cargo.toml`, as given to [`export_stage!`]) must equal
/// [`settings_schema`]. With `TENET_UPDATE_SCHEMA=1` in the environment,
/// or when the file does not exist yet, it is (re)written instead.
///
/// ```ignore
/// #[test]
/// fn settings_schema_is_current() {
///     tenet_policy_sdk::check_settings_schema::<MyStage>(env!("CARGO_MANIFEST_DIR"), "settings.schema.json");
/// }
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn check_settings_schema<S: Stage>(manifest_dir: &str, path: &str)
where
    S::Settings: schemars::JsonSchema,
{
    let file = std::path::Path::new(manifest_dir).join(path);
    let want = settings_schema::<S>();
    let update = std::env::var_os("TENET_UPDATE_SCHEMA").is_some_and(|v| v != "0");
    match std::fs::read_to_string(&file) {
        Ok(have) if have == want => {}
        Ok(_) if !update => panic!(
            "{} is out of date with the settings type; rerun with TENET_UPDATE_SCHEMA=1 to rewrite it",
            file.display()
        ),
        _ => std::fs::write(&file, want)
            .unwrap_or_else(|e| panic!("writing {}: {e}", file.display())),
    }
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

#[cfg(test)]
mod wit_copy_tests {
    /// The WIT bundled in the crate (what the bindings are generated from)
    /// must be the repository's contract, byte for byte.
    #[test]
    fn bundled_wit_is_the_repository_contract() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundled = std::fs::read_to_string(dir.join("wit/policy.wit")).unwrap();
        let repo = std::fs::read_to_string(dir.join("../../wit/policy.wit"))
            .expect("the repository's wit/policy.wit (this test runs in the tenet repository)");
        assert!(
            bundled == repo,
            "guests/sdk/wit/policy.wit differs from wit/policy.wit: copy it over"
        );
        let package = format!("package {};", crate::metadata::WIT_PACKAGE);
        assert!(
            bundled.contains(&package),
            "metadata::WIT_PACKAGE is not the WIT's {package:?}"
        );
    }
}
