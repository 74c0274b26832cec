//! How every Genesis Mesh binary logs: to stderr, as text or as JSON lines (`--log-format`),
//! with ANSI colour only when stderr is a terminal and `NO_COLOR` is not set, so `kubectl logs`
//! and log files never carry escape codes. The filter comes from `RUST_LOG` (default `info`).

use std::io::IsTerminal;
use std::str::FromStr;

use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (what log collectors want; the chart's default).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is not one of: text, json")),
        }
    }
}

/// Whether to colour: stderr is a terminal and `NO_COLOR` is unset or empty (no-color.org).
pub fn colour() -> bool {
    colour_for(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))
}

fn colour_for(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The output layer for `format`, writing to stderr.
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(colour()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).flatten_event(true).boxed(),
    }
}

/// The filter from `RUST_LOG`, `info` when unset or invalid.
pub fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())
}

/// Installs the global subscriber (a binary without a reloadable filter).
pub fn init(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry().with(env_filter()).with(layer(format)).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_a_typo_is_named() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        let e = "jsno".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("\"jsno\"") && e.contains("text, json"), "{e}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some("".into())), "an empty NO_COLOR does not count");
        assert!(!colour_for(true, Some("1".into())));
        assert!(!colour_for(false, None), "a file or kubectl logs gets no escape codes");
    }
}
