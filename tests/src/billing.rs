//! The demo billing collector (`demo-backend billing`) as a child process, for tests of
//! the `metering` plugin: it appends every usage record it accepts to a JSON-lines file and
//! answers `503` while the file's `.down` marker exists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::gateway::free_loopback_addr;

/// The collector, killed when dropped.
pub struct BillingCollector {
    child: Child,
    _dir: TempDir,
    out: PathBuf,
    addr: SocketAddr,
}

impl BillingCollector {
    /// Starts `binary` (an integration test passes `env!("CARGO_BIN_EXE_demo-backend")`)
    /// and waits until it listens.
    pub async fn start(binary: impl AsRef<Path>) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = dir.path().join("usage.jsonl");
        let addr = free_loopback_addr();
        let mut child = Command::new(binary.as_ref())
            .args(["billing", "--listen", &addr.to_string(), "--out"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn demo-backend billing");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Self {
                    child,
                    _dir: dir,
                    out,
                    addr,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the billing collector did not listen on {addr}");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While this file exists the collector answers `503` and stores nothing.
    pub fn down_marker(&self) -> PathBuf {
        self.out.with_extension("jsonl.down")
    }

    /// The records stored so far. The collector may be appending while this reads, so a
    /// last line without its newline is not a record yet.
    pub fn records(&self) -> Vec<Value> {
        complete_records(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Requests billed so far: the sum of the records' `requests`.
    pub fn billed(&self) -> u64 {
        self.records()
            .iter()
            .map(|record| record["requests"].as_u64().expect("requests is a number"))
            .sum()
    }

    /// Waits (bounded) until at least `count` records arrived; returns them.
    pub async fn wait_for_records(&self, count: usize, timeout: Duration) -> Vec<Value> {
        self.wait_until(timeout, Self::records, |records| records.len() >= count)
            .await
    }

    /// Waits (bounded) until at least `count` requests are billed; returns the total.
    pub async fn wait_for_billed(&self, count: u64, timeout: Duration) -> u64 {
        self.wait_until(timeout, Self::billed, |billed| *billed >= count)
            .await
    }

    /// Reads with `read` until `enough` holds or `timeout` passed; returns the last read
    /// either way, so the caller's assertion shows what was seen.
    async fn wait_until<T>(
        &self,
        timeout: Duration,
        read: impl Fn(&Self) -> T,
        enough: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = read(self);
            if enough(&seen) || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for BillingCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The records of a JSON-lines text, up to its last newline.
fn complete_records(text: &str) -> Vec<Value> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record per line"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::complete_records;

    #[test]
    fn a_record_still_being_appended_is_not_read() {
        let text = "{\"requests\":1}\n{\"requests\":2}\n{\"requests\":3,\"consu";
        let records = complete_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1]["requests"], 2);
        assert!(complete_records("{\"requests\":1").is_empty());
        assert!(complete_records("").is_empty());
    }
}
