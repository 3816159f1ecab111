//! Shared data and shared queues: process-wide, namespaced by `vm_id`, visible to every VM
//! of that id on every worker thread (as in Envoy).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc::UnboundedSender;

use super::abi::Status;

/// A message to a VM's event loop on its own worker thread.
#[derive(Debug)]
pub enum VmEvent {
    QueueReady { root_context: u32, queue: u32 },
}

struct Entry {
    value: Bytes,
    cas: u32,
}

/// A queue and the root contexts that registered it (one per VM that called register).
pub struct Queue {
    items: Mutex<VecDeque<Bytes>>,
    subscribers: Mutex<Vec<(UnboundedSender<VmEvent>, u32)>>,
}

#[derive(Default)]
pub struct SharedStore {
    data: DashMap<(String, String), Entry>,
    queue_ids: DashMap<(String, String), u32>,
    queues: DashMap<u32, Arc<Queue>>,
}

static STORE: LazyLock<SharedStore> = LazyLock::new(SharedStore::default);
static NEXT_CAS: AtomicU32 = AtomicU32::new(1);
static NEXT_QUEUE: AtomicU32 = AtomicU32::new(1);

pub fn store() -> &'static SharedStore {
    &STORE
}

fn next_cas() -> u32 {
    loop {
        let cas = NEXT_CAS.fetch_add(1, Ordering::Relaxed);
        if cas != 0 {
            return cas;
        }
    }
}

impl SharedStore {
    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Bytes, u32)> {
        self.data
            .get(&(vm_id.to_string(), key.to_string()))
            .map(|entry| (entry.value.clone(), entry.cas))
    }

    /// Sets `key`: cas 0 writes unconditionally, a stale cas is CAS_MISMATCH, a missing key
    /// is created whatever the cas. Each successful set gets a new non-zero cas.
    pub fn set(&self, vm_id: &str, key: &str, value: Bytes, cas: u32) -> Result<(), Status> {
        use dashmap::mapref::entry::Entry as Slot;
        match self.data.entry((vm_id.to_string(), key.to_string())) {
            Slot::Occupied(mut occupied) => {
                if cas != 0 && occupied.get().cas != cas {
                    return Err(Status::CasMismatch);
                }
                *occupied.get_mut() = Entry {
                    value,
                    cas: next_cas(),
                };
            }
            Slot::Vacant(vacant) => {
                vacant.insert(Entry {
                    value,
                    cas: next_cas(),
                });
            }
        }
        Ok(())
    }

    /// Registers (idempotently) a queue and subscribes a root context of a VM to it.
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
            subscribers.push((events, root_context));
        }
        id
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queue_ids
            .get(&(vm_id.to_string(), name.to_string()))
            .map(|id| *id)
    }

    /// Appends to a queue and wakes its subscribers with `on_queue_ready`.
    pub fn enqueue(&self, id: u32, value: Bytes) -> Result<(), Status> {
        let queue = self
            .queues
            .get(&id)
            .map(|q| q.clone())
            .ok_or(Status::NotFound)?;
        queue
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(value);
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

    #[test]
    fn compare_and_swap_semantics() {
        let store = SharedStore::default();
        assert!(store.get("vm", "k").is_none());
        // A missing key is created whatever the cas.
        store
            .set("vm", "k", Bytes::from_static(b"1"), 12345)
            .unwrap();
        let (_, cas) = store.get("vm", "k").unwrap();
        assert_ne!(cas, 0);
        store.set("vm", "k", Bytes::from_static(b"2"), cas).unwrap();
        assert_eq!(
            store.set("vm", "k", Bytes::from_static(b"3"), cas),
            Err(Status::CasMismatch)
        );
        store.set("vm", "k", Bytes::from_static(b"4"), 0).unwrap();
        assert_eq!(store.get("vm", "k").unwrap().0, "4");
        // Namespaces are separate.
        assert!(store.get("other", "k").is_none());
    }

    #[test]
    fn queues_wake_subscribers_and_report_empty() {
        let store = SharedStore::default();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let id = store.register_queue("vm", "q", sender.clone(), 7);
        assert_eq!(store.register_queue("vm", "q", sender, 7), id);
        assert_eq!(store.resolve_queue("vm", "q"), Some(id));
        assert_eq!(store.resolve_queue("vm", "nope"), None);
        assert_eq!(store.dequeue(id), Err(Status::Empty));
        store.enqueue(id, Bytes::from_static(b"x")).unwrap();
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
        assert_eq!(store.dequeue(id).unwrap(), "x");
        assert_eq!(store.enqueue(9999, Bytes::new()), Err(Status::NotFound));
    }
}
