//! One simulated cluster: the object store, resource versions, watch history and the verbs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::discovery::{self, ResourceDef};
use crate::error::ApiError;
use crate::fields;
use crate::select::{FieldSelector, LabelSelector};

/// Slots of the per-cluster broadcast channel: a watcher further behind is cut off.
const BROADCAST: usize = 1024;

/// (group, version, plural)
pub type ResKey = (String, String, String);
/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub type ObjName = (String, String);

/// An object as stored: compact JSON text. A parsed `serde_json::Value` costs about eight
/// times as much memory, and 1,000 clusters must fit in one process.
#[derive(Debug, Clone)]
pub struct Stored {
    text: Arc<str>,
    /// `metadata.labels`, kept parsed for label selectors.
    pub labels: Arc<Value>,
}

impl std::ops::Deref for Stored {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn store(v: &Value) -> Stored {
    Stored {
        text: serde_json::to_string(v).unwrap_or_default().into(),
        labels: Arc::new(v["metadata"]["labels"].clone()),
    }
}

/// Parses a stored object (it was serialized by `store`, so this cannot fail in practice).
pub fn load(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

/// A watch event, as stored in the history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub res: ResKey,
    pub namespace: String,
    pub name: String,
    /// Shared with the stored object's parsed labels.
    pub labels: Arc<Value>,
    pub kind: &'static str,
    /// The object as JSON text.
    pub object: Stored,
}

impl Event {
    fn new(
        rv: u64,
        res: &ResKey,
        ns: &str,
        kind: &'static str,
        obj: &Value,
        text: Stored,
    ) -> Event {
        Event {
            rv,
            res: res.clone(),
            namespace: ns.to_string(),
            name: obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
            labels: text.labels.clone(),
            kind,
            object: text,
        }
    }

    /// The newline-terminated JSON line of a watch stream.
    pub fn line(&self) -> String {
        format!(
            "{{\"type\":\"{}\",\"object\":{}}}\n",
            self.kind, self.object
        )
    }
}

/// What a new watch starts from: events to send first, the live feed, the current resourceVersion.
pub type WatchStart = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>, u64);

/// Query parameters of one request.
pub type Query = HashMap<String, String>;

/// The mutable state of a cluster (behind one lock).
/// How long a deleted namespace stays Terminating (a real cluster's namespace controller
/// takes a few seconds; long enough that a client which re-creates content at once sees the
/// 403 it would see there).
pub const NAMESPACE_TERMINATION: std::time::Duration = std::time::Duration::from_secs(1);

pub struct State {
    pub rv: u64,
    seq: u64,
    pub defs: Vec<ResourceDef>,
    pub objects: HashMap<ResKey, BTreeMap<ObjName, Stored>>,
    history: VecDeque<Arc<Event>>,
    /// Workloads whose spec changed, with when: the workload simulation picks them up.
    pub pending: HashMap<(ResKey, ObjName), Instant>,
    /// CRDs created and not yet Established: the next tick establishes them (the real
    /// apiextensions controller takes a moment too; clients must wait for the condition).
    pub crds_pending: std::collections::BTreeSet<String>,
    /// Namespaces being deleted (phase Terminating), with when: a tick removes them after
    /// [`NAMESPACE_TERMINATION`].
    pub ns_terminating: BTreeMap<String, Instant>,
}

/// One simulated cluster.
pub struct Cluster {
    pub name: String,
    /// A small number unique per cluster, mixed into uids.
    index: u64,
    state: Mutex<State>,
    pub events: broadcast::Sender<Arc<Event>>,
    faults: Mutex<crate::faults::FaultState>,
    /// How many past events are kept for watches that resume from a resourceVersion.
    history_cap: usize,
    /// A per-cluster override of the unready-images setting.
    unready: Mutex<Option<regex::Regex>>,
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn res_key(d: &ResourceDef) -> ResKey {
    (d.group.clone(), d.version.clone(), d.plural.clone())
}

/// Whether a parameter is a "true" flag (`true`, `1`).
pub fn flag(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid dry run value {other:?}: only \"All\" is supported"
        ))),
    }
}

const WORKLOADS: [&str; 5] = [
    "deployments",
    "statefulsets",
    "daemonsets",
    "replicasets",
    "jobs",
];

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Everything outside metadata and status: a change here bumps `generation`.
fn spec_part(v: &Value) -> Value {
    match v.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// A parsed request body: JSON, or YAML through the project's parser.
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let limits = flotilla_spec::yaml::Limits {
        max_bytes: 8 << 20,
        max_depth: 64,
        max_nodes: 1_000_000,
        // Bodies are mostly JSON: one flow collection as long as the body.
        max_value_chars: 8 << 20,
    };
    flotilla_spec::yaml::parse(text, &limits)
        .map(|n| n.to_json())
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {}", e.message())))
}

impl Cluster {
    pub fn new(name: &str, index: u64, nodes: usize, history: usize) -> Cluster {
        let (events, _) = broadcast::channel(BROADCAST);
        let c = Cluster {
            name: name.to_string(),
            index,
            state: Mutex::new(State {
                rv: 0,
                seq: 0,
                defs: discovery::builtin(),
                objects: HashMap::new(),
                history: VecDeque::new(),
                pending: HashMap::new(),
                crds_pending: std::collections::BTreeSet::new(),
                ns_terminating: BTreeMap::new(),
            }),
            events,
            faults: Mutex::new(crate::faults::FaultState::default()),
            history_cap: history.max(1),
            unready: Mutex::new(None),
        };
        c.seed(nodes);
        c
    }

    fn seed(&self, nodes: usize) {
        let mut st = self.lock();
        let ns_def = st.def("", "v1", "namespaces").cloned();
        let node_def = st.def("", "v1", "nodes").cloned();
        if let Some(d) = ns_def {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                let _ = self.commit(&mut st, &d, "", ns, None, obj, false);
            }
        }
        if let Some(d) = node_def {
            for i in 1..=nodes {
                let name = format!("{}-node-{i}", self.name);
                let obj = json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux", "node-role.kubernetes.io/worker": ""}},
                    "status": {
                        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "simulated node", "lastHeartbeatTime": now_rfc3339(),
                            "lastTransitionTime": now_rfc3339()}],
                        "nodeInfo": {"kubeletVersion": "v1.32.0-flotilla-sim", "architecture": "amd64",
                            "operatingSystem": "linux", "containerRuntimeVersion": "sim://1"}}});
                let _ = self.commit(&mut st, &d, "", &name, None, obj, false);
            }
        }
    }

    pub fn set_faults(&self, faults: crate::faults::Faults) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(faults);
    }

    pub fn faults(&self) -> crate::faults::Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .faults
            .clone()
    }

    /// What the faults say to do with the next request.
    pub fn decide(&self) -> crate::faults::Decision {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide()
    }

    pub fn set_unready_images(&self, re: Option<regex::Regex>) {
        *self.unready.lock().unwrap_or_else(|e| e.into_inner()) = re;
    }

    pub fn unready_images(&self) -> Option<regex::Regex> {
        self.unready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resource served at `group/version/plural`, if any.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.lock().def(group, version, plural).cloned()
    }

    pub fn defs(&self) -> Vec<ResourceDef> {
        self.lock().defs.clone()
    }

    fn uid(&self, st: &mut State) -> String {
        st.seq += 1;
        let n = st.seq;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            self.index as u32,
            (n >> 48) & 0xffff,
            (n >> 36) & 0xfff,
            (n >> 24) & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }

    /// Stores `new` (or, for `new == Null`, deletes) with server-set metadata and an event.
    /// Returns the stored object. Nothing changes on a dry run.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit(
        &self,
        st: &mut State,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        mut new: Value,
        dry: bool,
    ) -> Value {
        let key = res_key(def);
        let rv = st.rv + 1;
        if new.is_null() {
            // A deletion.
            let mut obj = old.cloned().unwrap_or(Value::Null);
            if !dry {
                st.rv = rv;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                if let Some(m) = st.objects.get_mut(&key) {
                    m.remove(&(ns.to_string(), name.to_string()));
                }
                st.pending
                    .remove(&(key.clone(), (ns.to_string(), name.to_string())));
                if def.plural == "customresourcedefinitions" {
                    self.unregister_crd(st, &obj);
                }
                self.emit(st, &key, ns, "DELETED", &obj);
            }
            return obj;
        }
        new["apiVersion"] = json!(def.api_version());
        new["kind"] = json!(def.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        let meta = &mut new["metadata"];
        meta["name"] = json!(name);
        if def.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("selfLink");
        }
        apply_defaults(def, &mut new);
        let spec_changed = old.is_none_or(|o| spec_part(o) != spec_part(&new));
        match old {
            None => {
                let uid = self.uid(st);
                let meta = &mut new["metadata"];
                meta["uid"] = json!(uid);
                meta["creationTimestamp"] = json!(now_rfc3339());
                if let Some(m) = meta.as_object_mut() {
                    m.remove("deletionTimestamp");
                }
                if new.get("spec").is_some()
                    || def.group.contains('.') && !def.group.ends_with("k8s.io")
                {
                    new["metadata"]["generation"] = json!(1);
                }
            }
            Some(o) => {
                let om = &o["metadata"];
                let meta = &mut new["metadata"];
                for k in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "generation",
                ] {
                    match om.get(k) {
                        Some(v) => meta[k] = v.clone(),
                        None => {
                            if let Some(m) = meta.as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
                if spec_changed && let Some(g) = om["generation"].as_i64() {
                    meta["generation"] = json!(g + 1);
                }
            }
        }
        if def.plural == "namespaces" && new["status"]["phase"].is_null() {
            new["status"] = json!({"phase": "Active"});
        }
        // A new CRD is not Established at once: its status says so until the next tick, and
        // its resources are not served before (as on a real API server).
        let crd_served = def.plural == "customresourcedefinitions"
            && (crd_established(&new) || old.is_some_and(crd_established));
        if def.plural == "customresourcedefinitions" {
            if crd_served {
                establish_crd(&mut new);
            } else {
                crd_not_yet_established(&mut new);
                if !dry {
                    st.crds_pending.insert(name.to_string());
                }
            }
        }
        // A deleting object whose last finalizer is gone is deleted now.
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
        // A namespace is held by its `spec.finalizers` (the namespace controller's) as well.
        let ns_held = def.group.is_empty()
            && def.plural == "namespaces"
            && new["spec"]["finalizers"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
        if !new["metadata"]["deletionTimestamp"].is_null() && finalizers_empty && !ns_held {
            return self.commit(st, def, ns, name, Some(&new), Value::Null, dry);
        }
        if dry {
            if old.is_none() {
                // A dry-run object has no server identity.
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove("uid");
                }
            }
            new["metadata"]["resourceVersion"] = json!(
                old.and_then(|o| o["metadata"]["resourceVersion"].as_str())
                    .unwrap_or("")
            );
            return new;
        }
        st.rv = rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let text = store(&new);
        st.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), text.clone());
        if def.plural == "customresourcedefinitions" {
            st.defs.retain(|d| {
                !(d.group == new["spec"]["group"].as_str().unwrap_or("")
                    && d.plural == new["spec"]["names"]["plural"].as_str().unwrap_or(""))
            });
            if crd_served {
                st.defs.extend(discovery::from_crd(&new));
            }
        }
        if (def.group == "apps" || def.group == "batch")
            && WORKLOADS.contains(&def.plural.as_str())
            && spec_changed
        {
            st.pending.insert(
                (key.clone(), (ns.to_string(), name.to_string())),
                Instant::now(),
            );
        }
        let kind = if old.is_none() { "ADDED" } else { "MODIFIED" };
        self.emit_stored(st, &key, ns, kind, &new, text);
        new
    }

    fn unregister_crd(&self, st: &mut State, crd: &Value) {
        let defs = discovery::from_crd(crd);
        for d in &defs {
            let key = res_key(d);
            if let Some(objs) = st.objects.remove(&key) {
                for ((ns, _), text) in objs {
                    st.rv += 1;
                    let mut obj = load(&text);
                    obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                    self.emit(st, &key, &ns, "DELETED", &obj);
                }
            }
        }
        st.defs.retain(|d| !defs.contains(d));
    }

    fn emit(&self, st: &mut State, key: &ResKey, ns: &str, kind: &'static str, object: &Value) {
        self.emit_stored(st, key, ns, kind, object, store(object));
    }

    fn emit_stored(
        &self,
        st: &mut State,
        key: &ResKey,
        ns: &str,
        kind: &'static str,
        object: &Value,
        text: Stored,
    ) {
        let ev = Arc::new(Event::new(st.rv, key, ns, kind, object, text));
        if st.history.len() >= self.history_cap {
            st.history.pop_front();
        }
        st.history.push_back(ev.clone());
        // No receivers is fine.
        let _ = self.events.send(ev);
    }

    fn check_namespace(
        st: &State,
        def: &ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if !def.namespaced {
            return Ok(());
        }
        let key = ("".to_string(), "v1".to_string(), "namespaces".to_string());
        let Some(text) = st
            .objects
            .get(&key)
            .and_then(|m| m.get(&(String::new(), ns.to_string())))
        else {
            return Err(ApiError::namespace_not_found(ns));
        };
        if text.contains("\"deletionTimestamp\"")
            && !load(text)["metadata"]["deletionTimestamp"].is_null()
        {
            let mut details = json!({"name": name, "group": def.group, "kind": def.plural,
                "causes": [{"reason": "NamespaceTerminating",
                    "message": format!("namespace {ns} is being terminated"),
                    "field": "metadata.namespace"}]});
            if def.group.is_empty()
                && let Some(m) = details.as_object_mut()
            {
                m.remove("group");
            }
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    def.qualified()
                ),
            )
            .with_details(details));
        }
        Ok(())
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        st.get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    pub fn list(&self, def: &ResourceDef, ns: Option<&str>, q: &Query) -> Result<Value, ApiError> {
        let text = self.list_text(def, ns, q)?;
        serde_json::from_str(&text)
            .map_err(|e| ApiError::new(500, "InternalError", format!("list: {e}")))
    }

    /// The list as JSON text: the stored objects are spliced in without re-parsing or
    /// re-serializing them.
    pub fn list_text(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        q: &Query,
    ) -> Result<String, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fsel = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let limit: usize = match q.get("limit") {
            Some(l) if !l.is_empty() => l
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            _ => 0,
        };
        let after = match q.get("continue") {
            Some(c) if !c.is_empty() => {
                let s = unhex(c).ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                let (n, m) = s
                    .split_once('\0')
                    .ok_or_else(|| ApiError::bad_request("invalid continue token"))?;
                Some((n.to_string(), m.to_string()))
            }
            _ => None,
        };
        let st = self.lock();
        let mut items: Vec<Stored> = Vec::new();
        let mut next = None;
        let mut last = None;
        if let Some(objs) = st.objects.get(&res_key(def)) {
            for ((ons, oname), text) in objs {
                if ns.is_some_and(|n| n != ons) {
                    continue;
                }
                if after.as_ref().is_some_and(|a| (ons, oname) <= (&a.0, &a.1)) {
                    continue;
                }
                if !fsel.matches_parts(oname, ons) {
                    continue;
                }
                if !labels.matches(&text.labels) {
                    continue;
                }
                if limit > 0 && items.len() == limit {
                    // More remain: continue after the last item returned.
                    next = last.map(|(n, m): (&String, &String)| hex(&format!("{n}\0{m}")));
                    break;
                }
                items.push(text.clone());
                last = Some((ons, oname));
            }
        }
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        // How many matching objects the pages after this one hold (as the real server says
        // when a list is cut by `limit`).
        let remaining = match (&next, st.objects.get(&res_key(def)), last) {
            (Some(_), Some(objs), Some((lns, lname))) => objs
                .range((lns.clone(), lname.clone())..)
                .skip(1)
                .filter(|((ons, oname), text)| {
                    ns.is_none_or(|n| n == ons)
                        && fsel.matches_parts(oname, ons)
                        && labels.matches(&text.labels)
                })
                .count(),
            _ => 0,
        };
        drop(st);
        if let Some(n) = next {
            meta["continue"] = json!(n);
            meta["remainingItemCount"] = json!(remaining);
        }
        let mut out = String::with_capacity(items.iter().map(|t| t.len() + 1).sum::<usize>() + 128);
        out.push_str(&format!(
            "{{\"apiVersion\":{},\"kind\":{},\"metadata\":{},\"items\":[",
            json!(def.api_version()),
            json!(format!("{}List", def.kind)),
            meta
        ));
        for (i, t) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // A real API server's list items carry no apiVersion or kind (the list says it).
            out.push_str(&without_type_meta(t));
        }
        out.push_str("]}");
        Ok(out)
    }

    fn manager(q: &Query, user_agent: &str) -> String {
        match q.get("fieldManager") {
            Some(m) if !m.is_empty() => m.clone(),
            _ => user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        }
    }

    pub fn create(
        &self,
        def: &ResourceDef,
        ns: &str,
        body: &[u8],
        q: &Query,
        user_agent: &str,
    ) -> Result<Value, ApiError> {
        let dry = dry_run(q)?;
        let mut obj = parse_body(body)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        check_kind(def, &obj)?;
        let mut st = self.lock();
        let name = match obj["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match obj["metadata"]["generateName"].as_str() {
                Some(g) if !g.is_empty() => {
                    st.seq += 1;
                    format!("{g}{:05x}", st.seq & 0xfffff)
                }
                _ => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        validate_name(def, &name)?;
        if def.namespaced
            && let Some(bns) = obj["metadata"]["namespace"].as_str()
            && !bns.is_empty()
            && bns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Self::check_namespace(&st, def, ns, &name)?;
        if st.get(def, ns, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        if def.status
            && def.plural != "nodes"
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        fields::record_update(
            None,
            &mut obj,
            &Self::manager(q, user_agent),
            &def.api_version(),
            &now_rfc3339(),
            "",
        );
        Ok(self.commit(&mut st, def, ns, &name, None, obj, dry))
    }

    /// PUT of the object (`sub` None) or of its status.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: &[u8],
        q: &Query,
        user_agent: &str,
    ) -> Result<Value, ApiError> {
        let dry = dry_run(q)?;
        let obj = parse_body(body)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body must be an object"));
        }
        check_kind(def, &obj)?;
        if let Some(bn) = obj["metadata"]["name"].as_str()
            && bn != name
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let mut st = self.lock();
        let old = st
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(def, name));
        }
        let status_scope = sub == Some("status");
        let mut new = scoped(def, &old, obj, status_scope);
        check_immutable(def, name, &old, &new)?;
        fields::record_update(
            Some(&old),
            &mut new,
            &Self::manager(q, user_agent),
            &def.api_version(),
            &now_rfc3339(),
            if status_scope { "status" } else { "" },
        );
        Ok(self.commit(&mut st, def, ns, name, Some(&old), new, dry))
    }

    /// PATCH with one of the four patch types; apply may create the object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        content_type: &str,
        body: &[u8],
        q: &Query,
        user_agent: &str,
    ) -> Result<(u16, Value), ApiError> {
        let dry = dry_run(q)?;
        let status_scope = sub == Some("status");
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let now = now_rfc3339();
        let mut st = self.lock();
        let old = st.get(def, ns, name);
        if ct == "application/apply-patch+yaml" {
            let manager = match q.get("fieldManager") {
                Some(m) if !m.is_empty() => m.clone(),
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                    ));
                }
            };
            let force = flag(q, "force");
            let applied = parse_body(body)?;
            if !applied.is_object() {
                return Err(ApiError::bad_request("the apply patch must be an object"));
            }
            check_kind(def, &applied)?;
            if applied["apiVersion"].is_null() || applied["kind"].is_null() {
                return Err(ApiError::bad_request(
                    "apiVersion and kind are required in an apply patch",
                ));
            }
            if let Some(bn) = applied["metadata"]["name"].as_str()
                && bn != name
            {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            // As the API server does: `metadata.resourceVersion` in an apply patch is a
            // precondition on an existing object (409 even with force) and ignored when the
            // apply creates the object.
            if let (Some(o), Some(rv)) = (&old, applied["metadata"]["resourceVersion"].as_str())
                && !rv.is_empty()
                && Some(rv) != o["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict(def, name));
            }
            if old.is_none() {
                if status_scope {
                    return Err(ApiError::not_found(def, name));
                }
                validate_name(def, name)?;
                Self::check_namespace(&st, def, ns, name)?;
            }
            let mut applied = applied;
            if !status_scope
                && def.status
                && let Some(m) = applied.as_object_mut()
            {
                m.remove("status");
            }
            let result = fields::apply(
                old.as_ref(),
                &applied,
                &manager,
                &def.api_version(),
                &now,
                force,
                status_scope,
            );
            let merged = match result {
                Ok(a) => a.object,
                Err(conflicts) => {
                    // As the API server does for kubectl's own manager: conflicts on fields
                    // recorded in the client-side-apply annotation are forced (the upgrade
                    // from client-side to server-side apply).
                    let allowed = match (&old, manager.as_str()) {
                        (Some(o), "kubectl") => last_applied_fields(o, &def.api_version()),
                        _ => fields::FieldSet::new(),
                    };
                    let remaining: Vec<fields::Conflict> = conflicts
                        .into_iter()
                        .filter(|c| !allowed.contains(&c.path))
                        .collect();
                    if !remaining.is_empty() {
                        return Err(apply_conflict(&remaining));
                    }
                    fields::apply(
                        old.as_ref(),
                        &applied,
                        &manager,
                        &def.api_version(),
                        &now,
                        true,
                        status_scope,
                    )
                    .map_err(|c| apply_conflict(&c))?
                    .object
                }
            };
            let code = if old.is_some() { 200 } else { 201 };
            let new = match &old {
                Some(o) => scoped(def, o, merged, status_scope),
                None => merged,
            };
            if let Some(o) = &old {
                check_immutable(def, name, o, &new)?;
            }
            return Ok((
                code,
                self.commit(&mut st, def, ns, name, old.as_ref(), new, dry),
            ));
        }
        let old = old.ok_or_else(|| ApiError::not_found(def, name))?;
        let mut doc = old.clone();
        match ct {
            "application/merge-patch+json" => {
                let p = parse_json(body)?;
                json_patch::merge(&mut doc, &p);
            }
            "application/strategic-merge-patch+json" => {
                let p = parse_json(body)?;
                crate::merge::strategic_merge(&mut doc, &p);
            }
            "application/json-patch+json" => {
                let p: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut doc, &p).map_err(|e| {
                    ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                })?;
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                    ),
                ));
            }
        }
        if !doc.is_object() {
            return Err(ApiError::bad_request(
                "the patched document is not an object",
            ));
        }
        if let Some(rv) = doc["metadata"]["resourceVersion"].as_str()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(def, name));
        }
        let mut new = scoped(def, &old, doc, status_scope);
        check_immutable(def, name, &old, &new)?;
        fields::record_update(
            Some(&old),
            &mut new,
            &Self::manager(q, user_agent),
            &def.api_version(),
            &now,
            if status_scope { "status" } else { "" },
        );
        Ok((
            200,
            self.commit(&mut st, def, ns, name, Some(&old), new, dry),
        ))
    }

    /// The scale subresource (autoscaling/v1 Scale) of deployments, statefulsets and
    /// replicasets: GET, PUT and PATCH (merge, JSON, strategic) of `spec.replicas`.
    #[allow(clippy::too_many_arguments)]
    pub fn scale(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        method: &hyper::Method,
        content_type: &str,
        body: &[u8],
        q: &Query,
        user_agent: &str,
    ) -> Result<Value, ApiError> {
        let dry = dry_run(q)?;
        let mut st = self.lock();
        let old = st
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        let current = scale_of(&old);
        if method == hyper::Method::GET {
            return Ok(current);
        }
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let wanted = if method == hyper::Method::PUT {
            let v = parse_body(body)?;
            if let Some(rv) = v["metadata"]["resourceVersion"].as_str()
                && !rv.is_empty()
                && Some(rv) != old["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict(def, name));
            }
            v
        } else {
            let mut doc = current.clone();
            match ct {
                "application/json-patch+json" => {
                    let p: json_patch::Patch = serde_json::from_slice(body)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    json_patch::patch(&mut doc, &p).map_err(|e| {
                        ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                    })?;
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    json_patch::merge(&mut doc, &parse_json(body)?);
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("unsupported patch type for scale: {other:?}"),
                    ));
                }
            }
            doc
        };
        let replicas = wanted["spec"]["replicas"].as_i64().ok_or_else(|| {
            ApiError::new(
                422,
                "Invalid",
                "Scale.autoscaling \"\" is invalid: spec.replicas: Required value",
            )
        })?;
        if replicas < 0 {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
                ),
            ));
        }
        let mut new = old.clone();
        match new.get_mut("spec").and_then(Value::as_object_mut) {
            Some(spec) => {
                spec.insert("replicas".into(), json!(replicas));
            }
            None => return Err(ApiError::invalid(def, name, "spec", "Required value")),
        }
        fields::record_update(
            Some(&old),
            &mut new,
            &Self::manager(q, user_agent),
            &def.api_version(),
            &now_rfc3339(),
            "scale",
        );
        let stored = self.commit(&mut st, def, ns, name, Some(&old), new, dry);
        Ok(scale_of(&stored))
    }

    /// DELETE: objects with finalizers get a deletionTimestamp and stay until they are gone.
    pub fn delete(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        body: &[u8],
        q: &Query,
    ) -> Result<Value, ApiError> {
        let (obj, gone) = self.delete_object(def, ns, name, body, q)?;
        // As the API server answers: an object that is gone at once comes back as a `Status`
        // naming it; one that waits for finalizers (namespaces always have one there) comes
        // back itself, marked for deletion.
        if !gone || (def.group.is_empty() && def.plural == "namespaces") {
            return Ok(obj);
        }
        let mut details = json!({"name": name, "group": def.group, "kind": def.plural,
            "uid": obj["metadata"]["uid"]});
        if def.group.is_empty()
            && let Some(m) = details.as_object_mut()
        {
            m.remove("group");
        }
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Success", "details": details}))
    }

    /// DELETE of one object: the object as deleted (or marked) and whether it is gone.
    fn delete_object(
        &self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        body: &[u8],
        q: &Query,
    ) -> Result<(Value, bool), ApiError> {
        let mut dry = dry_run(q)?;
        let opts = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            parse_json(body)?
        };
        if opts["dryRun"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "All"))
        {
            dry = true;
        }
        let propagation = q
            .get("propagationPolicy")
            .map(String::as_str)
            .or(opts["propagationPolicy"].as_str())
            .unwrap_or("Background")
            .to_string();
        if def.group.is_empty()
            && def.plural == "namespaces"
            && matches!(name, "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            )
            .with_details(json!({"name": name, "kind": "namespaces"})));
        }
        let mut st = self.lock();
        let old = st
            .get(def, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(uid) = opts["preconditions"]["uid"].as_str()
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(def, name));
        }
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if has_finalizers {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok((old, false));
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            // commit keeps the old deletionTimestamp: set it through a copy of old.
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = new["metadata"]["deletionTimestamp"].clone();
            return Ok((
                self.commit(&mut st, def, ns, name, Some(&marked), new, dry),
                false,
            ));
        }
        if def.group.is_empty() && def.plural == "namespaces" {
            // As on a real cluster: the namespace turns Terminating, refuses new content,
            // its contents go, and it is removed a moment later (the next tick).
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok((old, false));
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            new["spec"]["finalizers"] = json!(["kubernetes"]);
            new["status"]["phase"] = json!("Terminating");
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = new["metadata"]["deletionTimestamp"].clone();
            let out = self.commit(&mut st, def, ns, name, Some(&marked), new, dry);
            if !dry {
                self.delete_namespace_contents(&mut st, name);
                st.ns_terminating.insert(name.to_string(), Instant::now());
            }
            return Ok((out, false));
        }
        let uid = old["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let out = self.commit(&mut st, def, ns, name, Some(&old), Value::Null, dry);
        if !dry && propagation != "Orphan" {
            self.delete_dependents(&mut st, &uid);
        }
        Ok((out, true))
    }

    /// DELETE on a collection: every object the selectors match, as a list of what was
    /// deleted (or marked for deletion).
    pub fn delete_collection(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        body: &[u8],
        q: &Query,
    ) -> Result<Value, ApiError> {
        let mut list_q = q.clone();
        list_q.remove("limit");
        list_q.remove("continue");
        let listed = self.list(def, ns, &list_q)?;
        let mut deleted = Vec::new();
        for item in listed["items"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let ins = item["metadata"]["namespace"].as_str().unwrap_or("");
            let name = item["metadata"]["name"].as_str().unwrap_or("");
            match self.delete_object(def, ins, name, body, q) {
                Ok((v, _)) => deleted.push(v),
                Err(e) if e.code == 404 || e.code == 403 => {}
                Err(e) => return Err(e),
            }
        }
        let rv = self.lock().rv;
        Ok(
            json!({"apiVersion": def.api_version(), "kind": format!("{}List", def.kind),
            "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
        )
    }

    fn delete_namespace_contents(&self, st: &mut State, ns: &str) {
        let defs: Vec<ResourceDef> = st.defs.iter().filter(|d| d.namespaced).cloned().collect();
        for d in defs {
            let names: Vec<ObjName> = st
                .objects
                .get(&res_key(&d))
                .map(|m| m.keys().filter(|(n, _)| n == ns).cloned().collect())
                .unwrap_or_default();
            for (n, name) in names {
                let old = st.get(&d, &n, &name);
                self.commit(st, &d, &n, &name, old.as_ref(), Value::Null, false);
            }
        }
    }

    fn delete_dependents(&self, st: &mut State, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let mut doomed = Vec::new();
        for d in &st.defs {
            if let Some(objs) = st.objects.get(&res_key(d)) {
                for ((ns, name), text) in objs {
                    let obj = load(text);
                    let owned = obj["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                    if owned {
                        doomed.push((
                            d.clone(),
                            ns.clone(),
                            name.clone(),
                            obj["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                        ));
                    }
                }
            }
        }
        for (d, ns, name, child_uid) in doomed {
            let old = st.get(&d, &ns, &name);
            if old.is_some() {
                self.commit(st, &d, &ns, &name, old.as_ref(), Value::Null, false);
                self.delete_dependents(st, &child_uid);
            }
        }
    }

    /// Starts a watch: the events to send first, and a receiver for what follows. Taken under
    /// the lock, so nothing falls between the two.
    pub fn watch(
        &self,
        def: &ResourceDef,
        ns: Option<&str>,
        q: &Query,
    ) -> Result<WatchStart, ApiError> {
        let st = self.lock();
        let key = res_key(def);
        let rx = self.events.subscribe();
        let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        let mut initial = Vec::new();
        if rv.is_empty() || rv == "0" || flag(q, "sendInitialEvents") {
            if let Some(objs) = st.objects.get(&key) {
                for ((ons, _), text) in objs {
                    if ns.is_some_and(|n| n != ons) {
                        continue;
                    }
                    let obj = load(text);
                    initial.push(Arc::new(Event::new(
                        st.rv,
                        &key,
                        ons,
                        "ADDED",
                        &obj,
                        text.clone(),
                    )));
                }
            }
        } else {
            let from: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            let oldest = st.history.front().map(|e| e.rv).unwrap_or(st.rv + 1);
            if from.saturating_add(1) < oldest && st.history.len() >= self.history_cap {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {from} ({})",
                        oldest.saturating_sub(1)
                    ),
                ));
            }
            initial.extend(
                st.history
                    .iter()
                    .filter(|e| e.rv > from && e.res == key && ns.is_none_or(|n| n == e.namespace))
                    .cloned(),
            );
        }
        Ok((initial, rx, st.rv))
    }

    /// The stored objects of one resource (for the workload simulation and tests).
    pub fn objects(&self, group: &str, version: &str, plural: &str) -> Vec<Value> {
        let st = self.lock();
        st.objects
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .map(|m| m.values().map(|t| load(t)).collect())
            .unwrap_or_default()
    }

    /// Replaces the status of a stored object (the simulated controllers' write).
    pub fn set_status(&self, st: &mut State, key: &(ResKey, ObjName), status: Value) {
        let ((g, v, p), (ns, name)) = key;
        let Some(def) = st.def(g, v, p).cloned() else {
            return;
        };
        let Some(old) = st.get(&def, ns, name) else {
            return;
        };
        if old["status"] == status {
            return;
        }
        let mut new = old.clone();
        new["status"] = status;
        fields::record_update(
            Some(&old),
            &mut new,
            "kube-controller-manager",
            &def.api_version(),
            &now_rfc3339(),
            "status",
        );
        self.commit(st, &def, ns, name, Some(&old), new, false);
    }
}

impl Cluster {
    /// Removes the namespaces that have been Terminating for [`NAMESPACE_TERMINATION`] (their
    /// contents, and anything that slipped in, go first).
    pub(crate) fn finish_terminating_namespaces(&self, st: &mut State) {
        if st.ns_terminating.is_empty() {
            return;
        }
        let Some(def) = st.def("", "v1", "namespaces").cloned() else {
            return;
        };
        let due: Vec<String> = st
            .ns_terminating
            .iter()
            .filter(|(_, since)| since.elapsed() >= NAMESPACE_TERMINATION)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            st.ns_terminating.remove(&name);
            self.delete_namespace_contents(st, &name);
            if let Some(old) = st.get(&def, "", &name) {
                self.commit(st, &def, "", &name, Some(&old), Value::Null, false);
            }
        }
    }

    /// Establishes the CRDs created since the last tick and starts serving their resources.
    pub(crate) fn establish_pending_crds(&self, st: &mut State) {
        if st.crds_pending.is_empty() {
            return;
        }
        let Some(def) = st
            .def("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .cloned()
        else {
            return;
        };
        for name in std::mem::take(&mut st.crds_pending) {
            let Some(old) = st.get(&def, "", &name) else {
                continue;
            };
            let mut new = old.clone();
            establish_crd(&mut new);
            fields::record_update(
                Some(&old),
                &mut new,
                "kube-apiserver",
                &def.api_version(),
                &now_rfc3339(),
                "status",
            );
            self.commit(st, &def, "", &name, Some(&old), new, false);
        }
    }
}

impl State {
    pub fn def(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.version == version && d.plural == plural)
    }

    /// The stored object, parsed.
    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&res_key(def))
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .map(|t| load(t))
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

fn check_kind(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if let Some(k) = obj["kind"].as_str()
        && k != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind {k:?} of the body does not match the resource {} (kind {:?})",
            def.qualified(),
            def.kind
        )));
    }
    if let Some(av) = obj["apiVersion"].as_str()
        && av != def.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the apiVersion {av:?} of the body does not match {:?}",
            def.api_version()
        )));
    }
    Ok(())
}

/// An immutable ConfigMap or Secret (`immutable: true`) keeps its data and stays immutable,
/// as the API server's validation says (422 Invalid, one cause per field).
fn check_immutable(
    def: &ResourceDef,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    if !def.group.is_empty() || !matches!(def.kind.as_str(), "ConfigMap" | "Secret") {
        return Ok(());
    }
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return Ok(());
    }
    const WHY: &str = "Forbidden: field is immutable when `immutable` is set";
    let mut causes = Vec::new();
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        causes.push("immutable");
    }
    let fields: &[&str] = if def.kind == "Secret" {
        &["data"]
    } else {
        &["data", "binaryData"]
    };
    let empty = Value::Object(Default::default());
    for f in fields {
        let (a, b) = (old.get(*f).unwrap_or(&empty), new.get(*f).unwrap_or(&empty));
        if a != b {
            causes.push(f);
        }
    }
    match causes.as_slice() {
        [] => Ok(()),
        [one] => Err(ApiError::invalid(def, name, one, WHY)),
        many => {
            let list: Vec<String> = many.iter().map(|f| format!("{f}: {WHY}")).collect();
            Err(ApiError::new(
                422,
                "Invalid",
                format!("{} \"{name}\" is invalid: [{}]", def.kind, list.join(", ")),
            ))
        }
    }
}

/// Object name rules and messages as kube-apiserver 1.36 words them: namespaces are RFC 1123
/// labels (63 characters, no dots), other objects RFC 1123 subdomains (253 characters).
fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let label = def.group.is_empty() && def.plural == "namespaces";
    let max = if label { 63 } else { 253 };
    let chars_ok = name.chars().all(|c| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (c == '.' && !label)
            || (c == ':' && def.group.starts_with("rbac"))
    }) && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let problem = if name.len() > max {
        format!("must be no more than {max} characters")
    } else if label && name.contains('.') {
        "must not contain dots".to_string()
    } else if chars_ok {
        return Ok(());
    } else if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_string()
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string()
    };
    Err(ApiError::invalid(
        def,
        name,
        "metadata.name",
        &format!("Invalid value: {}: {problem}", json!(name)),
    ))
}

/// Main-resource writes keep the old status; status writes change only the status.
fn scoped(def: &ResourceDef, old: &Value, mut new: Value, status_scope: bool) -> Value {
    if status_scope {
        let mut out = old.clone();
        out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if out["status"].is_null()
            && let Some(m) = out.as_object_mut()
        {
            m.remove("status");
        }
        // Managed fields come from the new object's bookkeeping.
        if let Some(mf) = new["metadata"].get("managedFields").cloned() {
            out["metadata"]["managedFields"] = mf;
        }
        return out;
    }
    if def.status
        && let Some(m) = new.as_object_mut()
    {
        match old.get("status") {
            Some(s) => {
                m.insert("status".into(), s.clone());
            }
            None => {
                m.remove("status");
            }
        }
    }
    new
}

fn apply_conflict(conflicts: &[fields::Conflict]) -> ApiError {
    // The API server's wording (structured-merge-diff's, owners printed by the apiserver):
    // one conflict on one line; several grouped by owner, owners in order, one field a line.
    let n = conflicts.len();
    let message = if n == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].owner(),
            fields::display(&conflicts[0].path)
        )
    } else {
        let mut owners: Vec<(String, String)> = conflicts
            .iter()
            .map(|c| (c.manager.clone(), c.owner()))
            .collect();
        owners.sort();
        owners.dedup();
        let mut lines = Vec::new();
        for (_, owner) in &owners {
            lines.push(format!("conflicts with {owner}:"));
            for c in conflicts.iter().filter(|c| &c.owner() == owner) {
                lines.push(format!("- {}", fields::display(&c.path)));
            }
        }
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict",
                "message": format!("conflict with {}", c.owner()),
                "field": fields::display(&c.path)})
        })
        .collect();
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// The API server's defaults that clients depend on (kubectl rollout status needs the update
/// strategy of StatefulSets and DaemonSets). Only missing fields are set; nobody owns them.
fn apply_defaults(def: &ResourceDef, obj: &mut Value) {
    if def.group != "apps" {
        return;
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let mut set = |k: &str, v: Value| {
        if !spec.contains_key(k) {
            spec.insert(k.to_string(), v);
        }
    };
    match def.plural.as_str() {
        "deployments" => {
            set("replicas", json!(1));
            set(
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            set("revisionHistoryLimit", json!(10));
            set("progressDeadlineSeconds", json!(600));
        }
        "statefulsets" => {
            set("replicas", json!(1));
            set(
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set("podManagementPolicy", json!("OrderedReady"));
            set("revisionHistoryLimit", json!(10));
        }
        "daemonsets" => {
            set(
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            set("revisionHistoryLimit", json!(10));
        }
        "replicasets" => set("replicas", json!(1)),
        _ => {}
    }
}

/// The fields of the `kubectl.kubernetes.io/last-applied-configuration` annotation (empty if
/// absent, unparsable or of another apiVersion).
fn last_applied_fields(obj: &Value, api_version: &str) -> fields::FieldSet {
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v["apiVersion"] == api_version)
        .map(|v| fields::fields_of(&v, false))
        .unwrap_or_default()
}

/// The autoscaling/v1 Scale view of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector}
    })
}

/// A stored object's JSON text without its top-level `apiVersion` and `kind` members (the
/// text is scanned, not re-parsed: lists stay cheap at fleet scale).
fn without_type_meta(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut i = 0;
    // Start of the current top-level member (after `{` or `,`), and whether one was kept.
    let mut member_start = 0;
    let mut kept_any = false;
    let mut in_string = false;
    while i < b.len() {
        let ch = b[i];
        if in_string {
            if ch == b'\\' {
                i += 2;
                continue;
            }
            if ch == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match ch {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    out.push('{');
                    member_start = i + 1;
                }
            }
            b'}' | b']' => {
                if depth == 1 {
                    push_member(&mut out, &text[member_start..i], &mut kept_any);
                    out.push('}');
                }
                depth = depth.saturating_sub(1);
            }
            b',' if depth == 1 => {
                push_member(&mut out, &text[member_start..i], &mut kept_any);
                member_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 || !out.starts_with('{') {
        return text.to_string();
    }
    out
}

fn push_member(out: &mut String, member: &str, kept_any: &mut bool) {
    let m = member.trim();
    if m.is_empty() || m.starts_with("\"apiVersion\":") || m.starts_with("\"kind\":") {
        return;
    }
    if *kept_any {
        out.push(',');
    }
    out.push_str(member);
    *kept_any = true;
}

fn crd_established(crd: &Value) -> bool {
    crd["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    })
}

/// The status of a CRD the apiextensions controller has not looked at yet (as kube-apiserver
/// answers the create).
fn crd_not_yet_established(crd: &mut Value) {
    crd["status"] = json!({
        "conditions": null,
        "acceptedNames": {"plural": "", "kind": ""},
        "storedVersions": stored_versions(crd),
    });
}

fn stored_versions(crd: &Value) -> Vec<Value> {
    crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == true)
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Marks a CRD Established and NamesAccepted, as the real apiextensions controller does.
fn establish_crd(crd: &mut Value) {
    let now = now_rfc3339();
    let mut names = crd["spec"]["names"].clone();
    if names["listKind"].is_null()
        && let Some(kind) = names["kind"].as_str()
    {
        names["listKind"] = json!(format!("{kind}List"));
    }
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": crd["spec"]["versions"].as_array().map(|vs| vs.iter()
            .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now}
        ]
    });
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
