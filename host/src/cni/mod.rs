//! TEMPORARY shim until the CNI layer lands (replaced by the real module).
pub mod code {
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const POLICY_DENIED: u32 = 100;
    pub const POLICY_TRAP: u32 = 101;
    pub const POLICY_BUDGET_EXCEEDED: u32 = 102;
    pub const POLICY_MODULE_REFUSED: u32 = 103;
    pub const POLICY_INVALID_PLAN: u32 = 104;
    pub const POLICY_INVALID_SETTINGS: u32 = 105;
    pub const POLICY_INVALID_INPUT: u32 = 106;
    pub const POLICY_INTERNAL: u32 = 107;
}
#[derive(Debug)]
pub struct CniError { pub code: u32, pub msg: String, pub details: String }
impl CniError { pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self { Self { code, msg: msg.into(), details: details.into() } } }
