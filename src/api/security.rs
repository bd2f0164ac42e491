//! The API's security defaults (SPEC §10): loopback unless a token is set, bearer tokens compared
//! in constant time, Host and Origin checks against DNS rebinding and browser CSRF.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

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

/// What the request guard checks.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// When set, every endpoint but `/health` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
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

    /// Checks one request's headers; `Ok` lets it through.
    pub fn check(&self, path: &str, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
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
        if let Some(token) = &self.token {
            if path.ends_with("/health") {
                return Ok(());
            }
            let given = header_str(header::AUTHORIZATION)
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match given {
                None => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "this daemon requires a token: send Authorization: Bearer <token> (provisr --token or PROVISR_TOKEN)",
                    ))
                }
                Some(g) if !constant_time_eq(g.as_bytes(), token.as_bytes()) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "the bearer token is wrong",
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// axum middleware applying [`Guard::check`] to every request.
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.check(req.uri().path(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
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
        assert!(matches!(
            check_listen(any, false),
            Err(ListenError::NonLoopbackWithoutToken(_))
        ));
        assert!(check_listen(any, true).is_ok());
        assert!(check_listen(parse_listen(":1").unwrap(), false).is_ok());
    }

    #[test]
    fn host_and_origin_checks() {
        let g = Guard::default();
        for ok in ["127.0.0.1:8080", "localhost", "localhost:1", "[::1]:8080"] {
            assert!(
                g.check("/api/status", &headers(&[("host", ok)])).is_ok(),
                "{ok}"
            );
        }
        let e = g
            .check("/api/status", &headers(&[("host", "evil.example:8080")]))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let e = g
            .check(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://evil.example")]),
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(g
            .check(
                "/api/status",
                &headers(&[("host", "127.0.0.1"), ("origin", "http://localhost:8080")])
            )
            .is_ok());
        let named = Guard {
            allowed_hosts: vec!["box.lan".into()],
            ..Guard::default()
        };
        assert!(named
            .check("/x", &headers(&[("host", "box.lan:8080")]))
            .is_ok());
    }

    #[test]
    fn bearer_tokens() {
        let g = Guard {
            token: Some("s3cret".into()),
            ..Guard::default()
        };
        let none = g.check("/api/status", &headers(&[])).unwrap_err();
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        let wrong = g
            .check("/api/status", &headers(&[("authorization", "Bearer nope")]))
            .unwrap_err();
        assert_eq!(wrong.status, StatusCode::FORBIDDEN);
        assert!(g
            .check(
                "/api/status",
                &headers(&[("authorization", "Bearer s3cret")])
            )
            .is_ok());
        assert!(g.check("/api/health", &headers(&[])).is_ok());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
