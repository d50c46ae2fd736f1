//! Throughput and latency of the etcd address store against a real etcd
//! (Debian's etcd-server, started on loopback ports in a temp dir by the
//! shared test harness).
//!
//! 1. **Raw rate**: 8 clients, each in a loop of single-key compare-and-put
//!    transactions (`If mod_revision(k) == r Then Put(k)`) on its own key:
//!    what etcd on this machine does per second.
//! 2. **Allocation rate**: 8 simulated nodes (one `EtcdStore` each, own
//!    node name), each allocating in a loop: `reserve` + `confirm`, a whole
//!    ADD's IPAM work (one read and two write transactions; the claim lease
//!    is shared per node and granted about once per half TTL).
//! 3. **Latency vs fill**: one node, a tenant /20 (4094 addresses, 64
//!    blocks) filled to 1 % and to 90 %; p50 and p99 of `reserve` at each
//!    fill (each measured reservation is released again so the fill stays
//!    put).
//!
//! `make bench-etcd`, or `cargo run --profile ctl -p tenet-bench --bin
//! etcd_alloc`. `BENCH_SECS` (default 5) sets each rate phase's length,
//! `BENCH_SAMPLES` (default 500) the latency samples per fill.

#[path = "../../../../host/tests/common/etcd.rs"]
mod etcd;

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

fn store(endpoints: &[String], node: &str, prefix: &str) -> EtcdStore {
    let mut o = EtcdOptions::new(endpoints.to_vec(), node);
    o.prefix = prefix.into();
    o.cooldown = Duration::ZERO;
    o.timeout = Duration::from_secs(10);
    EtcdStore::new(o).expect("connect")
}

/// Runs `f(client, i)` on `CLIENTS` threads for `secs`; returns ops/s.
fn rate<F>(secs: u64, f: F) -> f64
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
    let start_n = count.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let n = count.load(Ordering::Relaxed) - start_n;
    let el = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    n as f64 / el.as_secs_f64()
}

fn raw_rate(endpoints: &[String], secs: u64) -> f64 {
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
    rate(secs, move |c, i| {
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

fn alloc_rate(endpoints: &[String], secs: u64, confirm: bool, prefix: &str) -> f64 {
    let stores: Arc<Vec<EtcdStore>> = Arc::new(
        (0..CLIENTS)
            .map(|n| store(endpoints, &format!("node-{n}"), prefix))
            .collect(),
    );
    let req = request("10.0.0.0/8", 12);
    rate(secs, move |c, i| {
        let k = AttachmentKey::new("bench", format!("n{c}-{i}"), "eth0");
        stores[c].reserve(&k, "t", &req).unwrap();
        if confirm {
            stores[c].confirm(&k).unwrap();
        }
    })
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn latency_at(endpoints: &[String], fill: f64, samples: u64, prefix: &str) -> (f64, f64, usize) {
    let s = store(endpoints, "lat", prefix);
    let req = request("10.0.0.0/16", 20);
    let n = (4094.0 * fill) as usize;
    for i in 0..n {
        let k = AttachmentKey::new("lat", format!("fill-{i}"), "eth0");
        s.reserve(&k, "t", &req).unwrap();
        s.confirm(&k).unwrap();
    }
    let mut v = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let k = AttachmentKey::new("lat", format!("probe-{i}"), "eth0");
        let t = Instant::now();
        s.reserve(&k, "t", &req).unwrap();
        v.push(t.elapsed());
        s.release(&k).unwrap();
    }
    (pct(&mut v, 0.5), pct(&mut v, 0.99), n)
}

fn main() {
    let secs = env("BENCH_SECS", 5);
    let samples = env("BENCH_SAMPLES", 500);
    let cluster = etcd::EtcdCluster::single().expect("/usr/bin/etcd is required");
    let eps = cluster.endpoints();
    println!(
        "etcd 3.4 single member on loopback, {CLIENTS} concurrent clients, {secs} s per phase"
    );

    let raw = raw_rate(&eps, secs);
    println!("raw single-key txn (compare mod_revision + put): {raw:8.0} /s");
    let add = alloc_rate(&eps, secs, true, "/bench-b");
    println!(
        "allocations (reserve + confirm):               {add:8.0} /s  = {:.2} of raw (goal >= 0.50)",
        add / raw
    );

    let (p50a, p99a, na) = latency_at(&eps, 0.01, samples, "/bench-c");
    let (p50b, p99b, nb) = latency_at(&eps, 0.90, samples, "/bench-d");
    println!(
        "reserve latency, tenant /20 at  1% ({na:4} held): p50 {p50a:6.2} ms  p99 {p99a:6.2} ms"
    );
    println!(
        "reserve latency, tenant /20 at 90% ({nb:4} held): p50 {p50b:6.2} ms  p99 {p99b:6.2} ms"
    );
    println!(
        "90% vs 1%: p50 {:+.0}%, p99 {:+.0}% (goal: within 20%)",
        (p50b / p50a - 1.0) * 100.0,
        (p99b / p99a - 1.0) * 100.0
    );
}
