//! Fire-time computation: a 6-field cron expression read as wall-clock time in an IANA
//! timezone, with daylight-saving transitions handled so a schedule neither skips nor
//! double-fires.
//!
//! The `cron` crate alone skips local times that do not exist (02:30 on a spring-forward
//! night), so expressions are evaluated on naive local time and each candidate is then
//! placed on the timeline here:
//! - a local time that exists once fires then;
//! - a local time that exists twice (the fall-back hour) fires at its first occurrence only;
//! - a local time inside the spring-forward gap fires at the end of the gap (03:00 EDT),
//!   and several candidates in one gap collapse into that single fire.
use apalis_cron::Tick;
use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

/// How late a tick may still be handed out after a stall (a busy task, slow Redis):
/// later ticks fire in order once the stall ends; older ones are dropped.
pub const LATE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// Candidates examined per lookup; bounds the cost of a per-second schedule crossing a
/// fall-back hour, whose repeated local times are all skipped.
const SCAN_LIMIT: usize = 100_000;

/// A parsed cron expression in a timezone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: cron::Schedule,
    tz: Tz,
    /// Last tick handed to apalis-cron, seconds. The next tick follows it (so none is
    /// handed out twice, even if the timer wakes early, and none is skipped after a
    /// short stall); `None` starts from now.
    last: Option<i64>,
}

impl Cadence {
    /// Parses `expr` (exactly 6 fields: sec min hour day-of-month month day-of-week) and
    /// the IANA timezone `tz`. The message says what is wrong and how to fix it.
    pub fn parse(expr: &str, tz: &str) -> Result<Cadence, (&'static str, String)> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 6 {
            return Err((
                "cron",
                format!(
                    "`{expr}` has {} fields; culm expects 6: sec min hour day-of-month month day-of-week (e.g. \"0 */30 * * * *\")",
                    fields.len()
                ),
            ));
        }
        // The cron crate numbers weekdays 1=SUN..7=SAT, unlike Unix cron (0/7=SUN, 1=MON);
        // a copied "1-5" would silently mean Sunday to Thursday. Names are unambiguous.
        if fields[5].chars().any(|c| c.is_ascii_digit()) {
            return Err((
                "cron",
                format!(
                    "`{expr}`: write the day-of-week field with names (MON-FRI, SAT,SUN), not numbers: `{}` is ambiguous between cron dialects",
                    fields[5]
                ),
            ));
        }
        let cron = cron::Schedule::from_str(expr).map_err(|e| ("cron", format!("`{expr}` does not parse: {e}")))?;
        let tz = Tz::from_str(tz).map_err(|_| {
            (
                "timezone",
                format!("`{tz}` is not an IANA timezone name (e.g. \"UTC\", \"America/New_York\")"),
            )
        })?;
        Ok(Cadence { cron, tz, last: None })
    }

    /// A copy whose tick stream continues after `last` (seconds) instead of from now.
    pub fn resuming_after(&self, last: Option<i64>) -> Cadence {
        Cadence { last, ..self.clone() }
    }

    /// The timezone fire times are computed in.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz).naive_local();
        // Evaluate the expression on naive local time (treated as UTC, which has no DST).
        for candidate in self.cron.after(&local.and_utc()).take(SCAN_LIMIT) {
            let at = self.place(candidate.naive_utc());
            if at > t {
                return Some(at);
            }
        }
        None
    }

    /// The next `n` fire times after `t`.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cur = t;
        while out.len() < n {
            match self.next_after(cur) {
                Some(next) => {
                    out.push(next);
                    cur = next;
                }
                None => break,
            }
        }
        out
    }

    /// The latest fire time at or before `t` (within about five years).
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Widen the window until it holds a fire time: a per-second or per-minute schedule
        // is settled by the first window, a monthly one by the fourth.
        for secs in [120, 3_600, 86_400, 32 * 86_400, 367 * 86_400, 1_830 * 86_400] {
            let start = t - chrono::Duration::seconds(secs);
            let mut cur = start;
            let mut latest = None;
            for _ in 0..SCAN_LIMIT {
                match self.next_after(cur) {
                    Some(next) if next <= t => {
                        latest = Some(next);
                        cur = next;
                    }
                    _ => break,
                }
            }
            if latest.is_some() {
                return latest;
            }
        }
        None
    }

    /// Places a naive local time on the timeline (see the module docs).
    fn place(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => self.gap_end(local),
        }
    }

    /// The first instant whose local time is at or after `local` (which falls in a gap).
    fn gap_end(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let naive = local.and_utc().timestamp();
        // Offsets are within ±15h, so the answer lies in this window; local time is
        // monotonic there except across a fall-back, which never sits next to a gap.
        let (mut lo, mut hi) = (naive - 15 * 3600, naive + 15 * 3600);
        let reached = |secs: i64| {
            DateTime::from_timestamp(secs, 0)
                .map(|u| u.with_timezone(&self.tz).naive_local() >= local)
                .unwrap_or(true)
        };
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if reached(mid) { hi = mid } else { lo = mid }
        }
        DateTime::from_timestamp(hi, 0).unwrap_or_else(|| local.and_utc())
    }
}

impl apalis_cron::Schedule<Tz> for Cadence {
    fn next_tick(&mut self, _tz: &Tz) -> Option<Tick<Tz>> {
        let now = Utc::now();
        let from = match self.last.and_then(|s| DateTime::from_timestamp(s, 0)) {
            Some(last) => last.max(now - LATE_GRACE),
            None => now,
        };
        let next = self.next_after(from)?;
        self.last = Some(next.timestamp());
        Some(Tick::new(u64::try_from(next.timestamp()).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid test time")
            .with_timezone(&Utc)
    }

    fn fires_between(c: &Cadence, from: &str, to: &str) -> Vec<String> {
        let (from, to) = (utc(from), utc(to));
        let mut out = Vec::new();
        let mut cur = from;
        while let Some(n) = c.next_after(cur).filter(|n| *n <= to) {
            out.push(n.to_rfc3339());
            cur = n;
        }
        out
    }

    #[test]
    fn daily_schedule_fires_once_on_the_spring_forward_day() {
        // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT; 02:30 does not exist.
        let c = Cadence::parse("0 30 2 * * *", "America/New_York").expect("parses");
        assert_eq!(
            fires_between(&c, "2026-03-06T12:00:00Z", "2026-03-10T06:00:00Z"),
            vec![
                "2026-03-07T07:30:00+00:00", // 02:30 EST
                "2026-03-08T07:00:00+00:00", // the gap's end, 03:00 EDT
                "2026-03-09T06:30:00+00:00", // 02:30 EDT
            ]
        );
        // A daily schedule outside the gap keeps its wall-clock time across the change.
        let c = Cadence::parse("0 0 9 * * *", "America/New_York").expect("parses");
        assert_eq!(
            fires_between(&c, "2026-03-07T00:00:00Z", "2026-03-09T23:00:00Z"),
            vec![
                "2026-03-07T14:00:00+00:00",
                "2026-03-08T13:00:00+00:00",
                "2026-03-09T13:00:00+00:00",
            ]
        );
    }

    #[test]
    fn daily_schedule_fires_once_on_the_fall_back_day() {
        // 2026-11-01: New York falls back from 02:00 EDT to 01:00 EST; 01:30 happens twice.
        let c = Cadence::parse("0 30 1 * * *", "America/New_York").expect("parses");
        assert_eq!(
            fires_between(&c, "2026-10-30T12:00:00Z", "2026-11-03T06:00:00Z"),
            vec![
                "2026-10-31T05:30:00+00:00", // 01:30 EDT
                "2026-11-01T05:30:00+00:00", // first 01:30 (EDT) only, not 06:30Z (EST)
                "2026-11-02T06:30:00+00:00", // 01:30 EST
            ]
        );
        // Asking from inside the repeated hour does not fire the second 01:30.
        assert_eq!(
            c.next_after(utc("2026-11-01T06:10:00Z")).map(|t| t.to_rfc3339()),
            Some("2026-11-02T06:30:00+00:00".to_owned())
        );
    }

    #[test]
    fn hourly_schedule_across_both_transitions_fires_each_wall_clock_hour_once() {
        let c = Cadence::parse("0 0 * * * *", "America/New_York").expect("parses");
        // Spring forward: 01:00 EST, then 02:00 (gap) and 03:00 both land on 07:00Z once.
        assert_eq!(
            fires_between(&c, "2026-03-08T05:30:00Z", "2026-03-08T08:30:00Z"),
            vec![
                "2026-03-08T06:00:00+00:00",
                "2026-03-08T07:00:00+00:00",
                "2026-03-08T08:00:00+00:00"
            ]
        );
        // Fall back: 01:00 EDT (05:00Z) fires; the repeated 01:00 EST (06:00Z) does not.
        assert_eq!(
            fires_between(&c, "2026-11-01T04:30:00Z", "2026-11-01T07:30:00Z"),
            vec!["2026-11-01T05:00:00+00:00", "2026-11-01T07:00:00+00:00"]
        );
    }

    #[test]
    fn latest_fire_time_and_upcoming() {
        let c = Cadence::parse("0 */30 * * * *", "UTC").expect("parses");
        let t = utc("2026-01-01T10:47:12Z");
        assert_eq!(c.latest_at_or_before(t), Some(utc("2026-01-01T10:30:00Z")));
        assert_eq!(
            c.latest_at_or_before(utc("2026-01-01T10:30:00Z")),
            Some(utc("2026-01-01T10:30:00Z"))
        );
        assert_eq!(
            c.upcoming(t, 3),
            vec![
                utc("2026-01-01T11:00:00Z"),
                utc("2026-01-01T11:30:00Z"),
                utc("2026-01-01T12:00:00Z")
            ]
        );
        let monthly = Cadence::parse("0 0 6 1 * *", "America/New_York").expect("parses");
        // 06:00 New York on the 1st is 11:00Z, after `t`: the latest is December's.
        assert_eq!(monthly.latest_at_or_before(t), Some(utc("2025-12-01T11:00:00Z")));
    }

    #[test]
    fn tick_stream_resumes_after_a_short_stall_without_skipping() {
        use apalis_cron::Schedule as _;
        let now = Utc::now().timestamp();
        let every_second = Cadence::parse("* * * * * *", "UTC").expect("parses");
        // A stream rebuilt after a 5 s stall continues with the tick after the last one.
        let mut c = every_second.resuming_after(Some(now - 5));
        let next = c.next_tick(&every_second.tz()).expect("tick").get_timestamp();
        assert_eq!(next as i64, now - 4);
        let after = c.next_tick(&every_second.tz()).expect("tick").get_timestamp();
        assert_eq!(after, next + 1, "ticks stay in order");
        // After a stall longer than the grace, ticks older than it are dropped.
        let mut c = every_second.resuming_after(Some(now - 3600));
        let next = c.next_tick(&every_second.tz()).expect("tick").get_timestamp() as i64;
        assert!(next >= now - LATE_GRACE.num_seconds(), "{next} vs {now}");
        // A fresh stream starts after now.
        let mut c = every_second.clone();
        assert!(c.next_tick(&every_second.tz()).expect("tick").get_timestamp() as i64 > now - 1);
    }

    #[test]
    fn bad_expressions_are_explained() {
        assert!(
            Cadence::parse("*/5 * * * *", "UTC")
                .expect_err("5 fields")
                .1
                .contains("6")
        );
        assert!(
            Cadence::parse("0 0 9 * * 1-5", "UTC")
                .expect_err("numeric dow")
                .1
                .contains("MON-FRI")
        );
        assert_eq!(
            Cadence::parse("0 0 9 * * *", "Mars/Olympus").expect_err("tz").0,
            "timezone"
        );
        assert_eq!(Cadence::parse("0 0 25 * * *", "UTC").expect_err("hour 25").0, "cron");
        assert!(Cadence::parse("0 0 9 * * MON-FRI", "America/New_York").is_ok());
    }
}
