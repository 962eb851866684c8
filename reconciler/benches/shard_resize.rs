//! Units moved when the replica set is resized 3 -> 4 -> 2, with consistent hashing with
//! bounded loads (ε = 0.25), for 1,000 and 10,000 units; and how long one assignment takes.
//!
//!     cargo bench -p flotilla-reconciler --bench shard_resize
//!
//! "between stayers" counts units that moved from one replica to another when both were in
//! the set before and after (plain consistent hashing moves none; the load bound may). Prints
//! min / median of 20 runs for the timing. Results go to docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_reconciler::shard::{DEFAULT_EPSILON, assign, loads, moved};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn units(n: usize) -> Vec<String> {
    let kinds = ["placement", "cluster", "workflow", "singleton"];
    (0..n)
        .map(|i| format!("{}/u{i:05}", kinds[i % kinds.len()]))
        .collect()
}

fn members(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("flotilla-{i}")).collect()
}

fn between_stayers(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    let b: std::collections::BTreeSet<&String> = before.values().collect();
    let a: std::collections::BTreeSet<&String> = after.values().collect();
    after
        .iter()
        .filter(|(u, m)| {
            before
                .get(*u)
                .is_some_and(|o| o != *m && a.contains(o) && b.contains(*m))
        })
        .count()
}

fn main() {
    for n in [1_000usize, 10_000] {
        let u = units(n);
        let (m3, m4, m2) = (members(3), members(4), members(2));
        let a3 = assign(&u, &m3, DEFAULT_EPSILON);
        let a4 = assign(&u, &m4, DEFAULT_EPSILON);
        let a2 = assign(&u, &m2, DEFAULT_EPSILON);
        let max = |a: &BTreeMap<String, String>, m: &[String]| {
            loads(a, m).values().copied().max().unwrap_or(0)
        };
        println!(
            "{n} units: 3->4 moved {} (ideal {}, between stayers {}); 4->2 moved {} (ideal {}, between stayers {}); max load 3/4/2: {}/{}/{} (cap {}/{}/{})",
            moved(&a3, &a4),
            n / 4,
            between_stayers(&a3, &a4),
            moved(&a4, &a2),
            n / 2,
            between_stayers(&a4, &a2),
            max(&a3, &m3),
            max(&a4, &m4),
            max(&a2, &m2),
            flotilla_reconciler::shard::cap(n, 3, DEFAULT_EPSILON),
            flotilla_reconciler::shard::cap(n, 4, DEFAULT_EPSILON),
            flotilla_reconciler::shard::cap(n, 2, DEFAULT_EPSILON),
        );
        let mut runs: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(assign(&u, &m4, DEFAULT_EPSILON));
                t.elapsed()
            })
            .collect();
        runs.sort();
        println!(
            "{n} units over 4 replicas, one assignment: min {:.2} ms, median {:.2} ms",
            runs[0].as_secs_f64() * 1e3,
            runs[runs.len() / 2].as_secs_f64() * 1e3
        );
    }
}
