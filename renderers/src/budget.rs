//! Budgets: how much work the render of one revision may do.
//!
//! Limits per call (a file, a patch) do not bound a render: a symlink loop multiplies the
//! files, a JSON patch doubles an object per `copy`, and many bundles times many clusters
//! multiply everything. So the counters here belong to one render *pass* over one snapshot
//! ([`crate::cache::Cache::pass`]), shared by every (placement, bundle, cluster) rendered in
//! it:
//!
//! - repository accesses (`kind`, `list`, `read`) and bytes read — charged by [`Metered`],
//!   the `RepoFiles` every renderer reads through;
//! - objects rendered and bytes of rendered YAML kept — charged as results are made;
//! - the size of one object ([`MAX_OBJECT_BYTES`]) — checked after each JSON patch `copy`
//!   ([`patch_bounded`]),
//!   so a patch that doubles an object stops at the limit, not at the allocator's.
//!
//! A render over budget fails with [`BudgetError`], naming the budget and the file or object
//! that crossed it; it is not cached (it depends on the pass, not on the inputs alone).

use std::cell::Cell;

use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};
use serde_json::Value;

/// The limits of one render pass (one revision). See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Repository accesses (kind, list, read), all bundles together.
    pub accesses: u64,
    /// Bytes read from the repository, all bundles together.
    pub read_bytes: u64,
    /// Objects rendered (before sharing between clusters), all renders together.
    pub objects: u64,
    /// Bytes of rendered YAML kept, all distinct results together.
    pub output_bytes: u64,
    /// Wall-clock time of the whole pass. A Jsonnet evaluation gets at most what is left
    /// (its own limit still applies), so clusters cannot multiply the Jsonnet time limit.
    pub time: std::time::Duration,
}

/// The largest object a patch may make, as JSON (the API server refuses objects over about
/// 1.5 MiB; etcd's default request limit).
pub const MAX_OBJECT_BYTES: u64 = 2 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            accesses: 2_000_000,
            read_bytes: 1 << 30,
            objects: 1_000_000,
            output_bytes: 1 << 30,
            time: std::time::Duration::from_secs(300),
        }
    }
}

/// A budget that ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: over the render budget of {limit} {what} per revision; refusing the revision")]
pub struct BudgetError {
    /// What ran out ("repository accesses", "bytes read", ...).
    pub what: &'static str,
    pub limit: u64,
    /// The file, directory or object being worked on when it ran out.
    pub at: String,
}

/// The counters of one pass.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    started: std::time::Instant,
    accesses: Cell<u64>,
    read_bytes: Cell<u64>,
    objects: Cell<u64>,
    output_bytes: Cell<u64>,
    /// The first budget that ran out; every later charge fails the same way.
    exceeded: std::cell::RefCell<Option<BudgetError>>,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            started: std::time::Instant::now(),
            accesses: Cell::default(),
            read_bytes: Cell::default(),
            objects: Cell::default(),
            output_bytes: Cell::default(),
            exceeded: std::cell::RefCell::default(),
        }
    }

    /// Time left in the pass (zero once it is over).
    pub fn time_left(&self) -> std::time::Duration {
        self.limits.time.saturating_sub(self.started.elapsed())
    }

    /// Fails once the pass has taken longer than its time budget.
    pub fn check_time(&self, at: &dyn std::fmt::Display) -> Result<(), BudgetError> {
        if let Some(e) = self.exceeded() {
            return Err(e);
        }
        if self.time_left().is_zero() {
            let e = BudgetError {
                what: "seconds of rendering",
                limit: self.limits.time.as_secs(),
                at: at.to_string(),
            };
            *self.exceeded.borrow_mut() = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The first budget that ran out in this pass, if any.
    pub fn exceeded(&self) -> Option<BudgetError> {
        self.exceeded.borrow().clone()
    }

    fn charge(
        &self,
        counter: &Cell<u64>,
        n: u64,
        limit: u64,
        what: &'static str,
        at: &dyn std::fmt::Display,
    ) -> Result<(), BudgetError> {
        if let Some(e) = self.exceeded() {
            return Err(e);
        }
        let total = counter.get().saturating_add(n);
        counter.set(total);
        if total > limit {
            let e = BudgetError {
                what,
                limit,
                at: at.to_string(),
            };
            *self.exceeded.borrow_mut() = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    pub fn charge_access(&self, at: &dyn std::fmt::Display) -> Result<(), BudgetError> {
        self.charge(
            &self.accesses,
            1,
            self.limits.accesses,
            "repository accesses (a symbolic link loop?)",
            at,
        )
    }

    pub fn charge_read(&self, bytes: u64, at: &dyn std::fmt::Display) -> Result<(), BudgetError> {
        self.charge(
            &self.read_bytes,
            bytes,
            self.limits.read_bytes,
            "bytes read",
            at,
        )
    }

    pub fn charge_objects(&self, n: u64, at: &dyn std::fmt::Display) -> Result<(), BudgetError> {
        self.charge(&self.objects, n, self.limits.objects, "objects", at)
    }

    pub fn charge_output(&self, bytes: u64, at: &dyn std::fmt::Display) -> Result<(), BudgetError> {
        self.charge(
            &self.output_bytes,
            bytes,
            self.limits.output_bytes,
            "bytes of rendered YAML",
            at,
        )
    }
}

/// The `RepoFiles` renderers read through: every access and every byte read is charged to
/// the pass's budget; once it runs out, every access fails (so any walk stops).
pub struct Metered<'a> {
    pub inner: &'a dyn RepoFiles,
    pub budget: &'a Budget,
}

fn over(e: BudgetError) -> RepoError {
    RepoError::Io {
        path: e.at.clone(),
        message: e.to_string(),
    }
}

impl RepoFiles for Metered<'_> {
    fn kind(&self, path: &RepoPath) -> PathKind {
        match self.budget.charge_access(path) {
            Ok(()) => self.inner.kind(path),
            Err(_) => PathKind::Missing,
        }
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        self.budget.charge_access(path).map_err(over)?;
        let bytes = self.inner.read(path)?;
        self.budget
            .charge_read(bytes.len() as u64, path)
            .map_err(over)?;
        Ok(bytes)
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        self.budget.charge_access(dir).map_err(over)?;
        self.inner.list(dir)
    }

    fn canonical(&self, path: &RepoPath) -> Option<String> {
        self.budget.charge_access(path).ok()?;
        self.inner.canonical(path)
    }
}

/// The size of `v` as compact JSON, counting no further than `limit + 1`.
pub fn json_size_upto(v: &Value, limit: u64) -> u64 {
    struct Counter {
        n: u64,
        limit: u64,
    }
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.n = self.n.saturating_add(buf.len() as u64);
            if self.n > self.limit {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Counter { n: 0, limit };
    match serde_json::to_writer(&mut c, v) {
        Ok(()) => c.n,
        Err(_) => c.n.max(limit.saturating_add(1)),
    }
}

/// Applies a JSON patch one operation at a time, refusing it as soon as a `copy` makes the
/// object larger than `max_bytes` (as JSON). `copy` is the only operation that grows an
/// object by more than the patch's own text (which the file and YAML limits bound), and it
/// can at most double it, so the checks cost about twice the final size in all.
pub fn patch_bounded(
    target: &mut Value,
    ops: &[json_patch::PatchOperation],
    max_bytes: u64,
) -> Result<(), String> {
    for (i, op) in ops.iter().enumerate() {
        json_patch::patch(target, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
        if matches!(op, json_patch::PatchOperation::Copy(_))
            && json_size_upto(target, max_bytes) > max_bytes
        {
            return Err(format!(
                "operation {i} makes the object larger than {max_bytes} bytes; refusing the patch"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doubling_patch_stops_at_the_object_limit() {
        let mut v = serde_json::json!({"a": {"x": "0123456789"}});
        // Each operation copies the whole of /a into /a: 40 of them would make 2^40 copies.
        let ops: Vec<json_patch::PatchOperation> = (0..40)
            .map(|i| {
                serde_json::from_value(serde_json::json!(
                    {"op": "copy", "from": "/a", "path": format!("/a/k{i}")}
                ))
                .expect("op")
            })
            .collect();
        let e = patch_bounded(&mut v, &ops, 1 << 20).expect_err("refused");
        assert!(e.contains("larger than 1048576 bytes"), "{e}");
        // It stopped right after crossing the limit, not after 40 doublings.
        assert!(json_size_upto(&v, u64::MAX) < 4 << 20);
    }

    #[test]
    fn small_patches_apply_in_full() {
        let mut v = serde_json::json!({"a": 1});
        let ops: Vec<json_patch::PatchOperation> = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/b", "value": 2},
            {"op": "copy", "from": "/b", "path": "/c"},
            {"op": "remove", "path": "/a"}
        ]))
        .expect("ops");
        patch_bounded(&mut v, &ops, 1024).expect("applies");
        assert_eq!(v, serde_json::json!({"b": 2, "c": 2}));
    }

    #[test]
    fn the_budget_is_shared_and_sticks_once_out() {
        let b = Budget::new(Limits {
            read_bytes: 10,
            ..Limits::default()
        });
        b.charge_read(6, &"a.yaml").expect("fits");
        let e = b.charge_read(6, &"b.yaml").expect_err("over");
        assert_eq!(e.at, "b.yaml");
        assert!(e.to_string().contains("10 bytes read"), "{e}");
        // Every later charge fails with the first error.
        assert_eq!(b.charge_access(&"c.yaml"), Err(e.clone()));
        assert_eq!(b.exceeded(), Some(e));
    }

    /// Patch operations over a small set of paths, `copy` among them (the doubling op).
    fn op() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let path = prop::sample::select(vec!["/a", "/b", "/a/x", "/a/y", "/c", "/a/0", "/-"]);
        (0usize..6, path.clone(), path).prop_map(|(kind, p, from)| match kind {
            0 => serde_json::json!({"op": "add", "path": p, "value": {"v": [1, 2, 3]}}),
            1 => serde_json::json!({"op": "remove", "path": p}),
            2 => serde_json::json!({"op": "replace", "path": p, "value": "s"}),
            3 => serde_json::json!({"op": "move", "from": from, "path": p}),
            4 => serde_json::json!({"op": "test", "path": p, "value": 1}),
            _ => serde_json::json!({"op": "copy", "from": from, "path": p}),
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_patch_leaves_the_object_within_the_limit(
            ops in proptest::collection::vec(op(), 0..60)
        ) {
            let mut v = serde_json::json!({"a": {"x": "0123456789abcdef", "y": [1, 2]}, "b": 1});
            let Ok(ops) = serde_json::from_value::<Vec<json_patch::PatchOperation>>(Value::Array(ops))
            else {
                return Ok(());
            };
            let limit = 64 << 10;
            match patch_bounded(&mut v, &ops, limit) {
                // Besides copies, operations add at most their own values (~20 bytes here).
                Ok(()) => proptest::prop_assert!(json_size_upto(&v, u64::MAX) <= limit + 60 * 32),
                // Refused: the one operation that crossed the limit at most doubled it.
                Err(_) => proptest::prop_assert!(json_size_upto(&v, u64::MAX) <= 2 * limit + 64),
            }
        }
    }
}
