//! The HTTP client of the daemon's API, used by the CLI and by `provisr-bench`.
//!
//! Blocking on purpose: a CLI command makes one or two requests and exits, so it needs no runtime.
//! It talks TCP to a URL, or HTTP over the daemon's unix socket ([`ApiClient::over_socket`]).
//! Over TCP, requests of one client (and its clones) reuse a kept-alive connection; server-sent
//! events come as an [`EventStream`] (`sse.rs`).

mod sse;
mod unix;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sse::{EventStream, SseEvent, StreamCloser};

use serde::Serialize;
use serde_json::Value;

/// Why a request did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL: the daemon is not running or listens elsewhere.
    #[error("cannot reach the provisr daemon at {url}: {reason}; is `provisr serve` running? (set --api-url or PROVISR_API_URL)")]
    Unreachable { url: String, reason: String },
    /// The daemon answered with an error status and sentence.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// The daemon answered something that is not the JSON it should send.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

/// A client for one daemon.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    // The unix socket requests go over, when not TCP.
    socket: Option<PathBuf>,
    token: Option<String>,
    agent: ureq::Agent,
    // What an https daemon's certificate is checked against (streams open agents of their own).
    roots: ureq::tls::RootCerts,
}

/// An agent for TCP (and https, checked against `roots`). Its pool keeps connections alive
/// between requests.
fn tcp_agent(roots: ureq::tls::RootCerts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// An agent for the unix socket at `path`. It keeps no idle connection: see `unix.rs`.
fn unix_agent(path: &Path) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build();
    let connector = unix::UnixConnector {
        path: path.to_path_buf(),
    };
    ureq::Agent::with_parts(
        config,
        connector,
        ureq::unversioned::resolver::DefaultResolver::default(),
    )
}

impl ApiClient {
    /// `base` is the API base URL, e.g. `http://127.0.0.1:8080/api`; an `https` URL is checked
    /// against the public (Mozilla) roots.
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        Self::with_roots(base, token, ureq::tls::RootCerts::WebPki)
    }

    /// As [`ApiClient::new`], trusting only the certificates of the PEM file `ca` for `https`
    /// (a private CA, or a daemon's self-signed certificate).
    pub fn trusting(
        base: &str,
        token: Option<String>,
        ca: &std::path::Path,
    ) -> Result<ApiClient, ClientError> {
        let unusable = |reason: String| ClientError::Protocol {
            url: base.to_string(),
            reason: format!("cannot use the CA file {}: {reason}", ca.display()),
        };
        let pem = std::fs::read(ca).map_err(|e| unusable(e.to_string()))?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| unusable(e.to_string()))?;
        if certs.is_empty() {
            return Err(unusable("it holds no CERTIFICATE".into()));
        }
        Ok(Self::with_roots(
            base,
            token,
            ureq::tls::RootCerts::new_with_certs(&certs),
        ))
    }

    fn with_roots(base: &str, token: Option<String>, roots: ureq::tls::RootCerts) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            socket: None,
            token,
            agent: tcp_agent(roots.clone()),
            roots,
        }
    }

    /// A client for the daemon's unix socket at `socket`, whose API lives under `base_path`
    /// (e.g. `/api`).
    pub fn over_socket(socket: &Path, base_path: &str, token: Option<String>) -> ApiClient {
        let agent = unix_agent(socket);
        let base_path = base_path.trim().trim_matches('/');
        let base = if base_path.is_empty() {
            "http://localhost".to_string()
        } else {
            format!("http://localhost/{base_path}")
        };
        ApiClient {
            base,
            socket: Some(socket.to_path_buf()),
            token,
            agent,
            roots: ureq::tls::RootCerts::WebPki,
        }
    }

    /// Where this client sends requests, as messages name it: the base URL, or the socket.
    pub fn location(&self) -> String {
        match &self.socket {
            Some(p) => format!("unix:{}", p.display()),
            None => self.base.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request's URL as messages show it, with the socket it went over.
    fn shown(&self, url: &str) -> String {
        match &self.socket {
            Some(p) => format!("{url} (over the unix socket {})", p.display()),
            None => url.to_string(),
        }
    }

    /// `GET path?query`, decoded as JSON.
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let url = self.url(path);
        let body = self.get_body(&url, query)?;
        self.json(&url, &body)
    }

    /// `GET path?query`, the body as text: a page that is not JSON (`/metrics`), or JSON the
    /// caller does not need decoded.
    pub fn get_text(&self, path: &str, query: &[(&str, String)]) -> Result<String, ClientError> {
        self.get_body(&self.url(path), query)
    }

    fn get_body(&self, url: &str, query: &[(&str, String)]) -> Result<String, ClientError> {
        let mut req = self.agent.get(url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.body(url, req.call())
    }

    /// `POST path?query` with an optional JSON body, decoded as JSON.
    pub fn post<B: Serialize>(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Value, ClientError> {
        let url = self.url(path);
        let mut req = self.agent.post(&url);
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
        let body = self.body(&url, result)?;
        self.json(&url, &body)
    }

    /// Opens a server-sent-events stream and calls `on_event(kind, data)` for each event (`kind`
    /// is `message` unless the event names one) until the stream ends or `on_event` returns false.
    pub fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        for event in self.open_stream(path, query)? {
            let event = event?;
            if !on_event(&event.kind, &event.data) {
                break;
            }
        }
        Ok(())
    }

    /// Opens a server-sent-events stream. It returns once the response head has arrived (the
    /// daemon's streams are subscribed by then), and the stream yields the events from there.
    /// The stream has a connection of its own, which [`EventStream::closer`] can close from
    /// another thread.
    pub fn open_stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<EventStream, ClientError> {
        let url = self.url(path);
        // An agent of its own: closing the stream shuts down its agent, and with it only this
        // connection.
        let agent = match &self.socket {
            Some(p) => unix_agent(p),
            None => tcp_agent(self.roots.clone()),
        };
        let mut req = agent.get(&url).header("Accept", "text/event-stream");
        for (k, v) in query {
            req = req.query(k, v);
        }
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| unreachable(&self.shown(&url), e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(EventStream::new(self.shown(&url), agent, resp.into_body()))
    }

    /// A response's body as text when its status is 2xx, else the daemon's error.
    fn body(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, ClientError> {
        let url = &self.shown(url);
        let mut resp = result.map_err(|e| unreachable(url, e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| ClientError::Protocol {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &body));
        }
        Ok(body)
    }

    fn json(&self, url: &str, body: &str) -> Result<Value, ClientError> {
        serde_json::from_str(body).map_err(|e| ClientError::Protocol {
            url: self.shown(url),
            reason: format!("the body is not JSON ({e})"),
        })
    }
}

fn unreachable(url: &str, e: ureq::Error) -> ClientError {
    ClientError::Unreachable {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

/// The daemon's `{"error": "..."}` sentence, or the raw body when it is not that shape.
fn api_error(status: u16, body: &str) -> ClientError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| format!("the daemon answered {status}: {}", body.trim()));
    ClientError::Api { status, message }
}

#[cfg(test)]
mod tests;
