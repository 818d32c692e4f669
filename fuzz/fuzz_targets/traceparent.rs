//! Fuzz target: W3C `traceparent` headers (`shared::trigger::TraceParent::parse`), as webhooks
//! carry them. Beyond "no panic": a parsed header prints as one that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::trigger::TraceParent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(parsed) = TraceParent::parse(text) else { return };
    let printed = parsed.to_string();
    assert_eq!(TraceParent::parse(&printed).as_ref(), Some(&parsed), "{text:?} printed as {printed:?}");
});
