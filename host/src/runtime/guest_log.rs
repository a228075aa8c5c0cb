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

use crate::runtime::scope::Scope;

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

/// What a store's guest output shares between the stream handles the guest
/// opens: the request or probe run its lines belong to (set anew for each
/// request a reused instance is given), and the line each
/// stream has begun. A line is logged when its newline comes, however many
/// writes and stream handles it took; what is left of a line is logged
/// when the request ends (the next request begins, or the store goes).
#[derive(Clone, Debug)]
pub struct SharedOutput(Arc<Mutex<Output>>);

#[derive(Debug)]
struct Output {
    component: Arc<str>,
    scope: Scope,
    /// The line begun on stdout and on stderr.
    pending: [Pending; 2],
}

/// A line not yet ended.
#[derive(Debug, Default)]
struct Pending {
    line: Vec<u8>,
    /// Bytes of the line past [`MAX_LINE`], not kept.
    dropped: usize,
}

/// A line to log, taken out of the shared state so that it is logged
/// without holding its lock.
struct Line {
    text: Vec<u8>,
    dropped: usize,
    stream: Stream,
}

impl SharedOutput {
    /// The output of `component`, working for `scope`.
    pub fn new(component: Arc<str>, scope: Scope) -> Self {
        Self(Arc::new(Mutex::new(Output {
            component,
            scope,
            pending: Default::default(),
        })))
    }

    /// Ends the lines begun (in the scope they were written in), then logs
    /// from now on for `scope`.
    pub fn set(&self, scope: Scope) {
        let (ended, previous, component) = {
            let mut output = self.lock();
            let ended = output.take_begun();
            let previous = std::mem::replace(&mut output.scope, scope);
            (ended, previous, output.component.clone())
        };
        emit(&component, &previous, ended);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `bytes` written to `stream`, and logs each line they end.
    fn write(&self, stream: Stream, mut bytes: &[u8]) {
        let mut ended = Vec::new();
        let (scope, component) = {
            let mut output = self.lock();
            let pending = &mut output.pending[stream as usize];
            while !bytes.is_empty() {
                let (part, newline) = match bytes.iter().position(|&b| b == b'\n') {
                    Some(i) => (&bytes[..i], true),
                    None => (bytes, false),
                };
                let room = MAX_LINE - pending.line.len();
                let kept = part.len().min(room);
                pending.line.extend_from_slice(&part[..kept]);
                pending.dropped += part.len() - kept;
                if newline {
                    ended.push(Line {
                        text: std::mem::take(&mut pending.line),
                        dropped: std::mem::take(&mut pending.dropped),
                        stream,
                    });
                    bytes = &bytes[part.len() + 1..];
                } else {
                    bytes = &[];
                }
            }
            if ended.is_empty() {
                return;
            }
            (output.scope.clone(), output.component.clone())
        };
        emit(&component, &scope, ended);
    }
}

/// Logs `lines` of `component` for `scope`, outside the shared state's lock.
fn emit(component: &str, scope: &Scope, lines: Vec<Line>) {
    if lines.is_empty() {
        return;
    }
    let _in_span = scope.span.enter();
    for line in lines {
        log_line(component, scope.request_id(), &line);
    }
}

impl Output {
    /// The lines begun and not ended, taken.
    fn take_begun(&mut self) -> Vec<Line> {
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .filter_map(|stream| {
                let pending = std::mem::take(&mut self.pending[stream as usize]);
                (!pending.line.is_empty() || pending.dropped > 0).then_some(Line {
                    text: pending.line,
                    dropped: pending.dropped,
                    stream,
                })
            })
            .collect()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let begun = self.take_begun();
        emit(&self.component, &self.scope, begun);
    }
}

fn log_line(component: &str, request_id: Option<&str>, line: &Line) {
    let text = String::from_utf8_lossy(&line.text);
    let text = text.trim_end_matches('\r');
    let truncated_bytes = (line.dropped > 0).then_some(line.dropped);
    tracing::info!(
        event = "guest_output",
        component,
        request_id,
        stream = line.stream.name(),
        line = text,
        truncated_bytes,
        "guest output"
    );
}

/// A guest output stream that turns lines into log events.
#[derive(Clone)]
pub struct GuestLog {
    stream: Stream,
    output: SharedOutput,
}

impl GuestLog {
    /// The `stream` of the guest whose output is `output`. (The writes
    /// happen in a task of their own, so the scope is carried in `output`
    /// rather than entered.)
    pub fn new(stream: Stream, output: SharedOutput) -> Self {
        Self { stream, output }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.output.write(self.stream, buf);
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

    fn output() -> SharedOutput {
        SharedOutput::new("test".into(), Scope::none())
    }

    fn begun(output: &SharedOutput, stream: Stream) -> (Vec<u8>, usize) {
        let guard = output.lock();
        let pending = &guard.pending[stream as usize];
        (pending.line.clone(), pending.dropped)
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_counted() {
        let out = output();
        out.write(Stream::Stdout, &vec![b'y'; MAX_LINE + 10]);
        assert_eq!(begun(&out, Stream::Stdout).0.len(), MAX_LINE);
        assert_eq!(begun(&out, Stream::Stdout).1, 10);
        out.write(Stream::Stdout, b"\nnext");
        assert_eq!(begun(&out, Stream::Stdout), (b"next".to_vec(), 0));
    }

    #[test]
    fn lines_split_across_writes_are_joined() {
        let out = output();
        out.write(Stream::Stdout, b"hel");
        out.write(Stream::Stdout, b"lo\nwor");
        assert_eq!(begun(&out, Stream::Stdout).0, b"wor");
    }

    #[test]
    fn a_line_outlives_the_stream_handle_that_began_it() {
        let out = output();
        // The guest writes a line in several writes, each through a handle
        // of its own (as wasi:cli's get-stderr gives one per call).
        for part in [&b"start a print "[..], b"1", b"2"] {
            let mut handle =
                Box::into_pin(GuestLog::new(Stream::Stderr, out.clone()).async_stream());
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let written = handle.as_mut().poll_write(&mut cx, part);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == part.len()));
            drop(handle);
        }
        assert_eq!(begun(&out, Stream::Stderr).0, b"start a print 12");
        assert!(begun(&out, Stream::Stdout).0.is_empty(), "streams apart");
        // The next request ends it.
        out.set(Scope::none());
        assert!(begun(&out, Stream::Stderr).0.is_empty());
    }
}
