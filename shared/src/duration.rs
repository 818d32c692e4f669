//! Durations as people write them in config and `fleet.yaml` (`30s`, `5m`, `1h30m`), parsed once
//! when the file is read into a typed value, and written back the same way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from `30s`-style text. Deserializing it fails with a message that the config
/// loader locates by field and line; `Display` and `Serialize` give the text back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

/// Why a text is no duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration such as 30s or 5m: {reason}")]
pub struct ParseError {
    pub text: String,
    pub reason: String,
}

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }

    /// Whole seconds, for decisions that count in unix seconds (`shared::k8s::Time`).
    pub fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| ParseError { text: text.to_owned(), reason: e.to_string() })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_as_written() {
        let cases = [("30s", 30), ("5m", 300), ("1h 30m", 5400), ("0s", 0)];
        for (text, secs) in cases {
            let d: HumanDuration = text.parse().expect(text);
            assert_eq!(d.secs(), secs, "{text}");
        }
        assert_eq!(HumanDuration::from_secs(90).to_string(), "1m 30s");
    }

    #[test]
    fn a_bad_duration_names_the_text() {
        let e = "soon".parse::<HumanDuration>().expect_err("no duration");
        assert!(e.to_string().starts_with("\"soon\" is not a duration such as 30s or 5m"), "{e}");
    }

    #[test]
    fn yaml_round_trips() {
        #[derive(Debug, Deserialize, Serialize, PartialEq)]
        struct T {
            every: HumanDuration,
        }
        let t: T = serde_saphyr::from_str("every: 2m\n").expect("parses");
        assert_eq!(t.every.secs(), 120);
        assert_eq!(serde_json::to_value(&t).expect("json")["every"], "2m");
        let e = serde_saphyr::from_str::<T>("every: later\n").expect_err("no duration");
        assert!(e.to_string().contains("\"later\" is not a duration"), "{e}");
    }
}
