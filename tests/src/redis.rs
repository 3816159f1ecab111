//! A real `redis-server` for tests: started on a free loopback port with nothing persisted,
//! stopped and started again on the same port to test recovery, killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::free_loopback_addr;

pub struct RedisServer {
    addr: SocketAddr,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start() -> Self {
        let mut server = Self {
            addr: free_loopback_addr(),
            child: None,
        };
        server.restart().await;
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port, empty; waits until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "start redis-server (the Debian package redis-server; `just test` installs it)",
            );
        self.child = Some(child);
        for _ in 0..200 {
            if self
                .command(&["PING"])
                .await
                .is_ok_and(|answer| answer == "+PONG")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "redis-server on {} did not answer PING within 5 s",
            self.addr
        );
    }

    /// Sends one command and returns the first line of the answer (`+PONG`, `:42`, `$-1`…).
    pub async fn command(&self, words: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 512];
        while !answer.ends_with(b"\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
                .await
                .map_err(|_| std::io::Error::other("redis did not answer"))??;
            if read == 0 {
                return Err(std::io::Error::other("redis closed the connection"));
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        let line = String::from_utf8_lossy(&answer);
        Ok(line.lines().next().unwrap_or_default().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
