//! `tollgate ratelimit` for tests: the service process on a free loopback port, and a gRPC
//! client for its one method. The messages are the service's own definitions, so a test
//! speaks exactly the protocol the service decodes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use prost::Message;

use crate::clients::{HttpClient, HttpResponse};
use crate::gateway::{free_loopback_addr, tollgate_binary};

#[path = "../../host/src/ratelimit/proto.rs"]
pub mod proto;

pub struct RateLimitService {
    addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// The arguments after `--listen ADDR`.
    args: Vec<String>,
    client: HttpClient,
}

impl RateLimitService {
    /// Starts `tollgate ratelimit --redis URL` and waits until it accepts connections.
    pub async fn start(redis_url: &str) -> Self {
        Self::start_with_args(redis_url, &[]).await
    }

    pub async fn start_with_args(redis_url: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder for the service's log");
        let mut args = vec!["--redis".to_owned(), redis_url.to_owned()];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let mut service = Self {
            addr: free_loopback_addr(),
            child: None,
            log: dir.path().join("ratelimit.log"),
            _dir: dir,
            args,
            client: HttpClient::h2c(),
        };
        service.restart().await;
        service
    }

    /// Starts the process (again, after [`RateLimitService::kill`]) on the same address and
    /// waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let file = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the service log");
        let child = Command::new(tollgate_binary())
            .args(["ratelimit", "--listen", &self.addr.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn tollgate ratelimit");
        self.child = Some(child);
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "tollgate ratelimit did not listen within 10 s:\n{}",
            self.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Calls `ShouldRateLimit`: the decoded answer, or the gRPC status and message of a
    /// failed call.
    pub async fn should_rate_limit(
        &self,
        request: &proto::RateLimitRequest,
    ) -> Result<proto::RateLimitResponse, (u32, String)> {
        let message = request.encode_to_vec();
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.put_u8(0);
        framed.put_u32(message.len() as u32);
        framed.put_slice(&message);
        let answer = self
            .call(proto::SHOULD_RATE_LIMIT_PATH, framed.freeze())
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "gRPC answers have HTTP status 200"
        );
        let grpc_status = answer
            .trailers
            .as_ref()
            .and_then(|trailers| trailers.get("grpc-status"))
            .or_else(|| answer.headers.get("grpc-status"))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u32>().ok())
            .expect("a grpc-status");
        if grpc_status != 0 {
            let message = answer
                .header("grpc-message")
                .unwrap_or_default()
                .to_string();
            return Err((grpc_status, message));
        }
        assert!(answer.body.len() >= 5, "one message in the body");
        Ok(proto::RateLimitResponse::decode(&answer.body[5..]).expect("a RateLimitResponse"))
    }

    /// POSTs a gRPC body to `path` and returns the whole answer.
    pub async fn call(&self, path: &str, body: Bytes) -> HttpResponse {
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body))
            .expect("a valid request");
        self.client
            .send(request)
            .await
            .expect("the service answers")
    }

    /// `GET PATH` over HTTP/1.1 (`/healthz`, `/metrics`).
    pub async fn get(&self, path: &str) -> HttpResponse {
        HttpClient::http1().get(self.addr, "localhost", path).await
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- tollgate ratelimit log:\n{}", self.log());
        }
    }
}

/// A descriptor with one entry per (key, value) and a limit override.
pub fn descriptor(
    entries: &[(&str, &str)],
    requests_per_unit: u32,
    unit: proto::Unit,
) -> proto::RateLimitDescriptor {
    proto::RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| proto::Entry {
                key: (*key).into(),
                value: (*value).into(),
            })
            .collect(),
        limit: Some(proto::RateLimitOverride {
            requests_per_unit,
            unit: unit as i32,
        }),
        hits_addend: None,
    }
}

/// Waits until at least `margin` is left in the current minute, so that a test counting
/// against a per-minute window does not see it reset halfway.
pub async fn wait_for_fresh_minute(margin: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after the epoch");
    let into_minute = Duration::from_millis((now.as_millis() % 60_000) as u64);
    if Duration::from_secs(60) - into_minute < margin {
        tokio::time::sleep(Duration::from_secs(60) - into_minute + Duration::from_millis(50)).await;
    }
}
