//! `get_or_set`'s control flow, once and without I/O: [`Flow`] says the next [`Step`] (read,
//! join this process's flight, try to lead a refresh, ask for the lease, wait, return a value,
//! compute) and takes each step's [`Answer`]. The thread face (`sync.rs`) and the task face
//! (`task.rs`) drive it in a small loop, with blocking calls and sleeps or awaits and timers, and
//! hold what the steps produce: the lease, the lead of this process's flight, the computation.
//!
//! The flow:
//! - read: a fresh value is returned; a value due for a refresh goes to the refresh below; an
//!   unavailable cache computes alone (nothing stored); a miss joins this process's flight;
//! - in the flight, a waiter reads again once it lands; a caller nested in another flight
//!   computes alone; the leader asks for the lease, and:
//!   - held: reads once more (a leader elsewhere may have stored and released between the miss
//!     and the lease) and computes and stores under the lease on a miss;
//!   - busy: waits (the backoff, up to `lock_timeout` from the call), reads, and asks again (a
//!     lease that expired is taken over); a value found is returned; an unavailable cache or
//!     the deadline computes alone;
//!   - failed (the backend could not tell): computes and stores without a lease;
//! - a refresh: only the caller that leads this process's flight without waiting and then
//!   holds the lease computes (unless the value it reads again was refreshed meanwhile: a new
//!   soft expiry), and serves the stale value if its computation fails; every other caller
//!   returns the stale value at once.

use std::time::{Duration, Instant};

use super::{Backoff, Read, deadline, passed};

/// What the driver does next.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<T> {
    /// Note the flight registry's landings (for [`Step::Join`]), then read the key:
    /// [`Answer::Read`].
    Read,
    /// Join this process's flight of the key, given the landings noted before the last read
    /// (lead it, or wait for it to land): [`Answer::Turn`].
    Join,
    /// Lead this process's flight of the key if none is in progress, without waiting (a
    /// refresh): [`Answer::Led`].
    TryLead,
    /// Ask for the lease: [`Answer::Lease`].
    Lease,
    /// Sleep (or await a timer) this long: [`Answer::Waited`].
    Wait(Duration),
    /// The end: release the lease if held, end the flight if led (finished), return the value.
    Return(T),
    /// The end of the stepping: compute, as [`Compute`] says.
    Compute(Compute),
}

/// How the driver computes, once, after the last step.
#[derive(Debug, PartialEq)]
pub(crate) enum Compute {
    /// End the flight if led (first: this process's waiters do not queue behind a value that
    /// will not be stored), then compute and store nothing.
    Alone,
    /// Compute (under the lease's heartbeat when held), store (fenced by the lease when held:
    /// see `store`), release the lease, end the flight; return what [`Flow::computed`] makes
    /// of the computation's result.
    Store,
}

/// A step's result.
pub(crate) enum Answer<T> {
    Read(Read<T>),
    Turn(Turn),
    /// Whether [`Step::TryLead`] leads the flight.
    Led(bool),
    Lease(Leased),
    Waited,
}

/// What joining this process's flight gave.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Turn {
    /// This caller leads it.
    Lead,
    /// Another caller's flight ended: read again.
    Landed,
    /// The key is in flight and this caller runs inside a flight it leads: it never waits (no
    /// wait cycle).
    Bypass,
}

/// What asking for the lease gave; `H`: the lease held (the drivers keep it, the flow is
/// told `Leased<()>`).
#[derive(Debug)]
pub(crate) enum Leased<H = ()> {
    Held(H),
    /// Another caller holds it.
    Busy,
    /// The backend could not tell (an error, logged): compute without a lease.
    Failed,
}

impl<H> Leased<H> {
    /// Gives the lease held to `keep`; what the flow is told.
    pub(crate) fn keep(self, keep: impl FnOnce(H)) -> Leased {
        match self {
            Leased::Held(h) => {
                keep(h);
                Leased::Held(())
            }
            Leased::Busy => Leased::Busy,
            Leased::Failed => Leased::Failed,
        }
    }
}

/// Where the flow is: each state expects one kind of answer.
#[derive(Debug)]
enum State<T> {
    /// A read of the call's first turn (or after a flight landed).
    Look,
    Joining,
    /// The flight's leader asks for the lease.
    Leasing,
    /// The lease is held: the read before computing.
    Checking,
    /// A waiter for another process's lease sleeps...
    Waiting,
    /// ... and reads.
    Polling,
    /// A value due for a refresh (`stale`, of soft expiry `soft`): leading the flight...
    RefreshLeading {
        stale: T,
        soft: u64,
    },
    /// ... asking for the lease...
    RefreshLeasing {
        stale: T,
        soft: u64,
    },
    /// ... reading again under the lease...
    RefreshChecking {
        stale: T,
        soft: u64,
    },
    /// ... computing: `stale` is served if that fails.
    Refreshing {
        stale: T,
    },
    /// Computing (or returned).
    Done,
}

/// `get_or_set`'s control flow for one call (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Flow<'a, T> {
    key: &'a str,
    state: State<T>,
    /// Every caller waits at most `lock_timeout` from its call, in the flight or for the lease.
    deadline: Option<Instant>,
    backoff: Backoff,
}

impl<'a, T> Flow<'a, T> {
    /// The flow of a call for `key` (named in logs) and its first step.
    pub(crate) fn new(key: &'a str, lock_timeout: Duration) -> (Self, Step<T>) {
        let flow = Flow {
            key,
            state: State::Look,
            deadline: deadline(lock_timeout),
            backoff: Backoff::new(),
        };
        (flow, Step::Read)
    }

    /// The next step, given the last one's answer.
    pub(crate) fn next(&mut self, answer: Answer<T>) -> Step<T> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let (state, step) = self.after(state, answer);
        self.state = state;
        step
    }

    fn after(&mut self, state: State<T>, answer: Answer<T>) -> (State<T>, Step<T>) {
        use {Answer as A, State as S};
        match (state, answer) {
            (S::Look, A::Read(read)) => match read {
                Read::Fresh(v) => (S::Done, Step::Return(v)),
                Read::Due(stale, soft) => (S::RefreshLeading { stale, soft }, Step::TryLead),
                Read::Unavailable => (S::Done, Step::Compute(Compute::Alone)),
                Read::Miss => (S::Joining, Step::Join),
            },
            (S::Joining, A::Turn(turn)) => match turn {
                Turn::Lead => (S::Leasing, Step::Lease),
                // Read again: the value is there unless the leader's computation failed or its
                // write did not happen; then one of the waiters leads next.
                Turn::Landed => (S::Look, Step::Read),
                // Computes, and stores nothing (it holds no lease: its value could overwrite
                // a newer one).
                Turn::Bypass => (S::Done, Step::Compute(Compute::Alone)),
            },
            (S::Leasing, A::Lease(leased)) => match leased {
                Leased::Held(()) => (S::Checking, Step::Read),
                Leased::Busy if passed(self.deadline) => {
                    tracing::warn!(
                        key = %crate::error::shorten(self.key),
                        "ddf: get_or_set waited lock_timeout for another caller's computation; computing, not storing"
                    );
                    (S::Done, Step::Compute(Compute::Alone))
                }
                Leased::Busy => (S::Waiting, Step::Wait(self.backoff.next(self.deadline))),
                Leased::Failed => (S::Done, Step::Compute(Compute::Store)),
            },
            (S::Checking, A::Read(read)) => match read {
                Read::Fresh(v) | Read::Due(v, _) => (S::Done, Step::Return(v)),
                Read::Miss | Read::Unavailable => (S::Done, Step::Compute(Compute::Store)),
            },
            (S::Waiting, A::Waited) => (S::Polling, Step::Read),
            (S::Polling, A::Read(read)) => match read {
                Read::Fresh(v) | Read::Due(v, _) => (S::Done, Step::Return(v)),
                Read::Unavailable => (S::Done, Step::Compute(Compute::Alone)),
                Read::Miss => (S::Leasing, Step::Lease),
            },
            (S::RefreshLeading { stale, soft }, A::Led(led)) => {
                if led {
                    (S::RefreshLeasing { stale, soft }, Step::Lease)
                } else {
                    (S::Done, Step::Return(stale))
                }
            }
            (S::RefreshLeasing { stale, soft }, A::Lease(leased)) => match leased {
                Leased::Held(()) => (S::RefreshChecking { stale, soft }, Step::Read),
                Leased::Busy | Leased::Failed => (S::Done, Step::Return(stale)),
            },
            // Another caller may have refreshed and released between our read and our lease:
            // a value with another soft expiry is new, not computed again.
            (S::RefreshChecking { stale, soft }, A::Read(read)) => match read {
                Read::Fresh(v) => (S::Done, Step::Return(v)),
                Read::Due(v, again) if again != soft => (S::Done, Step::Return(v)),
                Read::Due(..) | Read::Miss | Read::Unavailable => {
                    (S::Refreshing { stale }, Step::Compute(Compute::Store))
                }
            },
            // A driver that answers another step than the one asked (a bug): the safe way out
            // computes and stores nothing.
            (state, _) => {
                tracing::error!(
                    key = %crate::error::shorten(self.key),
                    state = ?std::mem::discriminant(&state),
                    "ddf: get_or_set's flow got an answer to another step; computing, not storing"
                );
                (S::Done, Step::Compute(Compute::Alone))
            }
        }
    }

    /// What a call returns after [`Compute::Store`]: the computation's result, except that a
    /// failed refresh serves the stale value (logged).
    pub(crate) fn computed<E>(self, r: Result<T, E>) -> Result<T, E> {
        match (self.state, r) {
            (State::Refreshing { stale }, Err(_)) => {
                tracing::warn!(
                    key = %crate::error::shorten(self.key),
                    "ddf: get_or_set's refresh failed; serving the stale value"
                );
                Ok(stale)
            }
            (_, r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// Runs a flow over scripted answers; the steps it took.
    fn run(lock_timeout: Duration, answers: Vec<Answer<&'static str>>) -> Vec<Step<&'static str>> {
        let (mut flow, first) = Flow::new("k", lock_timeout);
        let mut steps = vec![first];
        for a in answers {
            steps.push(flow.next(a));
        }
        steps
    }

    fn last(steps: Vec<Step<&'static str>>) -> Step<&'static str> {
        steps.into_iter().last().unwrap()
    }

    #[test]
    fn a_fresh_value_is_returned_and_a_miss_joins_the_flight() {
        assert_eq!(
            run(LONG, vec![Answer::Read(Read::Fresh("v"))]),
            [Step::Read, Step::Return("v")]
        );
        assert_eq!(
            run(LONG, vec![Answer::Read(Read::Miss)]),
            [Step::Read, Step::Join]
        );
    }

    #[test]
    fn the_leader_holding_the_lease_reads_once_more_then_computes_and_stores() {
        let steps = run(
            LONG,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Lead),
                Answer::Lease(Leased::Held(())),
                Answer::Read(Read::Miss),
            ],
        );
        assert_eq!(
            steps,
            [
                Step::Read,
                Step::Join,
                Step::Lease,
                Step::Read,
                Step::Compute(Compute::Store)
            ]
        );
        let found = run(
            LONG,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Lead),
                Answer::Lease(Leased::Held(())),
                Answer::Read(Read::Due("v", 9)),
            ],
        );
        assert_eq!(last(found), Step::Return("v"), "stored meanwhile");
    }

    #[test]
    fn a_busy_lease_is_waited_for_polled_and_taken_over() {
        let (mut flow, _) = Flow::<&str>::new("k", LONG);
        flow.next(Answer::Read(Read::Miss));
        assert_eq!(flow.next(Answer::Turn(Turn::Lead)), Step::Lease);
        let Step::Wait(first) = flow.next(Answer::Lease(Leased::Busy)) else {
            panic!("waits")
        };
        assert_eq!(first, super::super::FIRST_POLL);
        assert_eq!(flow.next(Answer::Waited), Step::Read);
        assert_eq!(flow.next(Answer::Read(Read::Miss)), Step::Lease);
        assert!(matches!(
            flow.next(Answer::Lease(Leased::Busy)),
            Step::Wait(d) if d == first * 2
        ));
        assert_eq!(flow.next(Answer::Waited), Step::Read);
        assert_eq!(flow.next(Answer::Read(Read::Miss)), Step::Lease);
        assert_eq!(
            flow.next(Answer::Lease(Leased::Held(()))),
            Step::Read,
            "taken over"
        );
        // A value that lands while waiting is returned; an unavailable cache computes alone.
        let (mut flow, _) = Flow::new("k", LONG);
        flow.next(Answer::Read(Read::Miss));
        flow.next(Answer::Turn(Turn::Lead));
        flow.next(Answer::Lease(Leased::Busy));
        flow.next(Answer::Waited);
        assert_eq!(flow.next(Answer::Read(Read::Fresh("v"))), Step::Return("v"));
        let steps = run(
            LONG,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Lead),
                Answer::Lease(Leased::Busy),
                Answer::Waited,
                Answer::Read(Read::Unavailable),
            ],
        );
        assert_eq!(last(steps), Step::Compute(Compute::Alone));
    }

    #[test]
    fn past_lock_timeout_or_without_a_cache_the_caller_computes_alone() {
        let steps = run(
            Duration::ZERO,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Lead),
                Answer::Lease(Leased::Busy),
            ],
        );
        assert_eq!(last(steps), Step::Compute(Compute::Alone));
        assert_eq!(
            last(run(LONG, vec![Answer::Read(Read::Unavailable)])),
            Step::Compute(Compute::Alone)
        );
        let bypass = run(
            LONG,
            vec![Answer::Read(Read::Miss), Answer::Turn(Turn::Bypass)],
        );
        assert_eq!(last(bypass), Step::Compute(Compute::Alone));
        // The backend could not tell about the lease: computed and stored without one.
        let failed = run(
            LONG,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Lead),
                Answer::Lease(Leased::Failed),
            ],
        );
        assert_eq!(last(failed), Step::Compute(Compute::Store));
    }

    #[test]
    fn a_landed_flight_is_read_again() {
        let steps = run(
            LONG,
            vec![
                Answer::Read(Read::Miss),
                Answer::Turn(Turn::Landed),
                Answer::Read(Read::Fresh("v")),
            ],
        );
        assert_eq!(
            steps,
            [Step::Read, Step::Join, Step::Read, Step::Return("v")]
        );
    }

    #[test]
    fn one_caller_refreshes_and_the_others_serve_the_stale_value() {
        let not_led = run(
            LONG,
            vec![Answer::Read(Read::Due("old", 5)), Answer::Led(false)],
        );
        assert_eq!(not_led, [Step::Read, Step::TryLead, Step::Return("old")]);
        for other in [Leased::Busy, Leased::Failed] {
            let steps = run(
                LONG,
                vec![
                    Answer::Read(Read::Due("old", 5)),
                    Answer::Led(true),
                    Answer::Lease(other),
                ],
            );
            assert_eq!(last(steps), Step::Return("old"));
        }
        let refreshed_meanwhile = run(
            LONG,
            vec![
                Answer::Read(Read::Due("old", 5)),
                Answer::Led(true),
                Answer::Lease(Leased::Held(())),
                Answer::Read(Read::Due("new", 6)),
            ],
        );
        assert_eq!(last(refreshed_meanwhile), Step::Return("new"));
    }

    #[test]
    fn a_failed_refresh_serves_the_stale_value_and_a_failed_compute_its_error() {
        let (mut flow, _) = Flow::new("k", LONG);
        flow.next(Answer::Read(Read::Due("old", 5)));
        flow.next(Answer::Led(true));
        flow.next(Answer::Lease(Leased::Held(())));
        assert_eq!(
            flow.next(Answer::Read(Read::Due("old", 5))),
            Step::Compute(Compute::Store),
            "the same soft expiry: still due"
        );
        assert_eq!(flow.computed(Err::<&str, _>("boom")), Ok("old"));
        let (mut flow, _) = Flow::new("k", LONG);
        flow.next(Answer::Read(Read::Miss));
        flow.next(Answer::Turn(Turn::Lead));
        flow.next(Answer::Lease(Leased::Failed));
        assert_eq!(flow.computed(Err::<&str, _>("boom")), Err("boom"));
    }

    #[test]
    fn an_answer_to_another_step_computes_alone() {
        let steps = run(LONG, vec![Answer::Waited]);
        assert_eq!(last(steps), Step::Compute(Compute::Alone));
    }
}
