//! The request path, top to bottom: the server ([`server`]) runs the
//! accept loop both ports share ([`accept`]: connection caps, header and
//! idle timeouts, shutdown) with the minimum pace of a body ([`pace`]);
//! the router ([`routes`]) picks the handler of the request's path; the
//! handler ([`handler`]) gives each request an id, a concurrency slot
//! ([`slots`]) and guarded bodies ([`body`]), picks the executor of its
//! component's WASI version ([`instances`]; [`p2`], [`p3`]), and turns
//! what the executor says into the answer. The admin port ([`admin`]) is
//! served by the same accept loop.
//!
//! It may use [`crate::runtime`] and [`crate::ops`]; nothing here knows
//! probes, schedules or how settings were given.

pub mod accept;
pub mod admin;
pub mod body;
pub mod generation;
pub mod handler;
pub mod instances;
pub mod p2;
pub mod p3;
pub mod pace;
pub mod routes;
pub mod server;
pub mod slots;
