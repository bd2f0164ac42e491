//! The client against a real axum server on 127.0.0.1 and on a unix socket: kept-alive
//! connections, text bodies, and event streams closed from another thread.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use tokio::sync::broadcast;

use super::*;

/// What the test server's `/events` sends: the kind (`None` for a plain message) and the data.
type Sent = (Option<&'static str>, &'static str);

/// A server on its own runtime; dropping the runtime ends it and every connection.
struct Server {
    events: broadcast::Sender<Sent>,
    _rt: tokio::runtime::Runtime,
}

fn router(events: broadcast::Sender<Sent>) -> Router {
    Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { Json(peer.port()) }),
        )
        .route("/text", get(|| async { "# a text page\nx 1\n" }))
        .route(
            "/missing",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(serde_json::json!({"error": "no program named \"web\""})),
                )
            }),
        )
        .route("/events", get(events_page))
        .with_state(events)
}

/// Opens with a comment, as the daemon does, so that the head goes out before any event.
async fn events_page(State(tx): State<broadcast::Sender<Sent>>) -> impl IntoResponse {
    let rx = tx.subscribe();
    let opening = stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().comment("subscribed"))
    });
    let rest = stream::unfold(rx, |mut rx| async move {
        let (kind, data) = rx.recv().await.ok()?;
        let event = match kind {
            Some(k) => Event::default().event(k).data(data),
            None => Event::default().data(data),
        };
        Some((Ok(event), rx))
    });
    Sse::new(opening.chain(rest))
}

impl Server {
    fn tcp() -> (Server, String) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (events, _) = broadcast::channel(16);
        let app = router(events.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        rt.spawn(async move { axum::serve(listener, app).await });
        (Server { events, _rt: rt }, url)
    }

    fn unix(path: &Path) -> Server {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (events, _) = broadcast::channel(16);
        let app = router(events.clone());
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(path) })
            .unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Server { events, _rt: rt }
    }

    fn send(&self, kind: Option<&'static str>, data: &'static str) {
        self.events.send((kind, data)).unwrap();
    }
}

#[test]
fn requests_of_a_client_reuse_one_kept_alive_connection() {
    let (_server, url) = Server::tcp();
    let client = ApiClient::new(&url, None);
    let first = client.get("/peer", &[]).unwrap();
    let again = client.get_text("/peer", &[]).unwrap();
    let clone = client.clone().get("/peer", &[]).unwrap();
    assert_eq!(again, first.to_string());
    assert_eq!(clone, first);
    // Another client has a pool of its own, so a connection of its own.
    let other = ApiClient::new(&url, None).get("/peer", &[]).unwrap();
    assert_ne!(other, first);
}

#[test]
fn text_pages_come_as_they_are_and_errors_carry_the_daemons_sentence() {
    let (_server, url) = Server::tcp();
    let client = ApiClient::new(&url, None);
    assert_eq!(
        client.get_text("/text", &[]).unwrap(),
        "# a text page\nx 1\n"
    );
    assert!(matches!(
        client.get("/text", &[]),
        Err(ClientError::Protocol { reason, .. }) if reason.contains("not JSON")
    ));
    match client.get_text("/missing", &[]) {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 404);
            assert_eq!(message, "no program named \"web\"");
        }
        other => panic!("expected the daemon's error, got {other:?}"),
    }
}

/// Reads `stream` on another thread, passing on each item and then `None` at its end.
fn read_on_a_thread(stream: EventStream) -> mpsc::Receiver<Option<Result<SseEvent, String>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for item in stream {
            let _ = tx.send(Some(item.map_err(|e| e.to_string())));
        }
        let _ = tx.send(None);
    });
    rx
}

fn next(rx: &mpsc::Receiver<Option<Result<SseEvent, String>>>) -> Option<Result<SseEvent, String>> {
    // A bound on a failure only: every item is sent before this waits for it, or by a close.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the stream's reader said nothing within 10 s")
}

fn event(kind: &str, data: &str) -> Option<Result<SseEvent, String>> {
    Some(Ok(SseEvent {
        kind: kind.into(),
        data: data.into(),
    }))
}

/// Events in order, then a close from this thread while the reader is blocked on the socket.
fn stream_then_close(server: &Server, client: &ApiClient) {
    // Returns once subscribed: what is sent from here on arrives.
    let stream = client.open_stream("/events", &[]).unwrap();
    let closer = stream.closer();
    let rx = read_on_a_thread(stream);
    server.send(Some("transition"), "{\"name\":\"web\"}");
    server.send(None, "two\nlines");
    server.send(Some("lagged"), "3");
    assert_eq!(next(&rx), event("transition", "{\"name\":\"web\"}"));
    assert_eq!(next(&rx), event("message", "two\nlines"));
    assert_eq!(next(&rx), event("lagged", "3"));
    closer.close();
    assert_eq!(next(&rx), None, "a closed stream ends without an error");
}

#[test]
fn an_event_stream_yields_events_and_a_closer_ends_it_from_another_thread() {
    let (server, url) = Server::tcp();
    let client = ApiClient::new(&url, None);
    stream_then_close(&server, &client);
    // The closed stream had an agent of its own: the client's requests still work.
    client.get("/peer", &[]).unwrap();
}

#[test]
fn an_event_stream_over_the_unix_socket_closes_too() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = Server::unix(&socket);
    let client = ApiClient::over_socket(&socket, "/", None);
    stream_then_close(&server, &client);
    assert_eq!(
        client.get_text("/text", &[]).unwrap(),
        "# a text page\nx 1\n"
    );
}

#[test]
fn a_stream_the_server_refuses_is_the_daemons_error() {
    let (_server, url) = Server::tcp();
    match ApiClient::new(&url, None).open_stream("/missing", &[]) {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(
                (status, message.as_str()),
                (404, "no program named \"web\"")
            );
        }
        Err(e) => panic!("expected the daemon's error, got {e}"),
        Ok(_) => panic!("expected the daemon's error, got a stream"),
    }
}
