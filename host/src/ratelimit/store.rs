//! The counters in Redis: one key per descriptor and window, added to and read back by one
//! Lua script, so every descriptor of a request is counted in one atomic round trip whatever
//! the number of service replicas.
//!
//! Calls that arrive while a script run is under way wait for it and then go to Redis
//! together, in the next run: one script run adds the hits of every call in it (a key hit
//! by several calls once, with their sum), and each call gets the counts it would have seen
//! alone, replayed in arrival order. An idle service
//! sends each call at once; a busy one pays Redis' per-command cost once per batch instead
//! of once per call (the bench's figures are in bench/README.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::sync::{mpsc, oneshot};

use super::metrics::ServiceMetrics;

/// Adds each key's hits and returns every key's count after it. A key is created with the
/// expiry of its window (and gets it again if it ever lost it), so Redis forgets a window
/// once it is over. Hits of 0 only read.
const ADD_HITS: &str = r"
local counts = {}
for i, key in ipairs(KEYS) do
  local hits = tonumber(ARGV[2 * i - 1])
  if hits > 0 then
    counts[i] = redis.call('INCRBY', key, hits)
    if redis.call('PTTL', key) < 0 then
      redis.call('PEXPIRE', key, ARGV[2 * i])
    end
  else
    counts[i] = tonumber(redis.call('GET', key) or '0')
  end
end
return counts
";

/// The most keys one script run carries; a batch stops growing there, so that one run
/// never holds Redis for long.
const MAX_KEYS_PER_RUN: usize = 512;

/// How many calls may wait for the next run before new ones fail at once (UNAVAILABLE):
/// a bound on memory while Redis is slow.
const MAX_WAITING_CALLS: usize = 65_536;

/// One counter to add to: its key, the hits, and how long the key lives (milliseconds).
pub struct Hit {
    pub key: String,
    pub hits: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
    #[error("too many calls are waiting for redis")]
    Overloaded,
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error.to_string())
    }
}

/// A call waiting for its counts.
struct Waiting {
    hits: Vec<Hit>,
    answer: oneshot::Sender<Result<Vec<u64>, StoreError>>,
}

pub struct Store {
    connection: ConnectionManager,
    waiting: mpsc::Sender<Waiting>,
    timeout: Duration,
}

impl Store {
    /// Connects lazily: the service starts (and answers with errors) while Redis is down,
    /// and reconnects by itself when Redis comes back. Must be called inside a tokio
    /// runtime: it starts the task that runs the scripts.
    pub fn new(url: &str, timeout: Duration, metrics: Arc<ServiceMetrics>) -> anyhow::Result<Self> {
        let client =
            Client::open(url).map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
        let (waiting, queue) = mpsc::channel(MAX_WAITING_CALLS);
        tokio::spawn(run_batches(connection.clone(), queue, timeout, metrics));
        Ok(Self {
            connection,
            waiting,
            timeout,
        })
    }

    /// Adds the hits atomically; every key's count after it, in order.
    pub async fn add(&self, hits: Vec<Hit>) -> Result<Vec<u64>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, counts) = oneshot::channel();
        self.waiting
            .try_send(Waiting { hits, answer })
            .map_err(|_| StoreError::Overloaded)?;
        // The batch task answers within its own timeout; this one covers a call that waited
        // behind a slow run.
        match tokio::time::timeout(self.timeout, counts).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(_)) => Err(StoreError::Redis("the batch was dropped".into())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Whether Redis answers a PING within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut connection)).await
        {
            Ok(answer) => answer.map(drop).map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// Runs the waiting calls' hits in batches, one script run at a time, until the store is
/// dropped.
async fn run_batches(
    connection: ConnectionManager,
    mut queue: mpsc::Receiver<Waiting>,
    timeout: Duration,
    metrics: Arc<ServiceMetrics>,
) {
    let script = Script::new(ADD_HITS);
    let mut batch: Vec<Waiting> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut keys = first.hits.len();
        batch.push(first);
        while keys < MAX_KEYS_PER_RUN {
            let Ok(next) = queue.try_recv() else { break };
            keys += next.hits.len();
            batch.push(next);
        }
        let started = Instant::now();
        let counts = run_script(&script, &connection, &batch, timeout).await;
        metrics.record_redis(started.elapsed(), counts.is_ok());
        let mut counts = counts.map(Vec::into_iter);
        for call in batch.drain(..) {
            let answer = match &mut counts {
                Ok(all) => Ok(all.by_ref().take(call.hits.len()).collect()),
                Err(error) => Err(error.clone()),
            };
            // The caller may have given up (its own timeout): nothing to tell it.
            let _ = call.answer.send(answer);
        }
    }
}

/// One script run over the hits of every call in the batch; every hit's count, in order.
///
/// A key that several calls of the batch hit (one busy client, one shared plan) goes to
/// Redis once, with the sum of their hits; each call's count is then replayed in arrival
/// order from the count before the batch, exactly as if the calls had run one by one.
async fn run_script(
    script: &Script,
    connection: &ConnectionManager,
    batch: &[Waiting],
    timeout: Duration,
) -> Result<Vec<u64>, StoreError> {
    let hits = || batch.iter().flat_map(|call| &call.hits);
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<(&Hit, u64)> = Vec::new();
    let slots: Vec<usize> = hits()
        .map(|hit| {
            let slot = *position.entry(&hit.key).or_insert_with(|| {
                distinct.push((hit, 0));
                distinct.len() - 1
            });
            distinct[slot].1 += hit.hits;
            slot
        })
        .collect();

    let mut invocation = script.prepare_invoke();
    for (hit, total) in &distinct {
        invocation.key(&hit.key).arg(*total).arg(hit.ttl_ms.max(1));
    }
    let mut connection = connection.clone();
    let run = invocation.invoke_async::<Vec<u64>>(&mut connection);
    let after = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(counts)) if counts.len() == distinct.len() => counts,
        Ok(Ok(counts)) => {
            return Err(StoreError::Redis(format!(
                "the script answered {} counts for {} keys",
                counts.len(),
                distinct.len()
            )))
        }
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => return Err(StoreError::Timeout(timeout)),
    };
    let mut running: Vec<u64> = after
        .iter()
        .zip(&distinct)
        .map(|(count, (_, total))| count.saturating_sub(*total))
        .collect();
    Ok(hits()
        .zip(slots)
        .map(|(hit, slot)| {
            running[slot] += hit.hits;
            running[slot]
        })
        .collect())
}
