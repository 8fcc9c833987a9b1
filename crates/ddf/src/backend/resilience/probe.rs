//! Where the background probe runs. The probe's body (build or ping the primary, replay the
//! journal, switch to up) is the wrapper's; *how* it is run every `retry` is behind [`Spawn`],
//! so that the sync face runs it on an OS thread ([`ThreadSpawn`]) and an async face can run it
//! as a task of the runtime it already has (a library should not bring threads a runtime has,
//! moka#288) without touching the breaker or the journal.

use std::ops::ControlFlow;
use std::time::Duration;

/// One run of a probe: `Continue` to run again after the interval, `Break` to stop.
pub(crate) type Body = Box<dyn FnMut() -> ControlFlow<()> + Send + 'static>;

/// Runs a probe body after `first`, then every `every`, until it breaks.
pub(crate) trait Spawn: Send + Sync + std::fmt::Debug {
    /// Starts the loop in the background and returns at once.
    ///
    /// # Errors
    /// When the loop cannot be started (the system refused a thread); the caller stays
    /// without a probe and may try again on its next failure.
    fn spawn(&self, first: Duration, every: Duration, body: Body) -> std::io::Result<()>;
}

/// One OS thread per running probe (named `ddf-probe`); it ends when the body breaks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ThreadSpawn;

impl Spawn for ThreadSpawn {
    fn spawn(&self, first: Duration, every: Duration, mut body: Body) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("ddf-probe".to_owned())
            .spawn(move || {
                std::thread::sleep(first);
                while body().is_continue() {
                    std::thread::sleep(every);
                }
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_thread_runs_the_body_until_it_breaks() {
        let (tx, rx) = mpsc::channel();
        let mut n = 0;
        ThreadSpawn
            .spawn(
                Duration::ZERO,
                Duration::from_millis(1),
                Box::new(move || {
                    n += 1;
                    let _ = tx.send(n);
                    if n == 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }),
            )
            .unwrap();
        let runs: Vec<i32> = rx.iter().collect(); // ends when the thread drops the sender
        assert_eq!(runs, [1, 2, 3]);
    }
}
