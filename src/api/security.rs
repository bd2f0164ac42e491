//! Who may use the API (`docs/security.md`): every connection is attributed to a local user or
//! nobody ([`Caller`]); root, the daemon's own user and `[server] allow_users`/`allow_groups` may
//! do everything; anyone else needs a bearer token (compared in constant time), whose scope —
//! read, operate or admin — bounds what it may do. Host and Origin checks keep browsers out (DNS
//! rebinding, CSRF), and a non-loopback listen needs a token and TLS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::peer::Caller;
use crate::config::TokenScope;

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "cannot parse the listen address {0:?}; write HOST:PORT (e.g. 127.0.0.1:8080) or :PORT"
    )]
    Invalid(String),
    #[error("refusing to listen on {0}, a non-loopback address, without a token: anyone who can reach it could run commands as this user; set [server] token, token_file or tokens, or listen on 127.0.0.1")]
    NonLoopbackWithoutToken(SocketAddr),
    #[error("refusing to listen on {0}, a non-loopback address, without TLS: tokens, logs and commands would cross the network in plain text; set [server.tls] cert and key, or allow_plaintext = true if a trusted proxy or network encrypts the traffic")]
    NonLoopbackWithoutTls(SocketAddr),
}

/// Parses a listen address; a bare `:PORT` means `127.0.0.1:PORT`, `localhost:PORT` loopback.
pub fn parse_listen(listen: &str) -> Result<SocketAddr, ListenError> {
    let s = listen.trim();
    let s = if let Some(port) = s.strip_prefix(':') {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = s.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        s.to_string()
    };
    s.parse()
        .map_err(|_| ListenError::Invalid(listen.to_string()))
}

/// How a listener is protected, for [`check_listen`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenGuards {
    pub has_token: bool,
    pub tls: bool,
    pub allow_plaintext: bool,
}

/// Refuses a non-loopback address unless a token protects the API and TLS (or an explicit
/// `allow_plaintext`) protects the traffic; says so in the log when plaintext is allowed.
pub fn check_listen(addr: SocketAddr, guards: ListenGuards) -> Result<(), ListenError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !guards.has_token {
        return Err(ListenError::NonLoopbackWithoutToken(addr));
    }
    if !guards.tls {
        if !guards.allow_plaintext {
            return Err(ListenError::NonLoopbackWithoutTls(addr));
        }
        tracing::warn!("listening on {addr} without TLS (allow_plaintext = true): tokens and output cross the network in plain text");
    }
    Ok(())
}

/// A bearer token the daemon accepts, with what it may do.
#[derive(Debug, Clone)]
pub struct Token {
    /// Named in logs and refusals, never the secret.
    pub name: String,
    pub secret: String,
    pub scope: TokenScope,
}

/// What a request was granted and by whom; handlers that need more than the route's scope
/// (a `/start` that registers a program) check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub scope: TokenScope,
    /// `root (uid 0)`, `token "ci"`, …
    pub by: String,
}

impl Granted {
    /// `Ok` when the grant covers `needed`, else the 403 that says what was missing.
    pub fn require(&self, needed: TokenScope, what: &str) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} has the {} scope; {what} needs {needed}: use a token whose scope is {needed}{}",
                    self.by,
                    self.scope,
                    if needed == TokenScope::Admin { "" } else { " or admin" }
                ),
            ))
        }
    }
}

/// The scope a request needs, from its method and its path below the API base: reading needs
/// `read` (plans and dry runs too: they change nothing), acting on processes and reloading needs
/// `operate`, anything else — registering, updating, unregistering — `admin`.
pub fn required_scope(method: &Method, rel_path: &str, query: Option<&str>) -> TokenScope {
    if method == Method::GET || method == Method::HEAD {
        return TokenScope::Read;
    }
    let dry_run = query.is_some_and(|q| q.split('&').any(|kv| kv == "dry_run=true"));
    let path = rel_path.trim_end_matches('/');
    // `/cronjobs/{name}/trigger|suspend|resume` act on a job's runs like `/start` on a program.
    let cron_action = path.strip_prefix("/cronjobs/").is_some_and(|rest| {
        matches!(
            rest.split_once('/'),
            Some((name, "trigger" | "suspend" | "resume")) if !name.is_empty() && !name.contains('/')
        )
    });
    if cron_action {
        return TokenScope::Operate;
    }
    match path {
        "/plan" => TokenScope::Read,
        "/apply" if dry_run => TokenScope::Read,
        "/reload" if dry_run => TokenScope::Read,
        "/reload" | "/start" | "/stop" | "/restart" | "/group/start" | "/group/stop"
        | "/debug/reconcile" => TokenScope::Operate,
        _ => TokenScope::Admin,
    }
}

/// Who may use the API (`docs/security.md`): replaced whole when the config is reloaded.
#[derive(Debug)]
pub struct AccessPolicy {
    /// Bearer tokens let in from anywhere, each within its scope (`[server] token` is one with
    /// the admin scope, named `token`).
    pub tokens: Vec<Token>,
    /// The daemon's own (effective) uid: it and root may do everything.
    pub daemon_uid: u32,
    /// `[server] allow_users`, as uids.
    pub allow_users: Vec<u32>,
    /// `[server] allow_groups`, as gids.
    pub allow_groups: Vec<u32>,
    /// The main config file, to say where access is granted.
    pub config_file: Option<std::path::PathBuf>,
    // Whether a uid belongs to an allowed group, looked up once per uid for as long as this
    // policy lives (a reload starts afresh). A std lock: held for a map access, never across
    // an `.await`.
    group_members: Mutex<HashMap<u32, bool>>,
}

impl AccessPolicy {
    pub fn new(
        tokens: Vec<Token>,
        allow_users: Vec<u32>,
        allow_groups: Vec<u32>,
        config_file: Option<std::path::PathBuf>,
    ) -> AccessPolicy {
        AccessPolicy {
            tokens,
            daemon_uid: nix::unistd::geteuid().as_raw(),
            allow_users,
            allow_groups,
            config_file,
            group_members: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a local user may use the API.
    pub fn allows_uid(&self, uid: u32) -> bool {
        if uid == 0 || uid == self.daemon_uid || self.allow_users.contains(&uid) {
            return true;
        }
        if self.allow_groups.is_empty() {
            return false;
        }
        let mut members = match self.group_members.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *members.entry(uid).or_insert_with(|| {
            crate::accounts::groups_of(uid)
                .iter()
                .any(|g| self.allow_groups.contains(g))
        })
    }

    /// The sentence a refused local user gets: which rule refused it and how to be let in.
    fn refusal(&self, uid: u32) -> String {
        let who = crate::accounts::describe_uid(uid);
        let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let grant = match &self.config_file {
            Some(p) => format!(
                "add {name:?} to [server] allow_users in {} and reload (SIGHUP)",
                p.display()
            ),
            None => format!(
                "run the daemon with a config file whose [server] allow_users lists {name:?}"
            ),
        };
        format!(
            "{who} may not use this provisr daemon: only root, the daemon's own user, {}, and the users and groups in [server] allow_users and allow_groups may; {grant}, or send the daemon's token",
            crate::accounts::describe_uid(self.daemon_uid)
        )
    }
}

/// The access policy every listener checks, shared with the reloader that replaces it.
#[derive(Debug, Clone)]
pub struct Access(Arc<RwLock<Arc<AccessPolicy>>>);

impl Access {
    pub fn new(policy: AccessPolicy) -> Access {
        Access(Arc::new(RwLock::new(Arc::new(policy))))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<AccessPolicy> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts a new policy in force for every request from now on, on open connections too.
    pub fn replace(&self, policy: AccessPolicy) {
        let next = Arc::new(policy);
        match self.0.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }
}

/// What the request guard checks.
#[derive(Debug, Clone)]
pub struct Guard {
    pub access: Access,
    /// The API's base path (`/api`), to name routes for their scopes.
    pub base: String,
    /// Host names accepted besides loopback ones (e.g. the configured listen host).
    pub allowed_hosts: Vec<String>,
}

/// Compares without an early exit, so response time does not leak how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The host part of a `Host` header or an `Origin` URL's authority, without port and brackets.
fn host_only(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    a.rsplit_once(':').map_or(a, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            a
        }
    })
}

impl Guard {
    fn host_allowed(&self, host: &str) -> bool {
        let h = host_only(host).to_ascii_lowercase();
        h == "localhost"
            || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || self
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&h))
    }

    /// Checks one request from `caller` (`None`: a connection nobody attributed, refused like
    /// a remote one); `Ok` lets it through with what it was granted.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &axum::http::HeaderMap,
        caller: Option<&Caller>,
    ) -> Result<Granted, ApiError> {
        let header_str = |name| headers.get(name).and_then(|v| v.to_str().ok());
        match header_str(header::HOST) {
            Some(host) if self.host_allowed(host) => {}
            Some(host) => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("the Host header {host:?} is not a loopback or configured name; requests must address this daemon directly"),
                ))
            }
            None => {}
        }
        if let Some(origin) = header_str(header::ORIGIN) {
            let authority = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or("");
            if origin == "null" || !self.host_allowed(authority) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("cross-origin requests are refused (Origin {origin:?}); call the API from the CLI or a local client"),
                ));
            }
        }
        let rel = path.strip_prefix(self.base.as_str()).unwrap_or(path);
        let reading = method == Method::GET || method == Method::HEAD;
        if rel == "/health" || (reading && is_ui_asset(path)) {
            return Ok(Granted {
                scope: TokenScope::Read,
                by: "anyone".into(),
            });
        }
        let policy = self.access.current();
        let needed = required_scope(method, rel, query);
        let bearer = header_str(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // A token, when the daemon has any, lets in any caller within its scope; a wrong one is
        // refused even from a user who would be allowed, so a stale token is noticed.
        if let (false, Some(given)) = (policy.tokens.is_empty(), bearer) {
            // Every token is compared, matched or not, so timing tells nothing about which.
            let matched = policy.tokens.iter().fold(None, |found, t| {
                let eq = constant_time_eq(given.as_bytes(), t.secret.as_bytes());
                found.or(eq.then_some(t))
            });
            let Some(token) = matched else {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the bearer token is wrong; check --token, PROVISR_TOKEN or the daemon's [server] token and tokens",
                ));
            };
            let granted = Granted {
                scope: token.scope,
                by: format!("the token {:?}", token.name),
            };
            granted.require(needed, &format!("{method} {rel}"))?;
            return Ok(granted);
        }
        match caller {
            Some(Caller::Local { uid, via }) => {
                if policy.allows_uid(*uid) {
                    Ok(Granted {
                        scope: TokenScope::Admin,
                        by: crate::accounts::describe_uid(*uid),
                    })
                } else {
                    tracing::warn!(uid, via = ?via, path, "refused a request from {}", crate::accounts::describe_uid(*uid));
                    Err(ApiError::new(StatusCode::FORBIDDEN, policy.refusal(*uid)))
                }
            }
            unattributed => {
                let (peer, why) = match unattributed {
                    Some(Caller::Unattributed { peer, why }) => (peer.as_str(), why.as_str()),
                    _ => ("the caller", "the connection carries no identity"),
                };
                if !policy.tokens.is_empty() {
                    Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        format!("this daemon requires a token from {peer} ({why}): send Authorization: Bearer <token> (provisr --token or PROVISR_TOKEN)"),
                    ))
                } else {
                    tracing::warn!(
                        peer,
                        why,
                        path,
                        "refused a request nobody could be named for"
                    );
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        format!("cannot tell which local user sent this request from {peer} ({why}); use the unix socket, connect over loopback, or configure [server] token"),
                    ))
                }
            }
        }
    }
}

/// The dashboard's static assets, exactly (`docs/security.md`): they carry no data, and a
/// browser's navigation to the page cannot send a bearer header. Everything the page shows
/// comes from API requests, which are checked as any other.
fn is_ui_asset(path: &str) -> bool {
    super::ui::PATHS.contains(&path)
}

/// axum middleware applying [`Guard::check`] to every request, with the identity its
/// connection was given when accepted ([`Caller`]); what was granted goes along with the
/// request ([`Granted`]).
pub async fn guard(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<ConnectInfo<Caller>>().map(|c| &c.0);
    let checked = guard.check(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers(),
        caller,
    );
    match checked {
        Ok(granted) => {
            req.extensions_mut().insert(granted);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::peer::Via;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn token(name: &str, secret: &str, scope: TokenScope) -> Token {
        Token {
            name: name.into(),
            secret: secret.into(),
            scope,
        }
    }

    fn guard(tokens: Vec<Token>, users: Vec<u32>, groups: Vec<u32>) -> Guard {
        Guard {
            access: Access::new(AccessPolicy::new(tokens, users, groups, None)),
            base: "/api".into(),
            allowed_hosts: Vec::new(),
        }
    }

    fn local(uid: u32) -> Caller {
        Caller::Local {
            uid,
            via: Via::Loopback,
        }
    }

    fn remote() -> Caller {
        Caller::Unattributed {
            peer: "192.0.2.1:5000".into(),
            why: "it comes from another host".into(),
        }
    }

    const NOBODY: u32 = 65534;

    impl Guard {
        fn get(
            &self,
            path: &str,
            h: &HeaderMap,
            caller: Option<&Caller>,
        ) -> Result<Granted, ApiError> {
            self.check(&Method::GET, path, None, h, caller)
        }
        fn post(
            &self,
            path: &str,
            h: &HeaderMap,
            caller: Option<&Caller>,
        ) -> Result<Granted, ApiError> {
            let (path, query) = path
                .split_once('?')
                .map_or((path, None), |(p, q)| (p, Some(q)));
            self.check(&Method::POST, path, query, h, caller)
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(
            parse_listen("localhost:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_listen("nonsense").is_err());
        let any = parse_listen("0.0.0.0:8080").unwrap();
        let g = |has_token, tls, allow_plaintext| ListenGuards {
            has_token,
            tls,
            allow_plaintext,
        };
        assert!(matches!(
            check_listen(any, g(false, true, false)),
            Err(ListenError::NonLoopbackWithoutToken(_))
        ));
        assert!(matches!(
            check_listen(any, g(true, false, false)),
            Err(ListenError::NonLoopbackWithoutTls(_))
        ));
        assert!(check_listen(any, g(true, true, false)).is_ok());
        assert!(check_listen(any, g(true, false, true)).is_ok());
        assert!(check_listen(parse_listen(":1").unwrap(), g(false, false, false)).is_ok());
    }

    #[test]
    fn host_and_origin_checks() {
        let g = guard(vec![], vec![], vec![]);
        let root = Some(local(0));
        for ok in ["127.0.0.1:8080", "localhost", "localhost:1", "[::1]:8080"] {
            assert!(
                g.get("/api/status", &headers(&[("host", ok)]), root.as_ref())
                    .is_ok(),
                "{ok}"
            );
        }
        let e = g
            .get(
                "/api/status",
                &headers(&[("host", "evil.example:8080")]),
                root.as_ref(),
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = g
            .get(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]),
                root.as_ref(),
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(g
            .get(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://localhost:8080")]),
                root.as_ref(),
            )
            .is_ok());
        let mut named = guard(vec![], vec![], vec![]);
        named.allowed_hosts = vec!["box.lan".into()];
        assert!(named
            .get("/x", &headers(&[("host", "box.lan:8080")]), root.as_ref())
            .is_ok());
    }

    #[test]
    fn local_users_by_uid() {
        let g = guard(vec![], vec![], vec![]);
        let h = headers(&[]);
        let root = g.post("/api/register", &h, Some(&local(0))).unwrap();
        assert_eq!(root.scope, TokenScope::Admin);
        let me = nix::unistd::geteuid().as_raw();
        assert!(g.get("/api/status", &h, Some(&local(me))).is_ok());
        let refused = g
            .post("/api/register", &h, Some(&local(NOBODY)))
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            refused.message.contains("nobody (uid 65534)")
                && refused.message.contains("allow_users"),
            "{}",
            refused.message
        );
        // `/health` is open to everyone, and nothing else is.
        assert!(g.get("/api/health", &h, Some(&local(NOBODY))).is_ok());
        for path in ["/api/logs", "/api/events", "/metrics", "/api/status"] {
            assert!(g.get(path, &h, Some(&local(NOBODY))).is_err(), "{path}");
        }
        let by_user = guard(vec![], vec![NOBODY], vec![]);
        assert!(by_user.get("/api/status", &h, Some(&local(NOBODY))).is_ok());
        // nobody's primary group is nogroup (65534) on Debian.
        let by_group = guard(
            vec![],
            vec![],
            vec![crate::accounts::gid_of("nogroup").unwrap()],
        );
        assert!(by_group
            .get("/api/status", &h, Some(&local(NOBODY)))
            .is_ok());
        assert!(by_group.get("/api/status", &h, Some(&local(4242))).is_err());
    }

    #[test]
    fn only_the_exact_dashboard_assets_are_open() {
        let g = guard(
            vec![token("token", "s3cret", TokenScope::Admin)],
            vec![],
            vec![],
        );
        let h = headers(&[("host", "127.0.0.1:8080")]);
        for caller in [remote(), local(NOBODY)] {
            for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
                assert!(g.get(path, &h, Some(&caller)).is_ok(), "{path}");
            }
            for path in [
                "/ui/app.js/x",
                "/ui/../api/status",
                "/uix",
                "/ui/index.html",
                "/api/ui",
                "/api/ui/app.js",
                "/ui//app.js",
                "/UI",
                "/api/stats",
            ] {
                assert!(g.get(path, &h, Some(&caller)).is_err(), "{path}");
            }
        }
        // Only reading: a POST to an asset path is judged like any request.
        assert!(g.post("/ui", &h, Some(&remote())).is_err());
        // Host and Origin are still checked on the assets.
        let rebound = headers(&[("host", "evil.example:8080")]);
        let e = g.get("/ui", &rebound, Some(&local(0))).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let framed = headers(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]);
        assert!(g.get("/ui/app.js", &framed, Some(&remote())).is_err());
    }

    #[test]
    fn a_reload_replaces_the_policy_on_open_connections() {
        let g = guard(vec![], vec![NOBODY], vec![]);
        let h = headers(&[]);
        assert!(g.get("/api/status", &h, Some(&local(NOBODY))).is_ok());
        g.access
            .replace(AccessPolicy::new(vec![], vec![], vec![], None));
        assert!(g.get("/api/status", &h, Some(&local(NOBODY))).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let g = guard(
            vec![token("token", "s3cret", TokenScope::Admin)],
            vec![],
            vec![],
        );
        let none = g
            .get("/api/status", &headers(&[]), Some(&remote()))
            .unwrap_err();
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        let wrong = g
            .get(
                "/api/status",
                &headers(&[("authorization", "Bearer nope")]),
                Some(&local(0)),
            )
            .unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let right = headers(&[("authorization", "Bearer s3cret")]);
        for caller in [remote(), local(NOBODY), local(0)] {
            assert!(g.post("/api/register", &right, Some(&caller)).is_ok());
        }
        assert!(g.get("/api/status", &right, None).is_ok());
        assert!(g.get("/api/health", &headers(&[]), Some(&remote())).is_ok());
        // A local user needs no token.
        assert!(g.get("/api/status", &headers(&[]), Some(&local(0))).is_ok());
        // Without a configured token, a caller nobody can name is refused, and a stray
        // bearer header changes nothing.
        let open = guard(vec![], vec![], vec![]);
        let e = open
            .get("/api/status", &right, Some(&remote()))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(open.get("/api/status", &headers(&[]), None).is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn scoped_tokens_do_what_their_scope_allows() {
        let g = guard(
            vec![
                token("viewer", "r", TokenScope::Read),
                token("ops", "o", TokenScope::Operate),
                token("boss", "a", TokenScope::Admin),
            ],
            vec![],
            vec![],
        );
        let bearer = |t: &str| headers(&[("authorization", &*format!("Bearer {t}"))]);
        let caller = Some(remote());
        let c = caller.as_ref();
        // Read sees everything and plans, but acts on nothing.
        for path in [
            "/api/status",
            "/api/logs",
            "/api/events",
            "/api/programs",
            "/metrics",
        ] {
            assert!(g.get(path, &bearer("r"), c).is_ok(), "{path}");
        }
        assert!(g.post("/api/plan", &bearer("r"), c).is_ok());
        assert!(g.post("/api/reload?dry_run=true", &bearer("r"), c).is_ok());
        let e = g.post("/api/stop?name=x", &bearer("r"), c).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            e.message.contains("\"viewer\"") && e.message.contains("needs operate"),
            "{}",
            e.message
        );
        assert!(g.post("/api/reload", &bearer("r"), c).is_err());
        // Operate acts on processes but cannot change specs.
        for path in [
            "/api/start",
            "/api/stop",
            "/api/restart",
            "/api/group/stop",
            "/api/reload",
        ] {
            let granted = g.post(path, &bearer("o"), c).unwrap();
            assert_eq!(granted.scope, TokenScope::Operate, "{path}");
        }
        for path in ["/api/register", "/api/update", "/api/unregister?name=x"] {
            let e = g.post(path, &bearer("o"), c).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{path}");
            assert!(g.post(path, &bearer("a"), c).is_ok(), "{path}");
        }
        // A start that registers (a body) needs admin: the handler asks the grant.
        let ops = g.post("/api/start", &bearer("o"), c).unwrap();
        assert!(ops
            .require(TokenScope::Admin, "registering a program")
            .is_err());
        let boss = g.post("/api/start", &bearer("a"), c).unwrap();
        assert!(boss
            .require(TokenScope::Admin, "registering a program")
            .is_ok());
    }

    #[test]
    fn required_scopes_by_route() {
        let post = Method::POST;
        assert_eq!(
            required_scope(&Method::GET, "/anything", None),
            TokenScope::Read
        );
        assert_eq!(required_scope(&post, "/plan", None), TokenScope::Read);
        assert_eq!(
            required_scope(&post, "/reload", Some("dry_run=true")),
            TokenScope::Read
        );
        assert_eq!(
            required_scope(&post, "/reload", Some("dry_run=false")),
            TokenScope::Operate
        );
        assert_eq!(
            required_scope(&post, "/debug/reconcile", None),
            TokenScope::Operate
        );
        assert_eq!(required_scope(&post, "/unknown", None), TokenScope::Admin);
        for action in ["trigger", "suspend", "resume"] {
            let path = format!("/cronjobs/backup/{action}");
            assert_eq!(required_scope(&post, &path, None), TokenScope::Operate);
        }
        assert_eq!(
            required_scope(&Method::GET, "/cronjobs/backup/history", None),
            TokenScope::Read
        );
        assert_eq!(
            required_scope(&post, "/cronjobs/a/b/trigger", None),
            TokenScope::Admin
        );
    }
}
