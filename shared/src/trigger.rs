//! What wakes the daemon (`agent run`) and when: the trigger queue that debounces polls, webhooks,
//! drift and CLI requests per target; the poll schedule with jitter and failure backoff; the
//! per-sender rate limit of webhooks; and the W3C `traceparent` a webhook may carry.
//!
//! Pure: callers pass `now` and random numbers in, so every decision is reproducible in a test.
//!
//! Why debounce: a push to Git fires a Gitea webhook, a Harbor webhook per image and a drift
//! event per changed object within seconds; reconciling once for the burst is both cheaper and
//! quieter. Why a maximum delay on top: a steady stream of events (a noisy controller fighting
//! over a field) must not postpone the reconcile forever.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The longest wait this module computes with; longer durations are clamped to it. No daemon
/// decision needs more, and it keeps `Instant + Duration` far from overflowing.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a trigger asks to reconcile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    /// Every bundle (a Git push, a poll). Ordered before any bundle.
    All,
    /// One bundle, by name.
    Bundle(String),
}

/// Why a trigger was pushed; kept for the log and the status of the reconcile it causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Cause {
    /// The poll timer.
    Poll,
    /// A webhook of `sender` (`harbor`, `gitea`, ...), with the sender's trace context if any.
    Webhook {
        sender: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        trace: Option<TraceParent>,
    },
    /// An applied object changed in the cluster.
    Drift { object: String },
    /// A request of the command line (`agent sync`, ...).
    Cli { what: String },
    /// A deferred bundle's time to look again came: a rollout window opens, or idle pods are
    /// checked again (`waitForIdle`).
    Deferred,
}

/// A request to reconcile `target`, because of `cause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub target: Target,
    pub cause: Cause,
}

/// One pending target.
#[derive(Debug, Clone)]
struct Pending {
    first: Instant,
    last: Instant,
    /// Due at `first`: it opened a burst while the queue was idle ([`Queue::leading`]).
    at_once: bool,
    /// Distinct causes, each with the sequence number of its first arrival.
    causes: Vec<(u64, Cause)>,
}

impl Pending {
    fn add(&mut self, seq: u64, cause: Cause) {
        if !self.causes.iter().any(|(_, c)| *c == cause) {
            self.causes.push((seq, cause));
        }
    }
}

/// Pending triggers, at most one entry per target, each due once its burst has been quiet for
/// `debounce` or once it has waited `max_delay`, whichever comes first.
///
/// A [`Queue::leading`] queue runs the first trigger of a burst at once instead: when nothing is
/// pending and nothing was popped in the last `debounce`, the new entry is due when pushed, and
/// what follows it within `debounce` of that pop is coalesced as before. A webhook on a quiet
/// agent starts its reconcile without waiting; a burst still makes at most two.
///
/// A pending [`Target::All`] absorbs every bundle: a bundle pushed while `All` is pending joins
/// `All` (its cause too), and pushing `All` merges the pending bundles into it, keeping their
/// causes and their earliest first push. Causes are kept once each (by equality), in order of
/// first arrival: a burst of 50 identical webhooks leaves one cause.
#[derive(Debug, Clone)]
pub struct Queue {
    debounce: Duration,
    max_delay: Duration,
    pending: BTreeMap<Target, Pending>,
    /// Arrival counter: orders causes merged from several entries.
    seq: u64,
    /// Whether the first trigger of a burst on an idle queue is due at once.
    leading: bool,
    /// When an entry was last popped.
    last_pop: Option<Instant>,
}

impl Queue {
    /// A queue waiting `debounce` after the last push of a target, and at most `max_delay` after
    /// its first (both clamped to a year).
    pub fn new(debounce: Duration, max_delay: Duration) -> Queue {
        Queue {
            debounce: debounce.min(MAX_WAIT),
            max_delay: max_delay.min(MAX_WAIT),
            pending: BTreeMap::new(),
            seq: 0,
            leading: false,
            last_pop: None,
        }
    }

    /// [`Queue::new`], but the first trigger on an idle queue is due at once (the daemon's).
    pub fn leading(debounce: Duration, max_delay: Duration) -> Queue {
        Queue { leading: true, ..Queue::new(debounce, max_delay) }
    }

    /// Whether an entry pushed at `now` opens a burst on an idle queue (a leading queue only).
    fn idle_at(&self, now: Instant) -> bool {
        self.leading
            && self.pending.is_empty()
            && self.last_pop.is_none_or(|t| t.checked_add(self.debounce).is_none_or(|quiet| now >= quiet))
    }

    /// Records a trigger pushed at `now`: a new entry for its target, or one more push (and
    /// perhaps cause) of the pending entry it joins.
    pub fn push(&mut self, t: Trigger, now: Instant) {
        self.seq += 1;
        let seq = self.seq;
        let at_once = self.idle_at(now);
        let target = match t.target {
            Target::Bundle(_) if self.pending.contains_key(&Target::All) => Target::All,
            Target::All => {
                // Fold the pending bundles into `All`, causes in order of first arrival.
                let mut merged = self.pending.remove(&Target::All).unwrap_or(Pending {
                    first: now,
                    last: now,
                    at_once,
                    causes: Vec::new(),
                });
                let mut causes = std::mem::take(&mut merged.causes);
                for (_, p) in std::mem::take(&mut self.pending) {
                    merged.first = merged.first.min(p.first);
                    merged.last = merged.last.max(p.last);
                    merged.at_once |= p.at_once;
                    causes.extend(p.causes);
                }
                causes.sort_by_key(|(s, _)| *s);
                for (s, c) in causes {
                    merged.add(s, c);
                }
                self.pending.insert(Target::All, merged);
                Target::All
            }
            bundle => bundle,
        };
        let entry =
            self.pending.entry(target).or_insert(Pending { first: now, last: now, at_once, causes: Vec::new() });
        entry.first = entry.first.min(now);
        entry.last = entry.last.max(now);
        entry.add(seq, t.cause);
    }

    fn due(&self, p: &Pending) -> Instant {
        if p.at_once {
            return p.first;
        }
        let quiet = p.last.checked_add(self.debounce);
        let bound = p.first.checked_add(self.max_delay);
        // Both are `Some` with the clamped durations; a failed addition leaves the other bound.
        match (quiet, bound) {
            (Some(q), Some(b)) => q.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => p.last,
        }
    }

    /// When the earliest pending target becomes due; `None` when nothing is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.due(p)).min()
    }

    /// Removes and returns the earliest entry due at `now` with its causes; ties go to `All`,
    /// then to bundles by name. `None` when nothing is due yet.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Target, Vec<Cause>)> {
        let target = self
            .pending
            .iter()
            .map(|(t, p)| (self.due(p), t))
            .filter(|(due, _)| *due <= now)
            .min()
            .map(|(_, t)| t.clone())?;
        let p = self.pending.remove(&target)?;
        self.last_pop = Some(now);
        Some((target, p.causes.into_iter().map(|(_, c)| c).collect()))
    }

    /// Pending targets.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The fraction by which poll delays are spread: ±10 %.
///
/// Hundreds of stores poll one Gitea; started together (a power cut, a fleet-wide upgrade) they
/// would stay in lock-step forever without it. Argo CD likewise jitters its 120 s poll.
pub const JITTER: f64 = 0.1;

/// The longest backoff after failed polls (unless the poll interval itself is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);

/// `interval` spread uniformly over ±`fraction`: `interval * (1 - fraction + 2 * fraction * unit)`.
///
/// `unit` is a random number in [0, 1) supplied by the caller; it is clamped into [0, 1) and
/// `fraction` into [0, 1] (NaN counts as 0). Saturates at [`Duration::MAX`].
pub fn jittered(interval: Duration, fraction: f64, unit: f64) -> Duration {
    let below_one = f64::from_bits(1.0_f64.to_bits() - 1);
    let unit = if unit.is_nan() { 0.0 } else { unit.clamp(0.0, below_one) };
    let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
    let factor = 1.0 - fraction + 2.0 * fraction * unit;
    // In nanoseconds and rounded, so whole intervals stay exact (60 s * 0.9 is 54 s, not 53.99…).
    let nanos = (interval.as_nanos() as f64 * factor).round();
    if nanos < u64::MAX as f64 {
        Duration::from_nanos(nanos as u64)
    } else {
        Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

/// How long to wait before the next poll, after `consecutive_failures` failed polls in a row.
///
/// Without failures: the interval, jittered by [`JITTER`]. After `n` failures: the interval
/// doubled `n - 1` times, capped at [`MAX_BACKOFF`] (or the interval when that is longer), then
/// jittered. A Gitea that is down must not be hammered by hundreds of stores retrying at once:
/// Fleet's fixed 15 s poll exhausted Git hosts (fleet issue #3486). `unit` is a random number in
/// [0, 1) supplied by the caller; huge `consecutive_failures` saturate at the cap.
pub fn poll_delay(interval: Duration, consecutive_failures: u32, unit: f64) -> Duration {
    let base = match consecutive_failures {
        0 => interval,
        n => {
            let cap = interval.max(MAX_BACKOFF);
            2_u32.checked_pow(n - 1).and_then(|factor| interval.checked_mul(factor)).map_or(cap, |d| d.min(cap))
        }
    };
    jittered(base, JITTER, unit)
}

/// A rate: `burst` requests at once, then one per `every`.
///
/// A `burst` of 0 counts as 1 (a limit that never allows is a disabled endpoint, not a rate);
/// an `every` of zero means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub every: Duration,
}

/// Above this many keys, keys whose bucket is full again are forgotten.
const LIMITER_PRUNE_AT: usize = 1024;

/// A token bucket per key (a webhook sender), so that one chatty or misconfigured sender cannot
/// keep the daemon reconciling, and does not use up the others' allowance.
///
/// Kept as the generic cell rate algorithm: per key, the instant at which its bucket would be
/// full again. A key whose bucket is full is the same as an unknown key.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: RateLimit,
    /// Per key: when its bucket is full again.
    full_at: HashMap<String, Instant>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let limit = RateLimit { burst: limit.burst.max(1), every: limit.every.min(MAX_WAIT) };
        Limiter { limit, full_at: HashMap::new() }
    }

    /// Ok when allowed (consumes a token); Err(retry_after) otherwise: the time until one token
    /// is back, rounded up to whole milliseconds. Keys are sources (e.g. "harbor").
    pub fn check(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.limit.every.is_zero() {
            return Ok(());
        }
        if self.full_at.len() >= LIMITER_PRUNE_AT && !self.full_at.contains_key(key) {
            self.full_at.retain(|_, full| *full > now);
        }
        // A bucket never holds more than `burst` tokens: it is full at `now` at the latest.
        let full = self.full_at.get(key).copied().unwrap_or(now).max(now);
        // Tokens missing from a full bucket, as time: `burst - 1` missing still leaves one.
        let headroom = self.limit.every.saturating_mul(self.limit.burst - 1);
        let missing = full.saturating_duration_since(now);
        if missing > headroom {
            let wait = missing - headroom;
            let millis = wait.as_nanos().div_ceil(1_000_000);
            return Err(Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)));
        }
        let next = full.checked_add(self.limit.every).unwrap_or(full);
        self.full_at.insert(key.to_owned(), next);
        Ok(())
    }
}

/// A W3C Trace Context `traceparent` header
/// (<https://www.w3.org/TR/trace-context/#traceparent-header>): the trace a webhook's sender was
/// in, so the reconcile it causes can be found from the sender's trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    pub flags: u8,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn nonzero_hex(s: &str, len: usize) -> bool {
    lower_hex(s, len) && s.bytes().any(|b| b != b'0')
}

impl TraceParent {
    /// Parses a header value as the spec says: surrounding whitespace is ignored; the version is
    /// two lowercase hex digits other than `ff`; version `00` has exactly four `-`-separated
    /// fields, a later version may have more after them (ignored); trace-id and parent-id are
    /// lowercase hex and not all zero; flags are two lowercase hex digits. `None` when invalid.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut fields = header.trim().split('-');
        let version = fields.next()?;
        let (trace_id, parent_id, flags) = (fields.next()?, fields.next()?, fields.next()?);
        if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
            return None;
        }
        if !nonzero_hex(trace_id, 32) || !nonzero_hex(parent_id, 16) || !lower_hex(flags, 2) {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The sender recorded this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    /// Always version `00`, the only one this agent knows, as the spec asks of a propagator.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bundle(name: &str) -> Target {
        Target::Bundle(name.into())
    }

    fn hook(sender: &str) -> Cause {
        Cause::Webhook { sender: sender.into(), trace: None }
    }

    fn drift(object: &str) -> Cause {
        Cause::Drift { object: object.into() }
    }

    fn trigger(target: Target, cause: Cause) -> Trigger {
        Trigger { target, cause }
    }

    /// Debounce 1 s, at most 5 s.
    fn queue() -> Queue {
        Queue::new(ms(1000), ms(5000))
    }

    #[test]
    fn debounce_coalesces_a_burst_into_one_entry() {
        let t0 = Instant::now();
        let mut q = queue();
        // A push, then webhooks every 200 ms: due 1 s after the last.
        for at in [0, 200, 400, 600] {
            q.push(trigger(bundle("web"), hook(&format!("harbor-{at}"))), t0 + ms(at));
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_due(), Some(t0 + ms(1600)));
        assert_eq!(q.pop_due(t0 + ms(1599)), None);
        let (target, causes) = q.pop_due(t0 + ms(1600)).expect("due");
        assert_eq!(target, bundle("web"));
        assert_eq!(causes, vec![hook("harbor-0"), hook("harbor-200"), hook("harbor-400"), hook("harbor-600")]);
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_leading_queue_runs_the_first_trigger_on_an_idle_queue_at_once_and_coalesces_the_rest() {
        let t0 = Instant::now();
        let mut q = Queue::leading(ms(1000), ms(5000));
        let push =
            |q: &mut Queue, at: u64, target: Target| q.push(trigger(target, hook(&format!("at-{at}"))), t0 + ms(at));
        // A quiet queue: the first push is due when pushed.
        push(&mut q, 0, bundle("web"));
        assert_eq!(q.next_due(), Some(t0));
        assert_eq!(q.pop_due(t0), Some((bundle("web"), vec![hook("at-0")])));
        // Within 1 s of that pop: the burst's tail, debounced as before (and All absorbs it).
        push(&mut q, 100, bundle("web"));
        assert_eq!(q.next_due(), Some(t0 + ms(1100)));
        push(&mut q, 300, Target::All);
        assert_eq!(q.next_due(), Some(t0 + ms(1300)));
        assert_eq!(q.pop_due(t0 + ms(1299)), None);
        assert_eq!(q.pop_due(t0 + ms(1300)), Some((Target::All, vec![hook("at-100"), hook("at-300")])));
        // 900 ms after that pop: still debounced.
        push(&mut q, 2200, bundle("db"));
        assert_eq!(q.next_due(), Some(t0 + ms(3200)));
        // Something pending: a new target is not at once either.
        push(&mut q, 3100, bundle("web"));
        assert_eq!(q.pop_due(t0 + ms(3200)).map(|(t, _)| t), Some(bundle("db")));
        assert_eq!(q.pop_due(t0 + ms(4100)).map(|(t, _)| t), Some(bundle("web")));
        // Quiet for 1 s since the last pop (4100): at once again.
        push(&mut q, 5099, bundle("db"));
        assert_eq!(q.next_due(), Some(t0 + ms(6099)), "999 ms after a pop is not quiet yet");
        assert!(q.pop_due(t0 + ms(6099)).is_some());
        push(&mut q, 7099, bundle("db"));
        assert_eq!(q.next_due(), Some(t0 + ms(7099)), "1 s after a pop is");
        // A trailing queue never runs at once.
        let mut q = queue();
        q.push(trigger(bundle("web"), hook("harbor")), t0);
        assert_eq!(q.next_due(), Some(t0 + ms(1000)));
    }

    #[test]
    fn a_steady_stream_is_bounded_by_max_delay() {
        let t0 = Instant::now();
        let mut q = queue();
        // Each row: push at (ms), next due after it (ms). Pushes every 500 ms never leave 1 s
        // quiet; from 4000 on, the 5 s after the first push rules.
        let table: &[(u64, u64)] =
            &[(0, 1000), (500, 1500), (1000, 2000), (3500, 4500), (4000, 5000), (4500, 5000), (4999, 5000)];
        for (at, due) in table {
            q.push(trigger(bundle("web"), drift("Deployment/ns/web")), t0 + ms(*at));
            assert_eq!(q.next_due(), Some(t0 + ms(*due)), "push at {at}");
        }
        assert_eq!(q.pop_due(t0 + ms(5000)), Some((bundle("web"), vec![drift("Deployment/ns/web")])));
        // Popped: the next push starts a new burst.
        q.push(trigger(bundle("web"), drift("Deployment/ns/web")), t0 + ms(5100));
        assert_eq!(q.next_due(), Some(t0 + ms(6100)));
    }

    #[test]
    fn all_absorbs_bundles_in_both_orders_and_keeps_causes() {
        let t0 = Instant::now();
        // Bundles first, then All: merged, earliest first push kept, causes in arrival order.
        let mut q = queue();
        q.push(trigger(bundle("web"), hook("harbor")), t0);
        q.push(trigger(bundle("db"), drift("StatefulSet/ns/db")), t0 + ms(100));
        q.push(trigger(bundle("web"), drift("Deployment/ns/web")), t0 + ms(200));
        q.push(trigger(Target::All, hook("gitea")), t0 + ms(4500));
        assert_eq!(q.len(), 1);
        // Quiet 1 s after 4500 would be 5500; the first push (t0, from "web") bounds it at 5000.
        assert_eq!(q.next_due(), Some(t0 + ms(5000)));
        assert_eq!(
            q.pop_due(t0 + ms(5000)),
            Some((
                Target::All,
                vec![hook("harbor"), drift("StatefulSet/ns/db"), drift("Deployment/ns/web"), hook("gitea")]
            ))
        );

        // All first, then a bundle: the bundle joins All as if All had been pushed.
        let mut q = queue();
        q.push(trigger(Target::All, Cause::Poll), t0);
        q.push(trigger(bundle("web"), hook("harbor")), t0 + ms(800));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_due(), Some(t0 + ms(1800)));
        assert_eq!(q.pop_due(t0 + ms(1800)), Some((Target::All, vec![Cause::Poll, hook("harbor")])));
        assert!(q.is_empty());
    }

    #[test]
    fn pop_due_returns_nothing_before_due_and_the_entry_at_due() {
        let t0 = Instant::now();
        let mut q = queue();
        q.push(trigger(bundle("web"), Cause::Cli { what: "agent sync web".into() }), t0 + ms(100));
        // Each row: now (ms), whether the entry pops.
        for (at, pops) in [(0, false), (100, false), (1099, false), (1100, true), (1101, false)] {
            let got = q.pop_due(t0 + ms(at));
            assert_eq!(got.is_some(), pops, "at {at}: {got:?}");
        }
        assert!(q.is_empty());
    }

    #[test]
    fn targets_pop_in_due_order_ties_by_name() {
        let t0 = Instant::now();
        let mut q = queue();
        q.push(trigger(bundle("web"), Cause::Poll), t0 + ms(300));
        q.push(trigger(bundle("db"), Cause::Poll), t0 + ms(500));
        q.push(trigger(bundle("cache"), Cause::Poll), t0 + ms(500));
        assert_eq!(q.next_due(), Some(t0 + ms(1300)));
        assert_eq!(q.pop_due(t0 + ms(1200)), None);
        // Everything is due by 2000: earliest first, then "cache" before "db" at the same time.
        let popped: Vec<Target> = std::iter::from_fn(|| q.pop_due(t0 + ms(2000)).map(|(t, _)| t)).collect();
        assert_eq!(popped, vec![bundle("web"), bundle("cache"), bundle("db")]);

        // All sorts before any bundle (ties between them cannot arise: All absorbs bundles).
        assert!(Target::All < bundle(""));
    }

    #[test]
    fn identical_causes_are_deduplicated_in_order_of_first_arrival() {
        let t0 = Instant::now();
        let mut q = queue();
        let traced = Cause::Webhook { sender: "gitea".into(), trace: TraceParent::parse(SPEC_EXAMPLE) };
        let pushes = [hook("harbor"), hook("harbor"), drift("a"), hook("harbor"), traced.clone(), drift("a"), traced];
        for (i, cause) in (0..).zip(pushes) {
            q.push(trigger(bundle("web"), cause), t0 + ms(i * 10));
        }
        // 50 identical webhooks: one cause.
        for i in 0..50 {
            q.push(trigger(bundle("db"), hook("harbor")), t0 + ms(i));
        }
        let traced = Cause::Webhook { sender: "gitea".into(), trace: TraceParent::parse(SPEC_EXAMPLE) };
        let (_, db) = q.pop_due(t0 + ms(5000)).expect("db is due first");
        assert_eq!(db, vec![hook("harbor")]);
        let (_, web) = q.pop_due(t0 + ms(5000)).expect("web is due");
        assert_eq!(web, vec![hook("harbor"), drift("a"), traced]);
    }

    #[test]
    fn causes_and_targets_serialize_tagged() {
        let t =
            trigger(bundle("web"), Cause::Webhook { sender: "gitea".into(), trace: TraceParent::parse(SPEC_EXAMPLE) });
        let got = serde_json::to_value(&t).expect("serializes");
        assert_eq!(
            got,
            json!({"target": {"bundle": "web"}, "cause": {"kind": "webhook", "sender": "gitea", "trace":
                {"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "parentId": "00f067aa0ba902b7", "flags": 1}}})
        );
        let got = serde_json::to_value(trigger(Target::All, Cause::Poll)).expect("serializes");
        assert_eq!(got, json!({"target": "all", "cause": {"kind": "poll"}}));
    }

    #[test]
    fn jittered_stays_within_the_fraction_and_clamps_its_inputs() {
        let s = Duration::from_secs;
        // Each row: interval, fraction, unit, expected.
        let table: &[(Duration, f64, f64, Duration)] = &[
            (s(60), 0.1, 0.0, s(54)),
            (s(60), 0.1, 0.5, s(60)),
            (s(60), 0.1, 0.999, ms(65_988)),
            (s(60), 0.1, 1.0, ms(66_000)), // clamped just below 1: rounds to the upper bound
            (s(60), 0.1, 7.0, ms(66_000)),
            (s(60), 0.1, -1.0, s(54)),
            (s(60), 0.1, f64::NAN, s(54)),
            (s(60), 0.0, 0.999, s(60)),
            (s(60), -0.5, 0.0, s(60)),
            (s(60), f64::NAN, 0.0, s(60)),
            (s(60), 1.0, 0.0, Duration::ZERO),
            (s(60), 3.0, 0.5, s(60)),
            (s(60), 3.0, 0.0, Duration::ZERO),
            (Duration::ZERO, 0.1, 0.5, Duration::ZERO),
            (Duration::MAX, 0.1, 0.999, Duration::MAX),
        ];
        for (interval, fraction, unit, want) in table {
            assert_eq!(jittered(*interval, *fraction, *unit), *want, "{interval:?} {fraction} {unit}");
        }
        // Never outside [1 - f, 1 + f) of the interval, over a sweep of units.
        for i in 0..1000 {
            let d = jittered(s(120), JITTER, f64::from(i) / 1000.0);
            assert!(d >= s(108) && d < s(132), "{d:?}");
        }
    }

    #[test]
    fn poll_delay_backs_off_doubling_up_to_ten_minutes() {
        let s = Duration::from_secs;
        // Each row: interval, consecutive failures, expected at unit 0.5 (no jitter).
        let table: &[(Duration, u32, Duration)] = &[
            (s(60), 0, s(60)),
            (s(60), 1, s(60)),
            (s(60), 2, s(120)),
            (s(60), 3, s(240)),
            (s(60), 4, s(480)),
            (s(60), 5, s(600)),
            (s(60), 6, s(600)),
            (s(60), 33, s(600)),
            (s(60), u32::MAX, s(600)),
            // An interval over the cap: failures never shorten it.
            (s(1200), 0, s(1200)),
            (s(1200), 1, s(1200)),
            (s(1200), 2, s(1200)),
            (s(1200), 6, s(1200)),
            (s(1200), u32::MAX, s(1200)),
            (Duration::MAX, 40, Duration::MAX),
        ];
        for (interval, n, want) in table {
            assert_eq!(poll_delay(*interval, *n, 0.5), *want, "{interval:?} after {n} failures");
        }
        // The backoff is jittered too.
        assert_eq!(poll_delay(s(60), 0, 0.0), s(54));
        assert_eq!(poll_delay(s(60), 3, 0.0), s(216));
        assert_eq!(poll_delay(s(60), u32::MAX, 0.999), ms(659_880));
    }

    #[test]
    fn limiter_allows_a_burst_then_refuses_with_retry_after() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit { burst: 3, every: Duration::from_secs(10) });
        // Each row: now (ms), expected answer.
        let table: &[(u64, Result<(), Duration>)] = &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(ms(10_000))),
            (2_500, Err(ms(7_500))),
            (9_999, Err(ms(1))),
            (10_000, Ok(())),
            (10_000, Err(ms(10_000))),
        ];
        for (at, want) in table {
            assert_eq!(l.check("harbor", t0 + ms(*at)), *want, "at {at}");
        }
        // Retry-after rounds up to whole milliseconds.
        assert_eq!(l.check("harbor", t0 + ms(10_000) + Duration::from_micros(1)), Err(ms(10_000)));
    }

    #[test]
    fn limiter_refills_over_time_up_to_burst() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit { burst: 2, every: Duration::from_secs(1) });
        // Each row: now (ms), expected answer. A long quiet spell refills two tokens, not more.
        let table: &[(u64, Result<(), Duration>)] = &[
            (0, Ok(())),
            (0, Ok(())),
            (0, Err(ms(1000))),
            (1_000, Ok(())),
            (1_000, Err(ms(1000))),
            (1_500, Err(ms(500))),
            (3_000, Ok(())),
            (3_000, Ok(())),
            (3_000, Err(ms(1000))),
            (60_000, Ok(())),
            (60_000, Ok(())),
            (60_000, Err(ms(1000))),
            (60_400, Err(ms(600))),
        ];
        for (at, want) in table {
            assert_eq!(l.check("gitea", t0 + ms(*at)), *want, "at {at}");
        }
    }

    #[test]
    fn limiter_keys_are_independent() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit { burst: 1, every: Duration::from_secs(5) });
        assert_eq!(l.check("harbor", t0), Ok(()));
        assert_eq!(l.check("harbor", t0), Err(ms(5000)));
        assert_eq!(l.check("gitea", t0 + ms(1000)), Ok(()));
        assert_eq!(l.check("gitea", t0 + ms(1000)), Err(ms(5000)));
        assert_eq!(l.check("harbor", t0 + ms(1000)), Err(ms(4000)));
        assert_eq!(l.check("harbor", t0 + ms(5000)), Ok(()));
        assert_eq!(l.check("gitea", t0 + ms(5000)), Err(ms(1000)));
    }

    #[test]
    fn limiter_burst_zero_allows_one_and_every_zero_allows_all() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit { burst: 0, every: Duration::from_secs(2) });
        assert_eq!(l.check("ci", t0), Ok(()));
        assert_eq!(l.check("ci", t0), Err(ms(2000)));
        assert_eq!(l.check("ci", t0 + ms(2000)), Ok(()));

        let mut l = Limiter::new(RateLimit { burst: 1, every: Duration::ZERO });
        for _ in 0..100 {
            assert_eq!(l.check("ci", t0), Ok(()));
        }
    }

    #[test]
    fn limiter_forgets_full_buckets_when_keys_pile_up() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit { burst: 1, every: Duration::from_secs(1) });
        for i in 0..LIMITER_PRUNE_AT {
            assert_eq!(l.check(&format!("k{i}"), t0), Ok(()));
        }
        assert_eq!(l.full_at.len(), LIMITER_PRUNE_AT);
        // Later, all of them are full again: a new key prunes them, and nothing is lost.
        assert_eq!(l.check("new", t0 + ms(1000)), Ok(()));
        assert_eq!(l.full_at.len(), 1);
        assert_eq!(l.check("k0", t0 + ms(1000)), Ok(()));
        assert_eq!(l.check("new", t0 + ms(1000)), Err(ms(1000)));
    }

    #[test]
    fn traceparent_table() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        // Each row: header, expected (flags) when valid.
        let table: &[(&str, Option<u8>)] = &[
            (SPEC_EXAMPLE, Some(0x01)),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", Some(0x00)),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", Some(0xff)),
            ("  00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t\n", Some(0x01)),
            // A later version: extra fields are ignored, the first four must still be valid.
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some(0x01)),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds", Some(0x09)),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", Some(0x01)),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-future", None),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
            ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x-future", None),
            // Version 00 has exactly four fields.
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
            // The version: two lowercase hex digits, not ff.
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            ("0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            ("000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            ("zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            // Trace-id: 32 lowercase hex, not all zero.
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", None),
            // Parent-id: 16 lowercase hex, not all zero.
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", None),
            // Flags: two lowercase hex digits.
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0F", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1", None),
            // Wrong separators, inner whitespace, nothing.
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", None),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736 -00f067aa0ba902b7-01", None),
            ("00--4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
            ("", None),
            ("   ", None),
        ];
        for (header, want) in table {
            let got = TraceParent::parse(header);
            let want = want.map(|flags| TraceParent { trace_id: trace.into(), parent_id: parent.into(), flags });
            assert_eq!(got, want, "{header:?}");
        }
    }

    #[test]
    fn traceparent_sampled_and_display() {
        let tp = TraceParent::parse(SPEC_EXAMPLE).expect("the spec's example");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), SPEC_EXAMPLE);
        // Each row: flags, sampled, rendering of the flags.
        for (flags, sampled, shown) in
            [(0x00, false, "00"), (0x01, true, "01"), (0x02, false, "02"), (0xff, true, "ff")]
        {
            let tp = TraceParent { flags, ..tp.clone() };
            assert_eq!(tp.sampled(), sampled, "{flags:#x}");
            assert!(tp.to_string().ends_with(&format!("-{shown}")), "{tp}");
            assert_eq!(TraceParent::parse(&tp.to_string()), Some(tp));
        }
        // A later version is rendered as 00, the version this agent speaks.
        let later = TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x").expect("valid");
        assert_eq!(later.to_string(), SPEC_EXAMPLE);
    }
}
