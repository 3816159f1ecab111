//! The demo's upstream: an echo server to put behind the gateway, and the certificates
//! the demo's HTTPS listener uses.
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
