//! What a guest's work belongs to — a request, by its id, or a probe run —
//! for the log lines it causes and the trace it joins.
//!
//! The request id is a plain field, written into each line a request
//! causes (guest output, a denied outgoing request or keyvalue store), so
//! serving a request needs no `tracing` span to name it. The span is a
//! real one only when something wants it: traces are on, or the log
//! filter enables the `request` span (`RUST_LOG=debug`); otherwise it is
//! [`tracing::Span::none`], which costs nothing to carry or enter.

use std::sync::Arc;

/// The request or probe run a store's guest is working for.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The request's id, when the work is a request's.
    pub request_id: Option<Arc<str>>,
    /// The span of the work, if one is enabled.
    pub span: tracing::Span,
}

impl Scope {
    /// Work for no request and in no span (an instance between requests).
    pub fn none() -> Self {
        Self {
            request_id: None,
            span: tracing::Span::none(),
        }
    }

    /// Work for the request `id`, in `span` (perhaps disabled).
    pub fn request(id: Arc<str>, span: tracing::Span) -> Self {
        Self {
            request_id: Some(id),
            span,
        }
    }

    /// Work in `span` alone, such as a probe run, whose span names it.
    pub fn in_span(span: tracing::Span) -> Self {
        Self {
            request_id: None,
            span,
        }
    }

    /// The request's id, for a log line's `request_id` field.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}
