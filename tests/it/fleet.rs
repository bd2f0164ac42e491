//! A fleet end to end (`docs/fleet.md`): a real etcd on a free loopback port with its data in
//! a temp directory, and three real `provisr serve` nodes on it. Placement by node name and by
//! labels, `spread`, a `movable` program moving when its node is killed with `kill -9` and not
//! running twice when that node comes back, and a 30 s etcd outage that nothing notices but
//! writes. Every process is stopped by pid when a test ends, failed or not.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::TestDaemon;
use crate::util::{alive, wait_for, GroupGuard};

const ETCD: &str = "/usr/bin/etcd";

/// An etcd server on two free loopback ports; killed (by pid) when dropped.
struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    client: u16,
    peer: u16,
}

/// Two distinct free loopback ports (both held until both are picked).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// How a start of etcd ended.
enum Started {
    Healthy,
    /// It exited: with fresh ports, another process may have bound one between the pick and
    /// etcd's own bind (nothing can hold a port for it).
    Exited(String),
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let data = dir.join("etcd-data");
        let mut why = String::new();
        for _ in 0..5 {
            let (client, peer) = free_ports();
            let mut e = Etcd {
                child: None,
                data: data.clone(),
                client,
                peer,
            };
            match e.try_run() {
                Started::Healthy => return e,
                Started::Exited(log) => why = log,
            }
            // The member etcd created names the ports it was given.
            let _ = std::fs::remove_dir_all(&data);
        }
        panic!("etcd exited at every start on fresh ports; its last log:\n{why}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// Starts the server again on its ports and data; returns once it answers `/health`.
    fn run(&mut self) {
        if let Started::Exited(log) = self.try_run() {
            panic!("etcd exited when started again on its ports; its log:\n{log}");
        }
    }

    /// Starts the server on its ports and data, until it answers `/health` or exits.
    fn try_run(&mut self) -> Started {
        assert!(
            Path::new(ETCD).exists(),
            "the fleet tests need etcd: apt-get install etcd-server"
        );
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::File::create(self.log_path()).expect("etcd log file");
        let child = Command::new(ETCD)
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.data.display()))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let health = format!("{}/health", self.url());
        let log_tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let exited = wait_for(Duration::from_secs(30), "etcd to answer /health", || {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    return Some(true);
                }
            }
            let body = ureq::get(&health)
                .call()
                .ok()?
                .into_body()
                .read_to_string()
                .ok()?;
            body.contains("true").then_some(false)
        });
        if exited {
            self.child = None;
            Started::Exited(log_tail(&self.log_path()))
        } else {
            Started::Healthy
        }
    }

    /// Stops the server (SIGKILL by pid) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node's directory and config.
struct NodeDir {
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
}

fn node_dir(root: &Path, etcd: &Etcd, name: &str, labels: &[(&str, &str)], ttl: &str) -> NodeDir {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("programs")).unwrap();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    let config = dir.join("provisr.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nbackend = \"etcd\"\nendpoints = [{:?}]\nprefix = \"/fleet-test\"\n\n\
             [node]\nname = {name:?}\nlabels = {{ {} }}\nlease_ttl = {ttl:?}\n",
            etcd.url(),
            labels.join(", ")
        ),
    )
    .unwrap();
    let state = dir.join("state");
    NodeDir { dir, config, state }
}

fn start(n: &NodeDir) -> TestDaemon {
    TestDaemon::start(&n.dir, Some(&n.config), &n.state)
}

/// The running instances of each node (by its own API): program → pid.
fn running(d: &TestDaemon) -> BTreeMap<String, i64> {
    d.all_status()
        .into_iter()
        .filter(|s| s["state"] == "running")
        .map(|s| {
            (
                s["program"].as_str().unwrap().to_string(),
                s["pid"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn register(d: &TestDaemon, spec: Value) {
    let resp = ureq::post(&format!("{}/register", d.url))
        .send_json(&spec)
        .unwrap_or_else(|e| panic!("register {spec}: {e}"));
    assert_eq!(resp.status(), 201);
}

/// Waits until `program` runs on `d`; its pid.
fn wait_running(d: &TestDaemon, program: &str) -> i64 {
    wait_for(
        Duration::from_secs(30),
        &format!("{program} running"),
        || running(d).get(program).copied(),
    )
}

/// Waits until `/nodes` of `d` shows `n` live nodes.
fn wait_nodes(d: &TestDaemon, n: usize) {
    wait_for(Duration::from_secs(30), "every node registered", || {
        let v: Value = ureq::get(&format!("{}/nodes", d.url))
            .call()
            .ok()?
            .into_body()
            .read_json()
            .ok()?;
        let live = v["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["alive"] == true)
            .count();
        (live == n).then_some(())
    });
}

fn guard_running(guard: &mut GroupGuard, nodes: &[&TestDaemon]) {
    for d in nodes {
        for pid in running(d).values() {
            guard.add(*pid as i32);
        }
    }
}

#[test]
fn programs_run_on_the_nodes_their_placement_names() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path());
    let web = [("role", "web")];
    let n1 = start(&node_dir(tmp.path(), &etcd, "n1", &web, "10s"));
    let n2 = start(&node_dir(tmp.path(), &etcd, "n2", &web, "10s"));
    let n3 = start(&node_dir(tmp.path(), &etcd, "n3", &[("role", "db")], "10s"));
    let mut guard = GroupGuard::default();
    wait_nodes(&n1, 3);
    register(
        &n1,
        json!({"name": "pinned", "command": "sleep 300", "placement": {"node": "n2"}}),
    );
    register(
        &n1,
        json!({"name": "db", "command": "sleep 301", "placement": {"labels": {"role": "db"}}}),
    );
    register(
        &n3,
        json!({"name": "web", "command": "sleep 302",
               "placement": {"labels": {"role": "web"}}, "spread": 2}),
    );
    let nodes = [&n1, &n2, &n3];
    let expected: [(&str, &[&str]); 3] = [
        ("n1", &["web"]),
        ("n2", &["pinned", "web"]),
        ("n3", &["db"]),
    ];
    wait_for(Duration::from_secs(30), "each program on its nodes", || {
        guard_running(&mut guard, &nodes);
        let ok = nodes.iter().zip(expected).all(|(d, (_, want))| {
            let have: Vec<String> = running(d).into_keys().collect();
            have == want.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        });
        ok.then_some(())
    });
    // The pids are real, distinct processes.
    let pids: Vec<i64> = nodes
        .iter()
        .flat_map(|d| running(d).into_values())
        .collect();
    assert_eq!(pids.len(), 4);
    assert!(pids.iter().all(|p| alive(*p as i32)));
    // The fleet view agrees from any node.
    let (code, out, err) = n2.cli(&["-o", "json", "status", "--all-nodes"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let programs = |node: &str| -> Vec<String> {
        let n = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap();
        serde_json::from_value(n["programs"].clone()).unwrap()
    };
    assert_eq!(programs("n1"), ["web"]);
    assert_eq!(programs("n2"), ["pinned", "web"]);
    assert_eq!(programs("n3"), ["db"]);
    // Stop and start through a node that does not run the program: the node that runs it acts.
    let (code, out, err) = n1.cli(&["-o", "json", "stop", "--name", "pinned"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("runs on node n2"), "{out}");
    wait_for(Duration::from_secs(30), "pinned stopped on n2", || {
        (!running(&n2).contains_key("pinned")).then_some(())
    });
    let (code, _, err) = n3.cli(&["start", "--name", "pinned"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        Duration::from_secs(30),
        "pinned running on n2 again",
        || {
            guard_running(&mut guard, &nodes);
            running(&n2).contains_key("pinned").then_some(())
        },
    );
    assert!(!running(&n1).contains_key("pinned") && !running(&n3).contains_key("pinned"));
}

#[test]
fn a_movable_program_moves_when_its_node_dies_and_runs_once_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path());
    let ttl = Duration::from_secs(3);
    let web = [("role", "web")];
    let dirs = [
        node_dir(tmp.path(), &etcd, "n1", &web, "3s"),
        node_dir(tmp.path(), &etcd, "n2", &web, "3s"),
        node_dir(tmp.path(), &etcd, "n3", &[("role", "db")], "3s"),
    ];
    let mut nodes: Vec<Option<TestDaemon>> = dirs.iter().map(|d| Some(start(d))).collect();
    let mut guard = GroupGuard::default();
    wait_nodes(nodes[0].as_ref().unwrap(), 3);
    register(
        nodes[2].as_ref().unwrap(),
        json!({"name": "mover", "command": "sleep 303",
               "placement": {"labels": {"role": "web"}}, "movable": true}),
    );
    let (home, pid) = wait_for(Duration::from_secs(30), "mover running", || {
        nodes.iter().enumerate().find_map(|(i, d)| {
            let pid = *running(d.as_ref()?).get("mover")?;
            Some((i, pid))
        })
    });
    guard.add(pid as i32);
    assert!(home < 2, "a web node runs it");
    let other = 1 - home;
    let killed = Instant::now();
    nodes[home].take().unwrap().kill9();
    let moved = wait_for(
        Duration::from_secs(30),
        "mover on the other web node",
        || {
            running(nodes[other].as_ref().unwrap())
                .get("mover")
                .copied()
        },
    );
    let took = killed.elapsed();
    guard.add(moved as i32);
    assert_ne!(moved, pid);
    assert!(
        took <= ttl + Duration::from_secs(2),
        "moved after {took:?}, more than lease TTL + 2 s"
    );
    // n3 does not match the placement: it never runs it.
    assert!(!running(nodes[2].as_ref().unwrap()).contains_key("mover"));
    // The dead node comes back: its stale child is stopped, nothing is started twice.
    assert!(alive(pid as i32), "kill -9 of the daemon leaves its child");
    let back = start(&dirs[home]);
    wait_for(Duration::from_secs(30), "the stale child stopped", || {
        (!alive(pid as i32)).then_some(())
    });
    wait_for(Duration::from_secs(10), "the returned node settled", || {
        let s = back.all_status();
        s.iter()
            .all(|s| s["program"] != "mover" || s["pid"].is_null())
            .then_some(())
    });
    assert_eq!(
        running(nodes[other].as_ref().unwrap()).get("mover"),
        Some(&moved),
        "the copy that moved keeps running, untouched"
    );
    assert!(!running(&back).contains_key("mover"));
    nodes[home] = Some(back);
}

#[test]
fn an_etcd_outage_keeps_every_child_and_refuses_writes_then_resyncs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(tmp.path());
    let dirs = [
        node_dir(tmp.path(), &etcd, "n1", &[], "10s"),
        node_dir(tmp.path(), &etcd, "n2", &[], "10s"),
        node_dir(tmp.path(), &etcd, "n3", &[], "10s"),
    ];
    let nodes: Vec<TestDaemon> = dirs.iter().map(start).collect();
    let mut guard = GroupGuard::default();
    wait_nodes(&nodes[0], 3);
    for i in 0..6 {
        register(
            &nodes[i % 3],
            json!({"name": format!("p{i}"), "command": format!("sleep {}", 310 + i)}),
        );
    }
    let all = |nodes: &[TestDaemon]| -> BTreeMap<String, i64> {
        nodes.iter().flat_map(running).collect()
    };
    let before = wait_for(Duration::from_secs(30), "six programs running", || {
        let r = all(&nodes);
        (r.len() == 6).then_some(r)
    });
    for pid in before.values() {
        guard.add(*pid as i32);
    }

    etcd.stop();
    let outage = Instant::now();
    // A write through another path meanwhile: a program file on n1.
    std::fs::write(
        dirs[0].dir.join("programs/late.toml"),
        "command = \"sleep 320\"\n",
    )
    .unwrap();
    let mut refused = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            all(&nodes),
            before,
            "every child keeps running with the same pid"
        );
        let r = ureq::post(&format!("{}/register", nodes[1].url))
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(json!({"name": "x", "command": "sleep 1"}))
            .unwrap();
        if r.status() == 503 {
            let body = r.into_body().read_to_string().unwrap();
            assert!(body.contains("unreachable"), "{body}");
            refused += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        refused > 40,
        "writes were refused during the outage ({refused})"
    );

    etcd.run();
    let late = wait_for(
        Duration::from_secs(30),
        "the file written during the outage runs",
        || {
            let r = all(&nodes);
            r.get("late").copied()
        },
    );
    guard.add(late as i32);
    // Applied once: one copy in the fleet, generation 1, never restarted; the others untouched.
    let everywhere: Vec<Value> = nodes
        .iter()
        .flat_map(|d| d.all_status())
        .filter(|s| s["program"] == "late")
        .collect();
    assert_eq!(everywhere.len(), 1, "{everywhere:?}");
    assert_eq!(everywhere[0]["restarts"], 0);
    let mut after = all(&nodes);
    after.remove("late");
    assert_eq!(after, before, "no restart after the resync");
    // Writes work again.
    register(&nodes[1], json!({"name": "after", "command": "sleep 321"}));
}

/// `provisr apply DIR` and its dry run: the per-field plan against the whole fleet, each step
/// with the node that would carry it out, then carried out on exactly those nodes.
#[test]
fn apply_plans_against_the_fleet_with_the_node_of_each_step() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path());
    let n1 = start(&node_dir(
        tmp.path(),
        &etcd,
        "n1",
        &[("role", "web")],
        "10s",
    ));
    let n2 = start(&node_dir(tmp.path(), &etcd, "n2", &[("role", "db")], "10s"));
    let mut guard = GroupGuard::default();
    wait_nodes(&n1, 2);
    let dir = tmp.path().join("fleet-programs");
    std::fs::create_dir(&dir).unwrap();
    let web = "command = \"sleep 330\"\nplacement = { labels = { role = \"web\" } }\n";
    std::fs::write(dir.join("web.toml"), web).unwrap();
    std::fs::write(
        dir.join("db.toml"),
        "command = \"sleep 331\"\nplacement = { node = \"n2\" }\n",
    )
    .unwrap();
    let dir_arg = dir.to_str().unwrap();
    let steps = |out: &str| -> Vec<(String, String, String)> {
        let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
                (text("program"), text("node"), text("action"))
            })
            .collect()
    };
    let (code, out, err) = n2.cli(&["-o", "json", "apply", dir_arg, "--dry-run"]);
    assert_eq!(code, 1, "changes: {out} {err}");
    let want = |a: &str, b: &str| {
        vec![
            ("db".to_string(), "n2".to_string(), a.to_string()),
            ("web".to_string(), "n1".to_string(), b.to_string()),
        ]
    };
    assert_eq!(steps(&out), want("start", "start"));
    // `diff --config` of a config whose programs directory it is: the same fleet-wide plan.
    let conf = tmp.path().join("fleet.toml");
    std::fs::write(&conf, format!("programs_directory = {dir:?}\n")).unwrap();
    let (code, out, err) = n1.cli(&["-o", "json", "diff", "--config", conf.to_str().unwrap()]);
    assert_eq!(code, 1, "changes: {out} {err}");
    assert_eq!(steps(&out), want("start", "start"));
    // The dry runs changed nothing.
    assert!(running(&n1).is_empty() && running(&n2).is_empty());
    let (code, out, err) = n2.cli(&["-o", "json", "apply", dir_arg]);
    assert_eq!(code, 0, "{out} {err}");
    wait_for(Duration::from_secs(30), "web on n1, db on n2", || {
        guard_running(&mut guard, &[&n1, &n2]);
        let (a, b) = (running(&n1), running(&n2));
        (a.keys().eq(["web"]) && b.keys().eq(["db"])).then_some(())
    });
    // A changed command restarts on the node that runs it; the table says which node.
    std::fs::write(dir.join("web.toml"), web.replace("330", "332")).unwrap();
    let (code, out, _) = n1.cli(&["-o", "table", "apply", dir_arg, "--dry-run"]);
    assert_eq!(code, 1);
    assert!(out.contains("NODE") && out.contains("n1"), "{out}");
    assert!(
        out.contains("command: \"sleep 330\" → \"sleep 332\""),
        "{out}"
    );
    let (code, out, _) = n1.cli(&["-o", "json", "apply", dir_arg, "--dry-run"]);
    assert_eq!(code, 1);
    assert_eq!(steps(&out), want("unchanged", "restart"));
    // Gone from the directory: removed from the fleet, stopped on its node.
    std::fs::remove_file(dir.join("db.toml")).unwrap();
    let (code, _, err) = n1.cli(&["apply", dir_arg]);
    assert_eq!(code, 0, "{err}");
    wait_for(Duration::from_secs(30), "db stopped, web restarted", || {
        guard_running(&mut guard, &[&n1, &n2]);
        let web_cmd = n1.status("web")["pid"].as_i64()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{web_cmd}/cmdline")).ok()?;
        (running(&n2).is_empty() && cmdline.contains("332")).then_some(())
    });
}

/// `[store] user` and `password_file`: a node authenticates to an etcd with authentication on;
/// a wrong password leaves it degraded (its writes refused), never running unauthenticated.
#[test]
fn a_node_authenticates_to_etcd_with_its_user_and_password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path());
    // Authentication on, through etcd's JSON gateway: a root user with the root role.
    for (path, body) in [
        ("/v3/auth/role/add", json!({"name": "root"})),
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "s3cret"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", json!({})),
    ] {
        ureq::post(&format!("{}{path}", etcd.url()))
            .send_json(&body)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let with_password = |name: &str, password: &str| {
        let n = node_dir(tmp.path(), &etcd, name, &[], "10s");
        let file = n.dir.join("etcd-password");
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let mut text = std::fs::read_to_string(&n.config).unwrap();
        text = text.replace(
            "[node]",
            &format!("user = \"root\"\npassword_file = {:?}\n\n[node]", file),
        );
        std::fs::write(&n.config, text).unwrap();
        n
    };
    let good = start(&with_password("n1", "s3cret"));
    let mut guard = GroupGuard::default();
    wait_nodes(&good, 1);
    register(&good, json!({"name": "authed", "command": "sleep 340"}));
    let pid = wait_running(&good, "authed");
    guard.add(pid as i32);

    let bad = start(&with_password("n2", "wrong"));
    let r = ureq::post(&format!("{}/register", bad.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(json!({"name": "x", "command": "sleep 1"}))
        .unwrap();
    assert_eq!(r.status(), 503);
    // The good node never sees the bad one.
    let v: Value = ureq::get(&format!("{}/nodes", good.url))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["n1"]);
}

/// A node that restarts while etcd is down runs its last known share from its own store: its
/// child is adopted with the same pid, and stays so when etcd is back.
#[test]
fn a_node_restarted_while_etcd_is_down_keeps_its_last_known_share() {
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(tmp.path());
    let dir = node_dir(tmp.path(), &etcd, "n1", &[], "10s");
    let node = start(&dir);
    let mut guard = GroupGuard::default();
    wait_nodes(&node, 1);
    register(&node, json!({"name": "kept", "command": "sleep 350"}));
    let pid = wait_running(&node, "kept");
    guard.add(pid as i32);
    etcd.stop();
    node.kill9();
    let node = start(&dir);
    assert_eq!(
        running(&node).get("kept"),
        Some(&pid),
        "adopted, not restarted"
    );
    let v: Value = ureq::get(&format!("{}/nodes", node.url))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
    assert_eq!(v["connected"], false);
    etcd.run();
    // Resynced once a write goes through again and runs: the node has taken its share from
    // etcd by then (a write returns once the node's watch has it).
    wait_for(Duration::from_secs(30), "a write accepted again", || {
        let r = ureq::post(&format!("{}/register", node.url))
            .send_json(json!({"name": "probe", "command": "sleep 351"}))
            .ok()?;
        (r.status() == 201).then_some(())
    });
    let probe_pid = wait_running(&node, "probe");
    guard.add(probe_pid as i32);
    assert_eq!(
        running(&node).get("kept"),
        Some(&pid),
        "unchanged after the resync"
    );
}
