use proptest::prelude::*;

use super::*;

fn member(name: &str, room: u64, pool: bool) -> Member {
    Member {
        name: name.into(),
        room,
        pool,
        lost: false,
    }
}

fn cur(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn input<'a>(
    total: u64,
    members: &'a [Member],
    current: &'a BTreeMap<String, u64>,
    now_ms: u64,
) -> Input<'a> {
    Input {
        total,
        members,
        current,
        last_scale_out: None,
        last_scale_in: None,
        now_ms,
        cooldown: Duration::from_secs(60),
        pool_max: 100,
    }
}

#[test]
fn forty_over_two_primaries_of_fifteen_puts_ten_in_the_pool() {
    let ms = [
        member("dc-a", 15, false),
        member("dc-b", 15, false),
        member("cloud", 50, true),
    ];
    let none = BTreeMap::new();
    let s = split(&input(40, &ms, &none, 1_000));
    assert_eq!(
        s.assignment,
        cur(&[("dc-a", 15), ("dc-b", 15), ("cloud", 10)])
    );
    assert_eq!(s.unplaced, 0);
    assert_eq!(s.last_scale_out, Some(1_000));
    assert_eq!(s.moves.len(), 3);
}

#[test]
fn what_fits_nowhere_is_unplaced_and_the_pool_stops_at_its_maximum() {
    let ms = [
        member("dc-a", 15, false),
        member("c1", 50, true),
        member("c2", 50, true),
    ];
    let none = BTreeMap::new();
    let mut i = input(40, &ms, &none, 0);
    i.pool_max = 11;
    let s = split(&i);
    assert_eq!(s.assignment, cur(&[("dc-a", 15), ("c1", 6), ("c2", 5)]));
    assert_eq!(s.unplaced, 14);
}

#[test]
fn the_pool_scales_in_only_after_its_cooldown() {
    let ms = [
        member("dc-a", 25, false),
        member("dc-b", 25, false),
        member("cloud", 50, true),
    ];
    let running = cur(&[("dc-a", 15), ("dc-b", 15), ("cloud", 10)]);
    let mut i = input(40, &ms, &running, 30_000);
    i.last_scale_out = Some(0);
    let held = split(&i);
    // Primaries take their share at once; the pool keeps its 10 until 60 s.
    assert_eq!(
        held.assignment,
        cur(&[("dc-a", 20), ("dc-b", 20), ("cloud", 10)])
    );
    assert_eq!(held.held_until, Some(60_000));
    assert_eq!(held.pool_target, 0);
    i.now_ms = 60_000;
    i.current = &held.assignment;
    let after = split(&i);
    assert_eq!(
        after.assignment,
        cur(&[("dc-a", 20), ("dc-b", 20), ("cloud", 0)])
    );
    assert_eq!(after.last_scale_in, Some(60_000));
    assert_eq!(after.held_until, None);
}

#[test]
fn a_lost_primary_s_share_goes_to_the_pool() {
    let mut ms = vec![
        member("dc-a", 15, false),
        member("dc-b", 15, false),
        member("cloud", 50, true),
    ];
    let running = cur(&[("dc-a", 15), ("dc-b", 15), ("cloud", 10)]);
    ms[1].lost = true;
    let mut i = input(40, &ms, &running, 5_000);
    i.last_scale_out = Some(0);
    let s = split(&i);
    assert_eq!(
        s.assignment,
        cur(&[("dc-a", 15), ("dc-b", 0), ("cloud", 25)])
    );
    assert_eq!(s.last_scale_out, Some(5_000));
}

#[test]
fn demand_is_clamped_ceiling_of_value_per_replica() {
    assert_eq!(demand_total(1001.0, 50.0, 4, 200), 21);
    assert_eq!(demand_total(0.0, 50.0, 4, 200), 4);
    assert_eq!(demand_total(1e12, 50.0, 4, 200), 200);
    assert_eq!(demand_total(f64::NAN, 50.0, 4, 200), 4);
}

fn members() -> impl Strategy<Value = Vec<Member>> {
    prop::collection::vec((0u64..40, any::<bool>(), prop::bool::weighted(0.1)), 1..8).prop_map(
        |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (room, pool, lost))| Member {
                    name: format!("c{i:02}"),
                    room,
                    pool,
                    lost,
                })
                .collect()
        },
    )
}

fn currents(n: usize) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..45, n)
}

fn as_map(ms: &[Member], v: &[u64]) -> BTreeMap<String, u64> {
    ms.iter()
        .zip(v)
        .map(|(m, c)| (m.name.clone(), *c))
        .collect()
}

fn case() -> impl Strategy<Value = (Vec<Member>, Vec<u64>, u64, u64, Option<u64>, u64)> {
    members().prop_flat_map(|ms| {
        let n = ms.len();
        (
            Just(ms),
            currents(n),
            0u64..200,
            1u64..120,
            prop::option::of(0u64..100_000),
            0u64..200_000,
        )
    })
}

fn room_total(ms: &[Member], pool_max: u64) -> u64 {
    let r = |m: &Member| if m.lost { 0 } else { m.room };
    let p: u64 = ms.iter().filter(|m| !m.pool).map(r).sum();
    let q: u64 = ms.iter().filter(|m| m.pool).map(r).sum();
    p + q.min(pool_max)
}

proptest! {
    #[test]
    fn never_above_a_room_or_the_pool_maximum((ms, c, total, pool_max, last, now) in case()) {
        let current = as_map(&ms, &c);
        let i = Input { total, members: &ms, current: &current, last_scale_out: last,
            last_scale_in: None, now_ms: now, cooldown: Duration::from_secs(30), pool_max };
        let s = split(&i);
        for m in &ms {
            let got = s.assignment[&m.name];
            prop_assert!(got <= if m.lost { 0 } else { m.room }, "{} got {got}", m.name);
        }
        prop_assert!(s.pool_replicas <= pool_max);
        prop_assert_eq!(s.pool_replicas, pool_sum(&s.assignment, &ms));
    }

    #[test]
    fn without_a_hold_the_sum_is_min_of_total_and_room((ms, c, total, pool_max, _l, now) in case()) {
        let current = as_map(&ms, &c);
        let i = Input { total, members: &ms, current: &current, last_scale_out: None,
            last_scale_in: None, now_ms: now, cooldown: Duration::from_secs(30), pool_max };
        let s = split(&i);
        let sum: u64 = s.assignment.values().sum();
        prop_assert_eq!(sum, total.min(room_total(&ms, pool_max)));
        prop_assert_eq!(s.unplaced, total - total.min(room_total(&ms, pool_max)));
    }

    #[test]
    fn the_pool_is_filled_last_and_emptied_first((ms, c, total, pool_max, last, now) in case()) {
        let current = as_map(&ms, &c);
        let i = Input { total, members: &ms, current: &current, last_scale_out: last,
            last_scale_in: None, now_ms: now, cooldown: Duration::from_secs(30), pool_max };
        let s = split(&i);
        for m in ms.iter().filter(|m| !m.pool && !m.lost) {
            let got = s.assignment[&m.name];
            // A primary below its room means the pool holds nothing it did not already run.
            if got < m.room {
                prop_assert!(s.pool_target == 0, "{} at {got} < {} while the pool targets {}", m.name, m.room, s.pool_target);
            }
            // A primary shrinks only when the pool is empty or the primary is at its room.
            let before = current[&m.name];
            if got < before {
                prop_assert!(s.pool_replicas == 0 || got == m.room,
                    "{} shrank {before} -> {got} with {} in the pool", m.name, s.pool_replicas);
            }
        }
    }

    #[test]
    fn no_pool_scale_in_inside_the_cooldown((ms, c, total, pool_max, last, now) in case()) {
        let current = as_map(&ms, &c);
        let cooldown = Duration::from_secs(30);
        let i = Input { total, members: &ms, current: &current, last_scale_out: last,
            last_scale_in: None, now_ms: now, cooldown, pool_max };
        let s = split(&i);
        if last.is_some_and(|t| now < t + 30_000) {
            let could_keep: u64 = ms.iter().filter(|m| m.pool)
                .map(|m| current[&m.name].min(if m.lost { 0 } else { m.room }))
                .sum::<u64>()
                .min(pool_max);
            prop_assert!(s.pool_replicas >= could_keep,
                "pool {} < {could_keep} inside the cooldown", s.pool_replicas);
        }
    }

    #[test]
    fn a_second_split_changes_nothing((ms, c, total, pool_max, last, now) in case()) {
        let current = as_map(&ms, &c);
        let cooldown = Duration::from_secs(30);
        let i = Input { total, members: &ms, current: &current, last_scale_out: last,
            last_scale_in: None, now_ms: now, cooldown, pool_max };
        let first = split(&i);
        let again = Input { current: &first.assignment, last_scale_out: first.last_scale_out,
            last_scale_in: first.last_scale_in, ..i };
        let second = split(&again);
        prop_assert_eq!(&second.assignment, &first.assignment);
        prop_assert!(second.moves.is_empty());
        prop_assert_eq!(second.last_scale_out, first.last_scale_out);
    }

    #[test]
    fn a_total_change_moves_only_that_many_replicas(
        (ms, _c, total, pool_max, _l, now) in case(), delta in -20i64..20,
    ) {
        // From a settled split, with rooms unchanged and no cooldown in the way.
        let none = BTreeMap::new();
        let cooldown = Duration::ZERO;
        let i = Input { total, members: &ms, current: &none, last_scale_out: None,
            last_scale_in: None, now_ms: now, cooldown, pool_max };
        let settled = split(&i);
        let new_total = total.saturating_add_signed(delta);
        let next = split(&Input { total: new_total, current: &settled.assignment,
            last_scale_out: settled.last_scale_out, last_scale_in: settled.last_scale_in, ..i });
        let moved: u64 = next.moves.iter().map(|m| m.from.abs_diff(m.to)).sum();
        let placed_before: u64 = settled.assignment.values().sum();
        let placed_after: u64 = next.assignment.values().sum();
        // Replicas moving from the pool to primaries (or back) count twice.
        prop_assert!(moved <= placed_before.abs_diff(placed_after) + 2 * settled.pool_replicas.max(next.pool_replicas),
            "moved {moved}");
        if settled.pool_replicas == 0 && next.pool_replicas == 0 {
            prop_assert_eq!(moved, placed_before.abs_diff(placed_after));
        }
    }

    #[test]
    fn water_fill_is_even_up_to_each_room(rooms in prop::collection::vec(0u64..50, 1..10), amount in 0u64..300) {
        let amount = amount.min(rooms.iter().sum());
        let current = vec![0; rooms.len()];
        let out = water_fill(amount, &rooms, &current);
        prop_assert_eq!(out.iter().sum::<u64>(), amount);
        for (i, o) in out.iter().enumerate() {
            prop_assert!(*o <= rooms[i]);
            // Nobody below its room has 2 fewer than anybody else.
            if *o < rooms[i] {
                prop_assert!(out.iter().all(|x| *x <= o + 1));
            }
        }
    }
}
