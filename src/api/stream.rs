//! The streaming endpoints (server-sent events): `GET /events` and `GET /logs?follow=true`.
//!
//! Both end when the client goes away: axum drops the stream, which drops the subscription.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast;

use crate::logs::{FollowEvent, InstanceLog, Stream as LogStream};
use crate::supervisor::Event;

/// Every state transition as it happens, one JSON object per SSE event. A subscriber that falls
/// more than the channel's capacity behind gets an `event: lagged` with the number it missed.
pub fn events(rx: broadcast::Receiver<Event>) -> Response {
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
    sse(s)
}

/// The last `tail` lines of an instance's stream, then every new line as it is written, across
/// restarts and rotations; `event: skipped` says how many bytes a slow client missed.
pub fn follow_log(log: &InstanceLog, stream: LogStream, tail: usize) -> Response {
    let (backlog, follow) = log.follow(stream, tail);
    let first = stream::iter(
        backlog
            .into_iter()
            .map(|line| Ok::<_, Infallible>(line_event(&line))),
    );
    let rest = stream::unfold(follow, |mut follow| async move {
        let batch: Vec<SseEvent> = match follow.next().await? {
            FollowEvent::Lines(lines) => lines.into_iter().map(|l| line_event(&l)).collect(),
            FollowEvent::Skipped { bytes } => {
                vec![SseEvent::default().event("skipped").data(bytes.to_string())]
            }
        };
        Some((
            stream::iter(batch.into_iter().map(Ok::<_, Infallible>)),
            follow,
        ))
    });
    sse(first.chain(rest.flatten()))
}

/// One output line as an SSE event. SSE cannot carry a carriage return, so a line with one (a
/// progress bar redrawing itself) shows what the terminal would: the text after the last `\r`.
fn line_event(line: &str) -> SseEvent {
    let shown = line.trim_end_matches('\r');
    let shown = shown.rsplit('\r').next().unwrap_or(shown);
    SseEvent::default().data(shown)
}

fn sse<S>(s: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    // A comment every 30 s notices clients that went away and keeps proxies from timing out.
    Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(30)))
        .into_response()
}
