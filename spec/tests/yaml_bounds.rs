//! The YAML reader's memory and work stay bounded by its limits, whatever the input.
//! (Its own test binary: the memory check reads this process's peak resident size.)

use flotilla_spec::yaml::{Limits, Value, YamlError, parse_all};
use proptest::prelude::*;

/// Peak resident set size of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn count(v: &Value) -> usize {
    match v {
        Value::Seq(items) => 1 + items.iter().map(|n| count(&n.value)).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, n)| count(&n.value)).sum::<usize>(),
        _ => 1,
    }
}

#[test]
fn a_flood_of_empty_mappings_is_refused_in_bounded_memory() -> Result<(), String> {
    // 6 million empty mappings (30 MB), over the 5 million node limit. The tree used to take
    // ~260 times the input before refusing it. (Block style: a flow collection this long is
    // refused earlier, by its length; see the next test.)
    let text = "- {}\n".repeat(6_000_000);
    let before = peak_rss().ok_or("no /proc/self/status")?;
    let e = parse_all(&text, &Limits::default()).expect_err("over the node limit");
    assert!(
        matches!(
            e,
            YamlError::TooManyNodes {
                through_alias: false,
                ..
            }
        ),
        "{e}"
    );
    let after = peak_rss().ok_or("no /proc/self/status")?;
    let grown = after.saturating_sub(before);
    // 5 million nodes at most ~100 bytes each, with room for the allocator.
    assert!(
        grown < 700 << 20,
        "peak RSS grew by {} MiB for an {} MiB input",
        grown >> 20,
        text.len() >> 20
    );
    Ok(())
}

#[test]
fn a_one_line_flow_flood_is_refused_in_bounded_memory() -> Result<(), String> {
    // 18 MB of `[{},{},...]` on one line: saphyr-parser holds every token of an open flow
    // collection (~100 bytes a character; this took 1.7 GB), so the reader stops feeding it
    // `max_value_chars` (2 Mi characters) past its last event.
    let text = format!("[{}]\n", vec!["{}"; 6_000_000].join(","));
    let before = peak_rss().ok_or("no /proc/self/status")?;
    let e = parse_all(&text, &Limits::default()).expect_err("over the value limit");
    assert!(
        matches!(e, YamlError::ValueTooLong { pos, .. } if pos.line == 1 && pos.column == 1),
        "{e}"
    );
    let grown = peak_rss()
        .ok_or("no /proc/self/status")?
        .saturating_sub(before);
    assert!(
        grown < 400 << 20,
        "peak RSS grew by {} MiB for an {} MiB input",
        grown >> 20,
        text.len() >> 20
    );
    Ok(())
}

/// YAML-ish text: flow and block punctuation, anchors, aliases, scalars.
fn yamlish() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "[", "]", "{", "}", ",", ": ", "- ", "\n", "  ", "a", "b", "1", "&x ", "*x", "&y ", "*y",
        "'q'", "\"s\"", "---\n", "? ", "!!str ", "#c", "|\n  t\n", "~",
    ]);
    prop::collection::vec(tokens, 0..200).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_and_never_exceeds_the_node_limit(text in yamlish()) {
        let limits = Limits { max_nodes: 300, max_depth: 16, ..Limits::default() };
        if let Ok(docs) = parse_all(&text, &limits) {
            let nodes: usize = docs.iter().map(|d| count(&d.value)).sum();
            prop_assert!(nodes <= 300, "{nodes} nodes from {text:?}");
        }
    }

    #[test]
    fn alias_chains_are_refused_not_expanded(depth in 1usize..40, fan in 2usize..12) {
        let mut s = String::from("a0: &a0 [x, x]\n");
        for i in 1..depth {
            s.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); fan].join(", ")));
        }
        let limits = Limits { max_nodes: 10_000, ..Limits::default() };
        match parse_all(&s, &limits) {
            Ok(docs) => {
                let nodes: usize = docs.iter().map(|d| count(&d.value)).sum();
                prop_assert!(nodes <= 10_000);
            }
            Err(e) => prop_assert!(matches!(e, YamlError::TooManyNodes { through_alias: true, .. }), "{}", e),
        }
    }
}
