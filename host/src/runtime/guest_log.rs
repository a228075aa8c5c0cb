//! A component's stdout and stderr, sent to the host's log instead of the
//! host's own streams: each line becomes one log event tagged with the
//! component and the stream, cut at [`MAX_LINE`] bytes so a guest cannot
//! flood the log with one endless line. (pulse's own stdout carries the
//! probe lines, so guests never write there.)

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The longest guest log line kept; the rest of the line is dropped and the
/// event says how much.
pub const MAX_LINE: usize = 4096;

/// Which of the guest's streams.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The span a store's guest output is logged in: its request or probe run.
/// Shared with the store, which sets it anew for each request a reused
/// instance is given.
#[derive(Clone, Debug)]
pub struct SharedSpan(Arc<Mutex<tracing::Span>>);

impl SharedSpan {
    /// Shares `span`.
    pub fn new(span: tracing::Span) -> Self {
        Self(Arc::new(Mutex::new(span)))
    }

    /// Logs from now on in `span`.
    pub fn set(&self, span: tracing::Span) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = span;
    }

    #[cfg(test)]
    fn none() -> Self {
        Self::new(tracing::Span::none())
    }

    fn get(&self) -> tracing::Span {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A guest output stream that turns lines into log events.
#[derive(Clone)]
pub struct GuestLog {
    component: Arc<str>,
    stream: Stream,
    span: SharedSpan,
}

impl GuestLog {
    /// The `stream` of `component`; its lines are logged in `span`, which
    /// names the request or probe run. (The writes happen in a task of
    /// their own, so the span is carried here rather than entered.)
    pub fn new(component: Arc<str>, stream: Stream, span: SharedSpan) -> Self {
        Self {
            component,
            stream,
            span,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
            dropped: 0,
        })
    }
}

struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
    /// Bytes of the current line past [`MAX_LINE`], not kept.
    dropped: usize,
}

impl LineWriter {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (part, newline) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            let room = MAX_LINE - self.line.len();
            let kept = part.len().min(room);
            self.line.extend_from_slice(&part[..kept]);
            self.dropped += part.len() - kept;
            if newline {
                self.emit();
                bytes = &bytes[part.len() + 1..];
            } else {
                bytes = &[];
            }
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        let (component, stream) = (&*self.log.component, self.log.stream.name());
        let truncated_bytes = (self.dropped > 0).then_some(self.dropped);
        let span = self.log.span.get();
        let _in_span = span.enter();
        tracing::info!(
            event = "guest_output",
            component,
            stream,
            line = text,
            truncated_bytes,
            "guest output"
        );
        self.line.clear();
        self.dropped = 0;
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit();
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> LineWriter {
        LineWriter {
            log: GuestLog::new("test".into(), Stream::Stdout, SharedSpan::none()),
            line: Vec::new(),
            dropped: 0,
        }
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_counted() {
        let mut w = writer();
        w.push(&vec![b'y'; MAX_LINE + 10]);
        assert_eq!(w.line.len(), MAX_LINE);
        assert_eq!(w.dropped, 10);
        w.push(b"\nnext");
        assert_eq!(w.line, b"next");
        assert_eq!(w.dropped, 0);
    }

    #[test]
    fn lines_split_across_writes_are_joined() {
        let mut w = writer();
        w.push(b"hel");
        w.push(b"lo\nwor");
        assert_eq!(w.line, b"wor");
    }
}
