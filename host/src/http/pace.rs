//! How fast a client must move a body: a request body it sends, or a
//! response body it reads. A slow client holds a concurrency slot, an
//! instance and a connection, so it is cut once it falls behind.
//!
//! Only time pulse spends waiting for the client counts: time the guest
//! spends not reading or not writing never counts against the client. A
//! client is cut when pulse has waited for it
//! - longer than `grace` at a stretch (it stopped reading or sending), or
//! - longer than `grace` plus one second per `min_rate` bytes moved, in all
//!   (it trickles).
//!
//! A client that sends or reads steadily at `min_rate` or faster is never
//! cut, however large the body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The pace a client must keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Time a client may keep pulse waiting before the rate applies.
    pub grace: Duration,
    /// Bytes per second a client must move on average beyond the grace.
    pub min_rate: u64,
}

/// Counts how long one direction of a transfer has waited for the client,
/// against the time its [`Pace`] allows.
pub(crate) struct Meter {
    pace: Pace,
    moved: u64,
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Meter {
    pub(crate) fn new(pace: Pace) -> Self {
        Self {
            pace,
            moved: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The client moved `bytes`: any wait is over.
    pub(crate) fn progressed(&mut self, bytes: usize) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.moved = self.moved.saturating_add(bytes as u64);
    }

    /// The time the client may have kept pulse waiting so far.
    fn allowance(&self) -> Duration {
        let earned = Duration::from_secs_f64(self.moved as f64 / self.pace.min_rate.max(1) as f64);
        self.pace.grace.saturating_add(earned)
    }

    /// pulse is waiting for the client: `Ready` once the client has fallen
    /// behind (then cut it), else `Pending` with a timer armed for the
    /// moment it would.
    pub(crate) fn poll_behind(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let stretch = now.saturating_duration_since(since);
        let by_rate = self.allowance().checked_sub(self.waited + stretch);
        let by_stretch = self.pace.grace.checked_sub(stretch);
        let left = by_rate.zip(by_stretch).map(|(a, b)| a.min(b));
        let Some(left) = left.filter(|d| !d.is_zero()) else {
            return Poll::Ready(());
        };
        let at = now + left;
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(at);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx)
    }
}

/// The error a cut transfer ends with.
pub(crate) fn too_slow() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client moved the body too slowly",
    )
}

/// A connection whose writes are paced: a client that stops reading what
/// pulse sends is cut with [`too_slow`]. Reads pass through: request
/// headers have their own timeout, and request bodies are paced where they
/// are read.
pub(crate) struct PacedIo<T> {
    inner: T,
    writes: Meter,
}

impl<T> PacedIo<T> {
    pub(crate) fn new(inner: T, pace: Pace) -> Self {
        Self {
            inner,
            writes: Meter::new(pace),
        }
    }
}

impl<T> PacedIo<T> {
    fn paced(
        &mut self,
        cx: &mut Context<'_>,
        wrote: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match wrote {
            Poll::Ready(Ok(n)) => {
                self.writes.progressed(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.writes.poll_behind(cx) {
                Poll::Ready(()) => Poll::Ready(Err(too_slow())),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PacedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PacedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let wrote = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.paced(cx, wrote)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let wrote = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.paced(cx, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn pace() -> Pace {
        Pace {
            grace: Duration::from_secs(2),
            min_rate: 100,
        }
    }

    /// How long from now until `meter` says the client is behind.
    async fn until_cut(meter: &mut Meter) -> Duration {
        let started = Instant::now();
        poll_fn(|cx| meter.poll_behind(cx)).await;
        started.elapsed()
    }

    /// Whether `meter` says the client is behind now, without waiting.
    async fn behind_now(meter: &mut Meter) -> bool {
        poll_fn(|cx| Poll::Ready(meter.poll_behind(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_after_the_grace() {
        let mut meter = Meter::new(pace());
        assert_eq!(until_cut(&mut meter).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_moved_never_buy_a_longer_stretch() {
        let mut meter = Meter::new(pace());
        meter.progressed(30_000); // what a socket buffer takes at once
        assert_eq!(until_cut(&mut meter).await, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_is_cut() {
        let mut meter = Meter::new(pace());
        let started = Instant::now();
        // One byte a second: no wait is long, but together they are.
        loop {
            tokio::select! {
                () = poll_fn(|cx| meter.poll_behind(cx)) => break,
                () = tokio::time::sleep(Duration::from_secs(1)) => meter.progressed(1),
            }
        }
        // 2 s of grace and 10 ms for each of the 2 bytes.
        assert_eq!(started.elapsed(), Duration::from_millis(2020));
    }

    #[tokio::test(start_paused = true)]
    async fn only_waiting_counts() {
        let mut meter = Meter::new(pace());
        // Waits 1.5 s for the client, then gets a byte.
        assert!(!behind_now(&mut meter).await);
        tokio::time::advance(Duration::from_millis(1500)).await;
        meter.progressed(1);
        // Time the client was not being waited for is free.
        tokio::time::advance(Duration::from_secs(60)).await;
        // 2 s grace + 10 ms earned - 1.5 s already waited.
        assert_eq!(until_cut(&mut meter).await, Duration::from_millis(510));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_is_never_cut() {
        let mut meter = Meter::new(pace());
        for _ in 0..1000 {
            assert!(!behind_now(&mut meter).await);
            tokio::time::advance(Duration::from_millis(100)).await;
            meter.progressed(10); // exactly 100 bytes/s
        }
    }
}
