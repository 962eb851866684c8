//! The burst split at fleet scale: 20 placements over 1,000 clusters each (800 primaries,
//! 200 in the pool), from nothing, then again from the previous split with rooms changed on
//! a tenth of the clusters (what one controller interval costs, pure part).
//!
//!     cargo bench -p flotilla-reconciler --bench burst_split
//!
//! Prints min / median of 20 runs. Results go to docs/benchmarks.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_reconciler::burst::{Input, Member, split};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn members(seed: u64) -> Vec<Member> {
    (0..1000u64)
        .map(|i| Member {
            name: format!("c{i:04}"),
            room: (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) % 40,
            pool: i % 5 == 0,
            lost: false,
        })
        .collect()
}

fn run(placements: &[(Vec<Member>, BTreeMap<String, u64>)]) -> Vec<BTreeMap<String, u64>> {
    placements
        .iter()
        .enumerate()
        .map(|(p, (ms, current))| {
            split(&Input {
                total: 5_000 + 1_000 * p as u64,
                members: ms,
                current,
                last_scale_out: Some(0),
                last_scale_in: None,
                now_ms: 1_000_000,
                cooldown: Duration::from_secs(600),
                pool_max: 4_000,
            })
            .assignment
        })
        .collect()
}

fn time(label: &str, mut f: impl FnMut()) {
    let mut runs: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    runs.sort();
    println!(
        "{label}: min {:.2} ms, median {:.2} ms",
        runs[0].as_secs_f64() * 1e3,
        runs[runs.len() / 2].as_secs_f64() * 1e3
    );
}

fn main() {
    let fresh: Vec<(Vec<Member>, BTreeMap<String, u64>)> =
        (0..20u64).map(|p| (members(p), BTreeMap::new())).collect();
    let first = run(&fresh);
    time(
        "split, 1,000 clusters x 20 placements, from nothing",
        || {
            std::hint::black_box(run(&fresh));
        },
    );
    let changed: Vec<(Vec<Member>, BTreeMap<String, u64>)> = fresh
        .iter()
        .zip(first)
        .map(|((ms, _), a)| {
            let mut ms = ms.clone();
            for m in ms.iter_mut().step_by(10) {
                m.room += 3;
            }
            (ms, a)
        })
        .collect();
    time(
        "split, 1,000 clusters x 20 placements, rooms changed on 10%",
        || {
            std::hint::black_box(run(&changed));
        },
    );
}
