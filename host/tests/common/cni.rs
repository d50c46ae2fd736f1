//! The whole `tenet` binary driven through the CNI protocol, as root, inside
//! a scratch "node" namespace per test, with pods as namespaces the test
//! creates (shared by `apply_root.rs` and `etcd_crash_root.rs`).
//!
//! The binary is the test build (`CARGO_BIN_EXE_tenet`), which has the
//! `failpoints` feature (`TENET_FAILPOINT`); the release binary does not.
//! Every namespace is the test's own: nothing touches the machine's
//! interfaces, routes or firewall.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use tenet::netns::testing::{ScratchNetns, enter_scratch_node, require_root};

/// The CNI network name of every test conf.
pub const NETWORK: &str = "tenet-test";

/// A scratch node: its own netns (entered by the test thread, inherited by
/// every process the test runs, etcd included when started after it), state
/// dir and host configuration.
pub struct Node {
    tmp: tempfile::TempDir,
    /// `TENET_STATE_DIR`.
    pub state: PathBuf,
    /// `TENET_CONFIG`: `/dev/null` (the embedded defaults) unless
    /// [`Node::set_config`] wrote one.
    pub config: PathBuf,
}

impl Node {
    /// Enters a scratch node namespace. Panics when not root: the tests
    /// using it are `#[ignore]`d, and `make test` runs them as root.
    pub fn new(what: &str) -> Self {
        require_root(what);
        enter_scratch_node().expect("scratch node netns");
        // As on a real node, so that isolation is the rules' doing (this is
        // the scratch namespace's own sysctl).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        Node {
            state: tmp.path().join("state"),
            config: PathBuf::from("/dev/null"),
            tmp,
        }
    }

    /// Writes `toml` as the node's host configuration (`tenet.toml`).
    pub fn set_config(&mut self, toml: &str) {
        let p = self.tmp.path().join("tenet.toml");
        std::fs::write(&p, toml).unwrap();
        self.config = p;
    }

    /// Runs `tenet` with `env` (CNI_* and extras) and `stdin`; waits.
    pub fn run(&self, env: &[(&str, &str)], stdin: &str) -> Out {
        let out = self.spawn(env, stdin).wait_with_output().unwrap();
        Out {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `tenet` with `env` and `stdin`.
    pub fn spawn(&self, env: &[(&str, &str)], stdin: &str) -> std::process::Child {
        let mut cmd = self.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::spawn_with_stdin(&mut cmd, stdin)
    }

    /// `tenet` with this node's environment (configuration, modules, cache,
    /// state, the rainbond pipeline) and nothing else of the test's.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenet"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TENET_CONFIG", &self.config)
            .env("TENET_MODULE_DIRS", super::modules_dir())
            .env("TENET_CACHE_DIR", super::shared_cache())
            .env("TENET_STATE_DIR", &self.state)
            .env("TENET_PIPELINE", super::rainbond())
            .env("TENET_LOG_LEVEL", "info");
        cmd
    }

    /// ADD of `pod` with the test conf.
    pub fn add(&self, pod: &Pod) -> Out {
        self.run(&pod.env("ADD"), &conf())
    }

    /// ADD of `pod` that SIGKILLs itself right after `step`.
    pub fn add_killed_at(&self, pod: &Pod, step: &str) -> Out {
        let fp = format!("{step}:kill");
        let mut env = pod.env("ADD");
        env.push(("TENET_FAILPOINT", &fp));
        let out = self.run(&env, &conf());
        assert_eq!(out.signal, Some(9), "{step}: {}", out.stderr);
        out
    }

    /// For each step of `steps` in turn: an ADD of a new pod of `tenant`
    /// SIGKILLed right after that step, then its DEL (even turns) or a GC
    /// with an empty valid list (odd turns: the runtime forgot the pod);
    /// then `check(turn, step)`.
    pub fn kill_at_each_step_then_del_or_gc(
        &self,
        steps: &[&str],
        tenant: &str,
        mut check: impl FnMut(usize, &str),
    ) {
        for (n, step) in steps.iter().enumerate() {
            let p = Pod::new(&format!("kill{n}"), tenant);
            self.add_killed_at(&p, step);
            if n % 2 == 0 {
                self.del(&p).ok();
            } else {
                self.gc_all().ok();
            }
            check(n, step);
        }
    }

    /// DEL of `pod` with the test conf.
    pub fn del(&self, pod: &Pod) -> Out {
        self.run(&pod.env("DEL"), &conf())
    }

    /// GC with an empty valid list: the runtime forgot every pod.
    pub fn gc_all(&self) -> Out {
        let gc = json!({"cniVersion": "1.1.0", "name": NETWORK, "type": "tenet",
            "cni.dev/valid-attachments": []});
        self.run(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            &gc.to_string(),
        )
    }

    /// DEL kept `expect` idle tenant networks for the tenants' next pods;
    /// CNI GC removes them, and then nothing at all is left.
    pub fn gc_idle_tenants(&self, expect: usize) {
        let idle = tenet::apply::idle_tenant_networks().unwrap();
        assert_eq!(idle.len(), expect, "idle tenant networks: {idle:?}");
        self.gc_all().ok();
        assert_eq!(
            tenet::apply::idle_tenant_networks().unwrap(),
            Vec::<String>::new(),
            "idle tenant networks after GC"
        );
        self.assert_clean();
    }

    /// Nothing of any attachment is left on the node: no veth host ends or
    /// tenant bridges, no tenant rules, no local address-store records, no
    /// attachment records.
    pub fn assert_clean(&self) {
        let left = tenet::apply::leftovers(&self.state).unwrap();
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

/// A pod: a namespace and the CNI identity of its attachment.
pub struct Pod {
    pub ns: ScratchNetns,
    pub id: String,
    pub namespace: String,
    /// Appended to CNI_ARGS (e.g. `;IP=10.64.1.50`).
    pub extra_args: String,
    /// CNI_ARGS, built by `env`.
    args: std::cell::OnceCell<String>,
}

impl Pod {
    /// A new pod namespace for container `id` in Kubernetes `namespace`.
    pub fn new(id: &str, namespace: &str) -> Self {
        Pod {
            ns: ScratchNetns::new().unwrap(),
            id: id.into(),
            namespace: namespace.into(),
            extra_args: String::new(),
            args: std::cell::OnceCell::new(),
        }
    }

    /// CNI_NETNS.
    pub fn netns(&self) -> &str {
        self.ns.path().to_str().unwrap()
    }

    /// The CNI_* environment of `command` for this pod.
    pub fn env(&self, command: &'static str) -> Vec<(&'static str, &str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", self.id.as_str()),
            ("CNI_NETNS", self.netns()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", self.args()),
        ]
    }

    fn args(&self) -> &str {
        self.args.get_or_init(|| {
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}{}",
                self.namespace, self.id, self.extra_args
            )
        })
    }

    /// The pod's interfaces (name → IPv4 addresses with prefix).
    pub fn addrs(&self) -> Vec<(String, Vec<String>)> {
        let out = self.ns.cmd("ip", &["-j", "addr", "show"]).unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let addrs = l["addr_info"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["family"] == "inet")
                    .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                    .collect();
                (l["ifname"].as_str().unwrap().to_owned(), addrs)
            })
            .collect()
    }

    /// One ping from the pod to `ip`.
    pub fn ping(&self, ip: &str) -> bool {
        self.ns
            .cmd("ping", &["-c", "1", "-W", "1", ip])
            .unwrap()
            .status
            .success()
    }
}

/// How one `tenet` run ended.
pub struct Out {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Exit 0; the result JSON on stdout (Null when empty).
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(self.stdout.trim()).unwrap()
    }

    /// A CNI error with `code`; the error JSON.
    pub fn error(&self, code: u64) -> Value {
        let j: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {:?}\nstderr: {}", self.stdout, self.stderr));
        assert_ne!(self.code, Some(0));
        assert_eq!(j["code"], code, "{j}\nstderr: {}", self.stderr);
        j
    }
}

/// The test network's conf.
pub fn conf() -> String {
    json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "tenet"}).to_string()
}

/// The first address of a CNI result, without its prefix length.
pub fn first_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_owned()
}
