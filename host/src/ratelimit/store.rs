//! The counters in Redis: one key per descriptor and window, added to and read back by one
//! Lua script, so every descriptor of a request is counted in one atomic round trip whatever
//! the number of service replicas.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, Script};

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

/// One counter to add to: its key, the hits, and how long the key lives (milliseconds).
pub struct Hit {
    pub key: String,
    pub hits: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

pub struct Store {
    connection: ConnectionManager,
    script: Script,
    timeout: Duration,
}

impl Store {
    /// Connects lazily: the service starts (and answers with errors) while Redis is down,
    /// and reconnects by itself when Redis comes back.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client =
            Client::open(url).map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| anyhow::anyhow!("--redis {url}: {error}"))?;
        Ok(Self {
            connection,
            script: Script::new(ADD_HITS),
            timeout,
        })
    }

    /// Adds the hits in one script run; every key's count after it, in order.
    pub async fn add(&self, hits: &[Hit]) -> Result<Vec<u64>, StoreError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.script.prepare_invoke();
        for hit in hits {
            invocation
                .key(&hit.key)
                .arg(hit.hits)
                .arg(hit.ttl_ms.max(1));
        }
        let mut connection = self.connection.clone();
        let run = invocation.invoke_async::<Vec<u64>>(&mut connection);
        match tokio::time::timeout(self.timeout, run).await {
            Ok(counts) => Ok(counts?),
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
