//! The fleet page for 1,000 clusters × 20 placements: rendering time, paged (the default 100
//! clusters per page) and unpaged (`?per=1000`), and a filtered page (`?state=drifted`).
//! `cargo bench -p flotilla-ui --bench fleet_page` (figures in docs/benchmarks.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_ui::{
    Cell, CellState, ClusterRow, FleetQuery, FleetView, PlacementColumn, render_fleet,
};

fn view() -> FleetView {
    let placements: Vec<PlacementColumn> = (0..20)
        .map(|i| PlacementColumn {
            name: format!("placement-{i:02}"),
            phase: Some("Succeeded".into()),
            error: None,
        })
        .collect();
    let clusters = (0..1000)
        .map(|c| ClusterRow {
            name: format!("cluster-{c:04}"),
            labels: BTreeMap::from([
                ("region".to_string(), format!("r{}", c % 5)),
                ("tier".to_string(), format!("t{}", c % 3)),
            ]),
            cells: (0..20)
                .map(|p| Cell {
                    state: CellState::ALL[(c * 7 + p) % 8],
                    note: (p % 4 == 0).then(|| format!("note for {c}/{p}")),
                })
                .collect(),
        })
        .collect();
    FleetView {
        fleet: Some("bench".into()),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        placements,
        clusters,
        ..FleetView::default()
    }
}

fn measure(name: &str, v: &FleetView, q: &FleetQuery) {
    let mut times: Vec<Duration> = Vec::new();
    let mut bytes = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let html = render_fleet(v, q, false);
        times.push(t.elapsed());
        bytes = html.len();
    }
    times.sort();
    println!(
        "{name}: {} KiB, min {:?}, median {:?}",
        bytes / 1024,
        times[0],
        times[times.len() / 2]
    );
}

fn main() {
    let v = view();
    measure("paged (100 clusters)", &v, &FleetQuery::default());
    measure(
        "unpaged (1000 clusters)",
        &v,
        &FleetQuery::from_pairs([("per", "1000")]),
    );
    measure(
        "filtered (state=drifted)",
        &v,
        &FleetQuery::from_pairs([("state", "drifted")]),
    );
}
