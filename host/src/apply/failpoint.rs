//! Failure injection for the apply engine's crash and rollback tests.
//!
//! `TENET_FAILPOINT=<step>:<action>` in the invocation's environment makes
//! the engine act right after `<step>` completes: `error` fails the step
//! (ADD then rolls back), `kill` sends SIGKILL to the process (nothing runs
//! after it: the crash tests then check that DEL or GC cleans up). Step names
//! are those of [`STEPS_WITH_HOST_LINK`] (`record`, `reserve`,
//! `ensure-tenant`, `veth:eth0`, `guard:eth0`, `attach:eth0`,
//! `host-side:eth1`, `configure:eth0`, `ready`), and three points
//! inside `ensure-tenant` that the SDN backend fires
//! ([`crate::sdn::Sdn::set_failpoints`]): `ensure-tenant:bridge` (the bridge
//! exists), `ensure-tenant:rules` (its rules are installed) and
//! `ensure-tenant:gateway` (just before its gateway addresses).
//!
//! Compiled in only with the `failpoints` feature, which the release `tenet`
//! binary is built without (`--no-default-features`): production never
//! reads the variable.

/// Every step ADD takes, in order, for a pod with an SDN port `eth0` and a
/// host link `eth1` (the rainbond pipeline's pods): what the rollback and
/// crash tests walk, in the unit tests and through the binary.
pub const STEPS_WITH_HOST_LINK: [&str; 15] = [
    "record",
    "reserve",
    "ensure-tenant:bridge",
    "ensure-tenant:rules",
    "ensure-tenant:gateway",
    "ensure-tenant",
    "veth:eth0",
    "veth:eth1",
    "guard:eth0",
    "guard:eth1",
    "attach:eth0",
    "host-side:eth1",
    "configure:eth0",
    "configure:eth1",
    "ready",
];

/// The configured failpoint, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failpoints {
    at: Option<(String, Action)>,
}

/// What a failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Fail the step with an injected error.
    Error,
    /// SIGKILL this process.
    Kill,
}

impl Failpoints {
    /// None set.
    pub fn none() -> Self {
        Self::default()
    }

    /// From the invocation's environment (empty unless the `failpoints`
    /// feature is on).
    pub fn from_env(env: &[(String, String)]) -> Self {
        #[cfg(feature = "failpoints")]
        {
            let Some((_, v)) = env.iter().find(|(k, _)| k == "TENET_FAILPOINT") else {
                return Self::none();
            };
            Self::parse(v)
        }
        #[cfg(not(feature = "failpoints"))]
        {
            let _ = env;
            Self::none()
        }
    }

    /// Parses `<step>:<action>`; anything else sets nothing.
    pub fn parse(v: &str) -> Self {
        let Some((step, action)) = v.rsplit_once(':') else {
            return Self::none();
        };
        let action = match action {
            "error" => Action::Error,
            "kill" => Action::Kill,
            _ => return Self::none(),
        };
        Self {
            at: Some((step.to_owned(), action)),
        }
    }

    /// Called after `step` completed: `Err` to fail it; never returns for
    /// `kill`.
    pub fn after(&self, step: &str) -> Result<(), String> {
        match &self.at {
            Some((s, a)) if s == step => match a {
                Action::Error => Err(format!("injected failure after {step}")),
                Action::Kill => {
                    // SAFETY: kill(2) on our own pid has no memory-safety
                    // preconditions.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                    unreachable!("SIGKILL delivered")
                }
            },
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fires_only_at_its_step() {
        let f = Failpoints::parse("attach:eth0:error");
        assert!(f.after("veth:eth0").is_ok());
        assert!(f.after("attach:eth0").unwrap_err().contains("attach:eth0"));
        assert_eq!(Failpoints::parse("reserve:boom"), Failpoints::none());
        assert_eq!(Failpoints::parse("nothing"), Failpoints::none());
        assert!(Failpoints::none().after("reserve").is_ok());
    }
}
