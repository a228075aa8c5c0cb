//! The `memory` backend: one map per store, in this process only, lost
//! when it ends; seeded from the configuration if it says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Answer, Backend};

/// Keys listed at most this many at a time; the cursor is the offset of
/// the next page.
const PAGE: usize = 1000;

/// A store in this process's memory.
#[derive(Debug, Default)]
pub struct Memory(Mutex<HashMap<String, Vec<u8>>>);

impl Memory {
    /// A store holding `data` to begin with.
    pub fn seeded(data: BTreeMap<String, String>) -> Self {
        Self(Mutex::new(
            data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        ))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, key: &str, delta: u64) -> Result<u64, String> {
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

/// `answer`, at once.
fn ready<'a, T: Send + 'a>(answer: Result<T, String>) -> Answer<'a, T> {
    Box::pin(std::future::ready(answer))
}

impl Backend for Memory {
    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Vec<u8>>> {
        ready(Ok(self.map().get(key).cloned()))
    }

    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>) -> Answer<'a, ()> {
        self.map().insert(key.to_owned(), value);
        ready(Ok(()))
    }

    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()> {
        self.map().remove(key);
        ready(Ok(()))
    }

    fn exists<'a>(&'a self, key: &'a str) -> Answer<'a, bool> {
        ready(Ok(self.map().contains_key(key)))
    }

    fn list(&self, cursor: Option<u64>) -> Answer<'_, (Vec<String>, Option<u64>)> {
        let mut keys: Vec<String> = self.map().keys().cloned().collect();
        keys.sort();
        ready(Ok(page(keys, cursor)))
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> Answer<'a, u64> {
        ready(self.add(key, delta))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, Vec<Option<Vec<u8>>>> {
        let map = self.map();
        ready(Ok(keys.iter().map(|key| map.get(key).cloned()).collect()))
    }

    fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Answer<'_, ()> {
        self.map().extend(entries);
        ready(Ok(()))
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> Answer<'a, ()> {
        let mut map = self.map();
        for key in keys {
            map.remove(key);
        }
        ready(Ok(()))
    }
}

/// The page of sorted `keys` at `cursor`, and the next page's cursor.
fn page(keys: Vec<String>, cursor: Option<u64>) -> (Vec<String>, Option<u64>) {
    let start = usize::try_from(cursor.unwrap_or(0))
        .unwrap_or(usize::MAX)
        .min(keys.len());
    let end = start.saturating_add(PAGE).min(keys.len());
    let next = (end < keys.len()).then_some(end as u64);
    (keys[start..end].to_vec(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_increments_from_absent_and_refuses_what_is_not_a_number() {
        let memory = Memory::seeded([("word".to_owned(), "hello".to_owned())].into());
        assert_eq!(memory.increment("n", 1).await, Ok(1));
        assert_eq!(memory.increment("n", 41).await, Ok(42));
        assert_eq!(memory.get("n").await, Ok(Some(b"42".to_vec())));
        assert!(memory
            .increment("word", 1)
            .await
            .unwrap_err()
            .contains("not a number"));
        let (keys, next) = memory.list(None).await.unwrap();
        assert_eq!(
            (keys, next),
            (vec!["n".to_owned(), "word".to_owned()], None)
        );
    }

    #[test]
    fn keys_come_in_pages_with_a_cursor() {
        let keys: Vec<String> = (0..2500).map(|i| format!("{i:05}")).collect();
        let (first, next) = page(keys.clone(), None);
        assert_eq!(first.len(), PAGE);
        assert_eq!(next, Some(1000));
        let (last, next) = page(keys, Some(2000));
        assert_eq!(last.len(), 500);
        assert_eq!(next, None);
    }
}
