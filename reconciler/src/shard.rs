//! Which replica owns which unit of work: consistent hashing with bounded loads (Mirrokni,
//! Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018).
//!
//! Members (replicas) sit on a ring at [`VNODES`] points each; a unit (`placement/web`,
//! `cluster/eu-1`, ...: the caller names them) is hashed onto the ring and goes clockwise to the
//! first member whose load is below the cap `ceil((1+ε)·units/members)`. Units are placed in
//! the order of their names, so the result depends only on the *sets* of units and members,
//! never on input order, process or version: every hash is SHA-256 (never std's randomized
//! hasher).
//!
//! Pure: no I/O, no clock. [`moved`] counts how many units changed owner between two
//! assignments (what a resize costs).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// Ring points per member. More points spread each member's arcs more evenly (fewer units
/// pushed past a full member), at the cost of a larger ring; 128 keeps a 10,000-unit
/// assignment well under a millisecond per hundred units.
pub const VNODES: u32 = 128;

/// The default ε: no member above 1.25 times the average load.
pub const DEFAULT_EPSILON: f64 = 0.25;

/// A position on the ring: the first 8 bytes of SHA-256 of a domain tag and the name.
fn point(tag: &[u8], name: &str, index: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(tag);
    h.update(name.as_bytes());
    h.update([0]);
    h.update(index.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The most units one member may carry: `ceil((1+ε)·units/members)`, never below
/// `ceil(units/members)` (so every unit fits). ε below 0 or not finite counts as 0.
pub fn cap(units: usize, members: usize, epsilon: f64) -> usize {
    if members == 0 {
        return 0;
    }
    let eps = if epsilon.is_finite() && epsilon > 0.0 {
        epsilon
    } else {
        0.0
    };
    let even = units.div_ceil(members);
    let bounded = ((units as f64) * (1.0 + eps) / (members as f64)).ceil();
    // Saturating float-to-int conversion; a huge ε simply means no bound.
    (bounded as usize).max(even)
}

/// Assigns every unit to one member (see the module documentation). Duplicate names count
/// once; with no member, nothing is assigned (the map is empty).
pub fn assign<U, M>(units: &[U], members: &[M], epsilon: f64) -> BTreeMap<String, String>
where
    U: AsRef<str>,
    M: AsRef<str>,
{
    let units: BTreeSet<&str> = units.iter().map(AsRef::as_ref).collect();
    let members: BTreeSet<&str> = members.iter().map(AsRef::as_ref).collect();
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let members: Vec<&str> = members.into_iter().collect();
    // (position, member index); ties (astronomically rare) broken by member order.
    let mut ring: Vec<(u64, usize)> = members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| (0..VNODES).map(move |v| (point(b"member\0", m, v), i)))
        .collect();
    ring.sort_unstable();
    let limit = cap(units.len(), members.len(), epsilon);
    let mut load = vec![0usize; members.len()];
    for unit in units {
        let h = point(b"unit\0", unit, 0);
        let start = ring.partition_point(|&(p, _)| p < h);
        // The cap times the member count is at least the unit count, so some member has
        // room and the walk ends within one turn.
        let owner = (0..ring.len())
            .map(|k| ring[(start + k) % ring.len()].1)
            .find(|&i| load[i] < limit);
        if let Some(i) = owner {
            load[i] += 1;
            out.insert(unit.to_string(), members[i].to_string());
        }
    }
    out
}

/// How many units of `after` have another owner than in `before` (units new in `after` are
/// not moves; units gone from `after` are not counted either).
pub fn moved(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    after
        .iter()
        .filter(|(u, m)| before.get(*u).is_some_and(|b| b != *m))
        .count()
}

/// Units each member carries, members without units included (with 0).
pub fn loads<M: AsRef<str>>(
    assignment: &BTreeMap<String, String>,
    members: &[M],
) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = members
        .iter()
        .map(|m| (m.as_ref().to_string(), 0))
        .collect();
    for m in assignment.values() {
        *out.entry(m.clone()).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests;
