//! TEMPORARY shim until the CNI layer lands (replaced by the real module).
#![allow(missing_docs, dead_code)]
pub mod code {
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const POLICY_DENIED: u32 = 100;
    pub const POLICY_TRAP: u32 = 101;
    pub const POLICY_BUDGET_EXCEEDED: u32 = 102;
    pub const POLICY_MODULE_REFUSED: u32 = 103;
    pub const POLICY_INVALID_PLAN: u32 = 104;
    pub const POLICY_INVALID_SETTINGS: u32 = 105;
    pub const POLICY_INVALID_INPUT: u32 = 106;
    pub const POLICY_INTERNAL: u32 = 107;
    pub const NOT_IMPLEMENTED: u32 = 110;
    pub const INTERNAL: u32 = 120;
}
pub mod version {
    pub const LATEST: &str = "1.1.0";
}
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}
impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }
    pub fn to_json(&self, v: &str) -> String {
        serde_json::json!({"cniVersion": v, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command { Add, Del, Check, Version, Status, Gc }
#[derive(Debug, Default)]
pub struct Env { pub container_id: Option<String>, pub ifname: Option<String> }
#[derive(Debug, Default)]
pub struct NetConf { pub name: String, pub plugin: serde_json::Map<String, serde_json::Value>, pub dns: Option<crate::plan::Dns> }
#[derive(Debug)]
pub struct Invocation { pub command: Command, pub env: Env, pub config: NetConf, pub cni_version: String }
impl Invocation {
    pub fn to_request(&self) -> Option<crate::plan::Request> { None }
}
pub fn parse_invocation<I: IntoIterator<Item = (String, String)>>(_env: I, _stdin: &[u8]) -> Result<Invocation, CniError> {
    Err(CniError::new(code::INTERNAL, "shim", ""))
}
pub fn error_version(_stdin: &[u8]) -> String { version::LATEST.into() }
pub fn version_reply(_v: Option<&str>) -> String { String::new() }
pub fn read_stdin(mut r: impl std::io::Read, _max: usize) -> Result<Vec<u8>, CniError> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).map_err(|e| CniError::new(5, "io", e.to_string()))?;
    Ok(v)
}
