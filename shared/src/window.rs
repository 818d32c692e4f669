//! Rollout windows: when a bundle may roll out, as allow and deny schedules (a 5-field cron
//! schedule, a duration and an IANA time zone), global and per bundle, with the semantics of
//! Argo CD's sync windows. The caller passes the global and the bundle's windows together and
//! `now`; [`gate`] says Open, or Deferred with the earliest instant at which it opens, so the
//! daemon can sleep until then and `agent status` can say why and until when.
//!
//! Why Argo CD's rules: store teams already know them. An active deny window closes; otherwise,
//! when there are allow windows, one of them must be active; with no windows at all, the gate is
//! open. Rollbacks and `--ignore-windows` are never deferred ([`gate_change`]): a rollback restores
//! last-known-good, and an emergency fix must not wait for the night.
//!
//! An occurrence of a window is `[start, start + duration)`: it starts when the schedule fires in
//! the window's time zone and lasts `duration` of elapsed time, so a window running across a
//! clock change is one hour shorter or longer on the wall clock. A window whose last occurrence
//! started before `now` and still runs is active, however long ago it started.
//!
//! Clock changes follow croner (the cron library), which follows the Open Cron Pattern
//! Specification and Vixie cron:
//! - a schedule with fixed second, minute and hour (`0 2 * * *`) whose time does not exist on a
//!   spring-forward day fires at the first instant after the gap (03:00 CEST in Europe/Berlin on
//!   2026-03-29); on a fall-back day, when its time happens twice, it fires once, at the earlier
//!   instant (02:00 CEST on 2026-10-25);
//! - a schedule with a wildcard, range, list or step in minute or hour (`*/30 2 * * *`) skips the
//!   times that do not exist and fires at both instants of a time that happens twice.
//!
//! Zones come from the IANA database bundled into jiff, never from the node's
//! `/usr/share/zoneinfo`: the crate does no I/O, and a window means the same on every node.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::written::WrittenDuration;

/// How far [`gate`] looks ahead for an opening: a year and a day, so that a yearly schedule and
/// a leap day are seen at least once.
pub const LOOKAHEAD: Duration = Duration::from_secs(LOOKAHEAD_SECS as u64);
const LOOKAHEAD_SECS: i64 = 366 * 86_400;

/// The most schedule searches one [`gate`] call makes. Only a deny window that fires again before
/// it ends (`* * * * *` for 1m) needs many: each search steps one occurrence. 50,000 steps cover
/// about 35 days of a minute schedule and take well under a second.
const MAX_SEARCHES: u32 = 50_000;

/// 2000-01-01T00:00:00Z: where [`Window::from_spec`] checks that a schedule ever fires. A 5-field
/// schedule repeats at the latest every 400 years (the Gregorian cycle), so firing once after this
/// instant means firing forever.
const REFERENCE: i64 = 946_684_800;

/// Whether a window opens or closes the gate while it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WindowKind {
    Allow,
    Deny,
}

/// One rollout window as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// When each occurrence starts: 5 fields (minute hour day-of-month month day-of-week) or a
    /// nickname such as `@daily`. Day-of-month and day-of-week are OR-ed when both are set, as in
    /// Vixie cron and Argo CD.
    pub schedule: String,
    /// How long each occurrence lasts, in elapsed time (`2h`, `90m`).
    pub duration: WrittenDuration,
    /// The IANA time zone the schedule is read in (`Europe/Berlin`); UTC when absent.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// A checked [`WindowSpec`], ready for [`gate`].
#[derive(Debug, Clone)]
pub struct Window {
    spec: WindowSpec,
    cron: Cron,
    time_zone: TimeZone,
    /// Seconds, at least 1, at most [`LOOKAHEAD`].
    duration: i64,
}

/// Whether a rollout may proceed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "gate", rename_all = "camelCase")]
pub enum Gate {
    Open,
    /// Closed now. `until` is the earliest instant (unix seconds) at which [`gate`] is Open, `None`
    /// when there is none within [`LOOKAHEAD`] (or within the search budget, see `MAX_SEARCHES`). `reason` says which windows close it and until when
    /// (RFC 3339, in the zone of the window that opens it and in UTC), for `agent status`.
    Deferred {
        until: Option<i64>,
        reason: String,
    },
}

/// What is about to be applied; decides whether windows apply at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new revision: waits for the windows.
    Rollout,
    /// A new revision with `--ignore-windows`: an emergency goes out at once.
    EmergencyRollout,
    /// Back to last-known-good: never waits.
    Rollback,
}

impl Window {
    /// Checks a spec: the schedule parses as 5 fields and ever fires, the duration is a whole
    /// number of seconds between 1s and [`LOOKAHEAD`] (a longer window could not be told from a
    /// permanent one), and the time zone is in the IANA database.
    /// The problem's path is the field as written (`schedule`, `duration`, `timeZone`), for the
    /// caller to put under the window's path ([`Problem::under`]).
    pub fn from_spec(spec: &WindowSpec) -> Result<Window, Problem> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&spec.schedule)
            .map_err(|e| {
                Problem::new(
                    "schedule",
                    format!("{:?} is not a 5-field cron schedule such as \"0 22 * * 1-5\": {e}", spec.schedule),
                )
            })?;
        let duration = match spec.duration.parsed() {
            Err(e) => {
                return Err(Problem::new(
                    "duration",
                    format!("{:?} is not a duration such as 2h or 90m: {e}", spec.duration.text()),
                ));
            }
            Ok(d) if d.subsec_nanos() != 0 || d.is_zero() => {
                return Err(Problem::new(
                    "duration",
                    format!("{} is not a whole number of seconds of at least 1s", spec.duration),
                ));
            }
            Ok(d) if d > LOOKAHEAD => {
                return Err(Problem::new(
                    "duration",
                    format!("{} is longer than the look-ahead of 366 days", spec.duration),
                ));
            }
            Ok(d) => i64::try_from(d.as_secs()).expect("at most LOOKAHEAD"),
        };
        // jiff's error only repeats the name.
        let time_zone = TimeZoneDatabase::bundled().get(&spec.time_zone).map_err(|_| {
            Problem::new("timeZone", format!("{:?} is not an IANA time zone such as Europe/Berlin", spec.time_zone))
        })?;
        let reference =
            Timestamp::from_second(REFERENCE).expect("2000-01-01 is within jiff's range").to_zoned(time_zone.clone());
        if cron.find_next_occurrence(&reference, true).is_err() {
            return Err(Problem::new(
                "schedule",
                format!("{:?} never fires (a day that no month has?)", spec.schedule),
            ));
        }
        Ok(Window { spec: spec.clone(), cron, time_zone, duration })
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    pub fn kind(&self) -> WindowKind {
        self.spec.kind
    }

    fn zoned(&self, t: i64) -> Option<Zoned> {
        Timestamp::from_second(t).ok().map(|ts| ts.to_zoned(self.time_zone.clone()))
    }

    /// The latest occurrence start at or before `t`. croner's errors (a search past year 1 or
    /// 5000) count as no occurrence.
    fn last_start(&self, t: i64) -> Option<i64> {
        let found = self.cron.find_previous_occurrence(&self.zoned(t)?, true).ok()?;
        Some(found.timestamp().as_second())
    }

    /// The earliest occurrence start after `t`.
    fn next_start(&self, t: i64) -> Option<i64> {
        let found = self.cron.find_next_occurrence(&self.zoned(t)?, false).ok()?;
        Some(found.timestamp().as_second())
    }

    /// `` `0 22 * * 1-5` for 2h (Europe/Berlin) ``
    fn label(&self) -> String {
        format!("`{}` for {} ({})", self.spec.schedule, self.spec.duration, self.zone_name())
    }

    fn zone_name(&self) -> &str {
        self.time_zone.iana_name().unwrap_or(&self.spec.time_zone)
    }

    /// `t` in RFC 3339 in the window's zone, and in UTC unless that is the zone.
    fn instant(&self, t: i64) -> String {
        let Ok(ts) = Timestamp::from_second(t) else { return format!("{t} (unix seconds)") };
        if self.zone_name() == "UTC" {
            return ts.to_string();
        }
        format!("{} {} ({ts})", ts.display_with_offset(self.time_zone.to_offset(ts)), self.zone_name())
    }
}

/// The gate of `windows` (global and the bundle's together) at `now` (unix seconds).
pub fn gate(windows: &[Window], now: i64) -> Gate {
    if Timestamp::from_second(now).is_err() {
        return Gate::Deferred { until: None, reason: format!("{now} is not a time jiff can represent") };
    }
    let mut search = Search { left: MAX_SEARCHES };
    let closed = match closed_at(windows, now, &mut search) {
        Ok(None) => return Gate::Open,
        Ok(Some(closed)) => closed,
        Err(Exhausted) => {
            return Gate::Deferred {
                until: None,
                reason: format!("no decision within {MAX_SEARCHES} schedule searches"),
            };
        }
    };
    match opening(windows, now, &mut search) {
        Ok((until, by)) => {
            Gate::Deferred { until: Some(until), reason: format!("{closed}; opens at {}", by.instant(until)) }
        }
        Err(Stop::Lookahead) => {
            Gate::Deferred { until: None, reason: format!("{closed}; no window opens within 366 days") }
        }
        Err(Stop::Exhausted) => Gate::Deferred {
            until: None,
            reason: format!("{closed}; no opening found within {MAX_SEARCHES} schedule searches"),
        },
    }
}

/// The gate of one change: rollbacks and emergency rollouts (`--ignore-windows`) are always open.
pub fn gate_change(change: Change, windows: &[Window], now: i64) -> Gate {
    match change {
        Change::Rollout => gate(windows, now),
        Change::EmergencyRollout | Change::Rollback => Gate::Open,
    }
}

/// Counts schedule searches, so that no window set makes [`gate`] slow.
struct Search {
    left: u32,
}

/// The search budget ran out.
struct Exhausted;

enum Stop {
    /// Nothing opens before `now + LOOKAHEAD`.
    Lookahead,
    Exhausted,
}

impl From<Exhausted> for Stop {
    fn from(_: Exhausted) -> Stop {
        Stop::Exhausted
    }
}

impl Search {
    fn spend(&mut self) -> Result<(), Exhausted> {
        self.left = self.left.checked_sub(1).ok_or(Exhausted)?;
        Ok(())
    }

    fn last_start(&mut self, w: &Window, t: i64) -> Result<Option<i64>, Exhausted> {
        self.spend()?;
        Ok(w.last_start(t))
    }

    fn next_start(&mut self, w: &Window, t: i64) -> Result<Option<i64>, Exhausted> {
        self.spend()?;
        Ok(w.next_start(t))
    }

    /// The end of the occurrence of `w` running at `t`, if one is.
    fn running_until(&mut self, w: &Window, t: i64) -> Result<Option<i64>, Exhausted> {
        Ok(self.last_start(w, t)?.map(|s| s + w.duration).filter(|end| t < *end))
    }

    /// When `w`, active at `t` until `end`, stops being active: occurrences that start before
    /// the previous one ends (or as it ends) chain into one. Stops past `horizon`.
    fn active_until(&mut self, w: &Window, mut end: i64, horizon: i64) -> Result<i64, Exhausted> {
        while end <= horizon {
            match self.running_until(w, end)? {
                Some(later) => end = later,
                None => break,
            }
        }
        Ok(end)
    }
}

/// Why the gate is closed at `now`, or `None` when it is open.
fn closed_at(windows: &[Window], now: i64, search: &mut Search) -> Result<Option<String>, Exhausted> {
    let mut denying = Vec::new();
    for w in windows.iter().filter(|w| w.kind() == WindowKind::Deny) {
        if search.running_until(w, now)?.is_some() {
            denying.push(w.label());
        }
    }
    if !denying.is_empty() {
        return Ok(Some(format!("inside {}", listed("deny window", &denying))));
    }
    let allows: Vec<&Window> = windows.iter().filter(|w| w.kind() == WindowKind::Allow).collect();
    if allows.is_empty() || any_running(search, &allows, now)? {
        return Ok(None);
    }
    let labels: Vec<String> = allows.iter().map(|w| w.label()).collect();
    Ok(Some(format!("outside {}", listed("allow window", &labels))))
}

fn any_running(search: &mut Search, windows: &[&Window], t: i64) -> Result<bool, Exhausted> {
    for w in windows {
        if search.running_until(w, t)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `deny window A`, `deny windows A and B`.
fn listed(what: &str, labels: &[String]) -> String {
    match labels {
        [one] => format!("{what} {one}"),
        _ => format!("{what}s {}", labels.join(" and ")),
    }
}

/// The earliest instant at or after `now` at which the gate is open, and the window whose
/// boundary opens it. Only two events can open the gate: a deny window ending and an allow
/// window starting; so from `now` it jumps to the latest end of the active deny windows, else to
/// the next allow start, and checks again there.
fn opening<'w>(windows: &'w [Window], now: i64, search: &mut Search) -> Result<(i64, &'w Window), Stop> {
    let horizon = now.saturating_add(LOOKAHEAD_SECS);
    let (denies, allows): (Vec<&Window>, Vec<&Window>) = windows.iter().partition(|w| w.kind() == WindowKind::Deny);
    let mut t = now;
    let mut by = None;
    while t <= horizon {
        let mut deny_end: Option<(i64, &Window)> = None;
        for w in &denies {
            if let Some(end) = search.running_until(w, t)? {
                let end = search.active_until(w, end, horizon)?;
                if deny_end.is_none_or(|(e, _)| end > e) {
                    deny_end = Some((end, w));
                }
            }
        }
        if let Some((end, w)) = deny_end {
            (t, by) = (end, Some(w));
            continue;
        }
        if allows.is_empty() || any_running(search, &allows, t)? {
            // Not open at `now` (the caller checked), so `t` moved and `by` is set.
            return by.map(|w| (t, w)).ok_or(Stop::Lookahead);
        }
        let mut next_allow: Option<(i64, &Window)> = None;
        for w in &allows {
            if let Some(start) = search.next_start(w, t)?
                && next_allow.is_none_or(|(s, _)| start < s)
            {
                next_allow = Some((start, w));
            }
        }
        match next_allow {
            Some((start, w)) => (t, by) = (start, Some(w)),
            None => return Err(Stop::Lookahead),
        }
    }
    Err(Stop::Lookahead)
}

/// The windows that gate a bundle's rollouts: the node's global ones, then the bundle's own.
/// Both lists were validated when their files were read; an invalid one here is an error naming
/// where it came from.
pub fn for_bundle(global: &[WindowSpec], bundle: &[WindowSpec]) -> Result<Vec<Window>, String> {
    let global = global
        .iter()
        .enumerate()
        .map(|(i, w)| Window::from_spec(w).map_err(|e| e.under(&format!("rollout.windows[{i}]")).to_string()));
    let own = bundle.iter().enumerate().map(|(i, w)| {
        Window::from_spec(w)
            .map_err(|e| format!("fleet.yaml: {}", e.under(&format!("gitopsAgent.rolloutWindows[{i}]"))))
    });
    global.chain(own).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(kind: WindowKind, schedule: &str, duration: &str, time_zone: &str) -> WindowSpec {
        WindowSpec { kind, schedule: schedule.into(), duration: duration.into(), time_zone: time_zone.into() }
    }

    fn allow(schedule: &str, duration: &str, time_zone: &str) -> Window {
        Window::from_spec(&spec(WindowKind::Allow, schedule, duration, time_zone)).expect("valid window")
    }

    fn deny(schedule: &str, duration: &str, time_zone: &str) -> Window {
        Window::from_spec(&spec(WindowKind::Deny, schedule, duration, time_zone)).expect("valid window")
    }

    /// What a table row expects of [`gate`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        Open,
        /// Deferred, open again at this instant.
        Until(i64),
        /// Deferred, with no opening found.
        Never,
    }

    use Want::{Never, Open, Until};

    fn want(g: &Gate) -> Want {
        match g {
            Gate::Open => Open,
            Gate::Deferred { until: Some(t), .. } => Until(*t),
            Gate::Deferred { until: None, .. } => Never,
        }
    }

    /// Each row: now, expected gate, what the row shows.
    fn check(windows: &[Window], table: &[(i64, Want, &str)]) {
        for (now, expected, why) in table {
            let got = gate(windows, *now);
            assert_eq!(want(&got), *expected, "now {now}: {why}: {got:?}");
            if let Until(t) = expected {
                // `until` is exact: open there, closed the second before.
                assert_eq!(gate(windows, *t), Gate::Open, "at until {t}: {why}");
                assert_ne!(gate(windows, *t - 1), Gate::Open, "before until {t}: {why}");
            }
        }
    }

    #[test]
    fn no_windows_means_open() {
        assert_eq!(gate(&[], 1_774_742_400), Gate::Open);
    }

    #[test]
    fn an_allow_window_spanning_midnight_opens_and_closes_in_utc() {
        // 22:00 to 01:00 UTC every day.
        let windows = [allow("0 22 * * *", "3h", "UTC")];
        check(
            &windows,
            &[
                (1_774_648_799, Until(1_774_648_800), "2026-03-27T21:59:59Z, before the window"),
                (1_774_648_800, Open, "2026-03-27T22:00:00Z, its start is inside"),
                (1_774_655_999, Open, "2026-03-27T23:59:59Z"),
                (1_774_657_800, Open, "2026-03-28T00:30:00Z, past midnight: the occurrence of the day before"),
                (1_774_659_599, Open, "2026-03-28T00:59:59Z"),
                (1_774_659_600, Until(1_774_735_200), "2026-03-28T01:00:00Z, its end is outside"),
            ],
        );
    }

    #[test]
    fn a_deny_window_defers_until_its_end() {
        // 09:00 to 17:00 in Kolkata (+05:30, no DST): 03:30 to 11:30 UTC.
        let windows = [deny("0 9 * * *", "8h", "Asia/Kolkata")];
        check(
            &windows,
            &[
                (1_781_494_199, Open, "2026-06-15T03:29:59Z, 08:59:59 IST"),
                (1_781_494_200, Until(1_781_523_000), "2026-06-15T03:30:00Z, 09:00 IST"),
                (1_781_503_200, Until(1_781_523_000), "2026-06-15T06:00:00Z, 11:30 IST"),
                (1_781_523_000, Open, "2026-06-15T11:30:00Z, 17:00 IST"),
            ],
        );
    }

    #[test]
    fn a_weekday_schedule_skips_the_weekend() {
        // Monday to Friday 22:00 for 4h in Berlin (CET until 2026-03-29, then CEST).
        let windows = [allow("0 22 * * 1-5", "4h", "Europe/Berlin")];
        check(
            &windows,
            &[
                // Friday 2026-03-27 22:00 CET = 21:00Z, running into Saturday 02:00 CET.
                (1_774_645_200, Open, "Friday 22:00 CET"),
                (1_774_656_000, Open, "Saturday 2026-03-28T00:00:00Z, 01:00 CET, Friday's window"),
                (1_774_659_600, Until(1_774_900_800), "Saturday 02:00 CET: next is Monday 22:00 CEST"),
                (1_774_814_400, Until(1_774_900_800), "Sunday 2026-03-29 22:00 CEST: Sunday does not fire"),
            ],
        );
    }

    #[test]
    fn the_same_schedule_in_different_zones_opens_at_different_instants() {
        let row = |zone: &str| gate(&[allow("0 22 * * *", "1h", zone)], 1_781_481_600); // 2026-06-15T00:00:00Z
        let table: &[(&str, i64, &str)] = &[
            ("UTC", 1_781_560_800, "2026-06-15T22:00:00Z"),
            ("Asia/Kolkata", 1_781_541_000, "22:00 IST = 16:30Z"),
            ("Europe/Berlin", 1_781_553_600, "22:00 CEST = 20:00Z"),
            ("America/New_York", 1_781_488_800, "2026-06-14 22:00 EDT = 2026-06-15T02:00:00Z"),
        ];
        for (zone, at, why) in table {
            assert_eq!(want(&row(zone)), Until(*at), "{zone}: {why}");
        }
    }

    #[test]
    fn deny_wins_over_allow_and_their_overlaps_defer_to_the_first_open_instant() {
        let table: &[(&[Window], i64, Want, &str)] = &[
            // Allow 20:00-02:00, deny 22:00-23:00 (UTC).
            (
                &[allow("0 20 * * *", "6h", "UTC"), deny("0 22 * * *", "1h", "UTC")],
                1_781_557_200,
                Open,
                "21:00, allowed",
            ),
            (
                &[allow("0 20 * * *", "6h", "UTC"), deny("0 22 * * *", "1h", "UTC")],
                1_781_560_800,
                Until(1_781_564_400),
                "22:00: a deny inside an allow defers to the deny's end, 23:00",
            ),
            (
                &[allow("0 20 * * *", "6h", "UTC"), deny("0 22 * * *", "1h", "UTC")],
                1_781_546_400,
                Until(1_781_553_600),
                "18:00: outside, to the allow start 20:00",
            ),
            // Allow 20:00-02:00, deny 19:00-21:00: the allow starts inside the deny.
            (
                &[allow("0 20 * * *", "6h", "UTC"), deny("0 19 * * *", "2h", "UTC")],
                1_781_551_800,
                Until(1_781_557_200),
                "19:30: to the deny's end 21:00, inside the allow",
            ),
            // Deny 08:00-12:00 and 11:00-14:00: the second keeps it closed after the first ends.
            (
                &[deny("0 8 * * *", "4h", "UTC"), deny("0 11 * * *", "3h", "UTC")],
                1_781_514_000,
                Until(1_781_532_000),
                "09:00: to 14:00",
            ),
            // Allow 20:00-21:00 every day inside a deny 19:00-22:00 on weekdays: Saturday.
            (
                &[allow("0 20 * * *", "1h", "UTC"), deny("0 19 * * 1-5", "3h", "UTC")],
                1_781_481_600,
                Until(1_781_985_600),
                "Monday 2026-06-15T00:00:00Z: to Saturday 2026-06-20T20:00:00Z",
            ),
            // The same deny every day: never.
            (&[allow("0 20 * * *", "1h", "UTC"), deny("0 19 * * *", "3h", "UTC")], 1_781_481_600, Never, "never"),
        ];
        for (windows, now, want, why) in table {
            check(windows, &[(*now, *want, why)]);
        }
    }

    #[test]
    fn a_deny_window_that_fires_before_it_ends_is_one_long_window() {
        // Every hour for an hour on weekdays: closed from Monday 00:00 to Saturday 00:00.
        let windows = [deny("0 * * * 1-5", "1h", "UTC")];
        check(
            &windows,
            &[
                (1_781_481_600, Until(1_781_913_600), "Monday 2026-06-15T00:00:00Z to Saturday"),
                (1_781_910_000, Until(1_781_913_600), "Friday 23:00"),
                (1_781_913_600, Open, "Saturday 2026-06-20T00:00:00Z"),
            ],
        );
        // Started days ago and still running: Monday 00:00 for 72h.
        let windows = [deny("0 0 * * 1", "72h", "UTC")];
        check(&windows, &[(1_781_654_400, Until(1_781_740_800), "Wednesday 2026-06-17T00:00:00Z to Thursday")]);
    }

    #[test]
    fn a_deny_window_that_never_ends_never_opens() {
        let forever = gate(&[deny("0 0 * * *", "24h", "UTC")], 1_781_481_600);
        assert_eq!(
            forever,
            Gate::Deferred {
                until: None,
                reason: "inside deny window `0 0 * * *` for 24h (UTC); no window opens within 366 days".into()
            }
        );
        // Every minute for a minute: one search per minute, so the budget ends the search first.
        let every_minute = gate(&[deny("* * * * *", "1m", "UTC")], 1_781_481_600);
        assert_eq!(want(&every_minute), Never);
        assert!(format!("{every_minute:?}").contains("schedule searches"), "{every_minute:?}");
    }

    #[test]
    fn berlin_spring_forward_fires_a_missing_time_after_the_gap() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00Z; 02:00 does not exist.
        let fixed = [allow("0 2 * * *", "1h", "Europe/Berlin")];
        check(
            &fixed,
            &[
                (1_774_663_200, Until(1_774_746_000), "2026-03-28T02:00:00Z, 03:00 CET: the day before's ended"),
                (1_774_744_200, Until(1_774_746_000), "2026-03-29T00:30:00Z, 01:30 CET: at 03:00 CEST"),
                (1_774_747_800, Open, "2026-03-29T01:30:00Z, 03:30 CEST"),
                (1_774_749_600, Until(1_774_828_800), "2026-03-29T02:00:00Z, one elapsed hour later"),
            ],
        );
        // A step in minute or hour skips the missing times.
        let stepped = [allow("*/30 2 * * *", "30m", "Europe/Berlin")];
        check(&stepped, &[(1_774_744_200, Until(1_774_828_800), "no 02:00 or 02:30 on 2026-03-29")]);
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00Z; 02:30 fires at 03:00 EDT.
        let new_york = [allow("30 2 * * *", "1h", "America/New_York")];
        check(
            &new_york,
            &[
                (1_772_953_199, Until(1_772_953_200), "2026-03-08T06:59:59Z, 01:59:59 EST: to 07:00Z"),
                (1_772_956_799, Open, "07:59:59Z, 03:59:59 EDT"),
                (1_772_956_800, Until(1_773_037_800), "08:00Z: to 2026-03-09 02:30 EDT (06:30Z)"),
            ],
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once_and_durations_are_elapsed() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00Z; 02:00 happens at 00:00Z
        // and at 01:00Z. A fixed time fires at the earlier; 2h elapsed end at 02:00Z (03:00 CET).
        let berlin = [allow("0 2 * * *", "2h", "Europe/Berlin")];
        check(
            &berlin,
            &[
                (1_792_886_399, Until(1_792_886_400), "2026-10-24T23:59:59Z, 01:59:59 CEST"),
                (1_792_890_000, Open, "2026-10-25T01:00:00Z, the second 02:00 (CET)"),
                (1_792_893_600, Until(1_792_976_400), "02:00Z, 03:00 CET: to 2026-10-26 02:00 CET"),
            ],
        );
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00Z. 01:00 fires at 01:00 EDT
        // (05:00Z) only; an hour later the second 01:00 (EST) is outside.
        let new_york = [allow("0 1 * * *", "1h", "America/New_York")];
        check(
            &new_york,
            &[
                (1_793_511_000, Open, "2026-11-01T05:30:00Z, 01:30 EDT"),
                (1_793_514_600, Until(1_793_599_200), "06:30Z, 01:30 EST: to 2026-11-02 01:00 EST"),
            ],
        );
        // A step fires at both instants: deny every 30 minutes of 02:xx for 30m covers 00:00Z to
        // 02:00Z, both passes through 02:00-03:00.
        let stepped = [deny("*/30 2 * * *", "30m", "Europe/Berlin")];
        check(&stepped, &[(1_792_887_000, Until(1_792_893_600), "2026-10-25T00:10:00Z")]);
    }

    #[test]
    fn the_reason_names_the_windows_and_the_opening_in_both_zones() {
        let windows = [deny("0 22 * * 1-5", "2h", "Europe/Berlin"), allow("0 20 * * *", "8h", "Europe/Berlin")];
        // Monday 2026-06-15 20:30Z = 22:30 CEST: the deny runs to 00:00 CEST.
        assert_eq!(
            gate(&windows, 1_781_555_400),
            Gate::Deferred {
                until: Some(1_781_560_800),
                reason: "inside deny window `0 22 * * 1-5` for 2h (Europe/Berlin); \
                         opens at 2026-06-16T00:00:00+02:00 Europe/Berlin (2026-06-15T22:00:00Z)"
                    .into()
            }
        );
        // 2026-06-15T12:00:00Z = 14:00 CEST: outside the allow window until 20:00 CEST.
        assert_eq!(
            gate(&windows, 1_781_524_800),
            Gate::Deferred {
                until: Some(1_781_546_400),
                reason: "outside allow window `0 20 * * *` for 8h (Europe/Berlin); \
                         opens at 2026-06-15T20:00:00+02:00 Europe/Berlin (2026-06-15T18:00:00Z)"
                    .into()
            }
        );
        // Two deny windows at once, the later end opens: 09:00-12:00 and 10:00-14:00 UTC, at 11:00.
        let two = [deny("0 9 * * *", "3h", "UTC"), deny("0 10 * * *", "4h", "UTC")];
        assert_eq!(
            gate(&two, 1_781_521_200),
            Gate::Deferred {
                until: Some(1_781_532_000),
                reason: "inside deny windows `0 9 * * *` for 3h (UTC) and `0 10 * * *` for 4h (UTC); \
                         opens at 2026-06-15T14:00:00Z"
                    .into()
            }
        );
        assert_eq!(want(&gate(&two, i64::MAX)), Never, "a time out of jiff's range");
        assert_eq!(serde_json::to_value(gate(&windows, 1_781_524_800)).expect("serializes")["gate"], json!("deferred"));
    }

    #[test]
    fn rollbacks_and_emergencies_ignore_windows() {
        let windows = [deny("0 0 * * *", "24h", "UTC")];
        let now = 1_781_481_600;
        assert!(matches!(gate_change(Change::Rollout, &windows, now), Gate::Deferred { .. }));
        assert_eq!(gate_change(Change::EmergencyRollout, &windows, now), Gate::Open);
        assert_eq!(gate_change(Change::Rollback, &windows, now), Gate::Open);
    }

    #[test]
    fn invalid_specs_name_the_field_and_the_value() {
        let table: &[(&str, &str, &str, &str, &str)] = &[
            ("0 25 * * *", "1h", "UTC", "schedule", "\"0 25 * * *\""),
            ("0 0 * * * *", "1h", "UTC", "schedule", "5 fields"),
            ("* * * *", "1h", "UTC", "schedule", "\"* * * *\""),
            ("", "1h", "UTC", "schedule", "\"\""),
            ("0 0 30 2 *", "1h", "UTC", "schedule", "never fires"),
            ("0 22 * * *", "soon", "UTC", "duration", "\"soon\""),
            ("0 22 * * *", "0s", "UTC", "duration", "0s is not a whole number"),
            ("0 22 * * *", "1500ms", "UTC", "duration", "1500ms is not a whole number"),
            ("0 22 * * *", "367days", "UTC", "duration", "longer than the look-ahead"),
            ("0 22 * * *", "1h", "Mars/Olympus_Mons", "timeZone", "\"Mars/Olympus_Mons\""),
            ("0 22 * * *", "1h", "+05:30", "timeZone", "\"+05:30\""),
            ("0 22 * * *", "1h", "", "timeZone", "\"\""),
        ];
        for (schedule, duration, zone, field, needle) in table {
            let err = Window::from_spec(&spec(WindowKind::Allow, schedule, duration, zone)).expect_err(schedule);
            assert_eq!(err.path, *field, "{err}");
            assert!(err.message.contains(needle), "{err}");
            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        }
    }

    #[test]
    fn specs_deserialize_with_camel_case_keys_and_utc_by_default() {
        let windows: Vec<WindowSpec> = serde_json::from_value(json!([
            {"kind": "deny", "schedule": "0 22 * * 1-5", "duration": "2h", "timeZone": "Europe/Berlin"},
            {"kind": "allow", "schedule": "@daily", "duration": "90m"},
        ]))
        .expect("valid specs");
        assert_eq!(
            windows,
            vec![
                spec(WindowKind::Deny, "0 22 * * 1-5", "2h", "Europe/Berlin"),
                spec(WindowKind::Allow, "@daily", "90m", "UTC")
            ]
        );
        let yaml: Vec<WindowSpec> = serde_saphyr::from_str(
            "- kind: allow\n  schedule: \"0 2 * * *\"\n  duration: 1h\n  timeZone: America/New_York\n",
        )
        .expect("valid YAML");
        assert_eq!(yaml, vec![spec(WindowKind::Allow, "0 2 * * *", "1h", "America/New_York")]);
        for bad in [
            json!({"kind": "allow", "schedule": "0 2 * * *", "duration": "1h", "timezone": "UTC"}),
            json!({"kind": "block", "schedule": "0 2 * * *", "duration": "1h"}),
            json!({"kind": "allow", "duration": "1h"}),
        ] {
            assert!(serde_json::from_value::<WindowSpec>(bad.clone()).is_err(), "{bad}");
        }
    }
}
