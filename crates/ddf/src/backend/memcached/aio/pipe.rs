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
//! - **Failure**: an I/O or protocol error ends the connection: the request that met it gets the
//!   error, every other one in flight or queued gets [`closed`], and the pipe is marked dead
//!   (the backend opens another). A server error line is that request's answer only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::super::client::{McError, McResult};
use super::conn::{Answer, Conn, Kind};

/// The most request bytes gathered into one write.
const WRITE_BATCH: usize = 256 * 1024;

type Slot = oneshot::Sender<McResult<Answer>>;

struct Request {
    bytes: Vec<u8>,
    kind: Kind,
    slot: Slot,
}

/// The error of a request whose connection failed on another request.
fn closed() -> McError {
    McError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the connection failed on another request in its pipeline",
    ))
}

/// One pipelined connection (see the module).
pub(super) struct Pipe {
    requests: mpsc::UnboundedSender<Request>,
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

    /// Sends a request (`bytes`, whose reply is of `kind`) and waits for its answer. Dropping
    /// the future leaves the reply to be read and discarded.
    pub(super) async fn call(&self, bytes: Vec<u8>, kind: Kind) -> McResult<Answer> {
        let (slot, answer) = oneshot::channel();
        if self.requests.send(Request { bytes, kind, slot }).is_err() {
            return Err(closed());
        }
        answer.await.unwrap_or_else(|_| Err(closed()))
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
            // A caller already gone: never sent, so nothing to read for it.
            if !r.slot.is_closed() {
                out.extend_from_slice(&r.bytes);
                slots.push((r.kind, r.slot));
            }
            if out.len() < WRITE_BATCH {
                next = queued.try_recv().ok();
            }
        }
        if out.is_empty() {
            continue;
        }
        // The batch's slots, in order, to the reader in one message.
        if in_flight.send(slots).is_err() {
            // The reader ended: the connection failed.
            dead.store(true, Ordering::Relaxed);
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
                    let _ = slot.send(Err(e));
                    // Dropping the rest of the batch and `to_read` closes every other slot in
                    // flight: their callers get `closed`, and the writer stops.
                    return;
                }
                answer => {
                    // Gone callers: the reply was read in full and is discarded here.
                    let _ = slot.send(answer);
                }
            }
        }
    }
}
