//! A program's fleet keys, `placement`, `spread` and `movable` → [`Placement`]
//! (`docs/configuration.md`, "Fleet placement"; `docs/fleet.md`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::program::RawProgram;
use super::raw::{Check, Val};
use super::{check_name, Placement, ProgramSpec};

/// The most distinct nodes one program may be spread over.
pub const MAX_SPREAD: u32 = 1000;

/// `placement` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, expecting = "a table with `node` or `labels`")]
pub struct RawPlacement {
    node: Val<String>,
    labels: Val<BTreeMap<String, String>>,
}

/// Sets `spec.placement` from the raw keys, reporting every bad one.
pub(super) fn apply(c: &mut Check, raw: &RawProgram, spec: &mut ProgramSpec) {
    let mut placement = Placement::anywhere();
    c.table(&raw.placement, "placement", |c, p| {
            if let Some(node) = c.get(&p.node, "node") {
                match check_name(node) {
                    Ok(()) => placement.node = Some(node.clone()),
                    Err(why) => {
                        c.bad("node", format_args!("is not a valid node name: {why}"));
                    }
                }
            }
            if let Some(labels) = c.get(&p.labels, "labels") {
                placement.labels = labels.clone();
            }
            if p.node.is_absent() && p.labels.is_absent() {
                c.err("", "`placement` names neither a node nor labels")
                    .help("write placement = { node = \"host-1\" } or placement = { labels = { role = \"web\" } }");
            }
        });
    if let Some(n) = c.positive(&raw.spread, "spread") {
        if n > MAX_SPREAD {
            c.bad(
                "spread",
                format_args!("must be at most {MAX_SPREAD}, got {n}"),
            );
        } else if n > 1 && placement.node.is_some() {
            c.err(
                "spread",
                format!(
                    "`spread = {n}` asks for {n} distinct nodes, but `placement` names one node"
                ),
            )
            .help("place it by labels to spread it, or drop `spread`");
        } else {
            placement.spread = n;
        }
    }
    if let Some(m) = c.value(&raw.movable, "movable") {
        placement.movable = m;
    }
    spec.placement = placement.into();
}
