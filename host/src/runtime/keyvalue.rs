//! `wasi:keyvalue` (the `0.2.0-draft` interfaces: store, atomics, batch)
//! for components, over named stores, each with a backend behind
//! [`Backend`]. A component opens only the stores its section lists; an
//! empty identifier opens the store named `default`. Today's backend is
//! `memory`: one map per store and process, shared by every instance, so a
//! value set by one request is there for the next.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasi:keyvalue/imports",
        imports: { default: trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// What a store keeps its values in.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    fn exists(&self, key: &str) -> Result<bool, String>;
    /// Every key, in order.
    fn keys(&self) -> Result<Vec<String>, String>;
    /// Adds `delta` to the key's value (a decimal number; absent is 0)
    /// and returns the sum, in one step.
    fn increment(&self, key: &str, delta: u64) -> Result<u64, String>;
}

/// The `memory` backend: this process only, lost when it ends.
#[derive(Debug, Default)]
pub struct Memory(Mutex<HashMap<String, Vec<u8>>>);

impl Memory {
    /// A store holding `data` to begin with.
    pub fn seeded(data: BTreeMap<String, String>) -> Self {
        Self(Mutex::new(
            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        ))
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for Memory {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map().get(key).cloned())
    }

    fn set(&self, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.map().insert(key.to_owned(), value);
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        self.map().remove(key);
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.map().contains_key(key))
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        let mut keys: Vec<String> = self.map().keys().cloned().collect();
        keys.sort();
        Ok(keys)
    }

    fn increment(&self, key: &str, delta: u64) -> Result<u64, String> {
        let mut map = self.map();
        let current = match map.get(key) {
            None => 0,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("the value of {key:?} is not a number"))?,
        };
        let sum = current
            .checked_add(delta)
            .ok_or_else(|| format!("incrementing {key:?} overflows"))?;
        map.insert(key.to_owned(), sum.to_string().into_bytes());
        Ok(sum)
    }
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
    name: String,
    backend: Arc<dyn Backend>,
}

/// A store's view of `wasi:keyvalue` for one call.
pub struct KeyValue<'a> {
    pub opened: &'a Opened,
    pub table: &'a mut ResourceTable,
    /// The component's name, for logs.
    pub component: &'a str,
}

impl KeyValue<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<(&str, Arc<dyn Backend>)> {
        let bucket = self.table.get(bucket)?;
        Ok((&bucket.name, bucket.backend.clone()))
    }
}

/// A backend's failure, as the guest sees it, and in the log.
fn failed(store: &str, what: &str, error: String) -> Error {
    tracing::warn!(event = "keyvalue_error", store, operation = what, %error, "keyvalue call failed");
    Error::Other(error)
}

impl store::Host for KeyValue<'_> {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        let name = if identifier.is_empty() {
            "default".to_owned()
        } else {
            identifier
        };
        let Some(backend) = self.opened.allowed.get(&name).cloned() else {
            tracing::warn!(
                event = "keyvalue_denied",
                component = self.component,
                section = &*self.opened.section,
                store = name,
                "a component opened a keyvalue store its section does not list; add the store to the section's keyvalue list"
            );
            return Ok(Err(Error::AccessDenied));
        };
        Ok(Ok(self.table.push(Bucket { name, backend })?))
    }
}

impl store::HostBucket for KeyValue<'_> {
    fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend.get(&key).map_err(|e| failed(name, "get", e)))
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend.set(&key, value).map_err(|e| failed(name, "set", e)))
    }

    fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend.delete(&key).map_err(|e| failed(name, "delete", e)))
    }

    fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend.exists(&key).map_err(|e| failed(name, "exists", e)))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .keys()
            .map(|keys| page(keys, cursor))
            .map_err(|e| failed(name, "list-keys", e)))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

/// Keys listed at most this many at a time; the cursor is the offset of
/// the next page.
const PAGE: usize = 1000;

fn page(keys: Vec<String>, cursor: Option<u64>) -> KeyResponse {
    let start = usize::try_from(cursor.unwrap_or(0))
        .unwrap_or(usize::MAX)
        .min(keys.len());
    let end = start.saturating_add(PAGE).min(keys.len());
    let next = (end < keys.len()).then_some(end as u64);
    KeyResponse {
        keys: keys[start..end].to_vec(),
        cursor: next,
    }
}

impl atomics::Host for KeyValue<'_> {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        Ok(backend
            .increment(&key, delta)
            .map_err(|e| failed(name, "increment", e)))
    }
}

impl batch::Host for KeyValue<'_> {
    fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let got: Result<Vec<_>, String> = keys
            .into_iter()
            .map(|key| Ok(backend.get(&key)?.map(|value| (key, value))))
            .collect();
        Ok(got.map_err(|e| failed(name, "get-many", e)))
    }

    fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let set: Result<(), String> = key_values
            .into_iter()
            .try_for_each(|(key, value)| backend.set(&key, value));
        Ok(set.map_err(|e| failed(name, "set-many", e)))
    }

    fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (name, backend) = self.bucket(&bucket)?;
        let deleted: Result<(), String> = keys.iter().try_for_each(|key| backend.delete(key));
        Ok(deleted.map_err(|e| failed(name, "delete-many", e)))
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
    fn memory_increments_from_absent_and_refuses_what_is_not_a_number() {
        let memory = Memory::seeded([("word".to_owned(), "hello".to_owned())].into());
        assert_eq!(memory.increment("n", 1), Ok(1));
        assert_eq!(memory.increment("n", 41), Ok(42));
        assert_eq!(memory.get("n"), Ok(Some(b"42".to_vec())));
        assert!(memory
            .increment("word", 1)
            .unwrap_err()
            .contains("not a number"));
        assert_eq!(memory.keys(), Ok(vec!["n".to_owned(), "word".to_owned()]));
    }

    #[test]
    fn keys_come_in_pages_with_a_cursor() {
        let keys: Vec<String> = (0..2500).map(|i| format!("{i:05}")).collect();
        let first = page(keys.clone(), None);
        assert_eq!(first.keys.len(), PAGE);
        assert_eq!(first.cursor, Some(1000));
        let last = page(keys, Some(2000));
        assert_eq!(last.keys.len(), 500);
        assert_eq!(last.cursor, None);
    }

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
