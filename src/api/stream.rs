//! The streaming endpoints (server-sent events): `GET /events` and `GET /logs?follow=true`.
//!
//! Both end when the client goes away (axum drops the stream, which drops the subscription),
//! and when the daemon begins to stop: a dashboard or `provisr logs -f` left open must not hold
//! up its shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{broadcast, watch};

use crate::logs::{FollowEvent, InstanceLog, Stream as LogStream};
use crate::supervisor::Event;

/// Every state transition as it happens, one JSON object per SSE event. A subscriber that falls
/// more than the channel's capacity behind gets an `event: lagged` with the number it missed.
pub fn events(rx: broadcast::Receiver<Event>, closing: watch::Receiver<bool>) -> Response {
    let s = stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(e) => SseEvent::default()
                .event("transition")
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(ev), rx))
    });
    sse(subscribed().chain(s), closing)
}

/// An opening comment. hyper sends a streamed response's head together with its first body
/// bytes: without this, a client would see nothing (not even `200 OK`) until the first event,
/// and could not tell when it is subscribed. The subscription exists before the stream is
/// polled, so every event after this comment reaches the client.
fn subscribed() -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::once(std::future::ready(Ok(
        SseEvent::default().comment("subscribed")
    )))
}

/// The last `tail` lines of an instance's stream, then every new line as it is written, across
/// restarts and rotations; `event: skipped` says how many bytes a slow client missed.
pub fn follow_log(
    log: &InstanceLog,
    stream: LogStream,
    tail: usize,
    closing: watch::Receiver<bool>,
) -> Response {
    let (backlog, follow) = log.follow(stream, tail);
    let first = if backlog.is_empty() {
        subscribed().left_stream()
    } else {
        stream::once(std::future::ready(Ok(lines_event(&backlog)))).right_stream()
    };
    // One event per batch of lines (a multi-line `data`): a fast writer produces thousands of
    // lines between wakeups, and an event each would cost a frame and a client write each.
    let rest = stream::unfold(follow, |mut follow| async move {
        let event = match follow.next().await? {
            FollowEvent::Lines(lines) => lines_event(&lines),
            FollowEvent::Skipped { bytes } => {
                SseEvent::default().event("skipped").data(bytes.to_string())
            }
        };
        Some((Ok::<_, Infallible>(event), follow))
    });
    sse(first.chain(rest), closing)
}

/// Output lines as one SSE event, a `data:` field each. SSE cannot carry a carriage return, so a
/// line with one (a progress bar redrawing itself) shows what a terminal would: the text after
/// the last `\r`.
fn lines_event(lines: &[String]) -> SseEvent {
    let mut data = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            data.push('\n');
        }
        let shown = line.trim_end_matches('\r');
        data.push_str(shown.rsplit('\r').next().unwrap_or(shown));
    }
    SseEvent::default().data(data)
}

fn sse<S>(s: S, mut closing: watch::Receiver<bool>) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    // A dropped sender (a daemon torn down without saying so) ends the stream too.
    let s = s.take_until(async move {
        let _ = closing.wait_for(|c| *c).await;
    });
    // A comment every 30 s notices clients that went away and keeps proxies from timing out.
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(30)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use http_body_util::BodyExt;

    use super::*;
    use crate::config::LogPaths;
    use crate::logs::Rotation;
    use crate::supervisor::InstanceState;

    async fn next_text(body: &mut axum::body::Body) -> String {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a frame within 5 s")
            .expect("the stream has not ended")
            .expect("no body error");
        String::from_utf8(frame.into_data().expect("a data frame").to_vec()).unwrap()
    }

    #[tokio::test]
    async fn events_open_with_a_comment_then_carry_transitions() {
        let (tx, rx) = broadcast::channel(8);
        let (_closing, closed) = watch::channel(false);
        let mut body = events(rx, closed).into_body();
        // Sent before any transition: the response head goes out with it.
        assert_eq!(next_text(&mut body).await, ": subscribed\n\n");
        tx.send(Event {
            time: SystemTime::UNIX_EPOCH,
            name: "web".into(),
            program: "web".into(),
            from: InstanceState::Starting,
            to: InstanceState::Running,
            reason: "started".into(),
            exit: None,
            restart: false,
            healthy: None,
            spawn: false,
        })
        .unwrap();
        let text = next_text(&mut body).await;
        assert!(text.starts_with("event: transition\ndata: {"), "{text}");
        assert!(text.contains("\"to\":\"running\""), "{text}");
    }

    /// A log with no files and nothing written yet.
    fn quiet_log() -> InstanceLog {
        InstanceLog::with_rotation(
            "quiet",
            LogPaths {
                stdout: None,
                stderr: None,
            },
            Rotation::default(),
        )
    }

    #[tokio::test]
    async fn following_an_empty_log_opens_with_a_comment() {
        let log = quiet_log();
        let (_closing, closed) = watch::channel(false);
        let mut body = follow_log(&log, LogStream::Stdout, 10, closed).into_body();
        assert_eq!(next_text(&mut body).await, ": subscribed\n\n");
    }

    #[tokio::test]
    async fn streams_end_when_the_daemon_begins_to_stop() {
        let (_tx, rx) = broadcast::channel::<Event>(8);
        let (closing, closed) = watch::channel(false);
        let mut events_body = events(rx, closed.clone()).into_body();
        assert_eq!(next_text(&mut events_body).await, ": subscribed\n\n");
        let log = quiet_log();
        let mut log_body = follow_log(&log, LogStream::Stdout, 10, closed).into_body();
        assert_eq!(next_text(&mut log_body).await, ": subscribed\n\n");
        closing.send_replace(true);
        for body in [&mut events_body, &mut log_body] {
            let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the stream ends within 5 s");
            assert!(end.is_none(), "the stream ended");
        }
    }
}
