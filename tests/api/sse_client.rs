//! A small server-sent events reader over reqwest's `bytes_stream`, as a real client would
//! read the streaming routes: messages split on blank lines, `id:`, `data:` and comments.

use crate::helpers::TestApp;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// How long one message may take before the test fails (a stream that hangs is a bug).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// One message of the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub id: Option<u64>,
    /// The `data:` lines joined with newlines; None for a comment-only block.
    pub data: Option<String>,
    pub comments: Vec<String>,
}

impl Message {
    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("no data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data:?}"))
    }
}

pub struct SseStream {
    pub status: StatusCode,
    pub content_type: String,
    body: BoxStream<'static, reqwest::Result<actix_web::web::Bytes>>,
    buf: Vec<u8>,
}

impl SseStream {
    /// GET `path` with the app's key and `Accept: text/event-stream` plus `headers`.
    pub async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> SseStream {
        Self::get_as(app, Some(&app.key), path, headers).await
    }

    pub async fn get_as(
        app: &TestApp,
        key: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> SseStream {
        Self::open(&app.url(path), key, headers).await
    }

    /// GET `url` with `Accept: text/event-stream`, the key if any, and `headers`.
    pub async fn open(url: &str, key: Option<&str>, headers: &[(&str, &str)]) -> SseStream {
        // No whole-request timeout: a stream lasts as long as its job.
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = tokio::time::timeout(MESSAGE_TIMEOUT, req.send())
            .await
            .expect("the stream is answered in time")
            .expect("the stream is answered");
        SseStream {
            status: r.status(),
            content_type: r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: r.bytes_stream().boxed(),
            buf: Vec::new(),
        }
    }

    /// The next message (comments included), or None when the server ended the stream.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(parse(&String::from_utf8(block).expect("UTF-8")));
            }
            let chunk = tokio::time::timeout(MESSAGE_TIMEOUT, self.body.next())
                .await
                .expect("a message (or the end) within the timeout");
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(e)) => panic!("the stream broke: {e}"),
                None => {
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "the stream ended inside a message: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }

    /// The next message with data (heartbeat comments skipped), or None at the end.
    pub async fn next_data(&mut self) -> Option<Message> {
        loop {
            let m = self.next().await?;
            if m.data.is_some() {
                return Some(m);
            }
        }
    }

    /// Every remaining data message, until the server ends the stream.
    pub async fn rest(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.next_data().await {
            out.push(m);
        }
        out
    }
}

fn parse(block: &str) -> Message {
    let mut m = Message::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            m.comments.push(c.trim().to_owned());
        } else if let Some(id) = line.strip_prefix("id:") {
            m.id = Some(id.trim().parse().expect("a numeric id"));
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        } else if !line.is_empty() {
            panic!("unexpected line {line:?} in {block:?}");
        }
    }
    if !data.is_empty() {
        m.data = Some(data.join("\n"));
    }
    m
}
