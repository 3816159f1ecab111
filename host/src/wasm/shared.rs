//! Shared data and shared queues: gateway-wide and kept across reloads, namespaced by
//! `vm_id`, visible to every VM of that id on every worker thread (as in Envoy). The store
//! is gateway state ([`super::PluginRegistries`]) that host functions reach through their
//! VM's state.
//!
//! Both are bounded by `server.plugin_limits`, which each call passes in from the calling
//! plugin (so a policy reload applies at the next write):
//!
//! - Shared data of one `vm_id` holds at most `shared_data_keys` keys and
//!   `shared_data_bytes` bytes of keys and values. A write that goes past either bound
//!   evicts the least recently used entries of that `vm_id` instead of being refused. A
//!   refusal would let one client who mints keys (a rate limit keyed by a header it
//!   chooses) fill the store and deny every honest key that comes after, for good; with
//!   eviction the flood pushes out its own never-read entries first, while the counters
//!   honest traffic keeps touching survive. It is also what a plugin author expects of
//!   `proxy_set_shared_data`, which the proxy-wasm Rust SDK treats as infallible except
//!   for a CAS mismatch (any other status panics the plugin), and what the shared dicts of
//!   nginx-based gateways do when full. Only a single key and value larger than the whole
//!   byte limit is refused (`BAD_ARGUMENT`): nothing could make room for it.
//! - A shared queue holds at most `shared_queue_length` items; enqueueing onto a full queue
//!   is refused with `INTERNAL_FAILURE` (the ABI has no "full" status; this one means "the
//!   host could not do it, see its logs and metrics").
//!
//! Recency is tracked with the CLOCK (second chance) approximation of least-recently-used:
//! a read or write sets the entry's `referenced` bit (a relaxed atomic in the entry, no
//! lock beyond the map shard's); keys wait in insertion order in a per-`vm_id` ring that
//! only inserts and evictions lock. Eviction pops the oldest key: referenced, its bit is
//! cleared and it goes to the back; not referenced, it is removed. A new entry starts
//! unreferenced, so keys written once and never read again (a key-minting flood) go before
//! keys in use; the key a write stores is never the one that write evicts. Each eviction gives at most [`MAX_SECOND_CHANCES`] second chances before
//! it removes the next key whatever its bit, so the ring lock is never held across a scan
//! of the store. Accounting is two atomics per `vm_id`, updated under the entry's shard
//! lock: O(1) per write.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::sync::mpsc::UnboundedSender;

use super::abi::Status;
use crate::config::PluginLimits;

/// Second chances one eviction may give before it removes the next key regardless: bounds
/// the time the ring lock is held even when every key was used recently.
const MAX_SECOND_CHANCES: usize = 1024;

/// A message to a VM's event loop on its own worker thread.
#[derive(Debug)]
pub enum VmEvent {
    QueueReady { root_context: u32, queue: u32 },
}

struct Entry {
    /// Shared with every read in progress: a read takes a reference, not a copy.
    value: Arc<[u8]>,
    cas: u32,
    /// Read or written since eviction last looked at it.
    referenced: AtomicBool,
}

impl Entry {
    fn touch(&self) {
        // A load first: most reads find the bit set and need not dirty the cache line.
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }
}

/// The shared data of one `vm_id`.
#[derive(Default)]
struct Namespace {
    /// By key bytes as the plugin gave them (Envoy's keys are bytes too): keys that differ
    /// only in bytes that are not UTF-8 stay apart.
    entries: DashMap<Arc<[u8]>, Entry>,
    /// Key and value bytes of every entry.
    bytes: AtomicU64,
    keys: AtomicU64,
    evictions: AtomicU64,
    /// Every key once, oldest first: the CLOCK ring eviction walks.
    ring: Mutex<VecDeque<Arc<[u8]>>>,
}

/// What the shared data of one `vm_id` holds, for `/metrics` and `/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SharedDataUsage {
    pub vm_id: String,
    pub bytes: u64,
    pub keys: u64,
    pub evictions: u64,
}

/// A metric family of [`SharedStore::encode`]: name (a counter's without `_total`), kind,
/// help, and the value.
type MetricFamily = (
    &'static str,
    crate::telemetry::metrics::ValueKind,
    &'static str,
    fn(&SharedDataUsage) -> u64,
);

/// A queue and the root contexts that registered it (one per VM that called register).
pub struct Queue {
    items: Mutex<VecDeque<Bytes>>,
    subscribers: Mutex<Vec<(UnboundedSender<VmEvent>, u32)>>,
}

#[derive(Default)]
pub struct SharedStore {
    /// Looked up on every shared data call, by `vm_id`s the configuration names (no client
    /// chooses them): a fast hash rather than the default, keyed one.
    namespaces: DashMap<String, Arc<Namespace>, FxBuildHasher>,
    queue_ids: DashMap<(String, String), u32>,
    queues: DashMap<u32, Arc<Queue>>,
}

static NEXT_CAS: AtomicU32 = AtomicU32::new(1);
static NEXT_QUEUE: AtomicU32 = AtomicU32::new(1);

fn next_cas() -> u32 {
    loop {
        let cas = NEXT_CAS.fetch_add(1, Ordering::Relaxed);
        if cas != 0 {
            return cas;
        }
    }
}

impl Namespace {
    fn over(&self, limits: &PluginLimits) -> bool {
        self.keys.load(Ordering::Relaxed) > limits.shared_data_keys as u64
            || self.bytes.load(Ordering::Relaxed) > limits.shared_data_bytes
    }

    /// Replaces an existing entry's value (CAS rules of [`SharedStore::set`]). A value of
    /// the old one's length that no read still holds is written over in place: a plugin
    /// keeping a counter or a bucket rewrites it on every request without an allocation.
    fn update(&self, entry: &mut Entry, value: &[u8], cas: u32) -> Result<(), Status> {
        if cas != 0 && entry.cas != cas {
            return Err(Status::CasMismatch);
        }
        let (old, new) = (entry.value.len() as u64, value.len() as u64);
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
        match Arc::get_mut(&mut entry.value) {
            Some(in_place) if in_place.len() == value.len() => in_place.copy_from_slice(value),
            _ => entry.value = Arc::from(value),
        }
        entry.cas = next_cas();
        entry.touch();
        Ok(())
    }

    /// Evicts least recently used entries until the namespace is within `limits`, never
    /// `written`, the key the current write just stored (it always fits on its own).
    fn evict_over(&self, limits: &PluginLimits, written: &[u8]) {
        if !self.over(limits) {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut second_chances = 0;
        while self.over(limits) {
            // Empty while the keys being inserted right now are not yet in the ring.
            let Some(key) = ring.pop_front() else { break };
            if key.as_ref() == written {
                let alone = ring.is_empty();
                ring.push_back(key);
                if alone {
                    break;
                }
                continue;
            }
            let give_up = second_chances >= MAX_SECOND_CHANCES;
            let removed = self.entries.remove_if(key.as_ref(), |_, entry| {
                give_up || !entry.referenced.swap(false, Ordering::Relaxed)
            });
            match removed {
                Some((key, entry)) => {
                    self.keys.fetch_sub(1, Ordering::Relaxed);
                    self.bytes.fetch_sub(
                        key.len() as u64 + entry.value.len() as u64,
                        Ordering::Relaxed,
                    );
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None if self.entries.contains_key(key.as_ref()) => {
                    ring.push_back(key);
                    second_chances += 1;
                }
                None => {}
            }
        }
    }
}

impl SharedStore {
    fn namespace(&self, vm_id: &str) -> Arc<Namespace> {
        if let Some(namespace) = self.namespaces.get(vm_id) {
            return namespace.clone();
        }
        self.namespaces
            .entry(vm_id.to_string())
            .or_default()
            .clone()
    }

    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Arc<[u8]>, u32)> {
        let namespace = self.namespaces.get(vm_id)?;
        let entry = namespace.entries.get(key)?;
        entry.touch();
        Some((entry.value.clone(), entry.cas))
    }

    /// Sets `key`: cas 0 writes unconditionally, a stale cas is CAS_MISMATCH, a missing key
    /// is created whatever the cas. Each successful set gets a new non-zero cas. A write that
    /// takes the `vm_id` past `limits` evicts its least recently used entries; a key and
    /// value larger than the whole byte limit are refused with BAD_ARGUMENT.
    pub fn set(
        &self,
        vm_id: &str,
        key: &[u8],
        value: &[u8],
        cas: u32,
        limits: &PluginLimits,
    ) -> Result<(), Status> {
        use dashmap::mapref::entry::Entry as Slot;
        if key.len() as u64 + value.len() as u64 > limits.shared_data_bytes {
            return Err(Status::BadArgument);
        }
        let namespace = self.namespace(vm_id);
        // The common case, an existing key, allocates nothing.
        let updated = namespace
            .entries
            .get_mut(key)
            .map(|mut entry| namespace.update(&mut entry, value, cas));
        if let Some(result) = updated {
            result?;
            namespace.evict_over(limits, key);
            return Ok(());
        }
        let key: Arc<[u8]> = Arc::from(key);
        let size = key.len() as u64 + value.len() as u64;
        match namespace.entries.entry(key.clone()) {
            Slot::Occupied(mut occupied) => {
                namespace.update(occupied.get_mut(), value, cas)?;
            }
            Slot::Vacant(vacant) => {
                vacant.insert(Entry {
                    value: Arc::from(value),
                    cas: next_cas(),
                    referenced: AtomicBool::new(false),
                });
                namespace.keys.fetch_add(1, Ordering::Relaxed);
                namespace.bytes.fetch_add(size, Ordering::Relaxed);
                // Only after the shard lock is released: eviction takes the ring lock first.
                namespace
                    .ring
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(key.clone());
            }
        }
        namespace.evict_over(limits, &key);
        Ok(())
    }

    /// What the shared data of `vm_id` holds; `None` before its first write.
    pub fn usage(&self, vm_id: &str) -> Option<SharedDataUsage> {
        let namespace = self.namespaces.get(vm_id)?;
        Some(SharedDataUsage {
            vm_id: vm_id.to_string(),
            bytes: namespace.bytes.load(Ordering::Relaxed),
            keys: namespace.keys.load(Ordering::Relaxed),
            evictions: namespace.evictions.load(Ordering::Relaxed),
        })
    }

    /// Encodes shared data bytes and keys (gauges) and evictions (counter) per `vm_id`.
    pub fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::telemetry::metrics::{encode_values, ValueKind};
        let mut rows: Vec<SharedDataUsage> = self
            .namespaces
            .iter()
            .filter_map(|namespace| self.usage(namespace.key()))
            .collect();
        rows.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        let families: [MetricFamily; 3] = [
            (
                "tollgate_plugin_shared_data_bytes",
                ValueKind::Gauge,
                "Shared data held (keys and values), by vm_id.",
                |usage| usage.bytes,
            ),
            (
                "tollgate_plugin_shared_data_keys",
                ValueKind::Gauge,
                "Shared data keys held, by vm_id.",
                |usage| usage.keys,
            ),
            (
                "tollgate_plugin_shared_data_evictions",
                ValueKind::Counter,
                "Shared data entries evicted to stay within plugin_limits, by vm_id.",
                |usage| usage.evictions,
            ),
        ];
        for (name, kind, help, value) in families {
            let rows = rows
                .iter()
                .map(|usage| ([("vm_id", usage.vm_id.as_str())], value(usage)));
            encode_values(encoder, name, help, kind, rows)?;
        }
        Ok(())
    }

    /// Registers (idempotently) a queue and subscribes a root context of a VM to it. A new
    /// subscriber of a queue that holds items is woken at once: items enqueued while no VM
    /// listened (a singleton between a trap and its fresh VM) do not wait for the next one.
    pub fn register_queue(
        &self,
        vm_id: &str,
        name: &str,
        events: UnboundedSender<VmEvent>,
        root_context: u32,
    ) -> u32 {
        let id = *self
            .queue_ids
            .entry((vm_id.to_string(), name.to_string()))
            .or_insert_with(|| NEXT_QUEUE.fetch_add(1, Ordering::Relaxed));
        let queue = self
            .queues
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Queue {
                    items: Mutex::new(VecDeque::new()),
                    subscribers: Mutex::new(Vec::new()),
                })
            })
            .clone();
        let mut subscribers = queue.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|(sender, _)| !sender.is_closed());
        if !subscribers
            .iter()
            .any(|(sender, root)| sender.same_channel(&events) && *root == root_context)
        {
            let waiting = !queue
                .items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if waiting {
                let _ = events.send(VmEvent::QueueReady {
                    root_context,
                    queue: id,
                });
            }
            subscribers.push((events, root_context));
        }
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queue_ids
            .get(&(vm_id.to_string(), name.to_string()))
            .map(|id| *id)
    }

    /// Appends to a queue and wakes its subscribers with `on_queue_ready`; a queue already
    /// holding `max_length` items refuses with INTERNAL_FAILURE.
    pub fn enqueue(&self, id: u32, value: Bytes, max_length: usize) -> Result<(), Status> {
        let queue = self
            .queues
            .get(&id)
            .map(|q| q.clone())
            .ok_or(Status::NotFound)?;
        {
            let mut items = queue.items.lock().unwrap_or_else(|e| e.into_inner());
            if items.len() >= max_length {
                return Err(Status::InternalFailure);
            }
            items.push_back(value);
        }
        let mut subscribers = queue.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|(sender, root)| {
            sender
                .send(VmEvent::QueueReady {
                    root_context: *root,
                    queue: id,
                })
                .is_ok()
        });
        Ok(())
    }

    pub fn dequeue(&self, id: u32) -> Result<Bytes, Status> {
        let queue = self
            .queues
            .get(&id)
            .map(|q| q.clone())
            .ok_or(Status::NotFound)?;
        let item = queue
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        item.ok_or(Status::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNLIMITED: PluginLimits = PluginLimits {
        shared_data_bytes: u64::MAX,
        shared_data_keys: usize::MAX,
        shared_queue_length: usize::MAX,
        metrics: usize::MAX,
        callout_response_bytes: u64::MAX,
    };

    fn limits(keys: usize, bytes: u64) -> PluginLimits {
        PluginLimits {
            shared_data_keys: keys,
            shared_data_bytes: bytes,
            ..UNLIMITED
        }
    }

    fn value(text: &str) -> &[u8] {
        text.as_bytes()
    }

    #[test]
    fn compare_and_swap_semantics() {
        let store = SharedStore::default();
        assert!(store.get("vm", b"k").is_none());
        // A missing key is created whatever the cas.
        store.set("vm", b"k", b"1", 12345, &UNLIMITED).unwrap();
        let (_, cas) = store.get("vm", b"k").unwrap();
        assert_ne!(cas, 0);
        store.set("vm", b"k", b"2", cas, &UNLIMITED).unwrap();
        assert_eq!(
            store.set("vm", b"k", b"3", cas, &UNLIMITED),
            Err(Status::CasMismatch)
        );
        store.set("vm", b"k", b"4", 0, &UNLIMITED).unwrap();
        assert_eq!(&*store.get("vm", b"k").unwrap().0, b"4");
        // Namespaces are separate.
        assert!(store.get("other", b"k").is_none());
    }

    #[test]
    fn a_value_being_read_is_not_written_over() {
        let store = SharedStore::default();
        store.set("vm", b"k", b"old", 0, &UNLIMITED).unwrap();
        // Held, as a read holds it while it copies the value into its VM.
        let (held, _) = store.get("vm", b"k").unwrap();
        store.set("vm", b"k", b"new", 0, &UNLIMITED).unwrap();
        assert_eq!(&*held, b"old");
        assert_eq!(&*store.get("vm", b"k").unwrap().0, b"new");
        drop(held);
        // Nobody holds it now: the same length is written where it is.
        let before = Arc::as_ptr(&store.get("vm", b"k").unwrap().0);
        store.set("vm", b"k", b"NEW", 0, &UNLIMITED).unwrap();
        let (after, _) = store.get("vm", b"k").unwrap();
        assert_eq!(&*after, b"NEW");
        assert_eq!(Arc::as_ptr(&after), before);
        // Another length is a value of its own.
        store.set("vm", b"k", b"longer", 0, &UNLIMITED).unwrap();
        assert_eq!(&*store.get("vm", b"k").unwrap().0, b"longer");
        assert_eq!(store.usage("vm").unwrap().bytes, 1 + 6);
    }

    #[test]
    fn bytes_and_keys_are_accounted_on_insert_overwrite_and_eviction() {
        let store = SharedStore::default();
        let usage = |store: &SharedStore| {
            let usage = store.usage("vm").unwrap();
            (usage.keys, usage.bytes, usage.evictions)
        };
        store
            .set("vm", b"ab", value("12345"), 0, &UNLIMITED)
            .unwrap();
        assert_eq!(usage(&store), (1, 7, 0));
        store.set("vm", b"ab", value("1"), 0, &UNLIMITED).unwrap();
        assert_eq!(usage(&store), (1, 3, 0), "an overwrite shrinks the count");
        store
            .set("vm", b"ab", value("123456789"), 0, &UNLIMITED)
            .unwrap();
        assert_eq!(usage(&store), (1, 11, 0), "and grows it");
        store.set("vm", b"cd", value("1"), 0, &UNLIMITED).unwrap();
        assert_eq!(usage(&store), (2, 14, 0));
        // One key allowed: the older entry goes, with its bytes.
        store
            .set("vm", b"ef", value("12"), 0, &limits(1, 100))
            .unwrap();
        assert_eq!(usage(&store).0, 1);
        assert_eq!(usage(&store).1, 4);
        assert_eq!(usage(&store).2, 2);
        assert!(store.get("vm", b"ef").is_some());
        assert!(store.usage("other").is_none());
    }

    #[test]
    fn the_least_recently_used_keys_go_first() {
        let store = SharedStore::default();
        let limits = limits(100, u64::MAX);
        // Honest counters, each read and written again as a rate limit would.
        for i in 0..10 {
            store
                .set(
                    "vm",
                    format!("honest-{i}").as_bytes(),
                    value("0"),
                    0,
                    &limits,
                )
                .unwrap();
        }
        // A flood of keys written once and never read again, touching the honest keys in
        // between as their traffic goes on.
        for i in 0..10_000 {
            store
                .set(
                    "vm",
                    format!("minted-{i}").as_bytes(),
                    value("1"),
                    0,
                    &limits,
                )
                .unwrap();
            if i % 50 == 0 {
                for j in 0..10 {
                    let key = format!("honest-{j}");
                    let (_, cas) = store.get("vm", key.as_bytes()).expect("honest key evicted");
                    store
                        .set("vm", key.as_bytes(), value("2"), cas, &limits)
                        .unwrap();
                }
            }
            let usage = store.usage("vm").unwrap();
            assert!(usage.keys <= 100, "{usage:?}");
        }
        for j in 0..10 {
            assert!(store.get("vm", format!("honest-{j}").as_bytes()).is_some());
        }
        let usage = store.usage("vm").unwrap();
        assert_eq!(usage.keys, 100);
        assert_eq!(usage.evictions, 10_010 - 100);
        assert!(
            store.get("vm", b"minted-9999").is_some(),
            "the newest stays"
        );
        assert!(store.get("vm", b"minted-0").is_none(), "the oldest went");
    }

    #[test]
    fn the_byte_limit_evicts_and_an_oversized_value_is_refused() {
        let store = SharedStore::default();
        let limits = limits(usize::MAX, 100);
        for i in 0..50 {
            store
                .set(
                    "vm",
                    format!("k{i:02}").as_bytes(),
                    value("0123456"),
                    0,
                    &limits,
                )
                .unwrap();
            assert!(store.usage("vm").unwrap().bytes <= 100);
        }
        assert_eq!(store.usage("vm").unwrap().keys, 10, "10 × (3 + 7) bytes");
        // Growing an existing value also evicts others.
        store
            .set("vm", b"k49", value(&"x".repeat(50)), 0, &limits)
            .unwrap();
        assert!(store.usage("vm").unwrap().bytes <= 100);
        assert_eq!(store.get("vm", b"k49").unwrap().0.len(), 50);
        // 98 value bytes + 3 key bytes can never fit in 100.
        assert_eq!(
            store.set("vm", b"big", value(&"x".repeat(98)), 0, &limits),
            Err(Status::BadArgument)
        );
        assert!(store.get("vm", b"big").is_none());
        store
            .set("vm", b"big", value(&"x".repeat(97)), 0, &limits)
            .unwrap();
        assert_eq!(store.usage("vm").unwrap().keys, 1);
    }

    #[test]
    fn eviction_is_bounded_when_every_key_is_in_use() {
        let store = SharedStore::default();
        let limits = limits(MAX_SECOND_CHANCES * 3, u64::MAX);
        for i in 0..MAX_SECOND_CHANCES * 3 {
            store
                .set("vm", i.to_string().as_bytes(), value("0"), 0, &limits)
                .unwrap();
            store.get("vm", i.to_string().as_bytes());
        }
        store.set("vm", b"new", value("0"), 0, &limits).unwrap();
        let usage = store.usage("vm").unwrap();
        assert_eq!(
            (usage.keys, usage.evictions),
            (limits.shared_data_keys as u64, 1)
        );
        assert!(store.get("vm", b"new").is_some());
    }

    #[test]
    fn concurrent_writers_keep_the_accounting_exact() {
        let store = Arc::new(SharedStore::default());
        let limits = limits(500, 20_000);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let key = format!("{t}-{}", i % 900);
                        store
                            .set("vm", key.as_bytes(), value(&"v".repeat(i % 40)), 0, &limits)
                            .unwrap();
                        store.get("vm", format!("{t}-{}", i % 7).as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let usage = store.usage("vm").unwrap();
        let namespace = store.namespaces.get("vm").unwrap().clone();
        let (keys, bytes) = namespace
            .entries
            .iter()
            .fold((0u64, 0u64), |(keys, bytes), entry| {
                (
                    keys + 1,
                    bytes + entry.key().len() as u64 + entry.value().value.len() as u64,
                )
            });
        assert_eq!((usage.keys, usage.bytes), (keys, bytes));
        assert!(usage.keys <= 500 && usage.bytes <= 20_000, "{usage:?}");
        assert_eq!(
            namespace.ring.lock().unwrap().len() as u64,
            keys,
            "every key is in the ring once"
        );
    }

    #[test]
    fn queues_wake_subscribers_report_empty_and_refuse_when_full() {
        let store = SharedStore::default();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let id = store.register_queue("vm", "q", sender.clone(), 7);
        assert_eq!(store.register_queue("vm", "q", sender, 7), id);
        assert_eq!(store.resolve_queue("vm", "q"), Some(id));
        assert_eq!(store.resolve_queue("vm", "nope"), None);
        assert_eq!(store.dequeue(id), Err(Status::Empty));
        store.enqueue(id, Bytes::from_static(b"x"), 2).unwrap();
        assert!(matches!(
            receiver.try_recv(),
            Ok(VmEvent::QueueReady {
                root_context: 7,
                ..
            })
        ));
        assert!(
            receiver.try_recv().is_err(),
            "one subscription, one wake-up"
        );
        store.enqueue(id, Bytes::from_static(b"y"), 2).unwrap();
        assert_eq!(
            store.enqueue(id, Bytes::from_static(b"z"), 2),
            Err(Status::InternalFailure)
        );
        assert_eq!(store.dequeue(id).unwrap(), "x");
        store.enqueue(id, Bytes::from_static(b"z"), 2).unwrap();
        assert_eq!(store.enqueue(9999, Bytes::new(), 2), Err(Status::NotFound));
    }

    #[test]
    fn a_new_subscriber_is_woken_for_items_already_queued() {
        let store = SharedStore::default();
        let (first, first_events) = tokio::sync::mpsc::unbounded_channel();
        let id = store.register_queue("vm", "q", first, 1);
        drop(first_events);
        store.enqueue(id, Bytes::from_static(b"x"), 10).unwrap();
        let (second, mut second_events) = tokio::sync::mpsc::unbounded_channel();
        store.register_queue("vm", "q", second.clone(), 2);
        assert!(matches!(
            second_events.try_recv(),
            Ok(VmEvent::QueueReady { root_context: 2, queue }) if queue == id
        ));
        store.register_queue("vm", "q", second, 2);
        assert!(
            second_events.try_recv().is_err(),
            "registering again is no new subscription"
        );
    }

    #[test]
    fn keys_are_bytes_not_text() {
        // Two keys that differ only in bytes that are not UTF-8 (a header value with
        // obs-text, say) are two keys, as in Envoy; made into text they would be one.
        let store = SharedStore::default();
        store
            .set("vm", b"limit-\xff", value("1"), 0, &UNLIMITED)
            .unwrap();
        store
            .set("vm", b"limit-\xfe", value("2"), 0, &UNLIMITED)
            .unwrap();
        assert_eq!(&*store.get("vm", b"limit-\xff").unwrap().0, b"1");
        assert_eq!(&*store.get("vm", b"limit-\xfe").unwrap().0, b"2");
        assert!(store.get("vm", "limit-\u{fffd}".as_bytes()).is_none());
        assert_eq!(store.usage("vm").unwrap().keys, 2);
    }
}
