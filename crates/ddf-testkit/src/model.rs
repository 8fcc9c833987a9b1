//! A reference model of what a cache read may legally return, and a checker that replays a
//! recorded history of concurrent operations against it (issue #14, point 4).
//!
//! Pure code: no I/O, no clock, no dependency on ddf. The recorder (a test, the soak runner)
//! turns each call into an [`Op`] of plain data: who made it, what it was, when it started and
//! ended (nanoseconds on one clock shared by every recorder of the history), and what it
//! returned.
//!
//! # The rule
//!
//! A cache may always miss, so a miss is always legal. A read of key `k` that returned `v` is a
//! violation when
//!
//! - no `set` of `v` on `k` was ever made ([`Violation::Phantom`]; a failed `set` counts as made:
//!   it may have landed), or
//! - some *successful* operation `o` that removes or replaces `v` on `k` (a `set` of another
//!   value on `k`, a `delete` of `k`, an `invalidate_pattern` whose prefix covers `k`, a
//!   `flush_all`) started after the `set` of `v` ended and ended before the read began:
//!   `o.start > w.end && o.end < r.start` ([`Violation::Stale`]). Operations that overlap the
//!   write or the read are concurrent with them and never make a read stale, or
//! - the read ended before every `set` of `v` on `k` began ([`Violation::BeforeWrite`]). No
//!   cache can do that: the recorders' clocks disagree (a recorder whose clock is ahead makes
//!   its writes look later than they were, and legal reads of the others look stale), so the
//!   history cannot be judged.
//!
//! Every `set` must write a value no other `set` writes (writer id and sequence number): that
//! is what tells which write a read saw. If a value is written twice anyway, a read of it is
//! legal when any of its writes makes it legal.
//!
//! # Cost
//!
//! Operations are indexed by key; removals by key, by prefix and for `flush_all`, each sorted by
//! start with a suffix minimum of ends, so one read costs a few binary searches: 10^6 operations
//! check in under 4 s in a debug build on a loaded machine (the unit test measures it). Prefix operations are matched against the keys of the history (each
//! distinct prefix once per key).
//!
//! ```
//! use ddf_testkit::model::{check, Op, Outcome};
//!
//! let history = vec![
//!     Op::set(0, "k", "t0-1", 0, 10),
//!     Op::delete(0, "k", 20, 30),
//!     // Began after the delete ended, returned the deleted value: stale.
//!     Op::get(1, "k", Outcome::Ok(Some("t0-1".into())), 40, 50),
//! ];
//! let report = check(&history);
//! assert_eq!(report.violations.len(), 1);
//! assert!(report.render(&history, 10).contains("stale read"));
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;

/// What an operation did, with its key, prefix or value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A read of a key.
    Get {
        /// The key read.
        key: String,
    },
    /// A write of a unique value to a key.
    Set {
        /// The key written.
        key: String,
        /// The value written (unique in the history).
        value: String,
    },
    /// A delete of a key.
    Delete {
        /// The key deleted.
        key: String,
    },
    /// A removal of every key that starts with a prefix.
    InvalidatePattern {
        /// The prefix (of the caller's keys, before any namespace).
        prefix: String,
    },
    /// A removal of every key.
    FlushAll,
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded. For a `get`: the value read (`None`: a miss); for the others: `None`.
    Ok(Option<String>),
    /// It returned an error (its text).
    Err(String),
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who made it: a thread id unique across every process of the history.
    pub thread: u32,
    /// What it was.
    pub action: Action,
    /// When the call began (ns on the history's clock).
    pub start: u64,
    /// When the call returned (ns on the history's clock; `>= start`).
    pub end: u64,
    /// What it returned.
    pub outcome: Outcome,
}

impl Op {
    /// A `get` of `key` that returned `outcome`.
    ///
    /// ```
    /// # use ddf_testkit::model::{Op, Outcome};
    /// let op = Op::get(3, "k", Outcome::Ok(None), 5, 9);
    /// assert!(op.ok());
    /// ```
    pub fn get(thread: u32, key: &str, outcome: Outcome, start: u64, end: u64) -> Self {
        let action = Action::Get { key: key.into() };
        Op {
            thread,
            action,
            start,
            end,
            outcome,
        }
    }

    /// A successful `set` of `value` on `key`.
    ///
    /// ```
    /// # use ddf_testkit::model::Op;
    /// let op = Op::set(3, "k", "t3-1", 5, 9);
    /// assert_eq!(op.key(), Some("k"));
    /// ```
    pub fn set(thread: u32, key: &str, value: &str, start: u64, end: u64) -> Self {
        let action = Action::Set {
            key: key.into(),
            value: value.into(),
        };
        Op::done(thread, action, start, end)
    }

    /// A successful `delete` of `key`.
    ///
    /// ```
    /// # use ddf_testkit::model::Op;
    /// assert_eq!(Op::delete(0, "k", 1, 2).key(), Some("k"));
    /// ```
    pub fn delete(thread: u32, key: &str, start: u64, end: u64) -> Self {
        Op::done(thread, Action::Delete { key: key.into() }, start, end)
    }

    /// A successful `invalidate_pattern(prefix)`.
    ///
    /// ```
    /// # use ddf_testkit::model::Op;
    /// assert_eq!(Op::invalidate_pattern(0, "p1:", 1, 2).key(), None);
    /// ```
    pub fn invalidate_pattern(thread: u32, prefix: &str, start: u64, end: u64) -> Self {
        let action = Action::InvalidatePattern {
            prefix: prefix.into(),
        };
        Op::done(thread, action, start, end)
    }

    /// A successful `flush_all`.
    ///
    /// ```
    /// # use ddf_testkit::model::Op;
    /// assert!(Op::flush_all(0, 1, 2).ok());
    /// ```
    pub fn flush_all(thread: u32, start: u64, end: u64) -> Self {
        Op::done(thread, Action::FlushAll, start, end)
    }

    fn done(thread: u32, action: Action, start: u64, end: u64) -> Self {
        Op {
            thread,
            action,
            start,
            end,
            outcome: Outcome::Ok(None),
        }
    }

    /// The same operation with another outcome (`Op::delete(..).with(Outcome::Err(..))`).
    ///
    /// ```
    /// # use ddf_testkit::model::{Op, Outcome};
    /// assert!(!Op::delete(0, "k", 1, 2).with(Outcome::Err("timeout".into())).ok());
    /// ```
    pub fn with(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }

    /// The key of a `get`, `set` or `delete`.
    pub fn key(&self) -> Option<&str> {
        match &self.action {
            Action::Get { key } | Action::Set { key, .. } | Action::Delete { key } => Some(key),
            Action::InvalidatePattern { .. } | Action::FlushAll => None,
        }
    }

    /// One line for a report: start and end in ms relative to `origin`, thread, call, outcome.
    pub fn describe(&self, origin: u64) -> String {
        let ms = |t: u64| t.saturating_sub(origin) as f64 / 1e6;
        let call = match &self.action {
            Action::Get { key } => format!("get({key})"),
            Action::Set { key, value } => format!("set({key}, {value})"),
            Action::Delete { key } => format!("delete({key})"),
            Action::InvalidatePattern { prefix } => format!("invalidate_pattern({prefix:?})"),
            Action::FlushAll => "flush_all()".to_string(),
        };
        let outcome = match (&self.action, &self.outcome) {
            (Action::Get { .. }, Outcome::Ok(Some(v))) => format!("-> {v}"),
            (Action::Get { .. }, Outcome::Ok(None)) => "-> miss".to_string(),
            (_, Outcome::Ok(_)) => "-> ok".to_string(),
            (_, Outcome::Err(e)) => format!("-> ERR {e}"),
        };
        format!(
            "[{:>10.3} .. {:>10.3} ms] t{:<4} {call} {outcome}",
            ms(self.start),
            ms(self.end),
            self.thread
        )
    }
}

/// One illegal read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The read returned a value no `set` of its key ever wrote.
    Phantom {
        /// The read's index in the history.
        read: usize,
    },
    /// The read returned a value that a successful operation had removed or replaced after the
    /// value's write ended and before the read began.
    Stale {
        /// The read's index in the history.
        read: usize,
        /// The index of the `set` that wrote the value read (the latest-ending one if several).
        write: usize,
        /// The index of a removal that proves the read stale (the earliest-ending one).
        removal: usize,
    },
    /// The read ended before any `set` of the value it returned began: the clocks of the
    /// history's recorders disagree (see the module docs).
    BeforeWrite {
        /// The read's index in the history.
        read: usize,
        /// The index of the `set` of the value read that began first.
        write: usize,
    },
}

impl Violation {
    /// The index of the illegal read.
    pub fn read(&self) -> usize {
        match self {
            Violation::Phantom { read }
            | Violation::Stale { read, .. }
            | Violation::BeforeWrite { read, .. } => *read,
        }
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every violation, in history order of the reads.
    pub violations: Vec<Violation>,
    /// Reads checked (successful `get`s that returned a value).
    pub hits: u64,
    /// Reads that missed (always legal).
    pub misses: u64,
    /// Operations that returned an error.
    pub errors: u64,
}

impl Report {
    /// Whether the history is legal.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations, human-readable: for each, what was wrong and the relevant slice of its
    /// key's history (the write, every write and removal of the key, failed ones included,
    /// between the write's start and the read's end, and the read), at most `max` violations
    /// (the count of the rest is given).
    ///
    /// ```
    /// # use ddf_testkit::model::{check, Op, Outcome};
    /// let h = vec![Op::get(0, "k", Outcome::Ok(Some("x".into())), 0, 1)];
    /// assert!(check(&h).render(&h, 5).contains("phantom"));
    /// ```
    pub fn render(&self, history: &[Op], max: usize) -> String {
        let origin = history.iter().map(|o| o.start).min().unwrap_or(0);
        let mut out = String::new();
        for (n, v) in self.violations.iter().take(max).enumerate() {
            let r = &history[v.read()];
            let key = r.key().unwrap_or_default();
            let value = match &r.outcome {
                Outcome::Ok(Some(v)) => v.as_str(),
                _ => "",
            };
            match v {
                Violation::Phantom { .. } => {
                    let _ = writeln!(
                        out,
                        "violation {}: phantom read: get({key}) returned {value}, which no set of \
                         {key} ever wrote",
                        n + 1
                    );
                    let _ = writeln!(out, "  read    {}", r.describe(origin));
                    let elsewhere: Vec<&Op> = history
                        .iter()
                        .filter(|o| matches!(&o.action, Action::Set { value: w, .. } if w == value))
                        .collect();
                    for o in elsewhere {
                        let _ = writeln!(out, "  (set elsewhere) {}", o.describe(origin));
                    }
                }
                Violation::BeforeWrite { write, .. } => {
                    let w = &history[*write];
                    let _ = writeln!(
                        out,
                        "violation {}: read before its write: get({key}) returned {value}, whose \
                         first set began {:.3} ms after the read ended (the recorders' clocks \
                         disagree: the history cannot be judged)",
                        n + 1,
                        w.start.saturating_sub(r.end) as f64 / 1e6
                    );
                    let _ = writeln!(out, "  write   {}", w.describe(origin));
                    let _ = writeln!(out, "  read    {}", r.describe(origin));
                }
                Violation::Stale { write, removal, .. } => {
                    let (w, o) = (&history[*write], &history[*removal]);
                    let _ = writeln!(
                        out,
                        "violation {}: stale read: get({key}) returned {value}, removed or \
                         replaced by a call that ended {:.3} ms before the read began",
                        n + 1,
                        r.start.saturating_sub(o.end) as f64 / 1e6
                    );
                    let _ = writeln!(out, "  write   {}", w.describe(origin));
                    let _ = writeln!(out, "  removal {}", o.describe(origin));
                    let _ = writeln!(out, "  read    {}", r.describe(origin));
                    let _ = writeln!(out, "  history of {key} from the write to the read:");
                    let mut slice: Vec<&Op> = history
                        .iter()
                        .filter(|x| {
                            std::ptr::eq(*x, r)
                                || x.end >= w.start
                                    && x.start <= r.end
                                    && touches(x, key)
                                    && !matches!(x.action, Action::Get { .. })
                        })
                        .collect();
                    slice.sort_by_key(|x| (x.start, x.end));
                    let shown = 40;
                    for x in slice.iter().take(shown) {
                        let _ = writeln!(out, "    {}", x.describe(origin));
                    }
                    if slice.len() > shown {
                        let _ = writeln!(out, "    ... {} more", slice.len() - shown);
                    }
                }
            }
        }
        if self.violations.len() > max {
            let _ = writeln!(
                out,
                "... and {} more violations",
                self.violations.len() - max
            );
        }
        out
    }
}

/// Whether `op` reads, writes or removes `key`.
fn touches(op: &Op, key: &str) -> bool {
    match &op.action {
        Action::Get { key: k } | Action::Set { key: k, .. } | Action::Delete { key: k } => k == key,
        Action::InvalidatePattern { prefix } => key.starts_with(prefix.as_str()),
        Action::FlushAll => true,
    }
}

/// Removals sorted by start, with the minimum end of every suffix: "is there a removal that
/// started after `a` and ended before `b`" is one binary search.
#[derive(Default)]
struct Removals {
    /// (start, end, index in the history), sorted by start.
    ops: Vec<(u64, u64, usize)>,
    /// `suffix_min_end[i]` = min of `ops[i..].end`.
    suffix_min_end: Vec<u64>,
}

impl Removals {
    fn push(&mut self, op: &Op, index: usize) {
        self.ops.push((op.start, op.end, index));
    }

    fn seal(&mut self) {
        self.ops.sort_unstable();
        self.suffix_min_end = vec![u64::MAX; self.ops.len()];
        let mut min = u64::MAX;
        for (i, op) in self.ops.iter().enumerate().rev() {
            min = min.min(op.1);
            self.suffix_min_end[i] = min;
        }
    }

    /// A removal with `start > after` and `end < before`, the earliest-ending one, unless it is
    /// `exclude(index)` (another write of the same value). `late(index)` is added to a
    /// removal's end (see [`Grace`]).
    fn between(
        &self,
        after: u64,
        before: u64,
        exclude: impl Fn(usize) -> bool,
        late: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let first = self.ops.partition_point(|o| o.0 <= after);
        if self.suffix_min_end.get(first).is_none_or(|&m| m >= before) {
            return None;
        }
        // Only removals that start before the read began can end before it.
        self.ops[first..]
            .iter()
            .take_while(|o| o.0 < before)
            .filter(|o| o.1.saturating_add(late(o.2)) < before && !exclude(o.2))
            .min_by_key(|o| o.1)
            .map(|o| o.2)
    }
}

/// Checks a history (in any order) against the model; see the module documentation for the
/// rule.
///
/// ```
/// use ddf_testkit::model::{check, Op, Outcome};
///
/// // A read that overlaps the delete may see the old value.
/// let h = vec![
///     Op::set(0, "k", "t0-1", 0, 10),
///     Op::delete(0, "k", 20, 30),
///     Op::get(1, "k", Outcome::Ok(Some("t0-1".into())), 25, 35),
/// ];
/// assert!(check(&h).is_ok());
/// ```
pub fn check(history: &[Op]) -> Report {
    check_with(history, None)
}

/// The one window the resilience design allows a read to lag a removal: a removal that a
/// process made while its server was not up (or that failed there) is recorded in the journal
/// and served by the fallback at once, but reaches the server, which the *other* processes
/// that are up read, only within `breaker_retry` of the server answering again (their watcher
/// applies it). Such a removal counts for reads of other processes only from `window` after
/// the time [`Grace::recorded`] gives it: its end, or the server's return if that came later.
#[derive(Clone, Debug)]
pub struct Grace {
    /// How late a recorded removal may reach other processes (ns): `breaker_retry` plus the
    /// time a watcher takes to apply it.
    pub window: u64,
    /// Per operation of the history (same index): `None` when it was made on the server;
    /// `Some(t)` when it may have been recorded instead, `t` being when it could first be
    /// applied there (its end, or when its server answered again if that was later; never
    /// before its end). The window counts from `t`.
    pub recorded: Vec<Option<u64>>,
    /// The process a thread id belongs to.
    pub process_of: fn(u32) -> u32,
}

/// [`check`] with the [`Grace`] the resilience design allows, if any.
///
/// ```
/// use ddf_testkit::model::{check_with, Grace, Op, Outcome};
///
/// let h = vec![
///     Op::set(0, "k", "t0-1", 0, 10),
///     Op::delete(100, "k", 20, 30), // recorded by process 1, down
///     Op::get(0, "k", Outcome::Ok(Some("t0-1".into())), 40, 50),
/// ];
/// let grace = Grace {
///     window: 100,
///     recorded: vec![None, Some(30), None], // from its end
///     process_of: |t| t / 100,
/// };
/// assert!(check_with(&h, Some(&grace)).is_ok(), "process 0 may lag it");
/// assert!(!check_with(&h, None).is_ok());
/// ```
pub fn check_with(history: &[Op], grace: Option<&Grace>) -> Report {
    let mut report = Report::default();
    // Per key: its writes by value, and its own removals (deletes, sets of any value).
    let mut writes: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut own: HashMap<&str, Removals> = HashMap::new();
    let mut by_prefix: HashMap<&str, Removals> = HashMap::new();
    let mut flushes = Removals::default();
    for (i, op) in history.iter().enumerate() {
        if !op.ok() {
            report.errors += 1;
        }
        match &op.action {
            Action::Set { key, value } => {
                // A failed set may have landed: it can explain a read, never prove one stale.
                writes.entry((key, value)).or_default().push(i);
                if op.ok() {
                    own.entry(key).or_default().push(op, i);
                }
            }
            Action::Delete { key } if op.ok() => own.entry(key).or_default().push(op, i),
            Action::InvalidatePattern { prefix } if op.ok() => {
                by_prefix.entry(prefix).or_default().push(op, i);
            }
            Action::FlushAll if op.ok() => flushes.push(op, i),
            _ => {}
        }
    }
    for r in own.values_mut() {
        r.seal();
    }
    for r in by_prefix.values_mut() {
        r.seal();
    }
    flushes.seal();
    // Which prefixes cover each key, computed once per key.
    let mut covering: HashMap<&str, Vec<&Removals>> = HashMap::new();
    let empty = Removals::default();
    for (i, op) in history.iter().enumerate() {
        let (Action::Get { key }, Outcome::Ok(value)) = (&op.action, &op.outcome) else {
            continue;
        };
        let Some(value) = value else {
            report.misses += 1;
            continue;
        };
        report.hits += 1;
        let Some(ws) = writes.get(&(key.as_str(), value.as_str())) else {
            report.violations.push(Violation::Phantom { read: i });
            continue;
        };
        // Every write of the value began after the read ended: the clocks disagree.
        if let Some(&first) = ws.iter().min_by_key(|&&w| history[w].start)
            && history[first].start > op.end
        {
            report.violations.push(Violation::BeforeWrite {
                read: i,
                write: first,
            });
            continue;
        }
        let lists = covering.entry(key).or_insert_with(|| {
            let mut v: Vec<&Removals> = by_prefix
                .iter()
                .filter(|(p, _)| key.starts_with(*p))
                .map(|(_, r)| r)
                .collect();
            v.push(&flushes);
            v.push(own.get(key.as_str()).unwrap_or(&empty));
            v
        });
        // Another write of the same value is not a removal of it.
        let same_value = |j: usize| ws.contains(&j);
        let late = |j: usize| match grace {
            Some(g) if (g.process_of)(history[j].thread) != (g.process_of)(op.thread) => {
                g.recorded.get(j).copied().flatten().map_or(0, |from| {
                    from.saturating_sub(history[j].end).saturating_add(g.window)
                })
            }
            _ => 0,
        };
        // Legal when any write of the value leaves it legal; otherwise report the latest write.
        let mut proof = None;
        for &w in ws {
            let after = history[w].end;
            let found = lists
                .iter()
                .filter_map(|l| l.between(after, op.start, same_value, late))
                .min_by_key(|&j| history[j].end);
            match found {
                None => {
                    proof = None;
                    break;
                }
                Some(o) => {
                    if proof.is_none_or(|(pw, _): (usize, usize)| history[pw].end < after) {
                        proof = Some((w, o));
                    }
                }
            }
        }
        if let Some((write, removal)) = proof {
            report.violations.push(Violation::Stale {
                read: i,
                write,
                removal,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(thread: u32, key: &str, v: &str, start: u64, end: u64) -> Op {
        Op::get(thread, key, Outcome::Ok(Some(v.into())), start, end)
    }

    fn err() -> Outcome {
        Outcome::Err("timed out".into())
    }

    #[test]
    fn legal_histories_pass() {
        let h = vec![
            Op::set(0, "p1:a", "t0-1", 0, 10),
            hit(1, "p1:a", "t0-1", 11, 12),
            Op::get(1, "p1:b", Outcome::Ok(None), 13, 14),
            Op::set(0, "p1:a", "t0-2", 20, 30),
            hit(1, "p1:a", "t0-2", 31, 32),
            // A miss is always legal, even right after a write.
            Op::get(1, "p1:a", Outcome::Ok(None), 33, 34),
            Op::delete(0, "p1:a", 40, 50),
            Op::set(0, "p1:a", "t0-3", 60, 70),
            hit(1, "p1:a", "t0-3", 71, 72),
            // An invalidation of another prefix does not touch p1:a.
            Op::invalidate_pattern(0, "p2:", 80, 90),
            hit(1, "p1:a", "t0-3", 91, 92),
            // Failed removals prove nothing.
            Op::delete(0, "p1:a", 100, 110).with(err()),
            Op::flush_all(0, 111, 112).with(err()),
            Op::invalidate_pattern(0, "p1:", 113, 114).with(err()),
            hit(1, "p1:a", "t0-3", 120, 121),
            // A failed set may have landed.
            Op::set(0, "p1:c", "t0-4", 130, 140).with(err()),
            hit(1, "p1:c", "t0-4", 150, 151),
            // A read that started before the write ended may see it.
            Op::set(0, "p1:d", "t0-5", 160, 170),
            hit(1, "p1:d", "t0-5", 165, 175),
            Op::get(2, "p1:d", err(), 176, 177),
        ];
        let r = check(&h);
        assert!(r.is_ok(), "{}", r.render(&h, 10));
        assert_eq!((r.hits, r.misses, r.errors), (7, 2, 5));
    }

    fn one_violation(h: &[Op]) -> Violation {
        let r = check(h);
        assert_eq!(r.violations.len(), 1, "{}", r.render(h, 10));
        r.violations[0].clone()
    }

    #[test]
    fn a_read_after_a_delete_is_stale() {
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 10),
            Op::delete(1, "k", 20, 30),
            hit(2, "k", "t0-1", 31, 40),
        ];
        assert_eq!(
            one_violation(&h),
            Violation::Stale {
                read: 2,
                write: 0,
                removal: 1
            }
        );
        let text = check(&h).render(&h, 10);
        assert!(text.contains("stale read: get(k) returned t0-1"), "{text}");
        assert!(text.contains("delete(k) -> ok"), "{text}");
    }

    #[test]
    fn a_read_after_an_overwrite_is_stale() {
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 10),
            Op::set(1, "k", "t1-1", 20, 30),
            hit(2, "k", "t1-1", 31, 40),
            hit(2, "k", "t0-1", 41, 50),
        ];
        assert_eq!(
            one_violation(&h),
            Violation::Stale {
                read: 3,
                write: 0,
                removal: 1
            }
        );
    }

    #[test]
    fn a_read_after_invalidate_pattern_is_stale() {
        let h = vec![
            Op::set(0, "p3:k1", "t0-1", 0, 10),
            Op::set(0, "p30:k1", "t0-2", 0, 10),
            Op::invalidate_pattern(1, "p3:", 20, 30),
            // Not covered by "p3:".
            hit(2, "p30:k1", "t0-2", 31, 40),
            hit(2, "p3:k1", "t0-1", 41, 50),
        ];
        assert_eq!(
            one_violation(&h),
            Violation::Stale {
                read: 4,
                write: 0,
                removal: 2
            }
        );
    }

    #[test]
    fn a_read_after_flush_all_is_stale() {
        let h = vec![
            Op::set(0, "a", "t0-1", 0, 10),
            Op::flush_all(1, 20, 30),
            hit(2, "a", "t0-1", 31, 40),
        ];
        assert_eq!(
            one_violation(&h),
            Violation::Stale {
                read: 2,
                write: 0,
                removal: 1
            }
        );
    }

    #[test]
    fn a_recorded_removal_reaches_other_processes_within_the_grace_only() {
        let process_of: fn(u32) -> u32 = |t| t / 100;
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 10),
            Op::delete(100, "k", 20, 30),
            // Process 0, 20 ns after the recorded delete: within a grace of 50.
            Op::get(0, "k", Outcome::Ok(Some("t0-1".into())), 50, 60),
            // Process 0, 70 ns after: past it.
            Op::get(1, "k", Outcome::Ok(Some("t0-1".into())), 100, 110),
            // Process 1 itself: at once.
            Op::get(101, "k", Outcome::Ok(Some("t0-1".into())), 40, 45),
        ];
        let grace = Grace {
            window: 50,
            recorded: vec![None, Some(30), None, None, None],
            process_of,
        };
        let reads: Vec<usize> = check_with(&h, Some(&grace))
            .violations
            .iter()
            .map(Violation::read)
            .collect();
        assert_eq!(reads, [3, 4]);
        // Not recorded (made on the server): every later read is judged at once.
        let exact = Grace {
            recorded: vec![None; 5],
            ..grace.clone()
        };
        assert_eq!(check_with(&h, Some(&exact)).violations.len(), 3);
        // Recorded while its server was away until 60: the window counts from there, so the
        // read at 100 is within it (60 + 50); process 1's own read is still judged at once.
        // The window never counts from before the removal's end.
        let returned = Grace {
            recorded: vec![None, Some(60), None, None, None],
            ..grace.clone()
        };
        let reads: Vec<usize> = check_with(&h, Some(&returned))
            .violations
            .iter()
            .map(Violation::read)
            .collect();
        assert_eq!(reads, [4]);
        let before_end = Grace {
            recorded: vec![None, Some(0), None, None, None],
            ..grace
        };
        assert_eq!(check_with(&h, Some(&before_end)).violations.len(), 2);
    }

    #[test]
    fn a_phantom_value_is_caught() {
        let h = vec![
            Op::set(0, "a", "t0-1", 0, 10),
            // Written to another key only.
            hit(1, "b", "t0-1", 20, 30),
            // Never written.
            hit(1, "a", "t9-9", 20, 30),
        ];
        let r = check(&h);
        assert_eq!(
            r.violations,
            [
                Violation::Phantom { read: 1 },
                Violation::Phantom { read: 2 }
            ]
        );
        let text = r.render(&h, 10);
        assert!(
            text.contains("phantom read: get(b) returned t0-1"),
            "{text}"
        );
        assert!(text.contains("(set elsewhere)"), "{text}");
    }

    #[test]
    fn a_read_before_its_write_is_caught() {
        // Two recorders whose clocks disagree: thread 100's clock is 15 ns ahead, so its set
        // (really at 5..15) is stamped 20..30 and the read of thread 0 (really after it) ends
        // before it began. Such a clock also makes reads of the others' older values look
        // stale (the shape of issue #14 wave 8's 16 stale reads): nothing can be judged.
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 4),
            Op::set(100, "k", "t100-1", 20, 30),
            hit(0, "k", "t100-1", 16, 18),
        ];
        let r = check(&h);
        assert_eq!(r.violations, [Violation::BeforeWrite { read: 2, write: 1 }]);
        let text = r.render(&h, 10);
        assert!(
            text.contains("read before its write: get(k) returned t100-1"),
            "{text}"
        );
        assert!(text.contains("clocks"), "{text}");
        // On one clock the same calls are legal.
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 4),
            Op::set(100, "k", "t100-1", 5, 15),
            hit(0, "k", "t100-1", 16, 18),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn overlapping_operations_are_never_flagged() {
        // Every removal overlaps the write or the read: each could have taken effect first.
        let h = vec![
            Op::set(0, "k", "t0-1", 0, 100),
            Op::delete(1, "k", 50, 150),
            Op::set(2, "k", "t2-1", 90, 200),
            Op::flush_all(3, 99, 300),
            Op::invalidate_pattern(3, "", 100, 301),
            Op::delete(1, "k", 250, 400),
            hit(4, "k", "t0-1", 300, 350),
            hit(4, "k", "t0-1", 200, 500),
            // The removal ends exactly when the read begins: not strictly before.
            Op::delete(1, "j", 1000, 1010),
            Op::set(0, "j", "t0-2", 900, 999),
            hit(4, "j", "t0-2", 1010, 1020),
        ];
        let r = check(&h);
        assert!(r.is_ok(), "{}", r.render(&h, 10));
    }

    #[test]
    fn duplicate_writes_of_a_value_make_a_read_legal_if_either_does() {
        let h = vec![
            Op::set(0, "k", "dup", 0, 10),
            Op::delete(1, "k", 20, 30),
            Op::set(0, "k", "dup", 40, 50),
            hit(2, "k", "dup", 60, 70),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn the_earliest_ending_removal_is_reported_in_any_order() {
        let mut h = vec![
            Op::set(0, "k", "t0-1", 0, 10),
            Op::delete(1, "k", 40, 45),
            Op::invalidate_pattern(1, "k", 20, 30),
            hit(2, "k", "t0-1", 50, 60),
        ];
        h.reverse();
        assert_eq!(
            one_violation(&h),
            Violation::Stale {
                read: 0,
                write: 3,
                removal: 1
            }
        );
    }

    #[test]
    fn a_million_operations_check_quickly() {
        // 64 keys under 8 prefixes, 8 writers: a legal history of 10^6 operations (each read
        // returns the last value written to its key, or misses after a removal).
        let mut h = Vec::with_capacity(1_000_000);
        let mut last: HashMap<String, Option<String>> = HashMap::new();
        let mut t = 0u64;
        let mut seed = 7u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for i in 0..1_000_000u64 {
            t += 10;
            let key = format!("p{}:k{}", rand(8), rand(8));
            let thread = rand(8) as u32;
            let op = match rand(100) {
                0..=49 => {
                    let v = last.get(&key).cloned().flatten();
                    Op::get(thread, &key, Outcome::Ok(v), t, t + 5)
                }
                50..=84 => {
                    let v = format!("t{thread}-{i}");
                    last.insert(key.clone(), Some(v.clone()));
                    Op::set(thread, &key, &v, t, t + 5)
                }
                85..=97 => {
                    last.insert(key.clone(), None);
                    Op::delete(thread, &key, t, t + 5)
                }
                98 => {
                    let p = key[..3].to_string();
                    for (k, v) in last.iter_mut() {
                        if k.starts_with(&p) {
                            *v = None;
                        }
                    }
                    Op::invalidate_pattern(thread, &p, t, t + 5)
                }
                _ => {
                    last.clear();
                    Op::flush_all(thread, t, t + 5)
                }
            };
            h.push(op);
        }
        let began = std::time::Instant::now();
        let r = check(&h);
        let took = began.elapsed();
        assert!(r.is_ok(), "{}", r.render(&h, 5));
        assert!(r.hits > 100_000, "{r:?}");
        eprintln!("checked 10^6 operations in {took:?}");
        // Generous: debug build on a loaded machine.
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
        // And one stale read planted at the end is found.
        let stale = h
            .iter()
            .rev()
            .find_map(|o| match &o.action {
                Action::Set { key, value } if o.ok() => Some((key.clone(), value.clone())),
                _ => None,
            })
            .unwrap();
        t += 10;
        h.push(Op::delete(0, &stale.0, t, t + 1));
        h.push(hit(1, &stale.0, &stale.1, t + 2, t + 3));
        assert_eq!(check(&h).violations.len(), 1);
    }
}
