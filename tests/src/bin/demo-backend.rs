//! The demo's upstream: an echo server to put behind the gateway, the certificates the
//! demo's HTTPS listener uses, and a billing collector for the `metering` plugin.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use tollgate_tests::backends;
use tollgate_tests::certs::CertAuthority;

#[derive(Parser)]
#[command(version, about = "Demo backend and certificates for the Tollgate demo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the echo backend (HTTP/1.1 and h2c) until interrupted.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Reported in the `x-backend` header and the JSON body.
        #[arg(long, default_value = "v1")]
        name: String,
    },
    /// Collect usage records: every POSTed batch (a JSON array of records, or an object
    /// with a `records` array) is appended to FILE, one JSON line per record, and answered
    /// `200`. A batch whose key (the `idempotency-key` header, else the body's `batch_id`)
    /// was seen before is answered `200` and not written again. While a file `FILE.down`
    /// exists every request is answered `503` and nothing is written (to simulate an
    /// outage).
    Billing {
        #[arg(long, default_value = "127.0.0.1:9002")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write ca.crt, demo.crt and demo.key into a folder; existing files are kept.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated DNS names (or IP addresses) of the server certificate.
        #[arg(long, value_delimiter = ',', default_value = "demo.local,localhost")]
        names: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { listen, name } => serve(listen, &name).await,
        Command::Certs { out, names } => write_certs(&out, &names),
        Command::Billing { listen, out } => billing::serve(listen, out).await,
    }
}

async fn serve(listen: SocketAddr, name: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Kept alive until the end of main: dropping it stops the server.
    let backend = backends::echo_on(listener, name);
    println!("demo-backend {name} listening on http://{}", backend.addr());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn write_certs(out: &Path, names: &[String]) -> anyhow::Result<()> {
    let files = ["ca.crt", "demo.crt", "demo.key"].map(|name| out.join(name));
    if files.iter().all(|file| file.exists()) {
        println!("keeping the certificates in {}", out.display());
        return Ok(());
    }
    // The CA key is not kept, so a partial set cannot be completed: issue a fresh set.
    std::fs::create_dir_all(out)?;
    let ca = CertAuthority::new("Tollgate demo CA");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ca.write(out, "ca.crt");
    ca.server_cert(&names).write(out, "demo");
    println!(
        "wrote ca.crt, demo.crt and demo.key for {} into {}",
        names.join(", "),
        out.display()
    );
    Ok(())
}

mod billing {
    //! The demo billing collector (`demo-backend billing`). It keeps the keys of the batches
    //! it stored, in memory, so that a batch sent again (its answer was lost or late) is
    //! stored once; the keys do not survive a restart of the collector.

    use std::collections::HashSet;
    use std::fs::OpenOptions;
    use std::io::Write as _;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::Value;
    use tokio::sync::Mutex;

    pub async fn serve(listen: SocketAddr, out: PathBuf) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!(
            "demo-backend billing listening on http://{}, appending to {}",
            listener.local_addr()?,
            out.display()
        );
        // One writer at a time, so concurrent batches never interleave their lines, and a
        // repeat that arrives while its first copy is written is seen as one.
        let out = Arc::new(Mutex::new(Store {
            out,
            seen: HashSet::new(),
        }));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let out = out.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(request, out.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

    /// Where batches go, and the keys of those already there.
    struct Store {
        out: PathBuf,
        seen: HashSet<String>,
    }

    fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::from(body))
            .expect("valid response")
    }

    fn down_marker(out: &Path) -> PathBuf {
        let mut name = out.as_os_str().to_owned();
        name.push(".down");
        PathBuf::from(name)
    }

    async fn handle(
        request: Request<Incoming>,
        out: Arc<Mutex<Store>>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        if request.method() != Method::POST {
            return Ok(answer(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"POST a batch of usage records"}"#.into(),
            ));
        }
        let header_key = request
            .headers()
            .get("idempotency-key")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => {
                return Ok(answer(
                    StatusCode::BAD_REQUEST,
                    format!(r#"{{"error":"reading the body: {error}"}}"#),
                ))
            }
        };
        let mut store = out.lock().await;
        if down_marker(&store.out).exists() {
            return Ok(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"billing is down"}"#.into(),
            ));
        }
        let mut body_key = None;
        let records = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(records)) => records,
            Ok(Value::Object(mut object)) => match object.remove("records") {
                Some(Value::Array(records)) => {
                    body_key = object
                        .get("batch_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    records
                }
                _ => {
                    return Ok(answer(
                        StatusCode::BAD_REQUEST,
                        r#"{"error":"expected an array of records or {\"records\": [...]}"}"#
                            .into(),
                    ))
                }
            },
            _ => {
                return Ok(answer(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"expected a JSON array of usage records"}"#.into(),
                ))
            }
        };
        let key = header_key.or(body_key);
        if key.as_ref().is_some_and(|key| store.seen.contains(key)) {
            return Ok(answer(
                StatusCode::OK,
                r#"{"accepted":0,"duplicate":true}"#.into(),
            ));
        }
        let mut lines = String::new();
        for record in &records {
            lines.push_str(&record.to_string());
            lines.push('\n');
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&store.out)
            .and_then(|mut file| file.write_all(lines.as_bytes()));
        if written.is_ok() {
            if let Some(key) = key {
                store.seen.insert(key);
            }
        }
        Ok(match written {
            Ok(()) => answer(
                StatusCode::OK,
                format!(r#"{{"accepted":{}}}"#, records.len()),
            ),
            Err(error) => answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": error.to_string() }).to_string(),
            ),
        })
    }
}
