//! A duration as written in a file that several checks read (`fleet.yaml`'s drain entries and
//! health probes, rollout windows in `fleet.yaml` and the node config): parsed once when the file
//! is read, the text and humantime's reason kept, so each check reports a bad one at its own
//! field path in its own words and nothing parses the text again.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The text of a duration and what it parsed to. Deserializing never fails on a string (the
/// checker that knows the field's path reports a bad one); `Display` and `Serialize` give the
/// text back as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenDuration {
    text: String,
    parsed: Result<Duration, String>,
}

impl WrittenDuration {
    /// As written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The duration, or why the text is none (humantime's words).
    pub fn parsed(&self) -> Result<Duration, &str> {
        self.parsed.as_ref().copied().map_err(String::as_str)
    }
}

impl From<&str> for WrittenDuration {
    fn from(text: &str) -> Self {
        WrittenDuration::from(text.to_owned())
    }
}

impl From<String> for WrittenDuration {
    fn from(text: String) -> Self {
        let parsed = humantime::parse_duration(&text).map_err(|e| e.to_string());
        WrittenDuration { text, parsed }
    }
}

impl fmt::Display for WrittenDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for WrittenDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for WrittenDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(WrittenDuration::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_duration_keeps_its_text_and_what_it_parsed_to() {
        let d = WrittenDuration::from("1m 30s");
        assert_eq!((d.text(), d.parsed()), ("1m 30s", Ok(Duration::from_secs(90))));
        assert_eq!(d.to_string(), "1m 30s");
        let bad = WrittenDuration::from("soon");
        assert_eq!(bad.text(), "soon");
        assert!(bad.parsed().is_err_and(|e| !e.is_empty()), "{bad:?}");
    }

    #[test]
    fn it_reads_any_string_and_writes_it_back() {
        let d: WrittenDuration = serde_json::from_value(serde_json::json!("later")).expect("a string reads");
        assert!(d.parsed().is_err());
        assert_eq!(serde_json::to_value(&d).expect("writes"), serde_json::json!("later"));
        let e = serde_json::from_value::<WrittenDuration>(serde_json::json!(5)).expect_err("not a string");
        assert!(e.to_string().contains("expected a string"), "{e}");
    }
}
