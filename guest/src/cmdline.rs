//! The kernel command line (`/proc/cmdline`) as a source of [`Settings`] when the agent is PID 1.
//!
//! Parameters with a dot in their name never reach init's argv or environment (the kernel takes
//! them for module parameters), so PID 1 reads `/proc/cmdline` itself. This module owns the
//! splitting, which follows the kernel's own `next_arg()` rules, and the `vmux.*` keys:
//!
//! | key | meaning | repeat |
//! | --- | --- | --- |
//! | `vmux.listen=ADDR` | an address to listen on | appends; never split on commas (an address may hold one) |
//! | `vmux.allow_cid=N[,N...]` | a vsock CID allowed to connect | appends |
//! | `vmux.modules=a,b,c` | kernel modules to load, in order | appends |
//! | `vmux.log=LEVEL` | log level | last wins |
//! | `vmux.test=STRING` | a string for boot tests (`poweroff`) | last wins |
//!
//! As in the kernel, `-` and `_` are the same in key names (`vmux.allow-cid`). Splitting stops at
//! a bare `--`: what follows it is init's argv, not kernel parameters. A bad value never stops
//! the agent (PID 1 must not exit): it becomes a [`Warning`] for the caller to log.

use std::fmt;

use crate::settings::{parse_cid, parse_level, BadValue, Settings};

/// The path of the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

/// A `vmux.*` parameter that was ignored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The value does not parse.
    BadValue(BadValue),
    /// A `vmux.` key this agent does not know.
    UnknownKey(String),
    /// A known key given without `=VALUE`.
    MissingValue(String),
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::BadValue(bad) => write!(f, "kernel command line: {bad}"),
            Warning::UnknownKey(key) => write!(f, "kernel command line: unknown key {key:?}"),
            Warning::MissingValue(key) => {
                write!(f, "kernel command line: {key} needs a value ({key}=...)")
            }
        }
    }
}

/// Splits command-line text into `(name, value)` pairs the way the kernel's `next_arg()` does.
///
/// Whitespace separates parameters except inside double quotes; a value that starts with a quote
/// loses it and its closing quote (`key="a b"` gives `a b`), and so does a parameter that is
/// quoted whole (`"key=a b"`). Quotes elsewhere are kept. Stops at a bare `--`.
pub fn split(text: &str) -> Vec<(&str, Option<&str>)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut pos = skip_space(bytes, 0);
    while pos < bytes.len() {
        let mut start = pos;
        let mut in_quote = false;
        let quoted = bytes[start] == b'"';
        if quoted {
            start += 1;
            in_quote = true;
        }
        let mut end = start;
        let mut equals = None;
        while end < bytes.len() && (in_quote || !is_space(bytes[end])) {
            if equals.is_none() && bytes[end] == b'=' {
                equals = Some(end);
            }
            if bytes[end] == b'"' {
                in_quote = !in_quote;
            }
            end += 1;
        }
        // The kernel drops a closing quote when the value or the whole parameter was quoted.
        let closes_with_quote = end > start && bytes[end - 1] == b'"';
        let (name, value) = match equals {
            None => {
                let stop = if quoted && closes_with_quote {
                    end - 1
                } else {
                    end
                };
                (&text[start..stop], None)
            }
            Some(eq) => {
                let mut vstart = eq + 1;
                let mut vend = end;
                let value_quoted = vstart < end && bytes[vstart] == b'"';
                if value_quoted {
                    vstart += 1;
                }
                if (value_quoted || quoted) && closes_with_quote && vend > vstart {
                    vend -= 1;
                }
                (&text[start..eq], Some(&text[vstart..vend]))
            }
        };
        if name == "--" && value.is_none() {
            break;
        }
        out.push((name, value));
        pos = skip_space(bytes, end);
    }
    out
}

/// Applies every `vmux.*` parameter of `text` to `settings`; returns what was ignored.
pub fn apply(text: &str, settings: &mut Settings) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for (name, value) in split(text) {
        let Some(key) = name.strip_prefix("vmux.") else {
            continue;
        };
        let key = key.replace('-', "_");
        if !matches!(
            key.as_str(),
            "listen" | "log" | "modules" | "allow_cid" | "test"
        ) {
            warnings.push(Warning::UnknownKey(name.to_owned()));
            continue;
        }
        let Some(value) = value else {
            warnings.push(Warning::MissingValue(name.to_owned()));
            continue;
        };
        match key.as_str() {
            "listen" if value.is_empty() => warnings.push(Warning::MissingValue(name.to_owned())),
            "listen" => settings.listen.push(value.to_owned()),
            "log" => match parse_level(name, value) {
                Ok(level) => settings.log_level = level,
                Err(bad) => warnings.push(Warning::BadValue(bad)),
            },
            "modules" => settings
                .modules
                .extend(list(value).map(|module| module.to_owned())),
            "allow_cid" => {
                for cid in list(value) {
                    match parse_cid(name, cid) {
                        Ok(cid) => settings.allow_cids.push(cid),
                        Err(bad) => warnings.push(Warning::BadValue(bad)),
                    }
                }
            }
            _ => settings.test = Some(value.to_owned()),
        }
    }
    warnings
}

/// The non-empty items of a comma-separated list.
fn list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// The kernel's `isspace()` for ASCII.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn skip_space(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && is_space(bytes[pos]) {
        pos += 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter;

    #[test]
    fn splits_like_the_kernel() {
        type Pairs = &'static [(&'static str, Option<&'static str>)];
        let cases: &[(&str, Pairs)] = &[
            ("", &[]),
            ("  \n", &[]),
            ("quiet", &[("quiet", None)]),
            (
                "console=ttyS0 panic=-1\n",
                &[("console", Some("ttyS0")), ("panic", Some("-1"))],
            ),
            ("a=\tb=c", &[("a", Some("")), ("b", Some("c"))]),
            ("k=\"a b\" x", &[("k", Some("a b")), ("x", None)]),
            ("\"k=a b\" x", &[("k", Some("a b")), ("x", None)]),
            ("\"lone word\"", &[("lone word", None)]),
            ("k=a\"b c\"", &[("k", Some("a\"b c\""))]),
            ("k=x=y", &[("k", Some("x=y"))]),
            (
                "k=\"unterminated value",
                &[("k", Some("unterminated value"))],
            ),
            ("k=\"\"", &[("k", Some(""))]),
            ("a -- vmux.log=debug", &[("a", None)]),
            ("a \"--\" b", &[("a", None)]),
            ("k=é ü", &[("k", Some("é")), ("ü", None)]),
        ];
        for (text, want) in cases {
            assert_eq!(split(text), *want, "splitting {text:?}");
        }
    }

    #[test]
    fn applies_vmux_keys_and_ignores_the_rest() {
        let text = "BOOT_IMAGE=/vmlinuz console=ttyS0 vmux.listen=vsock:1024 \
                    vmux.listen=\"virtio-serial:vmux,0\" vmux.log=DEBUG \
                    vmux.modules=virtio_pci,virtio_console vmux.modules=vsock \
                    vmux.allow_cid=2,3 vmux.allow-cid=7 vmux.test=poweroff quiet\n";
        let mut s = Settings::default();
        let warnings = apply(text, &mut s);
        assert_eq!(warnings, vec![]);
        assert_eq!(s.listen, vec!["vsock:1024", "virtio-serial:vmux,0"]);
        assert_eq!(s.log_level, LevelFilter::Debug);
        assert_eq!(s.modules, vec!["virtio_pci", "virtio_console", "vsock"]);
        assert_eq!(s.allow_cids, vec![2, 3, 7]);
        assert_eq!(s.test.as_deref(), Some("poweroff"));
    }

    #[test]
    fn later_single_values_win() {
        let mut s = Settings::default();
        apply(
            "vmux.log=debug vmux.log=warn vmux.test=a vmux.test=b",
            &mut s,
        );
        assert_eq!(s.log_level, LevelFilter::Warn);
        assert_eq!(s.test.as_deref(), Some("b"));
    }

    #[test]
    fn bad_values_become_warnings_and_keep_the_good_ones() {
        let mut s = Settings::default();
        let warnings = apply(
            "vmux.log=loud vmux.allow_cid=2,x vmux.listen vmux.listen= vmux.colour=red \
             vmux.modules=,, vmuxlisten=x",
            &mut s,
        );
        let shown: Vec<String> = warnings.iter().map(Warning::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "kernel command line: invalid value \"loud\" for vmux.log: \
                 expected off, error, warn, info, debug or trace",
                "kernel command line: invalid value \"x\" for vmux.allow_cid: \
                 expected a decimal vsock CID",
                "kernel command line: vmux.listen needs a value (vmux.listen=...)",
                "kernel command line: vmux.listen needs a value (vmux.listen=...)",
                "kernel command line: unknown key \"vmux.colour\"",
            ]
        );
        assert_eq!(s.allow_cids, vec![2]);
        assert_eq!(s.log_level, LevelFilter::Info);
        assert!(s.listen.is_empty());
        assert!(s.modules.is_empty());
    }

    #[test]
    fn keys_after_double_dash_belong_to_init_argv() {
        let mut s = Settings::default();
        apply("vmux.log=warn -- vmux.log=trace", &mut s);
        assert_eq!(s.log_level, LevelFilter::Warn);
    }
}
