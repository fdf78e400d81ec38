//! The agent's `log::Log` implementation: one line per record, to `/dev/kmsg` when PID 1 (so it
//! lands in the kernel log and on the console) and to stderr otherwise.
//!
//! The logger keeps no state and takes no lock, so the panic hook can log from any thread at any
//! time. On kmsg it opens the device for every record: the kernel rate-limits writes per open
//! file (10 lines per 5 s unless `printk.devkmsg=on`), and a boot logs more than that in its
//! first second. Agent logging is rare, so the extra `open` costs nothing that matters. When
//! `/dev/kmsg` cannot be opened (before `/dev` is mounted) the record goes to stderr.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record, SetLoggerError};

/// The kernel log device.
pub const KMSG: &str = "/dev/kmsg";

/// The name every line starts with.
pub const NAME: &str = "vmux-agent";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// `/dev/kmsg`, with `<N>` priority prefixes (PID 1).
    Kmsg,
    /// Standard error (not PID 1).
    Stderr,
}

struct Logger {
    sink: Sink,
}

static KMSG_LOGGER: Logger = Logger { sink: Sink::Kmsg };
static STDERR_LOGGER: Logger = Logger { sink: Sink::Stderr };

/// Installs the logger for `sink` with `level` as the maximum; fails if a logger is already set.
pub fn init(sink: Sink, level: LevelFilter) -> Result<(), SetLoggerError> {
    log::set_logger(match sink {
        Sink::Kmsg => &KMSG_LOGGER,
        Sink::Stderr => &STDERR_LOGGER,
    })?;
    log::set_max_level(level);
    Ok(())
}

/// Changes the maximum level after settings are known.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// The syslog priority the kernel expects in a kmsg prefix for `level`.
pub fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one record as the single line written to `sink`.
pub fn format_line(sink: Sink, level: Level, message: &fmt::Arguments<'_>) -> String {
    let mut line = match sink {
        Sink::Kmsg => format!("<{}>{NAME}: {message}", kmsg_priority(level)),
        Sink::Stderr => {
            let name = level.as_str().to_ascii_lowercase();
            format!("{NAME}: {name}: {message}")
        }
    };
    while line.ends_with('\n') {
        line.pop();
    }
    line.push('\n');
    line
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(self.sink, record.level(), record.args());
        if self.sink == Sink::Kmsg && write_kmsg(&line).is_ok() {
            return;
        }
        let line = match self.sink {
            Sink::Kmsg => format_line(Sink::Stderr, record.level(), record.args()),
            Sink::Stderr => line,
        };
        // Nothing sensible is left to do when stderr itself fails.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Writes one record to the kernel log in a single `write(2)` (kmsg takes one record per write).
fn write_kmsg(line: &str) -> std::io::Result<()> {
    let mut kmsg = OpenOptions::new().write(true).open(KMSG)?;
    let written = kmsg.write(line.as_bytes())?;
    if written == line.len() {
        Ok(())
    } else {
        Err(std::io::ErrorKind::WriteZero.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_lines_carry_syslog_priorities() {
        let cases = [
            (Level::Error, "<3>vmux-agent: boom 7\n"),
            (Level::Warn, "<4>vmux-agent: boom 7\n"),
            (Level::Info, "<6>vmux-agent: boom 7\n"),
            (Level::Debug, "<7>vmux-agent: boom 7\n"),
            (Level::Trace, "<7>vmux-agent: boom 7\n"),
        ];
        for (level, want) in cases {
            assert_eq!(
                format_line(Sink::Kmsg, level, &format_args!("boom {}", 7)),
                want
            );
        }
    }

    #[test]
    fn stderr_lines_name_the_level_in_words() {
        assert_eq!(
            format_line(Sink::Stderr, Level::Warn, &format_args!("careful")),
            "vmux-agent: warn: careful\n"
        );
    }

    #[test]
    fn every_line_ends_with_exactly_one_newline() {
        assert_eq!(
            format_line(Sink::Kmsg, Level::Info, &format_args!("done\n\n")),
            "<6>vmux-agent: done\n"
        );
    }
}
