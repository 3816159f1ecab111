//! Logs, metrics and traces. Logs go through `tracing`: text or JSON lines on stderr, with one
//! access-log line per request under the `access` target. Traces (`server.tracing`) are
//! OpenTelemetry spans sent to a collector ([`tracing`]).

pub mod metrics;
pub mod redaction;
pub mod response_details;
pub mod tracing;

use tracing_subscriber::EnvFilter;

/// The log line format chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. The level comes from `TOLLGATE_LOG` (an `EnvFilter`
/// directive such as `info` or `tollgate=debug,access=off`), default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.with_target(true).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // A second initialisation (tests embedding the gateway) keeps the first subscriber.
    let _ = result;
}
