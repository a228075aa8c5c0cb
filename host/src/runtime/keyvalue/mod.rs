//! `wasi:keyvalue` (the `0.2.0-draft` interfaces: store, atomics, batch)
//! for components, over named stores, each with a backend behind
//! [`Backend`]: `memory` ([`memory`]: one map per store and process,
//! shared by every instance, so a value set by one request is there for
//! the next) or `redis` ([`redis`]: a Redis or Valkey server, shared by
//! every process that names it). A component opens only the stores its
//! section lists; an empty identifier opens the store named `default`. A
//! backend's failure is the guest's error for that call, never a trap.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

pub mod memory;
pub mod redis;

pub use memory::Memory;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// What a backend's call resolves to: its answer, or what went wrong.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What a store keeps its values in.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Vec<u8>>>;
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Answer<'a, ()>;
    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()>;
    fn exists<'a>(&'a self, key: &'a str) -> Answer<'a, bool>;
    /// One page of the keys from `cursor` (`None`: the first page), and
    /// the cursor of the next page, if there is one.
    fn list(&self, cursor: Option<u64>) -> Answer<'_, (Vec<String>, Option<u64>)>;
    /// Adds `delta` to the key's value (a decimal number; absent is 0)
    /// and returns the sum, in one step.
    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> Answer<'a, u64>;
    /// The values of `keys`, in their order (`None` where absent).
    fn get_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, Vec<Option<Vec<u8>>>>;
    fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Answer<'_, ()>;
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, ()>;
}

/// The process's named stores.
pub type Stores = Arc<BTreeMap<String, Arc<dyn Backend>>>;

/// The stores one component may open, by name.
#[derive(Clone, Default)]
pub struct Opened {
    allowed: Arc<BTreeMap<String, Arc<dyn Backend>>>,
    /// Where the list was given (`[handler]`, a `[[probe]]`), for logs.
    section: Arc<str>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("stores", &self.allowed.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Opened {
    /// `names` of `stores`, as `section` lists them; a name that is not a
    /// store is refused, naming it and the stores there are.
    pub fn of(stores: &Stores, names: &[String], section: &str) -> Result<Self, String> {
        let mut allowed = BTreeMap::new();
        for name in names {
            let backend = stores.get(name).ok_or_else(|| {
                format!(
                    "keyvalue store {name:?} is not configured (stores: {:?}); add a [keyvalue.{name}] table",
                    stores.keys().collect::<Vec<_>>()
                )
            })?;
            allowed.insert(name.clone(), backend.clone());
        }
        Ok(Self {
            allowed: Arc::new(allowed),
            section: Arc::from(section),
        })
    }
}

/// An open store, as the guest holds it.
pub struct Bucket {
    name: Arc<str>,
    backend: Arc<dyn Backend>,
}

/// A store's view of `wasi:keyvalue` for one call.
pub struct KeyValue<'a> {
    pub opened: &'a Opened,
    pub table: &'a mut ResourceTable,
    /// The component's name, for logs.
    pub component: &'a str,
    /// The request the component works for, if any, for logs.
    pub request_id: Option<&'a str>,
}

impl KeyValue<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(Arc<str>, Arc<dyn Backend>)> {
        let bucket = self.table.get(bucket)?;
        Ok((bucket.name.clone(), bucket.backend.clone()))
    }
}

/// A backend's failure, as the guest sees it, and in the log (at debug:
/// a backend says at warn when it becomes unavailable and when it is back).
fn failed(store: &str, what: &str, error: String) -> Error {
    tracing::debug!(event = "keyvalue_error", store, operation = what, %error, "keyvalue call failed");
    Error::Other(error)
}

impl store::Host for KeyValue<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        let name = if identifier.is_empty() {
            "default".to_owned()
        } else {
            identifier
        };
        let Some(backend) = self.opened.allowed.get(&name).cloned() else {
            tracing::warn!(
                event = "keyvalue_denied",
                component = self.component,
                request_id = self.request_id,
                section = &*self.opened.section,
                store = name,
                "a component opened a keyvalue store its section does not list; add the store to the section's keyvalue list"
            );
            return Ok(Err(Error::AccessDenied));
        };
        let name = Arc::from(name);
        Ok(Ok(self.table.push(Bucket { name, backend })?))
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend.get(&key).await.map_err(|e| failed(&name, "get", e)))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .set(&key, value)
            .await
            .map_err(|e| failed(&name, "set", e)))
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .delete(&key)
            .await
            .map_err(|e| failed(&name, "delete", e)))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .exists(&key)
            .await
            .map_err(|e| failed(&name, "exists", e)))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .list(cursor)
            .await
            .map(|(keys, cursor)| KeyResponse { keys, cursor })
            .map_err(|e| failed(&name, "list-keys", e)))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .increment(&key, delta)
            .await
            .map_err(|e| failed(&name, "increment", e)))
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let got = backend.get_many(&keys).await.map(|values| {
            keys.into_iter()
                .zip(values)
                .map(|(key, value)| value.map(|value| (key, value)))
                .collect()
        });
        Ok(got.map_err(|e| failed(&name, "get-many", e)))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let set = backend.set_many(key_values).await;
        Ok(set.map_err(|e| failed(&name, "set-many", e)))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let deleted = backend.delete_many(&keys).await;
        Ok(deleted.map_err(|e| failed(&name, "delete-many", e)))
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Links `wasi:keyvalue` into `linker`, reaching each store's view with `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<_, HasKeyValue>(linker, view)?;
    atomics::add_to_linker::<_, HasKeyValue>(linker, view)?;
    batch::add_to_linker::<_, HasKeyValue>(linker, view)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_not_configured_is_refused_naming_it() {
        let stores: Stores = Arc::new(BTreeMap::new());
        let error = Opened::of(&stores, &["default".to_owned()], "api").unwrap_err();
        assert!(
            error.contains("\"default\"") && error.contains("[keyvalue.default]"),
            "{error}"
        );
    }
}
