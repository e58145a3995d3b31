//! A bounded LRU cache that a writer can invalidate without racing readers that fill it.
//!
//! Readers fill the cache from the database; the projector invalidates it after a commit
//! that may have changed cached rows, and before it publishes the new position. A reader
//! notes the generation before its database read and fills only if no invalidation came in
//! between, so a row read before a commit can never be cached after it.

use hashlink::LruCache;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Mutex;

pub struct Cache<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K: Hash + Eq, V> {
    generation: u64,
    rows: LruCache<K, V>,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                generation: 0,
                rows: LruCache::new(capacity.max(1)),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // The critical sections cannot panic half-way through a change.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached value, or the generation to pass to [`Cache::fill`] after reading it.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Result<V, u64>
    where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        match inner.rows.get(key) {
            Some(v) => Ok(v.clone()),
            None => Err(inner.generation),
        }
    }

    /// Caches `value` unless the cache was invalidated since `generation`.
    pub fn fill(&self, generation: u64, key: K, value: V) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.rows.insert(key, value);
        }
    }

    /// Forgets everything; fills of reads that began before this are refused.
    pub fn invalidate(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_began_before_an_invalidation_is_not_cached() {
        let cache = Cache::<u32, &str>::new(4);
        let before = cache.get(&1).unwrap_err();
        cache.invalidate();
        cache.fill(before, 1, "stale");
        assert!(cache.get(&1).is_err());
        let after = cache.get(&1).unwrap_err();
        cache.fill(after, 1, "fresh");
        assert_eq!(cache.get(&1), Ok("fresh"));
    }

    #[test]
    fn it_stays_bounded() {
        let cache = Cache::<u32, u32>::new(2);
        for i in 0..10 {
            let g = cache.get(&i).unwrap_err();
            cache.fill(g, i, i);
        }
        assert!(cache.get(&0).is_err());
        assert_eq!(cache.get(&9), Ok(9));
    }
}
