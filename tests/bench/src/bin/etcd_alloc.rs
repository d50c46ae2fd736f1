//! Throughput and latency of the etcd address store against a real etcd
//! (Debian's etcd-server, started on loopback ports in a temp dir by the
//! shared test harness), all phases in one run against the same etcd.
//!
//! 1. **Raw rate**: 8 clients, each in a loop of single-key compare-and-put
//!    transactions (`If mod_revision(k) == r Then Put(k)`) on its own key:
//!    what etcd on this machine does per second.
//! 2. **Allocation rate**: 8 simulated nodes, each its own state dir (hint
//!    file) and node name, each allocating in a loop:
//!    - `claim`: the whole claim of an ADD (reserve and confirm in one
//!      transaction: the claim is permanent when it commits);
//!    - `reserve` + `confirm`: the two-phase claim (two transactions), what
//!      ADD did before, for reference;
//!    - `claim` with a **new `EtcdStore` per ADD** (a new connection),
//!      exactly what one `tenet` exec does.
//!
//!    In the first two, each node keeps one `EtcdStore` (one connection),
//!    but nothing of the claim is kept in memory between calls: every
//!    claim reads the node's hint file and rewrites it, as a new `tenet`
//!    process does (only confirm uses what its own reserve kept, as in one
//!    process).
//! 3. **Latency vs fill**: one node, a tenant /20 (4094 addresses, 64
//!    blocks) filled to 1 % and to 90 % (two prefixes); p50 and p99 of
//!    `claim` at each fill, the probes of the two fills interleaved (each
//!    measured claim is released again so the fill stays put), with hints,
//!    and without (the read path, for reference).
//!
//! The rate phases run interleaved: each workload has its own threads, and
//! they take turns in 0.5 s slices until each had `BENCH_SECS`, so that the
//! ratios compare like with like on a machine whose other load changes.
//!
//! `make bench-etcd`, or `cargo run --profile ctl -p tenet-bench --bin
//! etcd_alloc`. `BENCH_SECS` (default 5) sets each rate phase's length,
//! `BENCH_SAMPLES` (default 3000) the latency samples per fill,
//! `BENCH_PHASES` (default `raw,claim,twophase,fresh,latency`) which phases run.

#[path = "../../../../host/tests/common/etcd.rs"]
mod etcd;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tenet::ipam::{AttachmentKey, EtcdOptions, EtcdStore, IpStore};
use tenet::plan::{AddressSpec, IpFamily, PoolSpec};

const CLIENTS: usize = 8;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(supernet: &str, len: u8) -> Vec<AddressSpec> {
    vec![AddressSpec {
        family: IpFamily::Ipv4,
        pool: Some(PoolSpec {
            name: "bench".into(),
            supernet: supernet.parse().expect("a CIDR"),
            subnet_len: len,
            exclude: vec![],
        }),
        static_address: None,
    }]
}

fn options(endpoints: &[String], node: &str, prefix: &str, state: Option<&Path>) -> EtcdOptions {
    let mut o = EtcdOptions::new(endpoints.to_vec(), node);
    o.prefix = prefix.into();
    o.cooldown = Duration::ZERO;
    o.timeout = Duration::from_secs(10);
    // As `EtcdOptions::from_config` does: `<state_dir>/etcd-hints`.
    o.hint_dir = state.map(|s| s.join("etcd-hints"));
    o
}

fn store(endpoints: &[String], node: &str, prefix: &str, state: Option<&Path>) -> EtcdStore {
    EtcdStore::new(options(endpoints, node, prefix, state)).expect("connect")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// A measured rate: operations per second, and the CPU each operation
/// cost in the clients (this process) and in etcd.
#[derive(Clone, Copy)]
struct Rate {
    per_s: f64,
    client_us: f64,
    etcd_us: f64,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:8.0} /s  (CPU per op: clients {:4.0} us, etcd {:4.0} us)",
            self.per_s, self.client_us, self.etcd_us
        )
    }
}

/// One workload: `op(client, i)` is client `client`'s `i`-th operation.
struct Work {
    op: Arc<dyn Fn(usize, u64) + Send + Sync>,
}

/// Length of one measured slice.
const SLICE: Duration = Duration::from_millis(500);

/// Runs every workload on its own `CLIENTS` threads, **one workload at a
/// time in alternating slices** (the others' threads wait), until each was
/// measured for `secs`; returns their rates in order. Interleaving is what
/// makes the ratios mean something on a machine shared with other work
/// (the lead's builds): run one after the other, a change of background
/// load between the raw phase and a reserve phase moved the ratio by ±20 %.
fn rates(secs: u64, etcd_pid: u32, works: Vec<Work>) -> Vec<Rate> {
    const IDLE: usize = usize::MAX;
    let n = works.len();
    let active = Arc::new(AtomicUsize::new(IDLE));
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    // Threads inside an operation, per workload: a slice ends when they are
    // all parked again.
    let busy: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let gate = Arc::new((Mutex::new(()), Condvar::new()));
    let switch = |w: usize| {
        let _g = gate.0.lock().unwrap();
        active.store(w, Ordering::SeqCst);
        gate.1.notify_all();
    };
    let mut threads = Vec::new();
    for (w, work) in works.into_iter().enumerate() {
        for c in 0..CLIENTS {
            let (active, stop, counts, busy, f) = (
                active.clone(),
                stop.clone(),
                counts.clone(),
                busy.clone(),
                work.op.clone(),
            );
            let gate = gate.clone();
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    busy[w].fetch_add(1, Ordering::SeqCst);
                    if active.load(Ordering::SeqCst) != w {
                        busy[w].fetch_sub(1, Ordering::SeqCst);
                        // Parked, not polling: waiting threads must not
                        // cost the measured workload CPU.
                        let g = gate.0.lock().unwrap();
                        drop(gate.1.wait_while(g, |_| {
                            active.load(Ordering::Relaxed) != w && !stop.load(Ordering::Relaxed)
                        }));
                        continue;
                    }
                    f(c, i);
                    i += 1;
                    counts[w].fetch_add(1, Ordering::Relaxed);
                    busy[w].fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
    }
    // Parks every workload and waits until no thread is inside an
    // operation, so that nothing of one slice runs into the next.
    let park = || {
        switch(IDLE);
        while busy.iter().any(|b| b.load(Ordering::SeqCst) != 0) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Ends a slice: parks the workload, then leaves etcd idle for a
    // moment, so that nothing of one slice (etcd commits its backend every
    // 100 ms, connections close) lands in the next one's measurement.
    let end_slice = |_w: usize| {
        park();
        std::thread::sleep(Duration::from_millis(250));
    };
    let etcd = etcd_pid.to_string();
    // Warm-up round, not counted.
    for w in 0..n {
        switch(w);
        std::thread::sleep(Duration::from_secs(1));
        end_slice(w);
    }
    let mut ops = vec![0u64; n];
    let mut el = vec![Duration::ZERO; n];
    let mut cpu = vec![(0f64, 0f64); n];
    let rounds = (secs * 1000).div_ceil(SLICE.as_millis() as u64);
    for _ in 0..rounds {
        for w in 0..n {
            switch(w);
            let (c0, e0, k0, t0) = (
                cpu_s("self"),
                cpu_s(&etcd),
                counts[w].load(Ordering::Relaxed),
                Instant::now(),
            );
            std::thread::sleep(SLICE);
            ops[w] += counts[w].load(Ordering::Relaxed) - k0;
            el[w] += t0.elapsed();
            cpu[w].0 += cpu_s("self") - c0;
            cpu[w].1 += cpu_s(&etcd) - e0;
            end_slice(w);
        }
    }
    stop.store(true, Ordering::Relaxed);
    switch(IDLE);
    for t in threads {
        t.join().unwrap();
    }
    (0..n)
        .map(|w| {
            let k = ops[w].max(1) as f64;
            Rate {
                per_s: k / el[w].as_secs_f64(),
                client_us: cpu[w].0 * 1e6 / k,
                etcd_us: cpu[w].1 * 1e6 / k,
            }
        })
        .collect()
}

fn raw_work(endpoints: &[String]) -> Work {
    let endpoints = endpoints.to_vec();
    // Each client: its own runtime and connection, like each EtcdStore.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let c = rt
                .block_on(etcd_client::Client::connect(&endpoints, None))
                .unwrap();
            std::sync::Mutex::new((rt, c, 0i64))
        })
        .collect();
    let clients = Arc::new(clients);
    let op = Arc::new(move |c: usize, i: u64| {
        let mut g = clients[c].lock().unwrap();
        let (rt, client, rev) = &mut *g;
        let key = format!("/bench/raw/{c}");
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::mod_revision(
                key.as_str(),
                etcd_client::CompareOp::Equal,
                *rev,
            )])
            .and_then([etcd_client::TxnOp::put(key.as_str(), i.to_string(), None)]);
        let r = rt.block_on(client.txn(txn)).unwrap();
        assert!(r.succeeded(), "raw txn lost its compare");
        *rev = r.header().unwrap().revision();
    });
    Work { op }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `claim`, one store per node.
    Claim,
    /// `reserve` + `confirm`, one store per node.
    ReserveConfirm,
    /// `claim`, a new store (connection) per ADD.
    FreshStorePerAdd,
}

fn alloc_work(endpoints: &[String], mode: Mode, prefix: &str, states: &Path) -> Work {
    let endpoints = endpoints.to_vec();
    let prefix = prefix.to_owned();
    let dirs: Vec<PathBuf> = (0..CLIENTS)
        .map(|n| states.join(format!("node-{n}")))
        .collect();
    let stores: Arc<Vec<EtcdStore>> = Arc::new(if mode == Mode::FreshStorePerAdd {
        Vec::new()
    } else {
        (0..CLIENTS)
            .map(|n| store(&endpoints, &format!("node-{n}"), &prefix, Some(&dirs[n])))
            .collect()
    });
    let req = request("10.0.0.0/8", 12);
    let op = Arc::new(move |c: usize, i: u64| {
        let k = AttachmentKey::new("bench", format!("n{c}-{i}"), "eth0");
        let fresh;
        let s = if mode == Mode::FreshStorePerAdd {
            fresh = store(&endpoints, &format!("node-{c}"), &prefix, Some(&dirs[c]));
            &fresh
        } else {
            &stores[c]
        };
        if mode == Mode::ReserveConfirm {
            s.reserve(&k, "t", &req).unwrap();
            s.confirm(&k).unwrap();
        } else {
            s.claim(&k, "t", &req).unwrap();
        }
    });
    Work { op }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// A tenant /20 (4094 addresses) filled to `fill` by one node, under its
/// own prefix; returns the node's store and how many addresses it holds.
fn filled(endpoints: &[String], fill: f64, prefix: &str, state: &Path) -> (EtcdStore, usize) {
    let s = store(endpoints, "lat", prefix, Some(state));
    let req = request("10.0.0.0/16", 20);
    let n = (4094.0 * fill) as usize;
    for i in 0..n {
        let k = AttachmentKey::new("lat", format!("fill-{i}"), "eth0");
        s.claim(&k, "t", &req).unwrap();
    }
    (s, n)
}

/// Claim latency in each of `stores` (p50, p99 in ms), **interleaved**:
/// one claim in each store in turn (the order alternating), so that the
/// machine's changing background load hits every fill alike. Each measured
/// claim is released again, so the fill stays put.
fn latencies(stores: &[&EtcdStore], samples: u64, tag: &str) -> Vec<(f64, f64)> {
    let req = request("10.0.0.0/16", 20);
    let mut v: Vec<Vec<Duration>> = stores.iter().map(|_| Vec::new()).collect();
    for i in 0..samples {
        for j in 0..stores.len() {
            let j = if i % 2 == 0 { j } else { stores.len() - 1 - j };
            let k = AttachmentKey::new("lat", format!("{tag}-{i}"), "eth0");
            let t = Instant::now();
            stores[j].claim(&k, "t", &req).unwrap();
            v[j].push(t.elapsed());
            stores[j].release(&k).unwrap();
        }
    }
    v.iter_mut().map(|v| (pct(v, 0.5), pct(v, 0.99))).collect()
}

fn delta(a: f64, b: f64) -> String {
    format!("{:+.0}%", (b / a - 1.0) * 100.0)
}

fn main() {
    let secs = env("BENCH_SECS", 5);
    let samples = env("BENCH_SAMPLES", 3000);
    let states = tempfile::Builder::new()
        .prefix("tenet-bench-state-")
        .tempdir()
        .expect("temp state dirs");
    let cluster = etcd::EtcdCluster::single();
    let eps = cluster.endpoints();
    println!(
        "etcd 3.4 single member on loopback, {CLIENTS} concurrent clients (one simulated node \
         each, own node name and state dir), {secs} s per phase in alternating 0.5 s slices; load \
         average {}",
        loadavg()
    );
    println!(
        "clients: one EtcdStore per node kept across calls, nothing of a claim kept in memory: \
         every claim reads and rewrites the node's hint file <state>/etcd-hints, as each tenet \
         exec does (the two-phase confirm uses what its own reserve kept); last line: a new \
         EtcdStore (connection) per ADD"
    );

    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "raw,claim,twophase,fresh,latency".into());
    let on = |p: &str| phases.split(',').any(|x| x == p);
    let pid = cluster.pid(0).expect("etcd runs");
    let st = states.path();
    let mut works: Vec<Work> = Vec::new();
    let mut names = Vec::new();
    for (name, mode, prefix, dir) in [
        ("claim", Mode::Claim, "/bench-a", "a"),
        ("twophase", Mode::ReserveConfirm, "/bench-b", "b"),
        ("fresh", Mode::FreshStorePerAdd, "/bench-e", "e"),
    ] {
        if on(name) {
            works.push(alloc_work(&eps, mode, prefix, &st.join(dir)));
            names.push(name);
        }
    }
    if on("raw") {
        works.insert(0, raw_work(&eps));
        names.insert(0, "raw");
    }
    let got = rates(secs, pid, works);
    let of = |n: &str| names.iter().position(|x| *x == n).map(|i| got[i]);
    let raw = of("raw");
    if let Some(raw) = raw {
        println!("raw single-key txn (compare mod_revision + put):         {raw}");
    }
    let ratio = |r: Rate| raw.map_or(String::new(), |raw| format!("{:.2}", r.per_s / raw.per_s));
    if let Some(c) = of("claim") {
        println!("ADD's whole claim (reserve + confirm, one txn):           {c}");
        println!("  = {} of raw (goal >= 0.50)", ratio(c));
    }
    if let Some(two) = of("twophase") {
        println!("two-phase reserve, then confirm (two txns, for reference): {two}");
        println!("  = {} of raw", ratio(two));
    }
    if let Some(fresh) = of("fresh") {
        println!("whole claim, new EtcdStore per ADD (one exec's work):      {fresh}");
        println!("  = {} of raw", ratio(fresh));
    }
    if !on("latency") {
        println!("load average at the end: {}", loadavg());
        return;
    }

    let (low, na) = filled(&eps, 0.01, "/bench-c", &st.join("c"));
    let (high, nb) = filled(&eps, 0.90, "/bench-d", &st.join("d"));
    let hinted = latencies(&[&low, &high], samples, "probe");
    // The same nodes without hint files: every claim reads first.
    let (blind_low, blind_high) = (
        store(&eps, "lat", "/bench-c", None),
        store(&eps, "lat", "/bench-d", None),
    );
    let read_path = latencies(&[&blind_low, &blind_high], samples, "read");
    for (what, r) in [("with hints", hinted), ("read path (no hints)", read_path)] {
        let (a, b) = (r[0], r[1]);
        println!("claim latency, {what}:");
        println!(
            "  tenant /20 at  1% ({na:4} held): p50 {:6.2} ms  p99 {:6.2} ms",
            a.0, a.1
        );
        println!(
            "  tenant /20 at 90% ({nb:4} held): p50 {:6.2} ms  p99 {:6.2} ms",
            b.0, b.1
        );
        println!(
            "  90% vs 1%: p50 {}, p99 {} (goal: within 20%)",
            delta(a.0, b.0),
            delta(a.1, b.1)
        );
    }
    println!("load average at the end: {}", loadavg());
}
