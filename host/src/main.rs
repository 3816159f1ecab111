//! The `tollgate` command: parses arguments, sets up logging and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A proxy allocates and frees many small buffers per request; mimalloc does that with
// less work than the system allocator (measured in bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc settings the gateway runs with unless the environment says otherwise. By
/// default mimalloc commits its arena up front where the kernel overcommits (Linux) and
/// never gives freed memory in such an arena back, so every peak — loading modules,
/// starting a VM per plugin and worker — stays resident for the life of the process. An
/// arena committed on demand is purged once freed memory has lain unused for the purge
/// delay (mimalloc's default: 1 s). bench/README.md ("Memory") has the figures.
const ALLOCATOR_SETTINGS: [(&str, &str); 2] = [
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "100"),
];

/// mimalloc reads its settings from the environment before `main` runs, so the process
/// executes itself once more (same pid, arguments and `argv[0]`) with the missing ones
/// set. When that fails the gateway runs on with mimalloc's defaults.
fn apply_allocator_settings() {
    use std::os::unix::process::CommandExt;
    let missing: Vec<_> = ALLOCATOR_SETTINGS
        .iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(executable) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(executable);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args);
    for (name, value) in missing {
        command.env(name, value);
    }
    // `exec` returns only when it failed.
    let _ = command.exec();
}

// mimalloc's own collection, part of the library the allocator above links (its Rust crate
// does not expose it).
extern "C" {
    fn mi_collect(force: bool);
}

/// Gives the memory a burst of work freed back to the system at once (see
/// `tollgate::allocator`): a forced collection frees the calling thread's empty pages and
/// purges every arena page that is free (threads that ended, such as the compiler's, left
/// theirs to the arenas), instead of waiting for later allocations on the thread to do it.
#[allow(unsafe_code)] // a call without arguments into the allocator the binary runs on
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks the allocator's own structures; it is safe to call
    // from any thread at any time.
    unsafe { mi_collect(true) }
}
use tollgate::telemetry::{init_logging, LogFormat};

/// An API gateway whose behaviour lives in proxy-wasm plugins.
#[derive(Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the policies until SIGTERM, then drain in-flight requests and exit.
    Run {
        /// Folder of policy files (*.yaml, *.yml, *.json), merged.
        #[arg(long, default_value = "policies", env = "TOLLGATE_POLICIES")]
        policies: PathBuf,
        /// Folder of plugin modules (*.wasm), watched for changes; `just plugins` fills it.
        #[arg(long, default_value = "plugins/dist", env = "TOLLGATE_PLUGINS")]
        plugins: PathBuf,
        /// Address of the admin listener (/healthz, /readyz, /config, /metrics).
        #[arg(long, default_value = "127.0.0.1:9901", env = "TOLLGATE_ADMIN")]
        admin: SocketAddr,
        /// File holding a bearer token that every admin POST (such as /reload) must present
        /// as `Authorization: Bearer TOKEN`; surrounding whitespace is trimmed.
        #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text", env = "TOLLGATE_LOG_FORMAT")]
        log_format: LogFormat,
        /// Worker threads, each with its own event loop and listener sockets
        /// (default: one per CPU).
        #[arg(long, env = "TOLLGATE_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate the policies (files, fields, references, certificates) without serving.
    Check {
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        #[arg(long, default_value = "plugins/dist")]
        plugins: PathBuf,
    },
    /// Write the policies in another proxy's terms (YAML on stdout). Fields the target
    /// cannot express are named on stderr as warnings.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
    /// Turn another proxy's configuration into a policies folder.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Serve Envoy's rate limit service API (gRPC ShouldRateLimit) with counters in Redis,
    /// for limits and quotas shared by every gateway replica; also /healthz and /metrics.
    Ratelimit {
        /// Address to serve gRPC (HTTP/2 without TLS), /healthz and /metrics on.
        #[arg(
            long,
            default_value = "127.0.0.1:8081",
            env = "TOLLGATE_RATELIMIT_LISTEN"
        )]
        listen: SocketAddr,
        /// Redis holding the counters: redis://[user:password@]host:port[/db], or rediss://
        /// for TLS.
        #[arg(long, env = "TOLLGATE_RATELIMIT_REDIS")]
        redis: String,
        /// How long a call waits for Redis before it fails (the caller then applies its
        /// failure mode).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        redis_timeout: std::time::Duration,
        /// Prepended to every Redis key, so that deployments can share one Redis.
        #[arg(long, default_value = "tollgate:rl:")]
        key_prefix: String,
        /// Threads serving calls (default: one per CPU). With 1, the service runs on one
        /// event loop and never hands a call between threads.
        #[arg(long, env = "TOLLGATE_RATELIMIT_WORKERS")]
        workers: Option<usize>,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text", env = "TOLLGATE_LOG_FORMAT")]
        log_format: LogFormat,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    tollgate::config::duration::parse(text).map_err(|error| error.to_string())
}

#[derive(Subcommand)]
enum ExportTarget {
    /// An Envoy v3 bootstrap: listeners, routes, clusters, one wasm filter per plugin.
    Envoy {
        #[command(flatten)]
        from: ExportFrom,
    },
    /// Istio resources: Gateway, VirtualService, DestinationRule, ServiceEntry, WasmPlugin.
    Istio {
        #[command(flatten)]
        from: ExportFrom,
        /// `metadata.namespace` of every resource (default: none, the namespace of
        /// `kubectl apply`).
        #[arg(long)]
        namespace: Option<String>,
        /// Where Istio fetches the modules: a prefix such as `oci://registry.example/plugins/`
        /// or `https://example.com/plugins/` (default: `file://` URLs of the --plugins folder).
        #[arg(long)]
        module_url_prefix: Option<String>,
    },
}

/// What an export reads, and how strict it is.
#[derive(clap::Args)]
struct ExportFrom {
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    #[arg(long, default_value = "plugins/dist")]
    plugins: PathBuf,
    /// Fail, writing nothing, when a field cannot be expressed in the target.
    #[arg(long)]
    strict: bool,
}

#[derive(Subcommand)]
enum ImportSource {
    /// Istio resources (multi-document YAML files) into a policies folder.
    Istio {
        /// Files of Gateway, VirtualService, DestinationRule, ServiceEntry and WasmPlugin
        /// resources.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The policies folder to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Fail, writing nothing, when a field cannot be expressed in the policies.
        #[arg(long)]
        strict: bool,
    },
}

fn main() -> ExitCode {
    apply_allocator_settings();
    tollgate::allocator::set_release_freed_memory(release_freed_memory);
    match Cli::parse().command {
        Command::Run {
            policies,
            plugins,
            admin,
            admin_token_file,
            log_format,
            workers,
        } => {
            init_logging(log_format);
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let options = tollgate::Options {
                policies,
                plugins,
                admin,
                admin_token_file,
                workers,
            };
            let result = tollgate::Gateway::start(&options)
                .and_then(|gateway| gateway.wait_for_signal_and_drain());
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("tollgate: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { policies, plugins } => {
            match tollgate::snapshot::check(&policies, &plugins) {
                Ok(snapshot) => {
                    let config = &snapshot.config;
                    let routes: usize = config.virtual_hosts.iter().map(|v| v.routes.len()).sum();
                    println!(
                        "{}: ok ({} listeners, {} clusters, {} routes, {} plugin instances)",
                        policies.display(),
                        config.listeners.len(),
                        config.clusters.len(),
                        routes,
                        config.plugins.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{} is invalid:", policies.display());
                    for error in &errors.0 {
                        eprintln!("  {error}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Export { target } => {
            let (from, translated) = match target {
                ExportTarget::Envoy { from } => {
                    let translated = tollgate::mesh::envoy::export(&from.policies, &from.plugins);
                    (from, translated)
                }
                ExportTarget::Istio {
                    from,
                    namespace,
                    module_url_prefix,
                } => {
                    let options = tollgate::mesh::istio_export::ExportOptions {
                        namespace,
                        module_url_prefix,
                    };
                    let translated = tollgate::mesh::istio_export::export_with(
                        &from.policies,
                        &from.plugins,
                        &options,
                    );
                    (from, translated)
                }
            };
            match translated {
                Ok(translation) => {
                    if !report_losses(&translation.losses, from.strict) {
                        return ExitCode::FAILURE;
                    }
                    print!("{}", translation.output);
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("tollgate: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Import {
            source: ImportSource::Istio { files, out, strict },
        } => match tollgate::mesh::istio_import::import(&files) {
            Ok(translation) => {
                if !report_losses(&translation.losses, strict) {
                    return ExitCode::FAILURE;
                }
                match write_policies(&out, &translation.output) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("tollgate: {error:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(error) => {
                eprintln!("tollgate: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ratelimit {
            listen,
            redis,
            redis_timeout,
            key_prefix,
            workers,
            log_format,
        } => {
            init_logging(log_format);
            let options = tollgate::ratelimit::Options {
                listen,
                redis,
                redis_timeout,
                key_prefix,
                workers: workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            };
            match tollgate::ratelimit::serve(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("tollgate: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints what a translation could not carry over: warnings, or under `--strict` errors.
/// Returns whether the output may be written.
fn report_losses(losses: &tollgate::mesh::Losses, strict: bool) -> bool {
    let level = if strict { "error" } else { "warning" };
    for loss in losses.iter() {
        eprintln!("{level}: {loss}");
    }
    if strict && !losses.is_empty() {
        eprintln!("tollgate: nothing written: --strict and the fields above cannot be expressed");
        return false;
    }
    true
}

/// Writes the policy files of an import into `out`.
fn write_policies(out: &std::path::Path, files: &[(String, String)]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, contents) in files {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
