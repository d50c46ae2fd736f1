//! Fuzzes the CNI input layer: environment + stdin → invocation, request,
//! and the rendering of any prevResult. Invariants: no panic; every error
//! has a documented code and renders as valid JSON.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tenet::cni::{self, CniResult, code, version};

#[derive(Arbitrary, Debug)]
struct Input {
    command: u8,
    container_id: String,
    netns: String,
    ifname: String,
    args: String,
    path: String,
    stdin: Vec<u8>,
    /// When set, stdin is wrapped into a plausible config to get deeper.
    structured: Option<(u8, String)>,
}

const COMMANDS: [&str; 7] = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "BOGUS"];
const CODES: [u32; 8] = [
    code::INCOMPATIBLE_VERSION,
    code::UNSUPPORTED_FIELD,
    code::INVALID_ENV,
    code::IO_FAILURE,
    code::DECODE_FAILURE,
    code::INVALID_CONFIG,
    code::UNKNOWN_CONTAINER,
    code::TRY_AGAIN_LATER,
];

fuzz_target!(|input: Input| {
    let stdin = match &input.structured {
        Some((v, extra)) => {
            let ver = version::SUPPORTED[*v as usize % version::SUPPORTED.len()];
            // Splice fuzz bytes in as the body of runtimeConfig/args/prevResult.
            let body = String::from_utf8_lossy(&input.stdin);
            format!(
                "{{\"cniVersion\":\"{ver}\",\"name\":\"n\",\"type\":\"tenet\",\"runtimeConfig\":{body},\"args\":{extra},\"prevResult\":{body}}}"
            )
            .into_bytes()
        }
        None => input.stdin.clone(),
    };
    let env = vec![
        (
            "CNI_COMMAND".to_string(),
            COMMANDS[input.command as usize % COMMANDS.len()].to_string(),
        ),
        ("CNI_CONTAINERID".to_string(), input.container_id.clone()),
        ("CNI_NETNS".to_string(), input.netns.clone()),
        ("CNI_IFNAME".to_string(), input.ifname.clone()),
        ("CNI_ARGS".to_string(), input.args.clone()),
        ("CNI_PATH".to_string(), input.path.clone()),
    ];
    match cni::parse_invocation(env, &stdin) {
        Ok(inv) => {
            assert!(version::is_supported(&inv.cni_version));
            let _ = inv.to_request();
            if let Some(prev) = &inv.config.prev_result {
                if let Ok(r) = CniResult::parse(prev) {
                    for v in version::SUPPORTED {
                        let doc = r.render(v);
                        let again = CniResult::parse(&doc).expect("a rendered result parses");
                        assert_eq!(again.ips, r.ips);
                    }
                }
            }
        }
        Err(e) => {
            assert!(CODES.contains(&e.code), "undocumented code {}: {e}", e.code);
            let doc: serde_json::Value =
                serde_json::from_str(&e.to_json(&cni::error_version(&stdin))).expect("error JSON");
            assert_eq!(doc["code"], e.code);
        }
    }
});
