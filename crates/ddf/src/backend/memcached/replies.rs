//! What each reply means, for both connections: the sync one (`client.rs`, a blocking socket)
//! and the async one (`aio/conn.rs`, a tokio socket). Pure: each function or step takes one
//! reply [`proto`] parsed and updates its command's state; the connections only carry bytes
//! and call these, so the meaning of a reply exists once whatever the face.

use super::client::{McError, McResult, Value};
use super::proto::{self, MetaReply, ProtoError, Status, TextLine};

/// A request this client refused to format: nothing was sent, the connection is in step.
pub(crate) fn refused(e: ProtoError) -> McError {
    McError::Server(e.0)
}

/// An error line as a clean server error.
pub(crate) fn server_error(line: &[u8]) -> McError {
    McError::Server(String::from_utf8_lossy(line).into_owned())
}

/// A status the command does not expect: the connection may be out of step.
pub(crate) fn unexpected_status(what: &str, status: Status) -> McError {
    McError::Protocol(format!("unexpected reply to {what}: {}", status.token()))
}

/// A text line the command does not expect.
pub(crate) fn unexpected_text(what: &str, line: &TextLine<'_>) -> McError {
    let text = match line {
        TextLine::Other(l)
        | TextLine::Version(l)
        | TextLine::DumpKey { key: l, .. }
        | TextLine::Busy(l)
        | TextLine::BadClass(l)
        | TextLine::Error(l) => proto::shown(l),
        TextLine::Stat { name, .. } => format!("STAT {}", proto::shown(name)),
        TextLine::End => "END".into(),
        TextLine::Ok => "OK".into(),
    };
    McError::Protocol(format!("unexpected reply to {what}: {text}"))
}

/// The opaque of the `i`th request of a pipeline of `n`.
pub(crate) fn opaque(i: usize, n: usize) -> McResult<u32> {
    u32::try_from(i).map_err(|_| McError::Server(format!("{n} keys in one pipeline")))
}

/// The reply to `mg <key> v f`: one value or a miss.
pub(crate) fn get(r: MetaReply<'_>) -> McResult<Option<Value>> {
    match r {
        MetaReply::Value { data, flags, .. } => Ok(Some(Value {
            data: data.to_vec(),
            flags,
        })),
        MetaReply::Status {
            status: Status::En, ..
        } => Ok(None),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("mg", status)),
    }
}

/// The reply to `mg <key> v f t`: one value and its seconds left (`-1`: no expiry), or a miss.
pub(crate) fn get_expiring(r: MetaReply<'_>) -> McResult<Option<(Value, Option<i64>)>> {
    let ttl = match &r {
        MetaReply::Value { fields, .. } => fields.ttl,
        _ => None,
    };
    Ok(get(r)?.map(|v| (v, ttl)))
}

/// The reply to `md <key> C<cas>`: `true` when it removed the item; `false` when the item
/// changed since (`EX`) or is gone (`NF`).
pub(crate) fn delete_cas(r: MetaReply<'_>) -> McResult<bool> {
    match r {
        MetaReply::Status {
            status: Status::Hd, ..
        } => Ok(true),
        MetaReply::Status {
            status: Status::Ex | Status::Nf,
            ..
        } => Ok(false),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("md", status)),
        MetaReply::Value { .. } => Err(McError::Protocol("a value in reply to md".into())),
    }
}

/// The replies to pipelined quiet `mg <key> v f q O<i>`, then `mn`.
pub(crate) struct GetMany {
    out: Vec<Option<Value>>,
    first_err: Option<McError>,
}

impl GetMany {
    pub(crate) fn new(keys: usize) -> Self {
        GetMany {
            out: (0..keys).map(|_| None).collect(),
            first_err: None,
        }
    }

    /// One reply; `Ok(true)` at the closing `MN`.
    pub(crate) fn step(&mut self, r: MetaReply<'_>) -> McResult<bool> {
        match r {
            MetaReply::Status {
                status: Status::Mn, ..
            } => Ok(true),
            MetaReply::Error(l) => {
                self.first_err.get_or_insert(server_error(l));
                Ok(false)
            }
            MetaReply::Value {
                data,
                flags,
                opaque,
                ..
            } => {
                let slot = opaque
                    .and_then(|i| self.out.get_mut(i as usize))
                    .ok_or_else(|| McError::Protocol("mg reply with an unknown opaque".into()))?;
                *slot = Some(Value {
                    data: data.to_vec(),
                    flags,
                });
                Ok(false)
            }
            MetaReply::Status { status, .. } => Err(unexpected_status("mg", status)),
        }
    }

    /// One result per key, or the first error line the server sent.
    pub(crate) fn finish(self) -> McResult<Vec<Option<Value>>> {
        self.first_err.map_or(Ok(self.out), Err)
    }
}

/// The replies to `ms`: one not quiet (`HD` ends it), or pipelined quiet ones then `mn` (only
/// failures answer before the closing `MN`).
pub(crate) struct Set {
    quiet: bool,
    first_err: Option<McError>,
}

impl Set {
    pub(crate) fn new(quiet: bool) -> Self {
        Set {
            quiet,
            first_err: None,
        }
    }

    /// One reply; `Ok(true)` when the command's replies are over.
    pub(crate) fn step(&mut self, r: MetaReply<'_>) -> McResult<bool> {
        match r {
            MetaReply::Status {
                status: Status::Mn, ..
            } => Ok(true),
            MetaReply::Status {
                status: Status::Hd, ..
            } if !self.quiet => Ok(true),
            MetaReply::Error(l) => {
                self.first_err.get_or_insert(server_error(l));
                Ok(!self.quiet)
            }
            // A quiet `ms` answers only on failure (`NS`, `EX`, `NF`).
            MetaReply::Status { status, .. } => {
                self.first_err
                    .get_or_insert(unexpected_status("ms", status));
                Ok(!self.quiet)
            }
            MetaReply::Value { .. } => Err(McError::Protocol("a value in reply to ms".into())),
        }
    }

    pub(crate) fn finish(self) -> McResult<()> {
        self.first_err.map_or(Ok(()), Err)
    }
}

/// The reply to `ms ... ME` (add): `HD` stored, `NS` not stored (the key holds an item).
pub(crate) fn add(r: MetaReply<'_>) -> McResult<bool> {
    match r {
        MetaReply::Status {
            status: Status::Hd, ..
        } => Ok(true),
        MetaReply::Status {
            status: Status::Ns, ..
        } => Ok(false),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("ms (add)", status)),
        MetaReply::Value { .. } => Err(McError::Protocol("a value in reply to ms".into())),
    }
}

/// An item read with its CAS value (`mg <key> v c f`).
#[derive(Debug)]
pub(crate) struct CasValue {
    /// The stored bytes.
    pub(crate) data: Vec<u8>,
    /// The client flags (0 when the server sent none).
    pub(crate) flags: u32,
    /// The CAS value a conditional write names.
    pub(crate) cas: u64,
}

/// The reply to `mg <key> v c f` (`incr`'s read): the value, its flags and its CAS value, or
/// a miss.
pub(crate) fn get_cas(r: MetaReply<'_>) -> McResult<Option<CasValue>> {
    match r {
        MetaReply::Value { data, fields, .. } => {
            let cas = fields
                .cas
                .ok_or_else(|| McError::Protocol("mg ... c: a value without its CAS".into()))?;
            Ok(Some(CasValue {
                data: data.to_vec(),
                flags: fields.flags.unwrap_or(0),
                cas,
            }))
        }
        MetaReply::Status {
            status: Status::En, ..
        } => Ok(None),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("mg", status)),
    }
}

/// The reply to `ma <key> C<cas> ... v`: the new value's text, or `None` when another write
/// came first (`EX`) or the item went (`NF`): the caller reads again.
pub(crate) fn arith(r: MetaReply<'_>) -> McResult<Option<Vec<u8>>> {
    match r {
        MetaReply::Value { data, .. } => Ok(Some(data.to_vec())),
        MetaReply::Status {
            status: Status::Ex | Status::Nf,
            ..
        } => Ok(None),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("ma", status)),
    }
}

/// The reply to `mg <key> T<n>` (touch, `true` when the item is there) or `mg <key> s t f`
/// (its fields, `None` when it is not).
pub(crate) fn touch_or_meta(r: MetaReply<'_>) -> McResult<Option<proto::Fields>> {
    match r {
        MetaReply::Status {
            status: Status::Hd,
            fields,
            ..
        } => Ok(Some(fields)),
        MetaReply::Status {
            status: Status::En, ..
        } => Ok(None),
        MetaReply::Error(l) => Err(server_error(l)),
        MetaReply::Status { status, .. } => Err(unexpected_status("mg", status)),
        MetaReply::Value { .. } => {
            Err(McError::Protocol("a value in reply to mg without v".into()))
        }
    }
}

/// The replies to pipelined `md <key>` (not quiet, to count): one per key.
#[derive(Default)]
pub(crate) struct DeleteMany {
    removed: u64,
    first_err: Option<McError>,
}

impl DeleteMany {
    /// One key's reply.
    pub(crate) fn step(&mut self, r: MetaReply<'_>) -> McResult<()> {
        match r {
            MetaReply::Status {
                status: Status::Hd, ..
            } => {
                self.removed += 1;
                Ok(())
            }
            MetaReply::Status {
                status: Status::Nf, ..
            } => Ok(()),
            MetaReply::Error(l) => {
                self.first_err.get_or_insert(server_error(l));
                Ok(())
            }
            MetaReply::Status { status, .. } => Err(unexpected_status("md", status)),
            MetaReply::Value { .. } => Err(McError::Protocol("a value in reply to md".into())),
        }
    }

    /// How many of the keys existed, or the first error line the server sent.
    pub(crate) fn finish(self) -> McResult<u64> {
        self.first_err.map_or(Ok(self.removed), Err)
    }
}
