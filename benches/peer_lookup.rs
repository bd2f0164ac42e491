//! What attributing an API connection to a local user costs (docs/security.md).
//!
//! The daemon asks the kernel once per accepted loopback connection which uid owns the client's
//! end (one `sock_diag` query). This bench times that query against the baseline it rides on: a
//! loopback TCP connect plus accept, measured in the same run, interleaved. The ratio says how
//! much a new connection costs more than before; requests on a kept-alive connection pay nothing.
//!
//! `cargo bench --bench peer_lookup`; `BENCH_PEER_SAMPLES` (default 2000) sets the sample count.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use provisr::api::peer::{attribute_tcp, Caller};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 99 / 100]
}

fn main() {
    let samples: usize = std::env::var("BENCH_PEER_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (mut connect, mut lookup) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let t = Instant::now();
        let client = TcpStream::connect(addr).expect("connect");
        let (server, peer) = listener.accept().expect("accept");
        connect.push(t.elapsed());
        let t = Instant::now();
        let caller = attribute_tcp(server.local_addr().expect("local"), peer);
        lookup.push(t.elapsed());
        assert!(matches!(caller, Caller::Local { .. }), "{caller:?}");
        drop((client, server));
    }
    let (c50, l50) = (median(connect.clone()), median(lookup.clone()));
    println!("| figure | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| loopback connect + accept (baseline) | {:.1} µs | {:.1} µs |",
        c50.as_secs_f64() * 1e6,
        p99(connect).as_secs_f64() * 1e6
    );
    println!(
        "| uid lookup (sock_diag) | {:.1} µs | {:.1} µs |",
        l50.as_secs_f64() * 1e6,
        p99(lookup).as_secs_f64() * 1e6
    );
    println!(
        "\nlookup / connect+accept, p50: {:.2}× over {samples} samples",
        l50.as_secs_f64() / c50.as_secs_f64()
    );
}
