//! Fleet-scale load: N clusters with M Deployments each in one sim process, written and read
//! over HTTP/1.1 keep-alive by two client threads. Prints throughput and the process RSS.
//!
//! cargo run --release -p flotilla-sim --example fleet_load -- [CLUSTERS] [OBJECTS]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// One request on a keep-alive connection; returns the status code.
fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> u16 {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).expect("write");
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let code = line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0; len];
    conn.read_exact(&mut buf).expect("body");
    code
}

fn deployment(i: usize) -> String {
    format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"app-{i}","labels":{{"app":"app-{i}","team":"t{t}"}}}},"spec":{{"replicas":2,"selector":{{"matchLabels":{{"app":"app-{i}"}}}},"template":{{"metadata":{{"labels":{{"app":"app-{i}"}}}},"spec":{{"containers":[{{"name":"app","image":"registry.example.com/app-{i}:1.2.3","ports":[{{"containerPort":8080}}],"env":[{{"name":"MODE","value":"prod"}}],"resources":{{"requests":{{"cpu":"100m","memory":"128Mi"}}}}}}]}}}}}}}}"#,
        t = i % 5
    )
}

fn run(
    addr: SocketAddr,
    clusters: usize,
    threads: usize,
    f: impl Fn(&mut BufReader<TcpStream>, usize) + Sync,
) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(addr).expect("connect"));
                for c in (t..clusters).step_by(threads) {
                    f(&mut conn, c);
                }
            });
        }
    });
    started.elapsed()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let clusters = args.first().copied().unwrap_or(1000);
    let objects = args.get(1).copied().unwrap_or(50);
    let before = rss_mib();
    let sim = flotilla_sim::start(flotilla_sim::SimConfig {
        clusters,
        ready_delay: Duration::from_millis(100),
        watch_history: std::env::var("HISTORY")
            .ok()
            .and_then(|h| h.parse().ok())
            .unwrap_or(1000),
        ..Default::default()
    })
    .expect("start");
    let addr = sim.addr();
    println!(
        "{clusters} clusters started: RSS {:.0} MiB (was {before:.0})",
        rss_mib()
    );
    let writes = run(addr, clusters, 2, |conn, c| {
        for i in 0..objects {
            let path = format!(
                "/clusters/sim-{}/apis/apps/v1/namespaces/default/deployments/app-{i}?fieldManager=load",
                c + 1
            );
            let code = request(
                conn,
                "PATCH",
                &path,
                "application/apply-patch+yaml",
                &deployment(i),
            );
            assert_eq!(code, 201, "apply {path}");
        }
    });
    let n = (clusters * objects) as f64;
    println!(
        "server-side apply: {n} objects in {:.2} s = {:.0} req/s",
        writes.as_secs_f64(),
        n / writes.as_secs_f64()
    );
    // Let the simulated controllers land the status, ReplicaSets and Pods (2 per Deployment).
    let waited = Instant::now();
    let pods = |name: &str| {
        sim.cluster(name).map_or(0, |c| {
            c.lock()
                .objects
                .get(&(String::new(), "v1".to_string(), "pods".to_string()))
                .map_or(0, |m| m.len())
        })
    };
    while sim.cluster_names().iter().any(|n| pods(n) < objects * 2) {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "pods never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400)); // the ReplicaSets' status
    let total: usize = sim.cluster_names().iter().map(|n| pods(n)).sum();
    println!(
        "after apply and rollout status ({total} pods after {:.1} s): RSS {:.0} MiB",
        waited.elapsed().as_secs_f64(),
        rss_mib()
    );
    let reads = run(addr, clusters, 2, |conn, c| {
        for i in 0..objects {
            let path = format!(
                "/clusters/sim-{}/apis/apps/v1/namespaces/default/deployments/app-{i}",
                c + 1
            );
            assert_eq!(request(conn, "GET", &path, "", ""), 200);
        }
    });
    println!(
        "get: {n} requests in {:.2} s = {:.0} req/s",
        reads.as_secs_f64(),
        n / reads.as_secs_f64()
    );
    let lists = run(addr, clusters, 2, |conn, c| {
        let path = format!(
            "/clusters/sim-{}/apis/apps/v1/namespaces/default/deployments?labelSelector=team%3Dt1",
            c + 1
        );
        assert_eq!(request(conn, "GET", &path, "", ""), 200);
    });
    println!(
        "list with label selector: {clusters} requests in {:.2} s = {:.0} req/s",
        lists.as_secs_f64(),
        clusters as f64 / lists.as_secs_f64()
    );
    let all = run(addr, clusters, 2, |conn, c| {
        let path = format!(
            "/clusters/sim-{}/apis/apps/v1/namespaces/default/deployments",
            c + 1
        );
        assert_eq!(request(conn, "GET", &path, "", ""), 200);
    });
    println!(
        "list of all {objects}: {clusters} requests in {:.2} s = {:.0} req/s",
        all.as_secs_f64(),
        clusters as f64 / all.as_secs_f64()
    );
    sim.shutdown();
    println!("peak RSS {:.0} MiB", peak_mib());
}

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
