//! The request metrics of one component, bound once: the
//! `pulse_http_requests_total` counter of each status it answers, looked
//! up in the family the first time that status is counted, and the
//! request duration histogram. Counting a request is then an atomic add
//! and an observation, with no label set built, hashed or looked up.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub(crate) component: ComponentName,
    pub(crate) status: u16,
}

/// How many status codes a bound counter set holds: 100 to 599.
const STATUS_CODES: usize = 500;

/// One component's request counters (see
/// [`crate::ops::metrics::Metrics::requests_of`]).
pub struct RequestMetrics {
    component: ComponentName,
    family: Family<StatusLabels, Counter>,
    /// The counter of status `100 + i`, once that status has been counted.
    by_status: Box<[OnceLock<Counter>]>,
    duration: Histogram,
}

impl RequestMetrics {
    /// The counters of `component`'s requests in `family`, and the
    /// histogram of how long requests take.
    pub(crate) fn new(
        component: ComponentName,
        family: Family<StatusLabels, Counter>,
        duration: Histogram,
    ) -> Self {
        Self {
            component,
            family,
            by_status: (0..STATUS_CODES).map(|_| OnceLock::new()).collect(),
            duration,
        }
    }

    /// Counts one request answered with `status`, which took `took`.
    pub fn record(&self, status: u16, took: Duration) {
        let counter = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i));
        match counter {
            Some(slot) => slot.get_or_init(|| self.counter(status)).inc(),
            None => self.counter(status).inc(),
        };
        self.duration.observe(took.as_secs_f64());
    }

    fn counter(&self, status: u16) -> Counter {
        let labels = StatusLabels {
            component: self.component.clone(),
            status,
        };
        self.family.get_or_create(&labels).clone()
    }
}

/// The name of the component that answered a request (the `component`
/// label): its route's name, or empty when no route matched.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct ComponentName(pub std::sync::Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for ComponentName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(family: &Family<StatusLabels, Counter>, component: &str, status: u16) -> u64 {
        let labels = StatusLabels {
            component: ComponentName(component.into()),
            status,
        };
        family.get_or_create(&labels).get()
    }

    #[test]
    fn each_status_is_counted_in_the_family_under_its_component() {
        let family = Family::<StatusLabels, Counter>::default();
        let duration = Histogram::new([0.1, 1.0]);
        let api = RequestMetrics::new(
            ComponentName("api".into()),
            family.clone(),
            duration.clone(),
        );
        let web = RequestMetrics::new(ComponentName("web".into()), family.clone(), duration);
        for status in [200, 200, 503, 200] {
            api.record(status, Duration::from_millis(1));
        }
        web.record(200, Duration::from_millis(1));
        // Outside 100-599: counted, just not bound.
        api.record(999, Duration::from_millis(1));
        api.record(42, Duration::from_millis(1));
        assert_eq!(count(&family, "api", 200), 3);
        assert_eq!(count(&family, "api", 503), 1);
        assert_eq!(count(&family, "web", 200), 1);
        assert_eq!(count(&family, "api", 999), 1);
        assert_eq!(count(&family, "api", 42), 1);
        assert_eq!(count(&family, "web", 503), 0);
    }
}
