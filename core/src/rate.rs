//! Request rates written as `<count>/<unit>`: `10/min`, `600/minute`, `2/s`, `1000/hour`.
//!
//! The generator checks a spec's `tools[].rate_limit` with [`Rate::parse`] and the runtime
//! parses `--rate-limit` with it, so a rate `bmm check` accepts is one a server accepts.
//!
//! Rules:
//! 1. `<count>` is a whole number from 1 to [`Rate::MAX_COUNT`], written in ASCII digits.
//! 2. `<unit>` is one of `s`, `sec`, `second`, `m`, `min`, `minute`, `h`, `hour` (also
//!    with a trailing `s`: `seconds`, `mins`, ...); spaces around `/` are allowed.
//! 3. Nothing else is accepted: no fractions, no `per`, no other units.

use std::fmt;
use std::time::Duration;

/// A request rate: `count` requests per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    per_secs: u32,
}

/// Why a rate was refused; its text says what is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateError(String);

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RateError {}

impl Rate {
    /// The largest count a rate may have.
    pub const MAX_COUNT: u32 = 1_000_000;

    /// `count` requests per `per_secs` seconds; `None` when either is zero or the count is
    /// above [`Rate::MAX_COUNT`].
    pub fn new(count: u32, per_secs: u32) -> Option<Self> {
        (count > 0 && count <= Self::MAX_COUNT && per_secs > 0).then_some(Self { count, per_secs })
    }

    /// Parses `<count>/<unit>` (see the module docs).
    pub fn parse(text: &str) -> Result<Self, RateError> {
        let refuse = |why: &str| {
            RateError(format!(
                "`{}` is not a rate: {why} (write it like `10/min`: a whole number from 1 to {}, `/`, and s, min or hour)",
                text.escape_default(),
                Self::MAX_COUNT
            ))
        };
        let Some((count, unit)) = text.split_once('/') else {
            return Err(refuse("no `/`"));
        };
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) || count.len() > 7 {
            return Err(refuse("the count is not a whole number"));
        }
        let count: u32 = count
            .parse()
            .map_err(|_| refuse("the count is not a whole number"))?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            _ => return Err(refuse("the unit is not one of s, min, hour")),
        };
        Self::new(count, per_secs).ok_or_else(|| refuse("the count is 0 or too large"))
    }

    /// Requests allowed per [`Rate::per`].
    pub fn count(self) -> u32 {
        self.count
    }

    /// The window the count is spread over.
    pub fn per(self) -> Duration {
        Duration::from_secs(u64::from(self.per_secs))
    }

    /// The window in seconds.
    pub fn per_secs(self) -> u32 {
        self.per_secs
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "min",
            3600 => "hour",
            other => return write!(f, "{}/{other}s", self.count),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl std::str::FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_count_slash_unit() {
        assert_eq!(
            Rate::parse("10/min"),
            Ok(Rate::new(10, 60).unwrap_or(Rate {
                count: 0,
                per_secs: 0
            }))
        );
        assert_eq!(
            Rate::parse(" 2 / s ").map(|r| (r.count(), r.per_secs())),
            Ok((2, 1))
        );
        assert_eq!(Rate::parse("1000/hours").map(|r| r.per_secs()), Ok(3600));
        assert_eq!(
            Rate::parse("600/minute").map(|r| r.to_string()),
            Ok("600/min".to_owned())
        );
    }

    #[test]
    fn anything_else_is_refused_with_what_to_write() {
        for bad in [
            "",
            "10",
            "0/min",
            "-1/min",
            "1.5/min",
            "10/day",
            "10/",
            "/min",
            "+5/s",
            "99999999999/s",
            "1000001/s",
            "10/min/s",
            "ten/min",
        ] {
            let error = Rate::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("like `10/min`"), "{bad:?}: {error}");
        }
    }
}
