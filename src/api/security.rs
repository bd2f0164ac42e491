//! Who may use the API (`docs/security.md`): every connection is attributed to a local user or
//! nobody ([`Caller`]); root, the daemon's own user and `[server] allow_users`/`allow_groups` may
//! use it, anyone else only with the bearer token (compared in constant time). Host and Origin
//! checks keep browsers out (DNS rebinding, CSRF), and a non-loopback listen needs a token.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::peer::Caller;

/// Why a listen address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    #[error(
        "cannot parse the listen address {0:?}; write HOST:PORT (e.g. 127.0.0.1:8080) or :PORT"
    )]
    Invalid(String),
    #[error("refusing to listen on {0}, a non-loopback address, without a token: anyone who can reach it could run commands as this user; set [server] token or token_file, or listen on 127.0.0.1")]
    NonLoopbackWithoutToken(SocketAddr),
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

/// Refuses a non-loopback address unless a token protects the API.
pub fn check_listen(addr: SocketAddr, has_token: bool) -> Result<(), ListenError> {
    if addr.ip().is_loopback() || has_token {
        Ok(())
    } else {
        Err(ListenError::NonLoopbackWithoutToken(addr))
    }
}

/// Who may use the API (`docs/security.md`): replaced whole when the config is reloaded.
#[derive(Debug)]
pub struct AccessPolicy {
    /// When set, a request with `Authorization: Bearer <token>` is let in from anywhere.
    pub token: Option<String>,
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
        token: Option<String>,
        allow_users: Vec<u32>,
        allow_groups: Vec<u32>,
        config_file: Option<std::path::PathBuf>,
    ) -> AccessPolicy {
        AccessPolicy {
            token,
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
    /// a remote one); `Ok` lets it through.
    pub fn check(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        caller: Option<&Caller>,
    ) -> Result<(), ApiError> {
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
        if path.ends_with("/health") || is_ui_asset(path) {
            return Ok(());
        }
        let policy = self.access.current();
        let bearer = header_str(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // A token, when the daemon has one, lets in any caller; a wrong one is refused even
        // from a user who would be allowed, so a stale token is noticed.
        if let (Some(token), Some(given)) = (&policy.token, bearer) {
            return if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the bearer token is wrong; check --token, PROVISR_TOKEN or [server] token_file",
                ))
            };
        }
        match caller {
            Some(Caller::Local { uid, via }) => {
                if policy.allows_uid(*uid) {
                    Ok(())
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
                if policy.token.is_some() {
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
/// connection was given when accepted ([`Caller`]).
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let caller = req.extensions().get::<ConnectInfo<Caller>>().map(|c| &c.0);
    match guard.check(req.uri().path(), req.headers(), caller) {
        Ok(()) => next.run(req).await,
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

    fn guard(token: Option<&str>, users: Vec<u32>, groups: Vec<u32>) -> Guard {
        Guard {
            access: Access::new(AccessPolicy::new(
                token.map(str::to_string),
                users,
                groups,
                None,
            )),
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
        assert!(matches!(
            check_listen(any, false),
            Err(ListenError::NonLoopbackWithoutToken(_))
        ));
        assert!(check_listen(any, true).is_ok());
        assert!(check_listen(parse_listen(":1").unwrap(), false).is_ok());
    }

    #[test]
    fn host_and_origin_checks() {
        let g = guard(None, vec![], vec![]);
        let root = Some(local(0));
        for ok in ["127.0.0.1:8080", "localhost", "localhost:1", "[::1]:8080"] {
            assert!(
                g.check("/api/status", &headers(&[("host", ok)]), root.as_ref())
                    .is_ok(),
                "{ok}"
            );
        }
        let e = g
            .check(
                "/api/status",
                &headers(&[("host", "evil.example:8080")]),
                root.as_ref(),
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = g
            .check(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]),
                root.as_ref(),
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(g
            .check(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://localhost:8080")]),
                root.as_ref(),
            )
            .is_ok());
        let mut named = guard(None, vec![], vec![]);
        named.allowed_hosts = vec!["box.lan".into()];
        assert!(named
            .check("/x", &headers(&[("host", "box.lan:8080")]), root.as_ref())
            .is_ok());
    }

    #[test]
    fn local_users_by_uid() {
        let g = guard(None, vec![], vec![]);
        let h = headers(&[]);
        assert!(g.check("/api/status", &h, Some(&local(0))).is_ok());
        let me = nix::unistd::geteuid().as_raw();
        assert!(g.check("/api/status", &h, Some(&local(me))).is_ok());
        let refused = g
            .check("/api/register", &h, Some(&local(NOBODY)))
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            refused.message.contains("nobody (uid 65534)")
                && refused.message.contains("allow_users"),
            "{}",
            refused.message
        );
        // `/health` is open to everyone, and nothing else is.
        assert!(g.check("/api/health", &h, Some(&local(NOBODY))).is_ok());
        for path in ["/api/logs", "/api/events", "/metrics", "/api/status"] {
            assert!(g.check(path, &h, Some(&local(NOBODY))).is_err(), "{path}");
        }
        let by_user = guard(None, vec![NOBODY], vec![]);
        assert!(by_user
            .check("/api/status", &h, Some(&local(NOBODY)))
            .is_ok());
        // nobody's primary group is nogroup (65534) on Debian.
        let by_group = guard(
            None,
            vec![],
            vec![crate::accounts::gid_of("nogroup").unwrap()],
        );
        assert!(by_group
            .check("/api/status", &h, Some(&local(NOBODY)))
            .is_ok());
        assert!(by_group
            .check("/api/status", &h, Some(&local(4242)))
            .is_err());
    }

    #[test]
    fn only_the_exact_dashboard_assets_are_open() {
        let g = guard(Some("s3cret"), vec![], vec![]);
        let h = headers(&[("host", "127.0.0.1:8080")]);
        for caller in [remote(), local(NOBODY)] {
            for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
                assert!(g.check(path, &h, Some(&caller)).is_ok(), "{path}");
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
                assert!(g.check(path, &h, Some(&caller)).is_err(), "{path}");
            }
        }
        // Host and Origin are still checked on the assets.
        let rebound = headers(&[("host", "evil.example:8080")]);
        let e = g.check("/ui", &rebound, Some(&local(0))).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let framed = headers(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]);
        assert!(g.check("/ui/app.js", &framed, Some(&remote())).is_err());
    }

    #[test]
    fn a_reload_replaces_the_policy_on_open_connections() {
        let g = guard(None, vec![NOBODY], vec![]);
        let h = headers(&[]);
        assert!(g.check("/api/status", &h, Some(&local(NOBODY))).is_ok());
        g.access
            .replace(AccessPolicy::new(None, vec![], vec![], None));
        assert!(g.check("/api/status", &h, Some(&local(NOBODY))).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let g = guard(Some("s3cret"), vec![], vec![]);
        let none = g
            .check("/api/status", &headers(&[]), Some(&remote()))
            .unwrap_err();
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        let wrong = g
            .check(
                "/api/status",
                &headers(&[("authorization", "Bearer nope")]),
                Some(&local(0)),
            )
            .unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let right = headers(&[("authorization", "Bearer s3cret")]);
        for caller in [remote(), local(NOBODY), local(0)] {
            assert!(g.check("/api/status", &right, Some(&caller)).is_ok());
        }
        assert!(g.check("/api/status", &right, None).is_ok());
        assert!(g
            .check("/api/health", &headers(&[]), Some(&remote()))
            .is_ok());
        // A local user needs no token.
        assert!(g
            .check("/api/status", &headers(&[]), Some(&local(0)))
            .is_ok());
        // Without a configured token, a caller nobody can name is refused, and a stray
        // bearer header changes nothing.
        let open = guard(None, vec![], vec![]);
        let e = open
            .check("/api/status", &right, Some(&remote()))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(open.check("/api/status", &headers(&[]), None).is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
