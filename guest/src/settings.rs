//! The agent's settings: one [`Settings`] value filled from the kernel command line (PID 1) and
//! from command-line flags, then resolved once with [`Settings::resolve`].
//!
//! This module owns the defaults and the parsing of the value types that both sources share
//! (log levels, vsock CIDs). Listen addresses stay strings here: the library's transport module
//! parses them.

use std::fmt;

use log::LevelFilter;

/// The listen address used when the agent is PID 1 and nothing else was asked for.
pub const AUTO_LISTEN: &str = "auto";

/// The vsock CID of the host, the only peer accepted unless `allow_cid` says otherwise.
pub const HOST_CID: u32 = 2;

/// The log level when none is given.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;

/// Everything the agent was asked to do, from whichever source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Addresses to listen on, in the order given; empty means "not given" until resolved.
    pub listen: Vec<String>,
    /// Vsock CIDs allowed to connect; empty means "not given" (resolves to [`HOST_CID`]).
    pub allow_cids: Vec<u32>,
    /// The most verbose level that is logged.
    pub log_level: LevelFilter,
    /// Kernel modules to load, in order (PID 1 only; from `vmux.modules`).
    pub modules: Vec<String>,
    /// A free-form string for boot tests (`vmux.test=`); `None` in normal operation.
    pub test: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: Vec::new(),
            allow_cids: Vec::new(),
            log_level: DEFAULT_LOG_LEVEL,
            modules: Vec::new(),
            test: None,
        }
    }
}

/// Why settings could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// Not PID 1 and no `--listen` given: there is no sensible default outside an initrd.
    MissingListen,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::MissingListen => f.write_str("--listen ADDR is required"),
        }
    }
}

impl std::error::Error for ResolveError {}

impl Settings {
    /// Applies the defaults that depend on how the agent runs; fails when a required value is missing.
    pub fn resolve(mut self, pid1: bool) -> Result<Settings, ResolveError> {
        if self.listen.is_empty() {
            if !pid1 {
                return Err(ResolveError::MissingListen);
            }
            self.listen.push(AUTO_LISTEN.to_owned());
        }
        if self.allow_cids.is_empty() {
            self.allow_cids.push(HOST_CID);
        }
        Ok(self)
    }

    /// Whether the boot-test string asks for `mode` (e.g. `poweroff`).
    pub fn test_mode_is(&self, mode: &str) -> bool {
        self.test.as_deref() == Some(mode)
    }
}

impl fmt::Display for Settings {
    /// One `key: value` line per setting, as printed by `--check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cids: Vec<String> = self.allow_cids.iter().map(u32::to_string).collect();
        writeln!(f, "listen: {}", self.listen.join(" "))?;
        writeln!(f, "allow-cid: {}", cids.join(" "))?;
        writeln!(f, "log: {}", self.log_level.as_str().to_ascii_lowercase())?;
        writeln!(f, "modules: {}", self.modules.join(","))?;
        writeln!(f, "test: {}", self.test.as_deref().unwrap_or(""))
    }
}

/// A value that could not be parsed, with a message fit for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The setting's name as the user wrote it (`--log`, `vmux.log`).
    pub name: String,
    /// The offending value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: expected {}",
            self.value, self.name, self.expected
        )
    }
}

impl std::error::Error for BadValue {}

/// Parses a log level name (`off`, `error`, `warn`, `info`, `debug`, `trace`; any case).
pub fn parse_level(name: &str, value: &str) -> Result<LevelFilter, BadValue> {
    value.parse().map_err(|_| BadValue {
        name: name.to_owned(),
        value: value.to_owned(),
        expected: "off, error, warn, info, debug or trace",
    })
}

/// Parses a vsock CID (a decimal `u32`).
pub fn parse_cid(name: &str, value: &str) -> Result<u32, BadValue> {
    value.trim().parse().map_err(|_| BadValue {
        name: name.to_owned(),
        value: value.to_owned(),
        expected: "a decimal vsock CID",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_defaults_listen_to_auto_and_cids_to_host() {
        let s = Settings::default().resolve(true).unwrap();
        assert_eq!(s.listen, vec![AUTO_LISTEN]);
        assert_eq!(s.allow_cids, vec![HOST_CID]);
    }

    #[test]
    fn not_pid1_requires_listen() {
        assert_eq!(
            Settings::default().resolve(false),
            Err(ResolveError::MissingListen)
        );
        assert_eq!(
            ResolveError::MissingListen.to_string(),
            "--listen ADDR is required"
        );
    }

    #[test]
    fn given_values_survive_resolution() {
        let s = Settings {
            listen: vec!["unix:/run/a".into()],
            allow_cids: vec![3, 4],
            ..Settings::default()
        };
        let r = s.clone().resolve(false).unwrap();
        assert_eq!(r, s);
    }

    #[test]
    fn level_names_are_case_insensitive_and_errors_name_the_setting() {
        assert_eq!(parse_level("--log", "DEBUG"), Ok(LevelFilter::Debug));
        assert_eq!(parse_level("--log", "off"), Ok(LevelFilter::Off));
        let err = parse_level("vmux.log", "loud").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"loud\" for vmux.log: expected off, error, warn, info, debug or trace"
        );
    }

    #[test]
    fn cids_are_decimal_u32() {
        assert_eq!(parse_cid("--allow-cid", "2"), Ok(2));
        assert!(parse_cid("--allow-cid", "-1").is_err());
        assert!(parse_cid("--allow-cid", "0x2").is_err());
        assert!(parse_cid("--allow-cid", "4294967296").is_err());
    }

    #[test]
    fn display_lists_every_setting() {
        let s = Settings {
            modules: vec!["virtio_console".into(), "vsock".into()],
            test: Some("poweroff".into()),
            ..Settings::default()
        }
        .resolve(true)
        .unwrap();
        assert_eq!(
            s.to_string(),
            "listen: auto\nallow-cid: 2\nlog: info\nmodules: virtio_console,vsock\ntest: poweroff\n"
        );
    }
}
