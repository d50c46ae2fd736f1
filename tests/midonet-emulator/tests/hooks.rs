//! Test hooks: fault injection (status, delay, Nth call, after), the
//! journal, objects and the leak report — in Rust and over `/_emulator/*` —
//! and the `midonet-emulator` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use midonet_emulator::{Fault, Uuid};
use serde_json::json;

#[test]
fn status_fault_hits_matching_calls_without_changing_state() {
    let f = fixture();
    let c = &f.client;
    f.emu.inject(
        Fault::status(503)
            .method("POST")
            .path_prefix("/midonet-api/routers"),
    );
    for _ in 0..2 {
        let r = c.post("/routers", ROUTER, &json!({"name": "x"}));
        assert_eq!(r.status, 503);
        assert_eq!(r.message(), "injected fault");
    }
    // Other methods and paths are untouched.
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
    c.bridge("b");
    assert_eq!(f.emu.objects().routers.len(), 1, "only the provider router");
    f.emu.clear_faults();
    c.router("r");
}

#[test]
fn nth_and_times_pick_which_calls_fail() {
    let f = fixture();
    let c = &f.client;
    f.emu.inject(
        Fault::status(500)
            .method("POST")
            .path_prefix("/midonet-api/bridges")
            .nth(3),
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| c.post("/bridges", BRIDGE, &json!({})).status)
        .collect();
    assert_eq!(statuses, [201, 201, 500, 201, 201]);
    f.emu.inject(
        Fault::status(502)
            .path_prefix("/midonet-api/chains")
            .nth(2)
            .times(2),
    );
    let statuses: Vec<u16> = (0..5)
        .map(|_| c.post("/chains", CHAIN, &json!({})).status)
        .collect();
    assert_eq!(statuses, [201, 502, 502, 201, 201]);
    // Counting starts at injection; nth null + times = the next N calls.
    f.emu.inject(
        Fault::status(500)
            .path_prefix("/midonet-api/chains")
            .times(1),
    );
    assert_eq!(c.post("/chains", CHAIN, &json!({})).status, 500);
    assert_eq!(c.post("/chains", CHAIN, &json!({})).status, 201);
}

#[test]
fn after_fault_applies_the_change_and_still_fails() {
    let f = fixture();
    let c = &f.client;
    let id = Uuid::new_v4();
    f.emu
        .inject(Fault::status(500).method("POST").nth(1).after());
    let r = c.post("/routers", ROUTER, &json!({"id": id}));
    assert_eq!(r.status, 500);
    // The router exists: a client retrying with the same id sees 409.
    assert_eq!(c.get(&format!("/routers/{id}"), ROUTER).status, 200);
    assert_eq!(c.post("/routers", ROUTER, &json!({"id": id})).status, 409);
    let j = f.emu.journal();
    let faulted: Vec<_> = j.iter().filter(|e| e.fault).collect();
    assert_eq!(faulted.len(), 1);
    assert_eq!(faulted[0].status, 500);
}

#[test]
fn delay_fault_slows_the_matching_call() {
    let f = fixture();
    let c = &f.client;
    f.emu.inject(
        Fault::default()
            .method("GET")
            .nth(1)
            .delay(Duration::from_millis(300)),
    );
    let t = Instant::now();
    assert_eq!(
        c.get("/routers", ROUTERS).status,
        200,
        "a delay alone still answers"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "delayed by at least delay_ms"
    );
    // A client with a shorter timeout gives up (what the backend's timeout test needs).
    f.emu.inject(
        Fault::default()
            .method("GET")
            .nth(1)
            .delay(Duration::from_millis(1500)),
    );
    let mut s = std::net::TcpStream::connect(f.emu.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    use std::io::{Read, Write};
    let token = c.token.clone().unwrap();
    write!(s, "GET /midonet-api/routers HTTP/1.1\r\nHost: x\r\nAccept: {ROUTERS}\r\nX-Auth-Token: {token}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let err = s
        .read(&mut buf)
        .expect_err("no answer before the delay ends");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
}

#[test]
fn a_concurrent_modification_answers_409_and_writes_nothing() {
    let f = fixture();
    let c = &f.client;
    f.emu.inject(
        Fault::concurrent_modification()
            .method("POST")
            .path_prefix("/midonet-api/bridges")
            .times(2),
    );
    let id = Uuid::new_v4();
    let body = json!({"id": id, "name": "b"});
    for _ in 0..2 {
        let r = c.post("/bridges", BRIDGE, &body);
        assert_eq!(r.status, 409);
        assert_eq!(r.message(), "Object was modified during the transaction.");
        assert_eq!(c.get(&format!("/bridges/{id}"), BRIDGE).status, 404);
    }
    // The third try goes through, with the same id.
    assert_eq!(c.create("/bridges", BRIDGE, &body), id);
    assert_eq!(f.emu.faults()[0].fired, 2);
}

#[test]
fn invalid_faults_are_refused() {
    let f = fixture();
    let c = &f.client;
    for bad in [
        json!({"status": 500, "nth": 0}),
        json!({"status": 99}),
        json!({"delay_ms": 0}),
        json!({"status": 500, "times": 0}),
        json!({"status": 500, "bogus": 1}),
        json!({"delay_ms": 10, "after": true}),
    ] {
        assert_eq!(
            c.control("POST", "/faults", Some(&bad)).status,
            400,
            "{bad}"
        );
    }
}

#[test]
fn journal_records_calls_with_media_types_and_can_be_cleared() {
    let f = fixture();
    let c = &f.client;
    f.emu.clear_journal();
    let r = c.router("r");
    let _ = c.get(&format!("/routers/{r}"), "text/plain");
    let _ = c.get("/routers?tenant_id=t1", ROUTERS);
    c.delete(&format!("/routers/{r}"));
    let j = f.emu.journal();
    let seen: Vec<_> = j.iter().map(|e| (e.method.as_str(), e.status)).collect();
    assert_eq!(
        seen,
        [("POST", 201), ("GET", 406), ("GET", 200), ("DELETE", 204)]
    );
    assert_eq!(j[0].content_type.as_deref(), Some(ROUTER));
    assert_eq!(j[0].body.as_ref().unwrap()["name"], "r");
    assert_eq!(j[1].accept.as_deref(), Some("text/plain"));
    assert_eq!(j[2].path, "/midonet-api/routers");
    assert_eq!(j[2].query.as_deref(), Some("tenant_id=t1"));
    assert_eq!(j[3].path, format!("/midonet-api/routers/{r}"));
    // The same journal over HTTP; control calls are not journaled.
    let http = c.control("GET", "/journal", None);
    assert_eq!(http.status, 200);
    let entries = http.json();
    assert_eq!(entries.as_array().unwrap().len(), 4);
    let e = &entries[0];
    for key in ["seq", "method", "path", "content_type", "accept", "status"] {
        assert!(e.get(key).is_some(), "journal entry has {key}: {e}");
    }
    assert_eq!(e["status"], 201);
    assert_eq!(c.control("DELETE", "/journal", None).status, 204);
    assert!(f.emu.journal().is_empty());
}

#[test]
fn control_endpoints_over_http() {
    let f = fixture();
    let c = &f.client;
    // Faults.
    let fault = json!({"method": "POST", "path_prefix": "/midonet-api/bridges", "nth": 1, "status": 500, "delay_ms": 0, "times": 1});
    assert_eq!(c.control("POST", "/faults", Some(&fault)).status, 201);
    assert_eq!(c.control("GET", "/faults", None).json()[0]["status"], 500);
    assert_eq!(c.post("/bridges", BRIDGE, &json!({})).status, 500);
    let state = c.control("GET", "/faults", None).json();
    assert_eq!(
        (state[0]["seen"].clone(), state[0]["fired"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(c.post("/bridges", BRIDGE, &json!({})).status, 201);
    let every =
        json!({"method": null, "path_prefix": "/midonet-api/chains", "nth": null, "status": 409});
    assert_eq!(c.control("POST", "/faults", Some(&every)).status, 201);
    assert_eq!(c.post("/chains", CHAIN, &json!({})).status, 409);
    assert_eq!(c.post("/chains", CHAIN, &json!({})).status, 409);
    assert_eq!(c.control("DELETE", "/faults", None).status, 204);
    assert_eq!(c.post("/chains", CHAIN, &json!({})).status, 201);
    // Objects.
    let objs = c.control("GET", "/objects", None).json();
    assert_eq!(objs["bridges"].as_array().unwrap().len(), 1);
    assert_eq!(objs["chains"].as_array().unwrap().len(), 1);
    assert_eq!(objs["routers"][0]["id"], json!(f.provider));
    assert_eq!(objs["hosts"][0]["id"], json!(f.host));
    // Hosts can be added at run time.
    let h = Uuid::new_v4();
    let add = c.control("POST", "/hosts", Some(&json!({"id": h, "name": "node-9"})));
    assert_eq!(add.status, 201);
    assert_eq!(c.get_ok(&format!("/hosts/{h}"), HOST)["name"], "node-9");
    assert_eq!(c.control("GET", "/nothing", None).status, 404);
    // No token needed, none consumed.
    let anon = send(f.emu.addr(), "GET", "/_emulator/objects", &[], None);
    assert_eq!(anon.status, 200);
}

#[test]
fn leak_report_finds_orphans_and_not_reachable_objects() {
    let f = fixture();
    let c = &f.client;
    // Reachable: tenant router linked to the provider, its bridge linked to
    // it, the bridge's bound pod port, the router's chains and rules.
    let chain = c.create("/chains", CHAIN, &json!({"name": "in"}));
    let jumped = c.create("/chains", CHAIN, &json!({"name": "jumped"}));
    c.create(
        &format!("/chains/{chain}/rules"),
        RULE,
        &json!({"type": "jump", "jumpChainId": jumped}),
    );
    let r = c.create(
        "/routers",
        ROUTER,
        &json!({"name": "tenant", "inboundFilterId": chain}),
    );
    let lp = c.router_port(r, "172.16.0.0", 24, "172.16.0.3");
    let rp = c.router_port(f.provider, "172.16.0.0", 24, "172.16.0.2");
    assert_eq!(c.link(lp, rp).status, 201);
    let b0 = c.bridge("b0");
    let gp = c.router_port(r, "192.168.0.0", 24, "192.168.0.254");
    let bp = c.bridge_port(b0);
    assert_eq!(c.link(gp, bp).status, 201);
    // A bridge reachable only through a binding on a host.
    let bound = c.bridge("bound-only");
    let pod = c.bridge_port(bound);
    assert_eq!(c.bind(f.host, pod, "vif1").status, 201);
    assert_eq!(f.emu.leaks::<Uuid>(&[]), vec![]);

    // Orphans: a bridge with an unbound port, an unused chain, an unlinked router.
    let orphan = c.bridge("orphan");
    let orphan_port = c.bridge_port(orphan);
    let stray_chain = c.create("/chains", CHAIN, &json!({"name": "stray"}));
    let lonely = c.router("lonely");
    let leaks = f.emu.leaks::<Uuid>(&[]);
    let got: Vec<_> = leaks
        .iter()
        .map(|l| (l.kind.as_str(), l.id, l.name.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("bridge", orphan, Some("orphan".to_string())),
            ("port", orphan_port, None),
            ("chain", stray_chain, Some("stray".to_string())),
            ("router", lonely, Some("lonely".to_string())),
        ]
    );
    // Roots make objects reachable: the lonely router as a root.
    let with_root = f.emu.leaks(&[lonely]);
    assert_eq!(
        f.emu.leaks(&[lonely.to_string()]),
        with_root,
        "String roots"
    );
    assert_eq!(
        f.emu.leaks(&[lonely.to_string().as_str()]),
        with_root,
        "&str roots"
    );
    assert_eq!(with_root.len(), 3);
    assert!(with_root.iter().all(|l| l.id != lonely));
    // Same over HTTP.
    let http = c.control("POST", "/leaks", Some(&json!({"roots": [orphan]})));
    assert_eq!(http.status, 200);
    let list = http.json();
    let ids: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["type"].clone(), l["id"].clone()))
        .collect();
    assert_eq!(
        ids,
        [
            (json!("chain"), json!(stray_chain)),
            (json!("router"), json!(lonely))
        ]
    );
    assert_eq!(
        c.control("POST", "/leaks", Some(&json!({"roots": ["nope"]})))
            .status,
        400
    );
    // Unlinking the tenant router from the provider makes its whole tree leak.
    assert_eq!(c.delete(&format!("/ports/{lp}/link")).status, 204);
    let leaked: Vec<_> = f.emu.leaks::<Uuid>(&[]).iter().map(|l| l.id).collect();
    for id in [r, lp, gp, bp, b0, chain, jumped] {
        assert!(leaked.contains(&id), "{id} leaks once unlinked: {leaked:?}");
    }
    assert!(!leaked.contains(&rp) && !leaked.contains(&pod) && !leaked.contains(&bound));
}

/// Kills the child on drop, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_its_url_and_serves() {
    let host = Uuid::new_v4();
    let provider = Uuid::new_v4();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_midonet-emulator"))
            .args(["--listen", "127.0.0.1:0", "--user", "admin:secret"])
            .args([
                "--host",
                &format!("{host}=node-1"),
                "--provider-router",
                &provider.to_string(),
            ])
            .args(["--token-lifetime-secs", "600", "--endpoints", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn midonet-emulator"),
    );
    // Read the announced URLs on a thread so a silent child fails the
    // test instead of hanging it.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().take(2) {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("midonet-emulator announces each endpoint");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("stdout line: {line:?}"));
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, path) = rest.split_once('/').unwrap();
        assert_eq!(path, "midonet-api");
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        addrs.push(addr);
    }
    let addr = addrs[0];
    let mut c = Client { addr, token: None };
    assert_eq!(c.login("admin", "admin").status, 401, "only the given user");
    assert_eq!(c.login("admin", "secret").status, 200);
    assert_eq!(c.get_ok(&format!("/hosts/{host}"), HOST)["name"], "node-1");
    assert_eq!(
        c.get_ok(&format!("/routers/{provider}"), ROUTER)["id"],
        json!(provider)
    );
    let r = c.router("r");
    let other = Client {
        addr: addrs[1],
        token: c.token.clone(),
    };
    assert_eq!(other.get_ok(&format!("/routers/{r}"), ROUTER)["name"], "r");
    // Two logins, three GETs, one create.
    let journal = c.control("GET", "/journal", None).json();
    assert_eq!(journal.as_array().unwrap().len(), 6);
    assert_eq!(journal[5]["endpoint"], 1);
}

#[test]
fn binary_refuses_non_loopback_addresses() {
    let out = Command::new(env!("CARGO_BIN_EXE_midonet-emulator"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    let err = midonet_emulator::Emulator::start(
        midonet_emulator::EmulatorOptions::default().listen("0.0.0.0:0".parse().unwrap()),
    )
    .err()
    .expect("refused");
    assert!(matches!(err, midonet_emulator::StartError::NotLoopback(_)));
}

#[test]
fn several_endpoints_share_state_and_fail_separately() {
    let f = fixture_with(midonet_emulator::EmulatorOptions::default().endpoints(2));
    let urls = f.emu.urls();
    assert_eq!(urls.len(), 2);
    assert_eq!(urls[0], f.emu.url());
    let addrs = f.emu.addrs();
    assert_ne!(addrs[0], addrs[1]);
    let first = &f.client;
    // The token issued by endpoint 0 works on endpoint 1 (one auth service).
    let second = Client {
        addr: addrs[1],
        token: first.token.clone(),
    };
    let r = first.router("r");
    assert_eq!(
        second.get_ok(&format!("/routers/{r}"), ROUTER)["id"],
        json!(r)
    );
    // A fault scoped to endpoint 0.
    f.emu.inject(Fault::status(503).endpoint(0));
    assert_eq!(first.get(&format!("/routers/{r}"), ROUTER).status, 503);
    assert_eq!(second.get(&format!("/routers/{r}"), ROUTER).status, 200);
    let j = f.emu.journal();
    let last_two: Vec<_> = j[j.len() - 2..]
        .iter()
        .map(|e| (e.endpoint, e.status))
        .collect();
    assert_eq!(last_two, [(0, 503), (1, 200)]);
    // Stopping endpoint 1: connections refused; endpoint 0 still serves.
    f.emu.clear_faults();
    assert_eq!(first.control("POST", "/endpoints/1/stop", None).status, 204);
    let refused = (0..50).any(|_| {
        let gone = std::net::TcpStream::connect(addrs[1]).is_err();
        if !gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        gone
    });
    assert!(refused, "endpoint 1 refuses connections once stopped");
    assert_eq!(first.get(&format!("/routers/{r}"), ROUTER).status, 200);
    assert_eq!(first.control("POST", "/endpoints/7/stop", None).status, 404);
}

#[test]
fn a_delayed_call_does_not_hold_up_other_calls() {
    let f = fixture();
    let token = f.client.token.clone();
    let addr = f.emu.addr();
    f.emu.clear_journal();
    f.emu.inject(
        Fault::default()
            .method("GET")
            .nth(1)
            .delay(Duration::from_millis(1500)),
    );
    let slow = std::thread::spawn(move || Client { addr, token }.get("/routers", ROUTERS).status);
    // Wait until the slow call has hit the fault (it is sleeping now).
    let hit = (0..500).any(|_| {
        let fired = f.emu.faults()[0].fired == 1;
        if !fired {
            std::thread::sleep(Duration::from_millis(2));
        }
        fired
    });
    assert!(hit, "the slow GET reached the emulator");
    f.client.router("fast");
    assert_eq!(slow.join().unwrap(), 200);
    let order: Vec<_> = f.emu.journal().iter().map(|e| e.method.clone()).collect();
    assert_eq!(
        order,
        ["POST", "GET"],
        "the create finished while the GET slept"
    );
}
