//! Throughput and latency of the etcd address store against a real etcd
//! (Debian's etcd-server, started on loopback ports in a temp dir by the
//! shared test harness), all phases in one run against the same etcd.
//!
//! 1. **Raw rate**: 8 clients, each in a loop of single-key compare-and-put
//!    transactions (`If mod_revision(k) == r Then Put(k)`) on its own key:
//!    what etcd on this machine does per second.
//! 2. **Allocation rate**: 8 simulated nodes, each its own state dir (hint
//!    file) and node name, each allocating in a loop:
//!    - `reserve` alone: the one transaction that takes the address;
//!    - `reserve` + `confirm`: the whole two-phase claim of an ADD;
//!    - `reserve` + `confirm` with a **new `EtcdStore` per ADD** (connect
//!      included), exactly what one `tenet` exec does.
//!
//!    In the first two, each node keeps one `EtcdStore` (one connection),
//!    but nothing of the reserve is kept in memory between calls: every
//!    reserve reads the node's hint file and rewrites it, as a new `tenet`
//!    process does (only confirm uses what its own reserve kept, as in one
//!    ADD).
//! 3. **Latency vs fill**: one node, a tenant /20 (4094 addresses, 64
//!    blocks) filled to 1 % and to 90 %; p50 and p99 of `reserve` at each
//!    fill (each measured reservation is released again so the fill stays
//!    put), with hints, and without (the read path, for reference).
//!
//! `make bench-etcd`, or `cargo run --profile ctl -p tenet-bench --bin
//! etcd_alloc`. `BENCH_SECS` (default 5) sets each rate phase's length,
//! `BENCH_SAMPLES` (default 500) the latency samples per fill,
//! `BENCH_PHASES` (default `raw,reserve,add,fresh,latency`) which phases run.

#[path = "../../../../host/tests/common/etcd.rs"]
mod etcd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tenet::ipam::{AttachmentKey, EtcdOptions, EtcdStore, IpStore};
use tenet::plan::{AddressRequest, IpFamily, Pool};

const CLIENTS: usize = 8;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn request(supernet: &str, len: u8) -> Vec<AddressRequest> {
    vec![AddressRequest {
        family: IpFamily::Ipv4,
        pool: Some(Pool {
            name: "bench".into(),
            supernet: supernet.into(),
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

/// Runs `f(client, i)` on `CLIENTS` threads for `secs`; returns the rate.
fn rate<F>(secs: u64, etcd_pid: u32, f: F) -> Rate
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, count, f) = (stop.clone(), count.clone(), f.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    f(c, i);
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm-up second not counted.
    std::thread::sleep(Duration::from_secs(1));
    let etcd = etcd_pid.to_string();
    let (c0, e0) = (cpu_s("self"), cpu_s(&etcd));
    let start_n = count.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let n = count.load(Ordering::Relaxed) - start_n;
    let el = start.elapsed();
    let (c1, e1) = (cpu_s("self"), cpu_s(&etcd));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let n = n.max(1) as f64;
    Rate {
        per_s: n / el.as_secs_f64(),
        client_us: (c1 - c0) * 1e6 / n,
        etcd_us: (e1 - e0) * 1e6 / n,
    }
}

fn raw_rate(endpoints: &[String], secs: u64, etcd_pid: u32) -> Rate {
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
    rate(secs, etcd_pid, move |c, i| {
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
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `reserve` only, one store per node.
    Reserve,
    /// `reserve` + `confirm`, one store per node.
    ReserveConfirm,
    /// `reserve` + `confirm`, a new store (connection) per ADD.
    FreshStorePerAdd,
}

fn alloc_rate(
    endpoints: &[String],
    secs: u64,
    etcd_pid: u32,
    mode: Mode,
    prefix: &str,
    states: &Path,
) -> Rate {
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
    rate(secs, etcd_pid, move |c, i| {
        let k = AttachmentKey::new("bench", format!("n{c}-{i}"), "eth0");
        let fresh;
        let s = if mode == Mode::FreshStorePerAdd {
            fresh = store(&endpoints, &format!("node-{c}"), &prefix, Some(&dirs[c]));
            &fresh
        } else {
            &stores[c]
        };
        s.reserve(&k, "t", &req).unwrap();
        if mode != Mode::Reserve {
            s.confirm(&k).unwrap();
        }
    })
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// Reserve latency of one node at `fill` of a tenant /20: (p50, p99) with
/// hints, (p50, p99) without, and how many addresses are held.
fn latency_at(
    endpoints: &[String],
    fill: f64,
    samples: u64,
    prefix: &str,
    state: &Path,
) -> ((f64, f64), (f64, f64), usize) {
    let s = store(endpoints, "lat", prefix, Some(state));
    let req = request("10.0.0.0/16", 20);
    let n = (4094.0 * fill) as usize;
    for i in 0..n {
        let k = AttachmentKey::new("lat", format!("fill-{i}"), "eth0");
        s.reserve(&k, "t", &req).unwrap();
        s.confirm(&k).unwrap();
    }
    let probe = |s: &EtcdStore, tag: &str| {
        let mut v = Vec::with_capacity(samples as usize);
        for i in 0..samples {
            let k = AttachmentKey::new("lat", format!("{tag}-{i}"), "eth0");
            let t = Instant::now();
            s.reserve(&k, "t", &req).unwrap();
            v.push(t.elapsed());
            s.release(&k).unwrap();
        }
        (pct(&mut v, 0.5), pct(&mut v, 0.99))
    };
    let hinted = probe(&s, "probe");
    let blind = store(endpoints, "lat", prefix, None);
    let read_path = probe(&blind, "read");
    (hinted, read_path, n)
}

fn delta(a: f64, b: f64) -> String {
    format!("{:+.0}%", (b / a - 1.0) * 100.0)
}

fn main() {
    let secs = env("BENCH_SECS", 5);
    let samples = env("BENCH_SAMPLES", 500);
    let states = tempfile::Builder::new()
        .prefix("tenet-bench-state-")
        .tempdir()
        .expect("temp state dirs");
    let cluster = etcd::EtcdCluster::single().expect("/usr/bin/etcd is required");
    let eps = cluster.endpoints();
    println!(
        "etcd 3.4 single member on loopback, {CLIENTS} concurrent clients (one simulated node \
         each, own node name and state dir), {secs} s per phase; load average {}",
        loadavg()
    );
    println!(
        "clients: one EtcdStore per node kept across calls, nothing of reserve kept in memory: \
         every reserve reads and rewrites the node's hint file <state>/etcd-hints, as each tenet \
         exec does (confirm uses what its own reserve kept, as within one ADD); last line: a new \
         EtcdStore (connection) per ADD"
    );

    let phases =
        std::env::var("BENCH_PHASES").unwrap_or_else(|_| "raw,reserve,add,fresh,latency".into());
    let on = |p: &str| phases.split(',').any(|x| x == p);
    let pid = cluster.pid(0).expect("etcd runs");
    let raw = on("raw").then(|| raw_rate(&eps, secs, pid));
    if let Some(raw) = raw {
        println!("raw single-key txn (compare mod_revision + put):         {raw}");
    }
    let ratio = |r: Rate| raw.map_or(String::new(), |raw| format!("{:.2}", r.per_s / raw.per_s));
    let st = states.path();
    if on("reserve") {
        let res = alloc_rate(&eps, secs, pid, Mode::Reserve, "/bench-a", &st.join("a"));
        println!("allocations = reserve (the one txn taking the address):  {res}");
        println!("  = {} of raw (goal >= 0.50)", ratio(res));
    }
    if on("add") {
        let add = alloc_rate(
            &eps,
            secs,
            pid,
            Mode::ReserveConfirm,
            "/bench-b",
            &st.join("b"),
        );
        println!("reserve + confirm (the whole two-phase claim):            {add}");
        println!("  = {} of raw", ratio(add));
    }
    if on("fresh") {
        let fresh = alloc_rate(
            &eps,
            secs,
            pid,
            Mode::FreshStorePerAdd,
            "/bench-e",
            &st.join("e"),
        );
        println!("reserve + confirm, new EtcdStore per ADD (connect too):   {fresh}");
        println!("  = {} of raw", ratio(fresh));
    }
    if !on("latency") {
        println!("load average at the end: {}", loadavg());
        return;
    }

    let (ha, ra, na) = latency_at(&eps, 0.01, samples, "/bench-c", &st.join("c"));
    let (hb, rb, nb) = latency_at(&eps, 0.90, samples, "/bench-d", &st.join("d"));
    for (what, a, b) in [("with hints", ha, hb), ("read path (no hints)", ra, rb)] {
        println!("reserve latency, {what}:");
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
