use super::*;
use crate::config::{Exec, ProgramSpec, Source};

fn keys() -> Keys {
    Keys {
        prefix: "/p".into(),
    }
}

fn node(v: &mut FleetView, name: &str, labels: &[(&str, &str)]) {
    let info = NodeInfo {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        api: String::new(),
        since: String::new(),
    };
    let json = serde_json::to_vec(&info).unwrap();
    v.set(&keys(), &keys().node(name), Some(&json), 1);
}

fn program(v: &mut FleetView, name: &str, placement: Placement) {
    let mut spec = ProgramSpec::new(name, Exec::Command("sleep 1".into()));
    spec.placement = placement.into();
    let json = serde_json::to_vec(&ProgramRecord::new(spec, Source::Api)).unwrap();
    v.set(&keys(), &keys().program(name), Some(&json), 2);
}

fn assign(v: &mut FleetView, program: &str, slot: u32, node: &str, rev: i64) {
    v.set(
        &keys(),
        &keys().assignment(program, slot),
        Some(node.as_bytes()),
        rev,
    );
}

/// Every node's claims, as (program, slot, node), applied as if each won.
fn settle(v: &mut FleetView) -> Vec<(String, u32, String)> {
    let mut claims = Vec::new();
    let names: Vec<String> = v.nodes.keys().cloned().collect();
    for n in &names {
        for d in v.decide(n) {
            if let Decision::Claim { program, slot, .. } = d {
                claims.push((program, slot, n.clone()));
            }
        }
    }
    for (p, s, n) in &claims {
        assign(v, p, *s, n, 10);
    }
    claims
}

#[test]
fn keys_parse_back() {
    let k = keys();
    assert_eq!(k.parse(&k.program("web")), Some(Key::Program("web")));
    assert_eq!(
        k.parse(&k.assignment("web", 3)),
        Some(Key::Assignment("web", 3))
    );
    assert_eq!(k.parse(&k.node("n1")), Some(Key::Node("n1")));
    assert_eq!(k.parse(&k.observed("n1")), Some(Key::Observed("n1")));
    assert_eq!(k.parse("/other/programs/web"), None);
    assert_eq!(k.parse("/p/nodes/n1/other"), None);
    assert_eq!(k.parse("/p/assign/web/x"), None);
}

#[test]
fn each_free_slot_is_claimed_by_exactly_one_matching_node() {
    let mut v = FleetView::default();
    node(&mut v, "a", &[("role", "web")]);
    node(&mut v, "b", &[("role", "web")]);
    node(&mut v, "c", &[("role", "db")]);
    let pinned = Placement {
        node: Some("c".into()),
        ..Placement::anywhere()
    };
    let web = Placement {
        labels: [("role".to_string(), "web".to_string())].into(),
        spread: 2,
        ..Placement::anywhere()
    };
    program(&mut v, "pinned", pinned);
    program(&mut v, "web", web);
    program(&mut v, "any", Placement::anywhere());
    let claims = settle(&mut v);
    assert_eq!(claims.len(), 4, "{claims:?}");
    assert_eq!(v.placement_of("pinned"), [(0, "c".to_string())]);
    let web_nodes: Vec<String> = v.placement_of("web").into_iter().map(|(_, n)| n).collect();
    assert_eq!(web_nodes.len(), 2);
    assert_ne!(
        web_nodes[0], web_nodes[1],
        "spread = 2 is two distinct nodes"
    );
    assert!(web_nodes.iter().all(|n| n == "a" || n == "b"));
    // Settled: nobody claims anything more.
    assert!(settle(&mut v).is_empty());
    assert!(v.share("c").contains_key("pinned"));
    assert!(!v.share("a").contains_key("pinned"));
}

#[test]
fn a_dead_nodes_movable_programs_move_and_the_others_wait_for_it() {
    let mut v = FleetView::default();
    node(&mut v, "a", &[]);
    node(&mut v, "b", &[]);
    let movable = Placement {
        movable: true,
        ..Placement::anywhere()
    };
    program(&mut v, "m", movable);
    program(&mut v, "s", Placement::anywhere());
    assign(&mut v, "m", 0, "a", 5);
    assign(&mut v, "s", 0, "a", 6);
    // a's lease expires: its key goes.
    v.set(&keys(), &keys().node("a"), None, 7);
    let d = v.decide("b");
    assert_eq!(
        d,
        [Decision::Claim {
            program: "m".into(),
            slot: 0,
            from: Some(Assigned {
                node: "a".into(),
                revision: 5
            })
        }]
    );
}

#[test]
fn programs_spread_evenly_over_nodes() {
    let mut v = FleetView::default();
    for n in ["n1", "n2", "n3"] {
        node(&mut v, n, &[]);
    }
    for i in 0..300 {
        program(&mut v, &format!("p{i}"), Placement::anywhere());
    }
    settle(&mut v);
    for n in ["n1", "n2", "n3"] {
        let share = v.share(n).len();
        assert!((70..=130).contains(&share), "{n} runs {share} of 300");
    }
}

#[test]
fn a_node_releases_what_no_longer_matches_it() {
    let mut v = FleetView::default();
    node(&mut v, "a", &[]);
    program(
        &mut v,
        "p",
        Placement {
            node: Some("b".into()),
            ..Placement::anywhere()
        },
    );
    assign(&mut v, "p", 0, "a", 4);
    assert_eq!(
        v.decide("a"),
        [Decision::Release {
            program: "p".into(),
            slot: 0,
            revision: 4
        }]
    );
}

#[test]
fn the_fleet_plan_names_the_node_of_each_step() {
    let mut v = FleetView::default();
    node(&mut v, "a", &[("role", "web")]);
    node(&mut v, "b", &[("role", "db")]);
    program(&mut v, "old", Placement::anywhere());
    program(&mut v, "kept", Placement::anywhere());
    assign(&mut v, "old", 0, "b", 3);
    assign(&mut v, "kept", 0, "a", 4);
    let record = |name: &str, command: &str, placement: Placement| {
        let mut spec = ProgramSpec::new(name, Exec::Command(command.into()));
        spec.placement = placement.into();
        (
            name.to_string(),
            Arc::new(ProgramRecord::new(spec, Source::Api)),
        )
    };
    let current: Programs = Arc::new(
        [
            record("old", "sleep 1", Placement::anywhere()),
            record("kept", "sleep 1", Placement::anywhere()),
        ]
        .into(),
    );
    let db = Placement {
        labels: [("role".to_string(), "db".to_string())].into(),
        ..Placement::anywhere()
    };
    let nowhere = Placement {
        node: Some("zz".into()),
        ..Placement::anywhere()
    };
    let next: Programs = Arc::new(
        [
            record("kept", "sleep 2", Placement::anywhere()),
            record("new", "sleep 1", db),
            record("waits", "sleep 1", nowhere),
        ]
        .into(),
    );
    let p = plan(&v, &current, &next);
    let steps: Vec<(&str, Option<&str>, Action)> = p
        .steps
        .iter()
        .map(|s| (s.program.as_str(), s.node.as_deref(), s.action))
        .collect();
    assert_eq!(
        steps,
        [
            ("kept", Some("a"), Action::Restart),
            ("new", Some("b"), Action::Start),
            ("old", Some("b"), Action::Stop),
            ("waits", None, Action::Start),
        ]
    );
    assert_eq!(p.steps[0].changes[0].field, "command");
    assert!(p.steps[3].deferred);
}
