//! Command-line flags: the source of [`Settings`] when the agent is started by a shell or a
//! service manager rather than as PID 1 (where flags, if any, are applied over the kernel
//! command line).
//!
//! This module owns the flag syntax and the usage text. It only fills [`Settings`]; required
//! values are checked later by [`Settings::resolve`], which knows whether the agent is PID 1.

use std::ffi::OsString;
use std::fmt;

use crate::settings::{parse_cid, parse_level, BadValue, Settings};

/// The usage text printed by `--help` and after a usage error.
pub const USAGE: &str = "\
usage: vmux-agent [--listen ADDR]... [--allow-cid CID]... [--log LEVEL] [--check]
       vmux-agent --help | --version

  --listen ADDR      listen on ADDR (repeatable; required unless PID 1, where it defaults to auto)
  --allow-cid CID    accept vsock connections from CID (repeatable, or CID,CID; default 2, the host)
  --log LEVEL        off, error, warn, info (default), debug or trace
  --check            print the resolved settings and exit
  -h, --help         print this help
  -V, --version      print the version

As PID 1 the agent reads vmux.listen=, vmux.allow_cid=, vmux.log=, vmux.modules= and vmux.test=
from the kernel command line.
";

/// What the command line asks the agent to do once settings are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve (the normal case).
    Run,
    /// Print the resolved settings and exit 0.
    Check,
    /// Print [`USAGE`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A command line that cannot be used.
#[derive(Debug)]
pub enum ArgsError {
    /// Unknown flag, missing value, stray argument or non-UTF-8 text.
    Syntax(lexopt::Error),
    /// A flag's value does not parse.
    BadValue(BadValue),
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgsError::Syntax(err) => err.fmt(f),
            ArgsError::BadValue(bad) => bad.fmt(f),
        }
    }
}

impl std::error::Error for ArgsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArgsError::Syntax(err) => Some(err),
            ArgsError::BadValue(bad) => Some(bad),
        }
    }
}

impl From<lexopt::Error> for ArgsError {
    fn from(err: lexopt::Error) -> Self {
        ArgsError::Syntax(err)
    }
}

impl From<BadValue> for ArgsError {
    fn from(bad: BadValue) -> Self {
        ArgsError::BadValue(bad)
    }
}

/// Applies the flags in `args` (without the program name) to `settings`.
///
/// `--help` and `--version` win as soon as they are seen, like in most tools.
pub fn parse<I>(args: I, settings: &mut Settings) -> Result<Action, ArgsError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_args(args);
    let mut action = Action::Run;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("listen") => settings.listen.push(parser.value()?.string()?),
            Long("allow-cid") => {
                let value = parser.value()?.string()?;
                for cid in value.split(',') {
                    settings.allow_cids.push(parse_cid("--allow-cid", cid)?);
                }
            }
            Long("log") => settings.log_level = parse_level("--log", &parser.value()?.string()?)?,
            Long("check") => action = Action::Check,
            Short('h') | Long("help") => return Ok(Action::Help),
            Short('V') | Long("version") => return Ok(Action::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter;

    fn run(args: &[&str]) -> (Result<Action, String>, Settings) {
        let mut settings = Settings::default();
        let result = parse(args.iter().copied(), &mut settings).map_err(|e| e.to_string());
        (result, settings)
    }

    #[test]
    fn collects_repeated_flags_in_order() {
        let (action, s) = run(&[
            "--listen",
            "vsock:1024",
            "--listen=unix:/run/vmux.sock",
            "--allow-cid",
            "2,3",
            "--allow-cid=9",
            "--log",
            "trace",
        ]);
        assert_eq!(action, Ok(Action::Run));
        assert_eq!(s.listen, vec!["vsock:1024", "unix:/run/vmux.sock"]);
        assert_eq!(s.allow_cids, vec![2, 3, 9]);
        assert_eq!(s.log_level, LevelFilter::Trace);
    }

    #[test]
    fn help_and_version_win_over_errors_after_them() {
        assert_eq!(run(&["--help", "--bogus"]).0, Ok(Action::Help));
        assert_eq!(run(&["-V"]).0, Ok(Action::Version));
        assert_eq!(run(&["--listen", "x", "--check"]).0, Ok(Action::Check));
    }

    #[test]
    fn usage_errors_are_one_line() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus"], "invalid option '--bogus'"),
            (&["--listen"], "missing argument for option '--listen'"),
            (&["stray"], "unexpected argument \"stray\""),
            (
                &["--log", "loud"],
                "invalid value \"loud\" for --log: expected off, error, warn, info, debug or trace",
            ),
            (
                &["--allow-cid", "2,host"],
                "invalid value \"host\" for --allow-cid: expected a decimal vsock CID",
            ),
        ];
        for (args, want) in cases {
            let (result, _) = run(args);
            assert_eq!(result, Err(want.to_string()), "args {args:?}");
            assert!(!want.contains('\n'));
        }
    }

    #[test]
    fn no_flags_leave_listen_empty_for_resolve_to_judge() {
        let (action, s) = run(&[]);
        assert_eq!(action, Ok(Action::Run));
        assert_eq!(s, Settings::default());
    }
}
