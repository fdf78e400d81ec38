//! A tiny `log::Log` that writes one line per record to stderr: `vmux-shim: LEVEL: message`.
//!
//! The level comes from `VMUX_LOG` (`off`, `error`, `warn`, `info`, `debug`, `trace`; default
//! `warn`). The logger keeps no state, so it can be used from any thread, including while the
//! terminal is in raw mode (lines then end with `\r\n` so they do not staircase).

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable naming the log level.
pub const ENV: &str = "VMUX_LOG";

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let eol = if crate::term::raw_mode_active() {
            "\r\n"
        } else {
            "\n"
        };
        let line = format!(
            "vmux-shim: {}: {}{eol}",
            record.level().as_str().to_ascii_lowercase(),
            record.args()
        );
        // One write per line so lines from different threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Parses a `VMUX_LOG` value; `None` for an unknown word.
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    value.trim().parse().ok()
}

/// Installs the logger with the level from `VMUX_LOG` (a bad value is reported and ignored).
pub fn init() {
    let level = match std::env::var(ENV) {
        Ok(value) => parse_level(&value).unwrap_or_else(|| {
            eprintln!("vmux-shim: ignoring {ENV}={value:?} (expected off, error, warn, info, debug or trace)");
            LevelFilter::Warn
        }),
        Err(_) => LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_level_words_case_insensitively() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level(" off "), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
