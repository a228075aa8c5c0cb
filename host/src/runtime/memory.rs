//! Guest memory: a cap per instance (`max_memory`) and a budget for all
//! instances together, so that many instances each within their cap cannot
//! together take more than the container has.
//!
//! Every linear memory an instance creates or grows is reserved from the
//! [`MemoryBudget`] first; a growth that would pass the budget (or the
//! instance's cap) fails inside the guest as `memory.grow` returning -1,
//! which most guests turn into a trap. An instance gives back all it
//! reserved when its store is dropped.
//!
//! The default budget is three quarters of the container's memory limit
//! (cgroup v2 `memory.max`, or v1 `memory.limit_in_bytes`), leaving the rest
//! to the host itself: compiled code, buffers, the allocator. Outside a
//! container with a limit it is [`FALLBACK_BUDGET`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// The budget when no container memory limit can be read.
pub const FALLBACK_BUDGET: u64 = 1 << 30;

/// The share of the container's memory limit guests may use together.
const SHARE_NUMERATOR: u64 = 3;
const SHARE_DENOMINATOR: u64 = 4;

/// Bytes of linear memory all instances together may hold.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    used_gauge: Gauge,
    denied: Counter,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; its use is mirrored in `used_gauge` and
    /// refusals counted in `denied`.
    pub fn new(limit: u64, used_gauge: Gauge, denied: Counter) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
            used_gauge,
            denied,
        }
    }

    /// A budget of `limit` bytes shown in `metrics`.
    pub fn with_metrics(limit: u64, metrics: &crate::ops::metrics::Metrics) -> Self {
        let (used_gauge, denied) = metrics.memory_budget(limit);
        Self::new(limit, used_gauge, denied)
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` if they fit.
    pub(crate) fn try_reserve(&self, bytes: u64) -> bool {
        let reserved = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if reserved {
            self.used_gauge.inc_by(gauge_value(bytes));
        } else {
            self.denied.inc();
        }
        reserved
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        self.used_gauge.dec_by(gauge_value(bytes));
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Which limit stopped a guest's allocation, if any did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The instance's own cap (`max_memory`).
    InstanceCap,
    /// The budget of all instances together.
    Budget,
}

/// The memory limiter of one store: the instance cap, and reservations
/// from the shared budget, given back on drop.
pub struct GuestMemory {
    budget: Arc<MemoryBudget>,
    max_memory: usize,
    reserved: u64,
    refused: Option<Refusal>,
}

impl GuestMemory {
    /// A limiter for one store.
    pub fn new(budget: Arc<MemoryBudget>, max_memory: usize) -> Self {
        Self {
            budget,
            max_memory,
            reserved: 0,
            refused: None,
        }
    }

    /// The first limit that refused an allocation, if one did.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
    }
}

impl wasmtime::ResourceLimiter for GuestMemory {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.refused.get_or_insert(Refusal::InstanceCap);
            return Ok(false);
        }
        let extra = desired.saturating_sub(current) as u64;
        if !self.budget.try_reserve(extra) {
            self.refused.get_or_insert(Refusal::Budget);
            return Ok(false);
        }
        self.reserved += extra;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

/// Where the default budget came from, for the start-up log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// Given by flag or config file.
    Configured,
    /// Three quarters of this container limit, read from the named file.
    Container { limit: u64, file: String },
    /// No container limit found.
    Fallback,
}

/// The default budget: a share of the container's memory limit when one
/// is set, else [`FALLBACK_BUDGET`].
pub fn default_budget() -> (u64, BudgetSource) {
    default_budget_from(Path::new("/sys/fs/cgroup"))
}

fn default_budget_from(cgroup_root: &Path) -> (u64, BudgetSource) {
    for file in ["memory.max", "memory/memory.limit_in_bytes"] {
        let path = cgroup_root.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // cgroup v2 writes "max" for no limit; v1 a huge number.
        let Ok(limit) = text.trim().parse::<u64>() else {
            continue;
        };
        if limit == 0 || limit >= 1 << 60 {
            continue;
        }
        let budget = limit / SHARE_DENOMINATOR * SHARE_NUMERATOR;
        return (
            budget,
            BudgetSource::Container {
                limit,
                file: path.display().to_string(),
            },
        );
    }
    (FALLBACK_BUDGET, BudgetSource::Fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    fn budget(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(
            limit,
            Gauge::default(),
            Counter::default(),
        ))
    }

    #[test]
    fn instances_share_the_budget_and_give_it_back() {
        let budget = budget(100);
        let mut a = GuestMemory::new(budget.clone(), 80);
        let mut b = GuestMemory::new(budget.clone(), 80);
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(!b.memory_growing(0, 60, None).unwrap());
        assert_eq!(b.refused(), Some(Refusal::Budget));
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.memory_growing(40, 80, None).unwrap());
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_instance_cap_comes_first() {
        let budget = budget(1000);
        let mut a = GuestMemory::new(budget.clone(), 80);
        assert!(!a.memory_growing(0, 81, None).unwrap());
        assert_eq!(a.refused(), Some(Refusal::InstanceCap));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn default_from_cgroup_files() {
        let dir = std::env::temp_dir().join(format!("pulse-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        assert_eq!(default_budget_from(&dir).1, BudgetSource::Fallback);
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        assert_eq!(default_budget_from(&dir).0, FALLBACK_BUDGET);
        std::fs::write(dir.join("memory/memory.limit_in_bytes"), "268435456\n").unwrap();
        assert_eq!(default_budget_from(&dir).0, 201_326_592);
        std::fs::write(dir.join("memory.max"), "536870912\n").unwrap();
        let (budget, source) = default_budget_from(&dir);
        assert_eq!(budget, 402_653_184);
        assert!(matches!(
            source,
            BudgetSource::Container {
                limit: 536_870_912,
                ..
            }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
