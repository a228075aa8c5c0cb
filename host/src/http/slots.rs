//! The handler's concurrency slots: a request holds one from admission
//! until the guest is done with it (its response body streamed), so the
//! slots bound the requests in the guest; and [`Saturation`], since when
//! every slot has been busy, which readiness reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The handler's concurrency slots. A slot is held until the guest is done
/// with its request (see the module docs), so the slots bound the requests
/// in the guest.
pub struct Slots {
    semaphore: Arc<Semaphore>,
    saturation: Arc<Saturation>,
    in_flight: Gauge,
}

impl Slots {
    pub fn new(count: usize, in_flight: Gauge) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(count.max(1))),
            saturation: Arc::new(Saturation::new()),
            in_flight,
        }
    }

    /// How long every slot has been busy, for readiness.
    pub fn saturation(&self) -> Arc<Saturation> {
        self.saturation.clone()
    }

    /// A free slot, if there is one.
    pub fn try_take(&self) -> Option<Slot> {
        let permit = self.semaphore.clone().try_acquire_owned();
        if self.semaphore.available_permits() == 0 {
            self.saturation.full();
            // A slot given back between the look and `full` has already
            // found nothing to clear: look again, so that readiness never
            // reads "full" while a slot is free.
            if self.semaphore.available_permits() > 0 {
                self.saturation.not_full();
            }
        }
        let permit = permit.ok()?;
        self.in_flight.inc();
        Some(Slot {
            permit: Some(permit),
            semaphore: self.semaphore.clone(),
            saturation: self.saturation.clone(),
            in_flight: self.in_flight.clone(),
        })
    }
}

/// One request's hold on the handler; given back when dropped.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    semaphore: Arc<Semaphore>,
    saturation: Arc<Saturation>,
    in_flight: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.in_flight.dec();
        if self.semaphore.available_permits() > 0 {
            self.saturation.not_full();
        }
    }
}

/// Since when every handler slot has been busy, if they all are.
#[derive(Debug)]
pub struct Saturation {
    epoch: Instant,
    /// Milliseconds after `epoch` plus one; 0 when a slot is free.
    full_since: AtomicU64,
}

impl Saturation {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            full_since: AtomicU64::new(0),
        }
    }

    fn full(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let _ = self
            .full_since
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn not_full(&self) {
        self.full_since.store(0, Ordering::SeqCst);
    }

    /// How long every slot has been busy; `None` while one is free.
    pub fn full_for(&self) -> Option<Duration> {
        match self.full_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2, Gauge::default());
        let saturation = slots.saturation();
        let first = slots.try_take().unwrap();
        assert!(saturation.full_for().is_none(), "one of two is free");
        let second = slots.try_take().unwrap();
        assert!(saturation.full_for().is_some(), "both taken");
        assert!(slots.try_take().is_none());
        drop(first);
        assert!(saturation.full_for().is_none());
        drop(second);
        assert_eq!(slots.in_flight.get(), 0);
    }

    /// A slot given back while other threads keep failing to take one:
    /// once it is back, saturation must say a slot is free, whatever the
    /// interleaving was. (Without the second look in `try_take`, a failed
    /// taker's `full` could land after the giver's `not_full`.)
    #[test]
    fn saturation_is_never_left_full_with_a_slot_free() {
        use std::sync::atomic::AtomicBool;
        let mut stuck = 0;
        for _ in 0..1000 {
            let slots = Arc::new(Slots::new(1, Gauge::default()));
            let held = slots.try_take().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let taker = {
                let (slots, stop) = (slots.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(slot) = slots.try_take() {
                            // Keep it: the slot is free only once given back.
                            std::mem::forget(slot);
                            return true;
                        }
                    }
                    false
                })
            };
            std::thread::yield_now();
            drop(held);
            stop.store(true, Ordering::Relaxed);
            let took = taker.join().unwrap();
            if !took && slots.saturation().full_for().is_some() {
                stuck += 1;
            }
        }
        assert_eq!(stuck, 0, "saturation left full with the slot free");
    }
}
