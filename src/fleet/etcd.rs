//! The etcd backend of a fleet (`docs/fleet.md`): one session per daemon that registers the
//! node under a lease, fills the [`FleetView`] with one get and then one watch of the whole
//! prefix (resumed after a disconnect at the revision after the last one applied, so no change
//! is missed or applied twice), claims and releases assignments by compare-and-swap, hands the
//! node its share ([`DesiredState::mirror_share`]) and publishes its observed state. It is also
//! the [`SharedStore`] every write of desired state goes to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{watch, Notify};

use super::{Decision, FleetStatus, FleetView, Key, Keys, NodeInfo};
use crate::config::{NodeSettings, StoreSettings};
use crate::desired::{DesiredState, Programs, SharedStore, StoreFuture};
use crate::store::{ProgramRecord, StoreError, StoreWrite};

/// Programs per transaction: a compare and a put each, within etcd's default limit of 128
/// operations per transaction.
const PROGRAMS_PER_TXN: usize = 60;
/// Claims per transaction, likewise.
const CLAIMS_PER_TXN: usize = 60;

/// Why a fleet cannot be joined at all (a bad TLS file, say); an unreachable etcd is not one.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot read {what} {}: {source}; fix [store] {key}", path.display())]
    File {
        what: &'static str,
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Builds the observed state this node publishes (its instances, pids, restarts).
pub type Observe = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A daemon's membership of a fleet whose desired state is in etcd.
pub struct EtcdFleet {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    client: Mutex<Option<Client>>,
    keys: Keys,
    info: NodeInfo,
    ttl: i64,
    timeout: Duration,
    view: Mutex<FleetView>,
    /// The newest revision whose changes the view (and the share) has taken in.
    applied: watch::Sender<i64>,
    /// The newest revision the view has taken in.
    pending: AtomicI64,
    connected: AtomicBool,
    /// Why the session last lost or failed to reach etcd, for the sentence of a refused write.
    last_error: Mutex<String>,
    lease: AtomicI64,
    desired: Weak<DesiredState>,
    /// Poked when this node's observed state changed.
    publish: Notify,
    observe: OnceLock<Observe>,
    /// Poked after a reconnection: the programs directory is synced again, so a file edited
    /// while etcd was away is written now (once: the write rule makes a repeat a no-op).
    rescan: Arc<Notify>,
}

impl EtcdFleet {
    /// Joins the fleet: starts the session and waits (up to three `[store] timeout`s) for the
    /// first sync, so the node's share is known before its reconcile loop starts. When etcd
    /// cannot be reached the node runs degraded from its last known share (`docs/fleet.md`)
    /// and the session keeps trying.
    pub async fn join(
        store: &StoreSettings,
        node: &NodeSettings,
        api: String,
        desired: &Arc<DesiredState>,
        rescan: Arc<Notify>,
    ) -> Result<Arc<EtcdFleet>, FleetError> {
        let options = connect_options(store)?;
        let since = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let inner = Arc::new(Inner {
            endpoints: store.endpoints.clone(),
            options,
            client: Mutex::new(None),
            keys: Keys {
                prefix: store.prefix.clone(),
            },
            info: NodeInfo {
                name: node.name.clone(),
                labels: node.labels.clone(),
                api,
                since,
            },
            ttl: node.lease_ttl.0.as_secs().max(1) as i64,
            timeout: store.timeout.0,
            view: Mutex::new(FleetView::default()),
            applied: watch::channel(0).0,
            pending: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            lease: AtomicI64::new(0),
            desired: Arc::downgrade(desired),
            publish: Notify::new(),
            observe: OnceLock::new(),
            rescan,
        });
        let mut synced = inner.applied.subscribe();
        tokio::spawn(session(inner.clone()));
        tokio::spawn(publisher(inner.clone()));
        let first = tokio::time::timeout(inner.timeout * 3, synced.wait_for(|r| *r > 0)).await;
        if first.is_err() {
            tracing::warn!(
                node = %inner.info.name,
                "fleet: etcd at {} is unreachable; running degraded on the last known desired state until it answers",
                inner.endpoints.join(", ")
            );
        }
        Ok(Arc::new(EtcdFleet { inner }))
    }

    /// Sets how this node's observed state is built; published now and on every
    /// [`EtcdFleet::observed_changed`].
    pub fn set_observe(&self, observe: Observe) {
        let _ = self.inner.observe.set(observe);
        self.inner.publish.notify_one();
    }

    /// This node's instances changed: publish them (coalesced).
    pub fn observed_changed(&self) {
        self.inner.publish.notify_one();
    }
}

impl FleetStatus for EtcdFleet {
    fn me(&self) -> String {
        self.inner.info.name.clone()
    }
    fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }
    fn view(&self) -> FleetView {
        lock(&self.inner.view).clone()
    }
}

impl SharedStore for EtcdFleet {
    fn apply(&self, writes: Vec<StoreWrite>) -> StoreFuture<'_, usize> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.write(writes).await })
    }

    fn get(&self, name: &str) -> Option<Arc<ProgramRecord>> {
        lock(&self.inner.view)
            .programs
            .get(name)
            .map(|s| s.record.clone())
    }

    fn programs(&self) -> Programs {
        let view = lock(&self.inner.view);
        Arc::new(
            view.programs
                .iter()
                .map(|(n, s)| (n.clone(), s.record.clone()))
                .collect(),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn connect_options(s: &StoreSettings) -> Result<ConnectOptions, FleetError> {
    let read = |what, key, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| FleetError::File {
            what,
            key,
            path: path.to_path_buf(),
            source,
        })
    };
    // No HTTP/2 pings: the lease's keep-alive, answered or not, already tells a dead connection
    // within a third of the TTL, and an idle node wakes for nothing else.
    let mut o = ConnectOptions::new()
        .with_timeout(s.timeout.0)
        .with_connect_timeout(s.timeout.0);
    if s.ca_file.is_some() || s.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &s.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("the CA file", "ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
            let cert = read("the certificate", "cert_file", cert)?;
            let key = read("the key", "key_file", key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        o = o.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&s.user, &s.password_file) {
        let password = read("the password file", "password_file", file)?;
        let password = String::from_utf8_lossy(&password).trim_end().to_string();
        o = o.with_user(user.clone(), password);
    }
    Ok(o)
}

/// An etcd error as a store error: anything about reaching etcd makes the node degraded.
/// Runs `ops` if every compare holds: the revision it committed at, or `None` when a compare
/// failed (someone else wrote first).
async fn commit(
    client: &mut Client,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
) -> Result<Option<i64>, StoreError> {
    let resp = client
        .txn(Txn::new().when(compares).and_then(ops))
        .await
        .map_err(unavailable)?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable { why: e.to_string() }
}

impl Inner {
    fn me(&self) -> &str {
        &self.info.name
    }

    async fn client(&self) -> Result<Client, StoreError> {
        if let Some(c) = lock(&self.client).clone() {
            return Ok(c);
        }
        let c = Client::connect(&self.endpoints, Some(self.options.clone()))
            .await
            .map_err(unavailable)?;
        *lock(&self.client) = Some(c.clone());
        Ok(c)
    }

    /// Commits program writes by the store's rule: per chunk of programs, read their records,
    /// stage the writes on them, and commit only if none changed meanwhile (compare of each
    /// key's revision), else read again. Returns once this node's view has the result.
    async fn write(&self, writes: Vec<StoreWrite>) -> Result<usize, StoreError> {
        if !self.connected.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                why: format!(
                    "node {} is not connected to etcd at {}: {}",
                    self.me(),
                    self.endpoints.join(", "),
                    lock(&self.last_error)
                ),
            });
        }
        // Group by program, keeping each program's writes in order.
        let mut by_program: BTreeMap<String, Vec<StoreWrite>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for w in writes {
            let Some(name) = w.program().map(str::to_string) else {
                continue;
            };
            if !by_program.contains_key(&name) {
                order.push(name.clone());
            }
            by_program.entry(name).or_default().push(w);
        }
        // Check every write first, on the records as this node sees them, so a refused write
        // (an ownership check, an unknown program) refuses the whole batch before any commit.
        {
            let view = lock(&self.view);
            for name in &order {
                let mut r = view.programs.get(name).map(|s| (*s.record).clone());
                for w in &by_program[name] {
                    w.apply_to_program(&mut r)?;
                }
            }
        }
        let mut changed = 0;
        let mut last = 0;
        for chunk in order.chunks(PROGRAMS_PER_TXN) {
            let (n, rev) = self.write_chunk(chunk, &by_program).await?;
            changed += n;
            last = last.max(rev);
        }
        if last > 0 {
            let mut applied = self.applied.subscribe();
            let seen = tokio::time::timeout(self.timeout, applied.wait_for(|r| *r >= last)).await;
            if seen.is_err() {
                tracing::warn!(
                    "fleet: a committed write (revision {last}) is not seen by the watch yet"
                );
            }
        }
        Ok(changed)
    }

    async fn write_chunk(
        &self,
        names: &[String],
        by_program: &BTreeMap<String, Vec<StoreWrite>>,
    ) -> Result<(usize, i64), StoreError> {
        let mut client = self.client().await?;
        for _attempt in 0..50 {
            let gets: Vec<TxnOp> = names
                .iter()
                .map(|n| TxnOp::get(self.keys.program(n), None))
                .collect();
            let resp = client
                .txn(Txn::new().and_then(gets))
                .await
                .map_err(unavailable)?;
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let mut changed = 0;
            for (name, op) in names.iter().zip(resp.op_responses()) {
                let TxnOpResponse::Get(get) = op else {
                    return Err(StoreError::Fleet {
                        why: "etcd answered a read with something else".into(),
                    });
                };
                let kv = get.kvs().first();
                let revision = kv.map_or(0, |kv| kv.mod_revision());
                let mut record: Option<ProgramRecord> =
                    match kv {
                        Some(kv) => Some(serde_json::from_slice(kv.value()).map_err(|e| {
                            StoreError::Fleet {
                                why: format!("the record of {name:?} in etcd is not readable: {e}"),
                            }
                        })?),
                        None => None,
                    };
                let before = record.clone();
                let mut any = false;
                for w in &by_program[name] {
                    any |= w.apply_to_program(&mut record)?;
                }
                if !any || record == before {
                    continue;
                }
                changed += by_program[name].len().min(1);
                let key = self.keys.program(name);
                compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                ));
                match record {
                    Some(r) => {
                        let value = serde_json::to_vec(&r).map_err(|e| StoreError::Fleet {
                            why: format!("cannot encode {name:?}: {e}"),
                        })?;
                        ops.push(TxnOp::put(key, value, None));
                    }
                    None => {
                        ops.push(TxnOp::delete(key, None));
                        ops.push(TxnOp::delete(
                            self.keys.assignments_of(name),
                            Some(DeleteOptions::new().with_prefix()),
                        ));
                    }
                }
            }
            if ops.is_empty() {
                return Ok((0, 0));
            }
            if let Some(rev) = commit(&mut client, compares, ops).await? {
                return Ok((changed, rev));
            }
        }
        Err(StoreError::Fleet {
            why: "other writers kept changing the same programs; try again".into(),
        })
    }
}

/// The session: connect, register, sync, watch; on any failure mark the node disconnected
/// (degraded: nothing is stopped, writes are refused) and start again after a pause that
/// grows to 2 s.
async fn session(inner: Arc<Inner>) {
    let mut pause = Duration::from_millis(100);
    let mut was_connected = false;
    loop {
        let started = Instant::now();
        let err = run_session(&inner, &mut was_connected).await;
        *lock(&inner.last_error) = match &err {
            StoreError::Unavailable { why } => why.clone(),
            e => e.to_string(),
        };
        if inner.connected.swap(false, Ordering::SeqCst) {
            tracing::warn!(
                node = %inner.me(),
                "fleet: lost etcd ({err}); children keep running, writes are refused until it is back"
            );
        } else {
            tracing::debug!("fleet: etcd not reachable: {err}");
        }
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(100);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        if inner.desired.strong_count() == 0 {
            return;
        }
    }
}

/// Publishes this node's observed state under its node key (leased, so it goes with the
/// node): after each change, coalescing the changes of 200 ms into one write.
async fn publisher(inner: Arc<Inner>) {
    let mut last: Option<serde_json::Value> = None;
    loop {
        inner.publish.notified().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if inner.desired.strong_count() == 0 {
            return;
        }
        let (Some(observe), true) = (inner.observe.get(), inner.connected.load(Ordering::SeqCst))
        else {
            // Published again when the session connects.
            last = None;
            continue;
        };
        let now = observe();
        if last.as_ref() == Some(&now) {
            continue;
        }
        let Ok(mut client) = inner.client().await else {
            continue;
        };
        let value = serde_json::to_vec(&now).unwrap_or_default();
        let lease = inner.lease.load(Ordering::SeqCst);
        let put = client
            .put(
                inner.keys.observed(inner.me()),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await;
        match put {
            Ok(_) => last = Some(now),
            Err(e) => {
                tracing::debug!("fleet: cannot publish the observed state: {e}");
                last = None;
            }
        }
    }
}

/// One connected stretch of the session; returns why it ended.
async fn run_session(inner: &Arc<Inner>, was_connected: &mut bool) -> StoreError {
    match run_session_inner(inner, was_connected).await {
        Ok(()) => StoreError::Unavailable {
            why: "the watch ended".into(),
        },
        Err(e) => e,
    }
}

async fn run_session_inner(inner: &Arc<Inner>, was_connected: &mut bool) -> Result<(), StoreError> {
    let mut client = inner.client().await?;
    // The lease: kept if it is still alive (a short outage), else a new one.
    let mut lease = inner.lease.load(Ordering::SeqCst);
    if lease != 0 {
        let alive = client
            .lease_time_to_live(lease, None)
            .await
            .map_err(unavailable)?;
        if alive.ttl() <= 0 {
            lease = 0;
        }
    }
    if lease == 0 {
        lease = client
            .lease_grant(inner.ttl, None)
            .await
            .map_err(unavailable)?
            .id();
        inner.lease.store(lease, Ordering::SeqCst);
    }
    let info = serde_json::to_vec(&inner.info).unwrap_or_default();
    client
        .put(
            inner.keys.node(inner.me()),
            info,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(unavailable)?;
    let (mut keeper, mut keep_stream) =
        client.lease_keep_alive(lease).await.map_err(unavailable)?;

    // Resume after the last revision the view took in (a change is neither missed nor applied
    // twice), or read everything once.
    let seen = inner.pending.load(Ordering::SeqCst);
    let start = if seen > 0 {
        seen + 1
    } else {
        full_sync(inner, &mut client).await? + 1
    };
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let mut stream = client
        .watch(inner.keys.all(), Some(options))
        .await
        .map_err(unavailable)?;
    inner.connected.store(true, Ordering::SeqCst);
    tracing::info!(node = %inner.me(), revision = start - 1, "fleet: connected to etcd");
    if *was_connected {
        inner.rescan.notify_one();
    }
    *was_connected = true;
    act(inner, &mut client).await?;
    publish_applied(inner);
    inner.publish.notify_one();

    let keep_every = Duration::from_millis((inner.ttl as u64 * 1000 / 3).max(300));
    let mut keep_tick = tokio::time::interval(keep_every);
    let mut answered = Instant::now();
    let mut dirty = false;
    loop {
        tokio::select! {
            biased;
            msg = stream.message() => {
                let Some(resp) = msg.map_err(unavailable)? else {
                    return Ok(());
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        // The history to resume from is compacted: read everything again.
                        tracing::warn!("fleet: watch history compacted at {}; reading the fleet again", resp.compact_revision());
                        inner.applied.send_replace(0);
                        inner.pending.store(0, Ordering::SeqCst);
                    }
                    return Err(StoreError::Unavailable { why: format!("the watch was cancelled: {}", resp.cancel_reason()) });
                }
                let (mut last, mut decides) = (0, false);
                {
                    let mut view = lock(&inner.view);
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key());
                        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                        view.set(&inner.keys, &key, value, kv.mod_revision());
                        last = last.max(kv.mod_revision());
                        // Another node's observed state is only shown; no decision reads it.
                        decides |= !matches!(inner.keys.parse(&key), Some(Key::Observed(_)));
                    }
                }
                if last > 0 {
                    pending_revision(inner, last);
                    if decides {
                        dirty = true;
                    } else if !dirty {
                        publish_applied(inner);
                    }
                }
            }
            _ = std::future::ready(()), if dirty => {
                dirty = false;
                act(inner, &mut client).await?;
                publish_applied(inner);
            }
            _ = keep_tick.tick() => {
                // The previous keep-alive was never answered: the connection is gone.
                if answered.elapsed() > keep_every * 2 + inner.timeout {
                    return Err(StoreError::Unavailable { why: "etcd stopped answering the lease's keep-alives".into() });
                }
                keeper.keep_alive().await.map_err(unavailable)?;
            }
            msg = keep_stream.message() => {
                match msg.map_err(unavailable)? {
                    Some(r) if r.ttl() > 0 => answered = Instant::now(),
                    _ => {
                        // The lease is gone (expired while etcd could not hear us): register anew.
                        inner.lease.store(0, Ordering::SeqCst);
                        return Err(StoreError::Unavailable { why: "the node's lease expired".into() });
                    }
                }
            }
        }
    }
}

/// The view has taken in the changes up to `revision`; the share follows at the next
/// [`publish_applied`].
fn pending_revision(inner: &Inner, revision: i64) {
    inner.pending.fetch_max(revision, Ordering::SeqCst);
}

/// The share now follows the view: writes waiting for their revision may answer.
fn publish_applied(inner: &Inner) {
    let rev = inner.pending.load(Ordering::SeqCst);
    inner.applied.send_if_modified(|r| {
        if rev > *r {
            *r = rev;
            true
        } else {
            false
        }
    });
}

/// Reads the whole fleet into the view; returns the revision read at.
async fn full_sync(inner: &Inner, client: &mut Client) -> Result<i64, StoreError> {
    let resp = client
        .get(inner.keys.all(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut view = FleetView::default();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        view.set(&inner.keys, &key, Some(kv.value()), kv.mod_revision());
    }
    *lock(&inner.view) = view;
    pending_revision(inner, revision);
    Ok(revision)
}

/// Carries out this node's decisions on the current view, then makes its share the local
/// desired state.
async fn act(inner: &Arc<Inner>, client: &mut Client) -> Result<(), StoreError> {
    let decisions = lock(&inner.view).decide(inner.me());
    let mut claims = Vec::new();
    for d in decisions {
        match d {
            Decision::Release {
                program,
                slot,
                revision,
            } => {
                let key = inner.keys.assignment(&program, slot);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                client.txn(txn).await.map_err(unavailable)?;
                tracing::info!(program, slot, "fleet: released");
            }
            claim => claims.push(claim),
        }
    }
    for batch in claims.chunks(CLAIMS_PER_TXN) {
        if !claim(inner, client, batch).await? && batch.len() > 1 {
            // Someone else got one of them: try each on its own.
            for one in batch {
                claim(inner, client, std::slice::from_ref(one)).await?;
            }
        }
    }
    let share = lock(&inner.view).share(inner.me());
    if let Some(desired) = inner.desired.upgrade() {
        if let Err(e) = desired.mirror_share(share).await {
            tracing::error!("fleet: cannot record this node's share locally: {e}");
        }
    }
    Ok(())
}

/// Claims every slot of `batch` in one transaction; false if any was taken meanwhile.
async fn claim(inner: &Inner, client: &mut Client, batch: &[Decision]) -> Result<bool, StoreError> {
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let mut names = BTreeSet::new();
    for d in batch {
        let Decision::Claim {
            program,
            slot,
            from,
        } = d
        else {
            continue;
        };
        let key = inner.keys.assignment(program, *slot);
        compares.push(match from {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(a) => Compare::mod_revision(key.clone(), CompareOp::Equal, a.revision),
        });
        // The program must still exist: a claim never outlives a delete.
        compares.push(Compare::create_revision(
            inner.keys.program(program),
            CompareOp::Greater,
            0,
        ));
        ops.push(TxnOp::put(key, inner.me(), None));
        names.insert((
            program.clone(),
            *slot,
            from.as_ref().map(|a| a.node.clone()),
        ));
    }
    let committed = commit(client, compares, ops).await?;
    if let Some(rev) = committed {
        let mut view = lock(&inner.view);
        for (program, slot, from) in names {
            match &from {
                Some(dead) => {
                    tracing::info!(program, slot, from = %dead, "fleet: took over from a node that is gone")
                }
                None => tracing::debug!(program, slot, "fleet: claimed"),
            }
            let key = inner.keys.assignment(&program, slot);
            view.set(&inner.keys, &key, Some(inner.me().as_bytes()), rev);
        }
    }
    Ok(committed.is_some())
}
