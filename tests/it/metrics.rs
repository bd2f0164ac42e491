//! Metrics fed by the events of real supervised processes: a crash, a restart and an exit move
//! the counters, the gauges follow the statuses, and the text parses as OpenMetrics.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use provisr::config::{Dur, Exec, InstanceId, ProgramSpec};
use provisr::metrics::Metrics;
use provisr::supervisor::{
    Initial, InstanceHandle, InstanceState, InstanceStatus, OutputSink, RuntimeContext,
};
use tokio::sync::broadcast;

use crate::util::{group_members, wait_for_async, GroupGuard};

const WAIT: Duration = Duration::from_secs(30);

/// Output is not what this test is about: closing our read ends is fine, since every child keeps
/// its own (fd 3/4), so its writes never fail.
struct Discard;

impl OutputSink for Discard {
    fn attach(&self, _stdout: OwnedFd, _stderr: OwnedFd) {}
}

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn value(exp: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exp.families.get(family)?.iter_samples().find_map(|s| {
        let set = s.get_labelset().unwrap();
        let all = set.iter().count() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v));
        all.then(|| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            other => panic!("{family}: {other:?}"),
        })
    })
}

fn spec(name: &str, command: &str, instances: u32) -> ProgramSpec {
    let mut s = ProgramSpec::new(name, Exec::Command(command.to_string()));
    s.instances = instances;
    s.restart_interval = Dur::from_millis(100);
    s.stop_timeout = Dur::from_secs(5);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_a_restart_and_an_exit_show_up_in_the_metrics() {
    let (tx, mut rx) = broadcast::channel(4096);
    let ctx = RuntimeContext {
        events: tx,
        changed: Default::default(),
        output: Arc::new(Discard),
        state_dir: None,
        launches: None,
        counters: Default::default(),
    };
    let metrics = Arc::new(Metrics::new());
    let feeder = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                metrics.observe_event(&e);
            }
        })
    };

    let mut web = spec("web", "sleep 300", 2);
    web.auto_restart = true;
    let web = Arc::new(web);
    let quitter = Arc::new(spec("quitter", "sleep 0.2; exit 3", 1));
    let mut guard = GroupGuard::default();
    let handles: Vec<InstanceHandle> = [
        (InstanceId::new("web", 1, 2), web.clone()),
        (InstanceId::new("web", 2, 2), web),
        (InstanceId::new("quitter", 1, 1), quitter),
    ]
    .into_iter()
    .map(|(id, spec)| InstanceHandle::spawn(id, spec, ctx.clone(), Initial::Fresh { restarts: 0 }))
    .collect();
    for h in &handles {
        h.start();
    }
    let statuses = |handles: &[InstanceHandle]| -> Vec<InstanceStatus> {
        handles.iter().map(InstanceHandle::status).collect()
    };
    let first = wait_for_async(WAIT, "web-1 running", || {
        let st = handles[0].status();
        (st.state == InstanceState::Running)
            .then_some(st.pid)
            .flatten()
    })
    .await;
    guard.add(first);
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();

    // Wait for the restart and for the quitter to exit; then the feeder catches up.
    let settled = |exp: &Exposition| {
        value(
            exp,
            "provisr_restarts",
            &[("name", "web-1"), ("program", "web")],
        ) == Some(1.0)
            && value(
                exp,
                "provisr_instance_up",
                &[("name", "web-1"), ("program", "web")],
            ) == Some(1.0)
            && value(
                exp,
                "provisr_instance_state",
                &[
                    ("name", "quitter"),
                    ("program", "quitter"),
                    ("state", "exited"),
                ],
            ) == Some(1.0)
            && value(
                exp,
                "provisr_exits",
                &[
                    ("name", "quitter"),
                    ("program", "quitter"),
                    ("code", "3"),
                    ("signal", ""),
                ],
            ) == Some(1.0)
    };
    let exp = wait_for_async(WAIT, "metrics of the crash and the exit", || {
        let text = metrics.render(&statuses(&handles));
        let exp = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        settled(&exp).then_some(exp)
    })
    .await;
    for h in &handles {
        if let Some(pid) = h.status().pid {
            guard.add(pid);
        }
    }

    let web1 = [("name", "web-1"), ("program", "web")];
    let web2 = [("name", "web-2"), ("program", "web")];
    assert_eq!(value(&exp, "provisr_starts", &web1), Some(2.0));
    assert_eq!(value(&exp, "provisr_starts", &web2), Some(1.0));
    assert_eq!(value(&exp, "provisr_restarts", &web2), Some(0.0));
    assert_eq!(value(&exp, "provisr_instance_restarts", &web1), Some(1.0));
    assert_eq!(
        value(
            &exp,
            "provisr_exits",
            &[
                ("name", "web-1"),
                ("program", "web"),
                ("code", ""),
                ("signal", "SIGKILL")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &exp,
            "provisr_restarts",
            &[("name", "quitter"), ("program", "quitter")]
        ),
        Some(0.0),
        "no auto_restart, no restart"
    );

    // A requested stop is not an exit. Stop everything, then start web-2 once more: once the
    // metrics have seen that start, they have seen every stop event before it (one channel, in order).
    for h in &handles {
        h.stop();
    }
    wait_for_async(WAIT, "all stopped", || {
        statuses(&handles)
            .iter()
            .all(|s| matches!(s.state, InstanceState::Stopped | InstanceState::Exited))
            .then_some(())
    })
    .await;
    handles[1].start();
    let exp = wait_for_async(WAIT, "the second start of web-2", || {
        let exp = parse_openmetrics(&metrics.render(&statuses(&handles))).unwrap();
        (value(&exp, "provisr_starts", &web2) == Some(2.0)).then_some(exp)
    })
    .await;
    assert_eq!(exp.families["provisr_exits"].iter_samples().count(), 2);
    if let Some(pid) = handles[1].status().pid {
        guard.add(pid);
    }

    let pids: Vec<i32> = guard.0.clone();
    for h in handles {
        h.shutdown().await;
    }
    feeder.abort();
    wait_for_async(WAIT, "process groups gone", || {
        pids.iter()
            .all(|&p| group_members(p).is_empty())
            .then_some(())
    })
    .await;
}
