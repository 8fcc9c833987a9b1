//! A pipelined connection: many requests in flight on one socket, answered in order.
//!
//! - **Two tasks per connection.** The writer takes the queued requests, as many as are waiting
//!   (automatic pipelining: one write for all of them), hands their reply slots to the reader
//!   in one message *before* writing their bytes, then writes; it yields once before taking
//!   them, so that the tasks ready to run queue theirs first. The reader takes the in-flight
//!   queue in order and reads each request's whole reply (the meta protocol answers in order;
//!   quiet batches end with `mn`), and hands it to the request's slot.
//! - **Cancellation** (issue #12, point 4): a caller that is gone (its future dropped) leaves
//!   its slot closed. A request not written yet is skipped; one already written still has its
//!   reply read in full by the reader, then discarded, so no later request can receive it.
//! - **Bound**: at most [`MAX_OUTSTANDING`] requests per connection are queued or in flight
//!   (a semaphore permit each, held by the request's slot). A request that finds them all taken
//!   waits for one within its own deadline, then fails with an error naming the bound. A slot
//!   is given back when its reply was read (also for a caller that is gone: the bytes were
//!   sent, so the reply must be read) or when the request is dropped unsent. Callers that drop
//!   their futures before ddf's timeout, against a stopped server, cannot grow the queue.
//! - **Failure**: an I/O or protocol error ends the connection: the request that met it gets the
//!   error, every other one in flight or queued is [`Failed::Lost`], saying whether its bytes
//!   were handed to the socket (the server may have run it: a `delete` is then not retried,
//!   since its retry would find nothing and report a wrong `false`), and the pipe is marked
//!   dead (the backend opens another). A server error line is that request's answer only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::super::client::{McError, McResult};
use super::conn::{Answer, Conn, Kind};

/// The most request bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;

/// The most requests queued or in flight on one connection (see the module). 64 tasks make
/// batches of about 64; this leaves room for bursts far above that.
pub(super) const MAX_OUTSTANDING: usize = 4096;

/// Why a call got no answer of its own.
#[derive(Debug)]
pub(super) enum Failed {
    /// The request's own reply could not be read, or the server's answer was an error.
    Error(McError),
    /// The connection failed on another request; `sent`: the request's bytes were handed to
    /// the socket (the server may have run it).
    Lost { sent: bool },
    /// No answer by the deadline (`queued`: the request waited for room in the queue all
    /// along, every slot taken).
    TimedOut { queued: bool },
}

impl Failed {
    /// The error to report.
    pub(super) fn into_error(self) -> McError {
        use std::io::{Error, ErrorKind};
        match self {
            Failed::Error(e) => e,
            Failed::Lost { sent: true } => McError::Io(Error::new(
                ErrorKind::ConnectionAborted,
                "the connection failed on another request in its pipeline after this one was \
                 sent (the server may have run it)",
            )),
            Failed::Lost { sent: false } => McError::Io(Error::new(
                ErrorKind::NotConnected,
                "the connection failed on another request in its pipeline before this one was \
                 sent",
            )),
            // The reply timeout's kind (as a socket read timeout), worded by `map_err`.
            Failed::TimedOut { queued: false } => McError::Io(ErrorKind::WouldBlock.into()),
            Failed::TimedOut { queued: true } => McError::Io(Error::new(
                ErrorKind::WouldBlock,
                format!(
                    "no room on the connection within the timeout: {MAX_OUTSTANDING} requests \
                     already queued or in flight, the most allowed"
                ),
            )),
        }
    }
}

type Reply = Result<McResult<Answer>, Failed>;

/// Where a request's answer goes. Holds the request's place in the bound; dropped without an
/// answer (its connection failed), it tells the caller whether the request was sent.
struct Slot {
    tx: Option<oneshot::Sender<Reply>>,
    sent: bool,
    _place: OwnedSemaphorePermit,
}

impl Slot {
    fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    fn answer(mut self, r: McResult<Answer>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(r));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(Failed::Lost { sent: self.sent }));
        }
    }
}

struct Request {
    bytes: Vec<u8>,
    kind: Kind,
    slot: Slot,
}

/// One pipelined connection (see the module).
pub(super) struct Pipe {
    requests: mpsc::UnboundedSender<Request>,
    places: Arc<Semaphore>,
    dead: Arc<AtomicBool>,
    tasks: [AbortHandle; 2],
}

impl Drop for Pipe {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Pipe {
    /// Starts the writer and the reader of an opened connection (needs a tokio runtime).
    pub(super) fn start(conn: Conn) -> Pipe {
        Pipe::bounded(conn, MAX_OUTSTANDING)
    }

    /// [`Pipe::start`] with at most `bound` requests queued or in flight.
    pub(super) fn bounded(conn: Conn, bound: usize) -> Pipe {
        let (read, write) = conn.split();
        let dead = Arc::new(AtomicBool::new(false));
        let (requests, queued) = mpsc::unbounded_channel();
        let (in_flight, to_read) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_replies(read, to_read, dead.clone()));
        let writer = tokio::spawn(write_requests(
            write,
            queued,
            in_flight,
            dead.clone(),
            reader.abort_handle(),
        ));
        Pipe {
            requests,
            places: Arc::new(Semaphore::new(bound)),
            dead,
            tasks: [reader.abort_handle(), writer.abort_handle()],
        }
    }

    /// Whether the connection failed (take another).
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Marks it dead and stops its tasks (a request timed out on it: the server may be stuck).
    pub(super) fn kill(&self) {
        self.dead.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Sends a request (`bytes`, whose reply is of `kind`) and waits for its answer until
    /// `deadline` (first for room in the bound, then for the answer). Dropping the future
    /// leaves the reply to be read and discarded.
    pub(super) async fn call(
        &self,
        bytes: Vec<u8>,
        kind: Kind,
        deadline: Instant,
    ) -> Result<Answer, Failed> {
        let place =
            match tokio::time::timeout_at(deadline, self.places.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                // Closed: never done; an error all the same.
                Ok(Err(_)) => return Err(Failed::Lost { sent: false }),
                Err(_) => return Err(Failed::TimedOut { queued: true }),
            };
        let (tx, answer) = oneshot::channel();
        let slot = Slot {
            tx: Some(tx),
            sent: false,
            _place: place,
        };
        if self.requests.send(Request { bytes, kind, slot }).is_err() {
            return Err(Failed::Lost { sent: false });
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(r))) => r.map_err(Failed::Error),
            Ok(Ok(Err(f))) => Err(f),
            // The slot always answers before it goes; if not, the request may have been sent.
            Ok(Err(_)) => Err(Failed::Lost { sent: true }),
            Err(_) => Err(Failed::TimedOut { queued: false }),
        }
    }

    /// How many requests are queued or in flight.
    #[cfg(test)]
    pub(super) fn outstanding(&self, bound: usize) -> usize {
        bound - self.places.available_permits()
    }
}

async fn write_requests(
    mut w: OwnedWriteHalf,
    mut queued: mpsc::UnboundedReceiver<Request>,
    in_flight: mpsc::UnboundedSender<Vec<(Kind, Slot)>>,
    dead: Arc<AtomicBool>,
    reader: AbortHandle,
) {
    let mut out = Vec::new();
    while let Some(first) = queued.recv().await {
        // Let the tasks that are ready to run queue their requests first: woken by the first
        // request, the writer would otherwise run right after that request's task (tokio runs
        // a task it just woke next) and write one request at a time while 64 wait behind it.
        tokio::task::yield_now().await;
        out.clear();
        let mut slots = Vec::new();
        let mut next = Some(first);
        while let Some(r) = next.take() {
            // A caller already gone: never sent, so nothing to read for it (its place is
            // given back here).
            if !r.slot.is_closed() {
                let mut slot = r.slot;
                slot.sent = true;
                out.extend_from_slice(&r.bytes);
                slots.push((r.kind, slot));
            }
            if out.len() < WRITE_BATCH {
                next = queued.try_recv().ok();
            }
        }
        if out.is_empty() {
            continue;
        }
        // The batch's slots, in order, to the reader in one message.
        if let Err(mpsc::error::SendError(slots)) = in_flight.send(slots) {
            // The reader ended: the connection failed, and these were never written.
            dead.store(true, Ordering::Relaxed);
            for (_, mut slot) in slots {
                slot.sent = false;
                drop(slot);
            }
            return;
        }
        if let Err(e) = w.write_all(&out).await {
            tracing::debug!(error = %e, "memcached pipeline: write failed");
            dead.store(true, Ordering::Relaxed);
            // The reader would wait for replies to bytes never sent: stop it (the slots it
            // holds close, and their callers get `closed`).
            reader.abort();
            return;
        }
        if out.capacity() > 4 * WRITE_BATCH {
            out = Vec::new();
        }
    }
}

async fn read_replies(
    mut r: Conn<OwnedReadHalf>,
    mut to_read: mpsc::UnboundedReceiver<Vec<(Kind, Slot)>>,
    dead: Arc<AtomicBool>,
) {
    while let Some(batch) = to_read.recv().await {
        for (kind, slot) in batch {
            match r.answer(kind).await {
                Err(e @ (McError::Io(_) | McError::Protocol(_))) => {
                    dead.store(true, Ordering::Relaxed);
                    slot.answer(Err(e));
                    // Dropping the rest of the batch and `to_read` closes every other slot in
                    // flight: their callers get `Lost { sent }`, and the writer stops.
                    return;
                }
                answer => {
                    // Gone callers: the reply was read in full and is discarded here.
                    slot.answer(answer);
                }
            }
        }
    }
}
