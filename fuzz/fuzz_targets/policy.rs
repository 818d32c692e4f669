//! Fuzz target: image tag policies (`shared::policy::TagPolicy::parse`, Flux's language:
//! semver ranges, filterTags regexes with extract templates) and `select` over a tag list.
//!
//! Input: the policy on the first line (YAML flow form), one tag per following line. Beyond
//! "no panic": every tag comes back once, in order, and exactly the chosen one is `Chosen`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::policy::{Outcome, TagPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (spec, tags) = text.split_once('\n').unwrap_or((text, ""));
    let _ = shared::policy::parse_version(spec);
    let Ok(policy) = TagPolicy::parse(spec) else { return };
    let tags: Vec<&str> = tags.lines().collect();
    let selection = policy.select(tags.iter().copied());
    assert_eq!(selection.candidates.iter().map(|c| c.tag.as_str()).collect::<Vec<_>>(), tags);
    let chosen: Vec<&str> =
        selection.candidates.iter().filter(|c| c.outcome == Outcome::Chosen).map(|c| c.tag.as_str()).collect();
    assert_eq!(chosen.first().copied(), selection.chosen.as_deref());
    assert!(chosen.len() <= 1, "more than one tag chosen: {chosen:?}");
});
