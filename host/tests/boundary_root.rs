//! The host boundary through the real `tenet` binary, as root, in a scratch
//! node namespace with an "uplink" of its own: hostile plans that would give
//! pods the node's addresses, its routed ranges or another pod's host-link
//! address are refused (104) before anything is created, and so are log
//! bombs (102), oversize messages (clipped on stdout) and refused modules
//! (103, whatever `failure` says). Every refusal leaves the node (links,
//! addresses, routes in every table, nft rules) and the stores exactly as
//! they were.

mod common;

use common::cni::{NETWORK, Node, Pod, conf};
use serde_json::Value;

fn sh(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node with an uplink: 10.1.2.3/24 on `up0` (a veth), a default route, a route to
/// another network and one to the cloud metadata service.
fn node() -> Node {
    let n = Node::new("boundary_root");
    // A veth (this kernel has no dummy links); its peer stays here too.
    sh(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ]);
    sh(&["ip", "link", "set", "up0p", "up"]);
    sh(&["ip", "link", "set", "up0", "up"]);
    sh(&["ip", "addr", "add", "10.1.2.3/24", "dev", "up0"]);
    sh(&["ip", "route", "add", "default", "via", "10.1.2.1"]);
    sh(&["ip", "route", "add", "10.50.0.0/16", "via", "10.1.2.1"]);
    sh(&["ip", "route", "add", "169.254.169.254", "via", "10.1.2.1"]);
    n
}

/// Everything of the node a refused ADD must not change: links, addresses,
/// routes of every table, nft rules, and the state directory's files.
fn snapshot(n: &Node) -> String {
    let mut s = String::new();
    for args in [
        &["ip", "-j", "link", "show"][..],
        &["ip", "-j", "addr", "show"],
        &["ip", "-j", "-4", "route", "show", "table", "all"],
        &["ip", "-j", "-6", "route", "show", "table", "all"],
        &["nft", "list", "ruleset"],
    ] {
        s.push_str(&sh(args));
        s.push('\n');
    }
    let mut files = Vec::new();
    if n.state.exists() {
        // Not `metrics/`: every exec, refused or not, appends its record
        // there for the node agent (crate::metrics), which is no state.
        let metrics = tenet::metrics::dir(&n.state);
        for e in walk(&n.state)
            .into_iter()
            .filter(|e| !e.starts_with(&metrics))
        {
            files.push(format!("{}: {:?}", e.display(), std::fs::read(&e).unwrap()));
        }
    }
    files.sort();
    s + &files.join("\n")
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A `hostile-boundary` pipeline with these settings, written to a file.
fn evil(dir: &std::path::Path, name: &str, settings: &str, keys: &str) -> String {
    let text = format!(
        "[[stage]]\nname = \"evil\"\nmodule = \"hostile-boundary\"\n{keys}\n[stage.settings]\n{settings}\n"
    );
    common::manifest(dir, name, &text)
        .to_str()
        .unwrap()
        .to_owned()
}

/// ADD of `pod` with the pipeline at `pipeline`.
fn add_with(n: &Node, pod: &Pod, pipeline: &str) -> common::cni::Out {
    let mut env = pod.env("ADD");
    env.push(("TENET_PIPELINE", pipeline));
    n.run(&env, &conf())
}

fn error(out: &common::cni::Out) -> Value {
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
#[ignore = "needs root: make test runs it"]
fn plans_overlapping_the_node_are_refused_before_anything_is_made() {
    let n = node();
    let tmp = tempfile::tempdir().unwrap();
    let before = snapshot(&n);
    let pod = Pod::new("evil1", "team-a");
    for (i, (settings, field, what)) in [
        // The node's own subnet (its address and gateway inside).
        (
            "mode = \"pool\"\nvalue = \"10.1.0.0/16\"",
            "pool.supernet",
            "10.1.2.3/24 on up0",
        ),
        // A range the node routes elsewhere.
        (
            "mode = \"pool\"\nvalue = \"10.50.0.0/16\"",
            "pool.supernet",
            "route 10.50.0.0/16 on up0",
        ),
        // The node's own address as a static one.
        (
            "mode = \"static\"\nvalue = \"10.1.2.3/24\"",
            "staticAddress",
            "up0",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let p = evil(tmp.path(), &format!("n{i}.toml"), settings, "");
        let j = error(&add_with(&n, &pod, &p));
        assert_eq!(j["code"], 104, "{j}");
        let details = j["details"].as_str().unwrap();
        assert!(details.contains(field) && details.contains(what), "{j}");
        assert!(j["msg"].as_str().unwrap().contains("node-check"), "{j}");
        assert_eq!(snapshot(&n), before, "{settings}: the node changed");
    }
    // Special and foreign ranges never get as far (the pipeline refuses).
    for (i, value) in ["127.0.0.0/8", "169.254.169.0/24", "8.0.0.0/7", "0.0.0.0/1"]
        .into_iter()
        .enumerate()
    {
        let p = evil(
            tmp.path(),
            &format!("s{i}.toml"),
            &format!("mode = \"pool\"\nvalue = \"{value}\"\nlen = 28"),
            "",
        );
        let j = error(&add_with(&n, &pod, &p));
        assert_eq!(j["code"], 104, "{j}");
        assert!(j["msg"].as_str().unwrap().contains("\"evil\""), "{j}");
        assert_eq!(snapshot(&n), before, "{value}: the node changed");
    }
    n.assert_clean();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn a_host_link_cannot_take_another_pods_address() {
    let n = node();
    let tmp = tempfile::tempdir().unwrap();
    // A real rainbond pod first: eth1 is a host link whose address the node
    // routes to the pod's host end. The metadata route on the node is in
    // the host-link range but excluded from it: no conflict.
    let victim = Pod::new("victim", "team-a");
    let r = n.add(&victim).ok();
    let eth1 = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_owned())
        .find(|a| a.starts_with("169.254."))
        .expect("an eth1 address");
    let eth1_ip = eth1.split('/').next().unwrap().to_owned();
    let route_before = sh(&["ip", "route", "get", &eth1_ip]);
    assert!(route_before.contains("dev tn"), "{route_before}");
    let before = snapshot(&n);
    // The attacker asks for the victim's address, and for the node's side.
    let attacker = Pod::new("attacker", "team-b");
    for (i, value) in [
        eth1.as_str(),
        "169.254.128.1/17",
        "10.96.0.10/32",
        "169.254.169.254/32",
    ]
    .into_iter()
    .enumerate()
    {
        let p = evil(
            tmp.path(),
            &format!("h{i}.toml"),
            &format!("mode = \"host-link\"\nvalue = \"{value}\""),
            "",
        );
        let j = error(&add_with(&n, &attacker, &p));
        assert_eq!(j["code"], 104, "{value}: {j}");
        assert!(
            j["details"].as_str().unwrap().contains("staticAddress"),
            "{j}"
        );
        assert_eq!(snapshot(&n), before, "{value}: the node changed");
    }
    assert_eq!(sh(&["ip", "route", "get", &eth1_ip]), route_before);
    // A node route inside the host-link range (not excluded) stops host
    // links at ADD, naming it.
    sh(&["ip", "route", "add", "169.254.200.0/24", "via", "10.1.2.1"]);
    let before = snapshot(&n);
    let j = error(&n.add(&attacker));
    assert_eq!(j["code"], 104, "{j}");
    assert!(
        j["details"].as_str().unwrap().contains("169.254.200.0/24"),
        "{j}"
    );
    assert_eq!(snapshot(&n), before);
    sh(&["ip", "route", "del", "169.254.200.0/24"]);
    n.del(&victim).ok();
    n.assert_clean();
}

#[test]
#[ignore = "needs root: make test runs it"]
fn log_bombs_huge_messages_and_refused_modules_end_cleanly() {
    let n = node();
    let tmp = tempfile::tempdir().unwrap();
    let pod = Pod::new("noisy", "team-a");
    let before = snapshot(&n);
    // 5000 host.log calls of 8 MiB: the fuel runs out (102), quickly.
    let p = evil(
        tmp.path(),
        "bomb.toml",
        "mode = \"log-bomb\"\nbytes = 8388608\ncalls = 5000",
        "memory_mib = 32",
    );
    let started = std::time::Instant::now();
    let out = add_with(&n, &pod, &p);
    let took = started.elapsed();
    let j = error(&out);
    assert_eq!(j["code"], 102, "{j}");
    assert!(j["details"].as_str().unwrap().contains("fuel"), "{j}");
    // The kept lines are clipped; at most the stage's cap reaches the log.
    assert!(
        out.stderr.len() < 64 * 1024,
        "{} bytes of log",
        out.stderr.len()
    );
    eprintln!("log bomb ADD: {took:?}");
    // A 50 MB denial: 100, and a small stdout.
    let p = evil(
        tmp.path(),
        "deny.toml",
        "mode = \"deny\"\nbytes = 50000000",
        "memory_mib = 128\nfuel = 2000000000\ntimeout_ms = 10000",
    );
    let out = add_with(&n, &pod, &p);
    let j = error(&out);
    assert_eq!(j["code"], 100, "{j}");
    assert!(
        out.stdout.len() < 2048,
        "{} bytes on stdout",
        out.stdout.len()
    );
    assert!(!j["details"].as_str().unwrap().contains('\n'), "{j}");
    // A module importing what tenet does not provide: 103 even on ignore.
    let text = "[[stage]]\nname = \"x\"\nmodule = \"hostile-host-extra\"\nfailure = \"ignore\"\n";
    let p = common::manifest(tmp.path(), "extra.toml", text);
    let j = error(&add_with(&n, &pod, p.to_str().unwrap()));
    assert_eq!(j["code"], 103, "{j}");
    assert_eq!(snapshot(&n), before);
    n.assert_clean();
    let _ = NETWORK;
}
