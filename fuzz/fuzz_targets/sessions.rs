//! Fuzz target: session readings (`shared::drain::read_sessions`): a kiosk app's
//! answer as Prometheus text (a gauge summed over its label sets) or JSON (a pointer).
//!
//! Input: one byte choosing the reading, the gauge name or JSON pointer on the first line, the
//! body after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::drain::Read;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (what, body) = text.split_once('\n').unwrap_or((text, ""));
    let read = if pick % 2 == 0 { Read::Gauge(what.to_owned()) } else { Read::JsonPointer(what.to_owned()) };
    let _ = shared::drain::read_sessions(&read, body);
});
