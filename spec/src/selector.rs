//! Label selectors with Kubernetes semantics, evaluated one cluster at a time or, for a whole
//! fleet at once, as bit sets over an index of the clusters' labels.

use std::collections::HashMap;

use crate::model::{Cluster, Labels, Operator, Selector};

impl Selector {
    /// Does a cluster with these selector labels (see [`Cluster::selector_labels`]) match?
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        if !self.names.is_empty() && !self.names.iter().any(|n| n == name) {
            return false;
        }
        if !self
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return false;
        }
        self.match_expressions.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator {
                Operator::In => value.is_some_and(|v| r.values.contains(v)),
                Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty() && self.names.is_empty()
    }
}

/// A fixed-size set of cluster indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    pub fn empty(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub fn full(len: usize) -> BitSet {
        let mut s = BitSet {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        s.trim();
        s
    }

    fn trim(&mut self) {
        let extra = self.words.len() * 64 - self.len;
        if extra > 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= u64::MAX >> extra;
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn and(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    pub fn or(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    pub fn and_not(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !*b;
        }
    }

    pub fn intersects(&self, other: &BitSet) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Indices in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + bit)
            })
        })
    }
}

/// The fleet's clusters indexed by label, to evaluate many selectors quickly.
pub struct ClusterIndex<'a> {
    pub clusters: &'a [Cluster],
    by_name: HashMap<&'a str, usize>,
    by_label: HashMap<String, HashMap<String, BitSet>>,
}

impl<'a> ClusterIndex<'a> {
    pub fn new(clusters: &'a [Cluster]) -> ClusterIndex<'a> {
        let n = clusters.len();
        let mut by_label: HashMap<String, HashMap<String, BitSet>> = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, c) in clusters.iter().enumerate() {
            by_name.entry(c.name.as_str()).or_insert(i);
            for (k, v) in c.selector_labels() {
                by_label
                    .entry(k)
                    .or_default()
                    .entry(v)
                    .or_insert_with(|| BitSet::empty(n))
                    .insert(i);
            }
        }
        ClusterIndex {
            clusters,
            by_name,
            by_label,
        }
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn with_value(&self, key: &str, value: &str) -> Option<&BitSet> {
        self.by_label.get(key).and_then(|m| m.get(value))
    }

    fn with_key(&self, key: &str) -> BitSet {
        let mut s = BitSet::empty(self.len());
        if let Some(m) = self.by_label.get(key) {
            for set in m.values() {
                s.or(set);
            }
        }
        s
    }

    /// The clusters a selector matches.
    pub fn select(&self, sel: &Selector) -> BitSet {
        let n = self.len();
        let mut s = BitSet::full(n);
        if !sel.names.is_empty() {
            let mut named = BitSet::empty(n);
            for name in &sel.names {
                if let Some(i) = self.position(name) {
                    named.insert(i);
                }
            }
            s.and(&named);
        }
        for (k, v) in &sel.match_labels {
            match self.with_value(k, v) {
                Some(set) => s.and(set),
                None => return BitSet::empty(n),
            }
        }
        for r in &sel.match_expressions {
            let mut any = BitSet::empty(n);
            match r.operator {
                Operator::In | Operator::NotIn => {
                    for v in &r.values {
                        if let Some(set) = self.with_value(&r.key, v) {
                            any.or(set);
                        }
                    }
                }
                Operator::Exists | Operator::DoesNotExist => any = self.with_key(&r.key),
            }
            match r.operator {
                Operator::In | Operator::Exists => s.and(&any),
                Operator::NotIn | Operator::DoesNotExist => s.and_not(&any),
            }
        }
        s
    }

    /// Names of the clusters in `set`, in fleet order.
    pub fn names(&self, set: &BitSet) -> Vec<&'a str> {
        set.iter().map(|i| self.clusters[i].name.as_str()).collect()
    }
}

/// One requirement of a kubectl-syntax label selector (`app=web,tier!=db,env in (a,b),!x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelRequirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    /// Matches against labels held in any form, through a lookup function.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// Parses a kubectl-syntax label selector.
pub fn parse_label_selector(s: &str) -> Result<Vec<LabelRequirement>, String> {
    let err = |why: &str| format!("invalid label selector {s:?}: {why}");
    let mut out = Vec::new();
    if s.trim().is_empty() {
        // As in kubectl: the empty selector matches everything.
        return Ok(out);
    }
    // Split on commas that are not inside parentheses.
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(err("unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(err("unbalanced parentheses"));
    }
    parts.push(&s[start..]);
    let key_ok = |k: &str| crate::types::check_label_key(k).map_err(|e| err(&e));
    let value_ok = |v: &str| crate::types::check_label_value(v).map_err(|e| err(&e));
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            return Err(err("empty requirement"));
        }
        if let Some(k) = part.strip_prefix('!') {
            let k = k.trim();
            key_ok(k)?;
            out.push(LabelRequirement::DoesNotExist(k.to_string()));
        } else if let Some((k, v)) = part.split_once("!=") {
            key_ok(k.trim())?;
            value_ok(v.trim())?;
            out.push(LabelRequirement::NotEquals(
                k.trim().into(),
                v.trim().into(),
            ));
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            key_ok(k.trim())?;
            value_ok(v.trim())?;
            out.push(LabelRequirement::Equals(k.trim().into(), v.trim().into()));
        } else if let Some(open) = part.find('(') {
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let inner = part[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| err("expected ')' at the end"))?;
            if inner.trim().is_empty() {
                return Err(err("an `in`/`notin` list needs at least one value"));
            }
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            for v in &values {
                value_ok(v)?;
            }
            match head.as_slice() {
                [k, "in"] => {
                    key_ok(k)?;
                    out.push(LabelRequirement::In(k.to_string(), values));
                }
                [k, "notin"] => {
                    key_ok(k)?;
                    out.push(LabelRequirement::NotIn(k.to_string(), values));
                }
                _ => return Err(err("expected `key in (a,b)` or `key notin (a,b)`")),
            }
        } else {
            key_ok(part)?;
            out.push(LabelRequirement::Exists(part.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterKind, Requirement};

    fn cluster(name: &str, labels: &[(&str, &str)]) -> Cluster {
        Cluster {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kind: ClusterKind::Registered,
            connect: Default::default(),
            context: None,
            capacity: None,
        }
    }

    #[test]
    fn index_agrees_with_direct_matching() {
        let clusters = vec![
            cluster("a", &[("env", "prod"), ("region", "hz")]),
            cluster("b", &[("env", "prod")]),
            cluster("c", &[("env", "staging"), ("region", "sg")]),
        ];
        let idx = ClusterIndex::new(&clusters);
        let req = |key: &str, operator, values: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        };
        let selectors = vec![
            Selector::default(),
            Selector {
                match_labels: [("env".into(), "prod".into())].into(),
                ..Default::default()
            },
            Selector {
                match_expressions: vec![req("region", Operator::NotIn, &["hz"])],
                ..Default::default()
            },
            Selector {
                match_expressions: vec![req("region", Operator::Exists, &[])],
                ..Default::default()
            },
            Selector {
                match_expressions: vec![req("region", Operator::DoesNotExist, &[])],
                ..Default::default()
            },
            Selector {
                match_expressions: vec![req("env", Operator::In, &["staging", "dev"])],
                ..Default::default()
            },
            Selector {
                names: vec!["b".into(), "c".into()],
                ..Default::default()
            },
            Selector {
                match_expressions: vec![req("kind", Operator::In, &["registered"])],
                ..Default::default()
            },
            Selector {
                match_labels: [("nope".into(), "x".into())].into(),
                ..Default::default()
            },
        ];
        let expected: Vec<Vec<&str>> = vec![
            vec!["a", "b", "c"],
            vec!["a", "b"],
            vec!["b", "c"],
            vec!["a", "c"],
            vec!["b"],
            vec!["c"],
            vec!["b", "c"],
            vec!["a", "b", "c"],
            vec![],
        ];
        for (sel, want) in selectors.iter().zip(expected) {
            assert_eq!(idx.names(&idx.select(sel)), want, "{sel:?}");
            let direct: Vec<&str> = clusters
                .iter()
                .filter(|c| sel.matches(&c.name, &c.selector_labels()))
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(direct, idx.names(&idx.select(sel)), "{sel:?}");
        }
    }

    #[test]
    fn kubectl_selectors() {
        let r = parse_label_selector("app=web, tier!=db,env in (prod, staging),!legacy,team")
            .expect("parses");
        assert_eq!(r.len(), 5);
        let labels: Labels = [("app", "web"), ("env", "prod"), ("team", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(r.iter().all(|q| q.matches(&labels)));
        assert!(parse_label_selector("env in (a").is_err());
        assert!(parse_label_selector("a=b,,c").is_err());
        assert!(parse_label_selector("bad key=1").is_err());
    }

    #[test]
    fn bitset_edges() {
        let mut s = BitSet::full(65);
        assert_eq!(s.count(), 65);
        s.and_not(&BitSet::full(64));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![64]);
    }
}
