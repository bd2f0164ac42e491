//! A fleet of nodes sharing one desired state (`docs/fleet.md`): what each node knows of the
//! fleet ([`FleetView`]: programs, live nodes, assignments, observed states) and the pure
//! decisions it takes from that view — which programs are its share, which slots it claims
//! or releases. The etcd session that fills the view and carries the decisions out is
//! `etcd.rs`, behind the `etcd` cargo feature; this part builds and is tested without it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Placement;
use crate::desired::Programs;
use crate::plan::{spec_changes, Action, Effect, Plan, Step};
use crate::store::{DesiredRun, ProgramRecord};

#[cfg(feature = "etcd")]
pub mod etcd;

/// The keys of a fleet under its `[store] prefix`.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn program(&self, name: &str) -> String {
        format!("{}/programs/{name}", self.prefix)
    }
    pub fn programs(&self) -> String {
        format!("{}/programs/", self.prefix)
    }
    pub fn assignment(&self, program: &str, slot: u32) -> String {
        format!("{}/assign/{program}/{slot}", self.prefix)
    }
    pub fn assignments_of(&self, program: &str) -> String {
        format!("{}/assign/{program}/", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }
    /// Under the node's own key, and its lease: it goes with the node.
    pub fn observed(&self, node: &str) -> String {
        format!("{}/nodes/{node}/observed", self.prefix)
    }
    /// Everything of the fleet: one watch covers it.
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// What a key of the fleet is.
    pub fn parse<'k>(&self, key: &'k str) -> Option<Key<'k>> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (kind, rest) = rest.split_once('/')?;
        match kind {
            "programs" => Some(Key::Program(rest)),
            "nodes" => match rest.split_once('/') {
                None => Some(Key::Node(rest)),
                Some((node, "observed")) => Some(Key::Observed(node)),
                Some(_) => None,
            },
            "assign" => {
                let (program, slot) = rest.split_once('/')?;
                Some(Key::Assignment(program, slot.parse().ok()?))
            }
            _ => None,
        }
    }
}

/// A key of the fleet, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'k> {
    Program(&'k str),
    Assignment(&'k str, u32),
    Node(&'k str),
    Observed(&'k str),
}

/// A registered node, as it writes itself under its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its API's listen address, as configured.
    #[serde(default)]
    pub api: String,
    /// When this daemon registered (RFC 3339).
    #[serde(default)]
    pub since: String,
}

/// Which node holds a slot of a program, and the revision that wrote it (what a move compares).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub node: String,
    pub revision: i64,
}

/// A program record as the fleet stores it, with the revision that wrote it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub record: Arc<ProgramRecord>,
    pub revision: i64,
}

/// What one node knows of the fleet: filled from etcd by one get and then its watch.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    pub programs: BTreeMap<String, Stored>,
    pub nodes: BTreeMap<String, NodeInfo>,
    pub assignments: BTreeMap<String, BTreeMap<u32, Assigned>>,
    pub observed: BTreeMap<String, serde_json::Value>,
}

/// A change of an assignment this node makes, by a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take `slot` of `program`: free (`from: None`, the key must not exist) or held by a dead
    /// node (`from`: the revision that must still be the key's).
    Claim {
        program: String,
        slot: u32,
        from: Option<Assigned>,
    },
    /// Give up a slot this node holds: the program's placement no longer matches it, or its
    /// `spread` went down.
    Release {
        program: String,
        slot: u32,
        revision: i64,
    },
}

impl FleetView {
    /// The records of the programs this node runs: those with a slot assigned to it.
    pub fn share(&self, me: &str) -> BTreeMap<String, Arc<ProgramRecord>> {
        self.assignments
            .iter()
            .filter(|(_, slots)| slots.values().any(|a| a.node == me))
            .filter_map(|(name, _)| {
                let p = self.programs.get(name)?;
                Some((name.clone(), p.record.clone()))
            })
            .collect()
    }

    /// The node each slot of each program is assigned to.
    pub fn placement_of(&self, program: &str) -> Vec<(u32, String)> {
        self.assignments
            .get(program)
            .map(|s| s.iter().map(|(slot, a)| (*slot, a.node.clone())).collect())
            .unwrap_or_default()
    }

    /// What node `me` should change: slots it takes and slots it gives up.
    ///
    /// Every node runs the same rule on the view it has, so for a free slot only one node
    /// tries: the live matching node ranked first by rendezvous hashing of the program, the
    /// slot and the node's name (spreading programs evenly, and moving only what must move
    /// when nodes come and go). Views differ for a moment while a change travels; the
    /// compare-and-swap makes sure that even then a slot is taken once.
    pub fn decide(&self, me: &str) -> Vec<Decision> {
        let Some(my) = self.nodes.get(me) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, stored) in &self.programs {
            let placement = &stored.record.spec.placement;
            let slots = self.assignments.get(name);
            for (&slot, a) in slots.into_iter().flatten() {
                if a.node == me && (slot >= placement.spread || !placement.matches(me, &my.labels))
                {
                    out.push(Decision::Release {
                        program: name.clone(),
                        slot,
                        revision: a.revision,
                    });
                }
            }
            // Nodes holding a slot, and those this very rule gives the free slots before this
            // one: every node computes the same, so `spread` slots go to distinct nodes.
            let mut holders: Vec<&str> = slots
                .into_iter()
                .flatten()
                .filter(|(s, _)| **s < placement.spread)
                .map(|(_, a)| a.node.as_str())
                .collect();
            for slot in 0..placement.spread {
                let held = slots.and_then(|s| s.get(&slot));
                let from = match held {
                    Some(a) if self.nodes.contains_key(&a.node) => continue,
                    // A node that is gone keeps what cannot move: it runs again when it is back.
                    Some(_) if !placement.movable => continue,
                    Some(a) => Some(a.clone()),
                    None => None,
                };
                let chosen = self.choose(name, slot, placement, &holders);
                if let Some(c) = chosen {
                    holders.push(c);
                }
                if chosen == Some(me) {
                    out.push(Decision::Claim {
                        program: name.clone(),
                        slot,
                        from,
                    });
                }
            }
        }
        out
    }

    /// The live node that should take `slot` of `program`: among the nodes that match its
    /// placement and hold none of its other slots, the one ranked first by rendezvous hashing.
    fn choose(
        &self,
        program: &str,
        slot: u32,
        placement: &Placement,
        holders: &[&str],
    ) -> Option<&str> {
        self.nodes
            .values()
            .filter(|n| placement.matches(&n.name, &n.labels))
            .filter(|n| !holders.contains(&n.name.as_str()))
            .max_by_key(|n| (rank(program, slot, &n.name), n.name.clone()))
            .map(|n| n.name.as_str())
    }

    /// The live nodes a new program with this placement would be placed on now, one per slot.
    pub fn preview(&self, program: &str, placement: &Placement) -> Vec<String> {
        let mut holders: Vec<&str> = Vec::new();
        for slot in 0..placement.spread {
            if let Some(n) = self.choose(program, slot, placement, &holders) {
                holders.push(n);
            }
        }
        holders.into_iter().map(str::to_string).collect()
    }

    /// Applies one changed key (`None`: deleted) at `revision`.
    pub fn set(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>, revision: i64) {
        let Some(k) = keys.parse(key) else { return };
        match (k, value) {
            (Key::Program(name), Some(v)) => match serde_json::from_slice::<ProgramRecord>(v) {
                Ok(r) => {
                    let record = Arc::new(r);
                    self.programs
                        .insert(name.to_string(), Stored { record, revision });
                }
                Err(e) => tracing::error!("fleet: program record {key:?} is not readable: {e}"),
            },
            (Key::Program(name), None) => {
                self.programs.remove(name);
            }
            (Key::Assignment(program, slot), Some(v)) => {
                let node = String::from_utf8_lossy(v).into_owned();
                (self.assignments.entry(program.to_string()).or_default())
                    .insert(slot, Assigned { node, revision });
            }
            (Key::Assignment(program, slot), None) => {
                if let Some(slots) = self.assignments.get_mut(program) {
                    slots.remove(&slot);
                    if slots.is_empty() {
                        self.assignments.remove(program);
                    }
                }
            }
            (Key::Node(name), Some(v)) => match serde_json::from_slice::<NodeInfo>(v) {
                Ok(n) => {
                    self.nodes.insert(name.to_string(), n);
                }
                Err(e) => tracing::error!("fleet: node record {key:?} is not readable: {e}"),
            },
            (Key::Node(name), None) => {
                self.nodes.remove(name);
            }
            (Key::Observed(name), Some(v)) => {
                if let Ok(o) = serde_json::from_slice(v) {
                    self.observed.insert(name.to_string(), o);
                }
            }
            (Key::Observed(name), None) => {
                self.observed.remove(name);
            }
        }
    }
}

/// The rendezvous-hashing weight of a node for one slot of one program: FNV-1a, so every node
/// of every version computes the same ranking.
fn rank(program: &str, slot: u32, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let slot = slot.to_string();
    for part in [program, "\0", &slot, "\0", node] {
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // FNV's low bits mix poorly for short inputs that differ only at the end; a final
    // avalanche (splitmix64's) spreads them.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The fleet's plan for a change of its programs from `current` to `next`: per program, the
/// node each step would be carried out on (its assigned nodes, or for a new program the nodes
/// the placement rule would pick now) and the per-field changes, as in a daemon's own plan.
pub fn plan(view: &FleetView, current: &Programs, next: &Programs) -> Plan {
    let names: BTreeSet<&String> = current.keys().chain(next.keys()).collect();
    let mut steps = Vec::new();
    for name in names {
        let (old, new) = (current.get(name), next.get(name));
        let assigned: Vec<String> = view
            .placement_of(name)
            .into_iter()
            .map(|(_, node)| node)
            .collect();
        let (spec, action, reason, changes, nodes) = match (old, new) {
            (None, None) => continue,
            (None, Some(n)) => {
                let nodes = view.preview(name, &n.spec.placement);
                let reason = if nodes.is_empty() {
                    "new program; no live node matches its placement yet, it starts when one joins"
                        .to_string()
                } else {
                    "new program, placed by its placement".to_string()
                };
                let action = if n.desired == DesiredRun::Running {
                    Action::Start
                } else {
                    Action::Unchanged
                };
                (&n.spec, action, reason, Vec::new(), nodes)
            }
            (Some(o), None) => (
                &o.spec,
                Action::Stop,
                "removed from the fleet".to_string(),
                Vec::new(),
                assigned,
            ),
            (Some(o), Some(n)) => {
                let changes = spec_changes(&o.spec, &n.spec);
                let (action, reason) = if changes.iter().any(|c| c.effect == Effect::Restart) {
                    (Action::Restart, "changed".to_string())
                } else if !changes.is_empty() {
                    (Action::Update, "changed in place".to_string())
                } else {
                    (Action::Unchanged, "unchanged".to_string())
                };
                let reason = if o.spec.placement != n.spec.placement {
                    format!("{reason}; placement changed: nodes that no longer match give it up")
                } else {
                    reason
                };
                (&n.spec, action, reason, changes, assigned)
            }
        };
        let nodes: Vec<Option<String>> = if nodes.is_empty() {
            vec![None]
        } else {
            nodes.into_iter().map(Some).collect()
        };
        for node in nodes {
            for id in spec.instances() {
                steps.push(Step {
                    instance: id.name,
                    program: name.clone(),
                    priority: spec.priority,
                    action,
                    deferred: node.is_none() && action == Action::Start,
                    reason: reason.clone(),
                    changes: changes.clone(),
                    waiting_for: Vec::new(),
                    node: node.clone(),
                });
            }
        }
    }
    Plan { steps }
}

/// The fleet as the API shows it (`GET /nodes`, `provisr status --all-nodes`).
pub trait FleetStatus: Send + Sync {
    /// This node's name.
    fn me(&self) -> String;
    /// Whether this node is connected to the fleet's store right now.
    fn connected(&self) -> bool;
    /// A copy of what this node knows of the fleet.
    fn view(&self) -> FleetView;
}

#[cfg(test)]
mod tests;
