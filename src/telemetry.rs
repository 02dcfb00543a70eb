//! Logging: plain or JSON lines on standard error, filtered by `--log-level` or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The causes of `e` (its sources, not `e` itself), joined with `: `.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// `e` and its causes on one line, for logs and health reasons.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let causes = causes(e);
    if causes.is_empty() { e.to_string() } else { format!("{e}: {causes}") }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter does not parse.
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The filter.
        filter: String,
        /// The cause.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A subscriber was already installed.
    #[error("logging was already set up")]
    Init(#[source] tracing_subscriber::util::TryInitError),
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => env,
        _ => level.to_owned(),
    };
    let filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter { filter, source })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.with_ansi(false).finish().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).finish().try_init(),
    }
    .map_err(TelemetryError::Init)
}
