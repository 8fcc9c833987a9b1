//! The decoder: pickle bytes to a [`Value`] or straight into a serde type, in three passes
//! that never recurse on the input.
//!
//! 1. **Run** the pickle machine over the opcodes with an explicit stack and mark stack, as
//!    CPython's `_Unpickler` does, but building objects in a flat arena: every object is a
//!    [`Node`], and a container's children are a linked list of arena edges (appending is O(1)
//!    and needs no allocation per container). The memo maps to arena indices, so a memo
//!    reference shares the object and sees later `APPEND`s/`SETITEMS`, exactly as in Python.
//!    Strings and bytes stay slices of the input until they are needed. Only the plain-data
//!    globals are accepted; nothing is ever called.
//! 2. **Measure**, only when some object is referenced twice (the memo was used to share): the
//!    tree the root would expand to (elements, payload bytes, depth, cycles) by an iterative
//!    depth-first walk that memoizes each node's totals. A memo bomb costs one visit per node and
//!    is refused before anything is built. Without sharing, the arena *is* the tree and its
//!    size is already known.
//! 3. **Build**: either a [`Value`] with an explicit task stack, or a serde `Deserialize` type
//!    read directly from the arena ([`super::typed`]), depth-checked against the limit. A node
//!    reached once is moved out; a shared node is cloned per path (the measure pass bounded that).
//!
//! The arena's vectors are kept per thread between calls, so a small decode allocates nothing
//! but the result.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{BigInt, ErrorKind, Limits, PickleError, Value};

pub(super) type Id = usize;
pub(super) const NIL: usize = usize::MAX;

/// A container's children: a linked list through [`Scratch::edges`] (dict: key, value, ...).
#[derive(Debug, Clone, Copy)]
pub(super) struct Seq {
    pub(super) head: usize,
    tail: usize,
    pub(super) len: usize,
}

impl Seq {
    const EMPTY: Seq = Seq {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    pub(super) child: Id,
    pub(super) next: usize,
}

/// An object under construction.
#[derive(Debug)]
pub(super) enum Node<'de> {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    /// A slice of the input (validated once, when read).
    StrRef(&'de str),
    Str(String),
    BytesRef(&'de [u8]),
    Bytes(Vec<u8>),
    ByteArrayRef(&'de [u8]),
    ByteArray(Vec<u8>),
    List(Seq),
    Tuple(Seq),
    Set(Seq),
    FrozenSet(Seq),
    /// Children alternate key, value.
    Dict(Seq),
    /// One of the accepted callables, only valid as the target of `REDUCE`.
    Global(Global),
    /// Moved out during the build pass.
    Taken,
}

impl<'de> Node<'de> {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::None => "NoneType",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::StrRef(_) | Node::Str(_) => "str",
            Node::BytesRef(_) | Node::Bytes(_) => "bytes",
            Node::ByteArrayRef(_) | Node::ByteArray(_) => "bytearray",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Dict(_) => "dict",
            Node::Global(_) => "global",
            Node::Taken => "taken",
        }
    }

    fn seq(&self) -> Option<Seq> {
        match self {
            Node::List(s) | Node::Tuple(s) | Node::Set(s) | Node::FrozenSet(s) | Node::Dict(s) => {
                Some(*s)
            }
            _ => None,
        }
    }

    fn payload_bytes(&self) -> u64 {
        match self {
            Node::StrRef(x) => x.len() as u64,
            Node::BytesRef(b) | Node::ByteArrayRef(b) => b.len() as u64,
            Node::Str(s) => s.len() as u64,
            Node::Bytes(b) | Node::ByteArray(b) => b.len() as u64,
            Node::BigInt(n) => n.as_le_bytes().len() as u64,
            _ => 0,
        }
    }

    pub(super) fn clone_shallow(&self) -> Node<'de> {
        match self {
            Node::None => Node::None,
            Node::Bool(b) => Node::Bool(*b),
            Node::Int(i) => Node::Int(*i),
            Node::BigInt(n) => Node::BigInt(n.clone()),
            Node::Float(f) => Node::Float(*f),
            Node::StrRef(x) => Node::StrRef(x),
            Node::Str(s) => Node::Str(s.clone()),
            Node::BytesRef(b) => Node::BytesRef(b),
            Node::Bytes(b) => Node::Bytes(b.clone()),
            Node::ByteArrayRef(b) => Node::ByteArrayRef(b),
            Node::ByteArray(b) => Node::ByteArray(b.clone()),
            Node::List(s) => Node::List(*s),
            Node::Tuple(s) => Node::Tuple(*s),
            Node::Set(s) => Node::Set(*s),
            Node::FrozenSet(s) => Node::FrozenSet(*s),
            Node::Dict(s) => Node::Dict(*s),
            Node::Global(g) => Node::Global(*g),
            Node::Taken => Node::Taken,
        }
    }
}

/// The callables CPython's pickler uses for plain data at protocols 0-4.
#[derive(Debug, Clone, Copy)]
pub(super) enum Global {
    Set,
    FrozenSet,
    ByteArray,
    Bytes,
    /// `_codecs.encode(str, "latin1")`: how protocols 0-2 write `bytes`.
    CodecsEncode,
}

impl Global {
    fn name(self) -> &'static str {
        match self {
            Global::Set => "set",
            Global::FrozenSet => "frozenset",
            Global::ByteArray => "bytearray",
            Global::Bytes => "bytes",
            Global::CodecsEncode => "_codecs.encode",
        }
    }
}

const EMPTY_MEMO: Id = Id::MAX;

/// The arena's vectors, reused between decodes on a thread.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Always empty between decodes; only its allocation is kept (see [`relabel`]).
    nodes: Vec<Node<'static>>,
    /// How many container slots (plus the root) refer to each node.
    pub(super) uses: Vec<u32>,
    pub(super) edges: Vec<Edge>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: Vec<Id>,
}

impl Scratch {
    fn clear(&mut self) {
        self.nodes.clear();
        self.uses.clear();
        self.edges.clear();
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
    }
}

/// Moves an empty vector's allocation to another lifetime of [`Node`]: the standard library
/// collects a mapped `vec::IntoIter` in place when the element layout is the same, so this
/// keeps the buffer without `unsafe` (the closure never runs: the vector is empty).
fn relabel<'a, 'b>(mut v: Vec<Node<'a>>) -> Vec<Node<'b>> {
    v.clear();
    v.into_iter().map(|_| Node::None).collect()
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

pub(super) struct Machine<'de> {
    pub(super) input: &'de [u8],
    pub(super) nodes: Vec<Node<'de>>,
    pos: usize,
    pub(super) limits: &'de Limits,
    pub(super) s: &'de mut Scratch,
    /// Memo entries at indices far beyond the dense part (legal, never written by CPython).
    memo_sparse: BTreeMap<u64, Id>,
    memo_count: u64,
    /// Some node is referenced from two places (or is the root and referenced).
    shared: bool,
    payload: u64,
}

/// Runs `f` on a parsed, measured arena: the machine borrows this thread's scratch vectors
/// (or fresh ones when a decode is already running on the thread) and gives them back after.
pub(super) fn with_machine<'a, R>(
    input: &'a [u8],
    limits: &'a Limits,
    f: impl for<'m> FnOnce(&mut Machine<'m>, Id) -> Result<R, PickleError>,
) -> Result<R, PickleError> {
    if input.len() > limits.max_input_bytes {
        return Err(PickleError::new(
            ErrorKind::Limit,
            format!(
                "pickle of {} bytes exceeds the input limit of {} bytes",
                input.len(),
                limits.max_input_bytes
            ),
        ));
    }
    let mut f = Some(f);
    let mut go = |s: &mut Scratch| -> Result<R, PickleError> {
        // The scratch outlives this call; `'a` is shortened to the borrow.
        let mut m = Machine {
            input,
            nodes: relabel(std::mem::take(&mut s.nodes)),
            pos: 0,
            limits,
            s,
            memo_sparse: BTreeMap::new(),
            memo_count: 0,
            shared: false,
            payload: 0,
        };
        let r = match (m.parse(), f.take()) {
            (Ok(root), Some(f)) => f(&mut m, root),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(PickleError::new(ErrorKind::Malformed, "internal: reentry")),
        };
        // Keep the vectors for the next decode unless a big input made them large.
        let nodes = std::mem::take(&mut m.nodes);
        if nodes.capacity() <= 4096 && m.s.edges.capacity() <= 4096 && m.s.memo.capacity() <= 4096 {
            m.s.clear();
            m.s.nodes = relabel(nodes);
        } else {
            *m.s = Scratch::default();
        }
        r
    };
    match SCRATCH.try_with(|c| c.try_borrow_mut().ok().map(|mut s| go(&mut s))) {
        Ok(Some(r)) => r,
        _ => go(&mut Scratch::default()),
    }
}

/// Decodes a pickle into a [`Value`] within `limits`.
pub(crate) fn decode(input: &[u8], limits: &Limits) -> Result<Value, PickleError> {
    with_machine(input, limits, |m, root| m.build(root))
}

fn malformed(pos: usize, msg: impl Into<String>) -> PickleError {
    PickleError::at(ErrorKind::Malformed, pos, msg)
}

pub(super) fn depth_error(limits: &Limits) -> PickleError {
    PickleError::new(
        ErrorKind::Limit,
        format!(
            "nesting deeper than the depth limit of {}",
            limits.max_depth
        ),
    )
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

impl<'de> Machine<'de> {
    /// Runs the machine, then checks the limits on what the root expands to.
    fn parse(&mut self) -> Result<Id, PickleError> {
        let root = self.run()?;
        if self.shared {
            self.measure(root)?;
        } else {
            // A tree: every node is one element; depth is checked while building.
            if self.nodes.len() as u64 > self.limits.max_elements {
                return Err(PickleError::new(
                    ErrorKind::Limit,
                    format!(
                        "the value has more than {} elements, over the limit",
                        self.limits.max_elements
                    ),
                ));
            }
            if self.payload > self.limits.max_decoded_bytes {
                return Err(PickleError::new(
                    ErrorKind::Limit,
                    format!(
                        "the value has {} bytes of strings and bytes, over the limit of {}",
                        self.payload, self.limits.max_decoded_bytes
                    ),
                ));
            }
        }
        Ok(root)
    }

    // ---- input ----------------------------------------------------------------------------

    /// Consumes `n` bytes; returns where they start.
    #[inline]
    fn take(&mut self, n: u64, what: &str) -> Result<usize, PickleError> {
        let remaining = self.input.len() - self.pos;
        if n > remaining as u64 {
            return Err(malformed(
                self.pos,
                format!("truncated pickle: {what} declares {n} bytes but only {remaining} remain"),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(start)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, PickleError> {
        let at = self.take(1, "an opcode argument")?;
        Ok(self.input[at])
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let at = self.take(N as u64, "a fixed-size argument")?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.input[at..at + N]);
        Ok(a)
    }

    /// A text argument: the bytes up to the next `\n`, which is consumed.
    fn line(&mut self) -> Result<&'de [u8], PickleError> {
        let input: &'de [u8] = self.input;
        let rest = &input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let start = self.pos;
                self.pos += n + 1;
                Ok(&input[start..start + n])
            }
            None => Err(malformed(
                self.pos,
                "truncated pickle: a text argument has no terminating newline",
            )),
        }
    }

    fn line_str(&mut self) -> Result<&'de str, PickleError> {
        let pos = self.pos;
        let line = self.line()?;
        std::str::from_utf8(line).map_err(|_| malformed(pos, "a text argument is not UTF-8"))
    }

    #[inline]
    fn check_len(&mut self, n: u64, what: &str) -> Result<(), PickleError> {
        if n > self.limits.max_decoded_bytes {
            return Err(PickleError::at(
                ErrorKind::Limit,
                self.pos,
                format!(
                    "{what} of {n} bytes exceeds the decoded-size limit of {} bytes",
                    self.limits.max_decoded_bytes
                ),
            ));
        }
        self.payload = self.payload.saturating_add(n);
        Ok(())
    }

    /// A length-prefixed payload: (start, len) in the input.
    #[inline]
    fn sized(&mut self, n: u64, what: &str) -> Result<(usize, usize), PickleError> {
        self.check_len(n, what)?;
        let at = self.take(n, what)?;
        Ok((at, n as usize))
    }

    #[inline]
    fn sized_str(&mut self, n: u64) -> Result<Node<'de>, PickleError> {
        let (at, n) = self.sized(n, "a str")?;
        let input: &'de [u8] = self.input;
        match std::str::from_utf8(&input[at..at + n]) {
            Ok(x) => Ok(Node::StrRef(x)),
            Err(_) => Err(malformed(
                at,
                "a str is not valid UTF-8 (Python strings with lone surrogates cannot be decoded)",
            )),
        }
    }

    /// The text of a str node.
    pub(super) fn str_of(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::StrRef(x) => Some(x),
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    fn bytes_of(&self, id: Id) -> Option<&[u8]> {
        match &self.nodes[id] {
            Node::BytesRef(b) => Some(b),
            Node::Bytes(b) => Some(b),
            _ => None,
        }
    }

    // ---- stack ----------------------------------------------------------------------------

    #[inline]
    fn push(&mut self, node: Node<'de>) {
        self.nodes.push(node);
        self.s.uses.push(0);
        self.s.stack.push(self.nodes.len() - 1);
    }

    #[inline]
    fn frame_start(&self) -> usize {
        self.s.marks.last().copied().unwrap_or(0)
    }

    #[inline]
    fn pop(&mut self, at: usize) -> Result<Id, PickleError> {
        if self.s.stack.len() <= self.frame_start() {
            return Err(malformed(at, "stack underflow"));
        }
        self.s
            .stack
            .pop()
            .ok_or_else(|| malformed(at, "stack underflow"))
    }

    #[inline]
    fn top(&self, at: usize) -> Result<Id, PickleError> {
        if self.s.stack.len() <= self.frame_start() {
            return Err(malformed(at, "stack underflow"));
        }
        self.s
            .stack
            .last()
            .copied()
            .ok_or_else(|| malformed(at, "stack underflow"))
    }

    /// Pops the top mark; the items above it are `stack[start..]` (the caller truncates).
    fn pop_mark(&mut self, at: usize) -> Result<usize, PickleError> {
        self.s
            .marks
            .pop()
            .ok_or_else(|| malformed(at, "no MARK on the stack"))
    }

    #[inline]
    fn adopt(&mut self, id: Id) {
        let u = &mut self.s.uses[id];
        *u = u.saturating_add(1);
        if *u > 1 {
            self.shared = true;
        }
    }

    /// Appends `stack[from..]` to a sequence (adopting each child), then truncates the stack.
    fn append_from_stack(&mut self, seq: &mut Seq, from: usize) {
        for i in from..self.s.stack.len() {
            let child = self.s.stack[i];
            self.append(seq, child);
        }
        self.s.stack.truncate(from);
    }

    #[inline]
    fn append(&mut self, seq: &mut Seq, child: Id) {
        self.adopt(child);
        let e = self.s.edges.len();
        self.s.edges.push(Edge { child, next: NIL });
        if seq.tail == NIL {
            seq.head = e;
        } else {
            self.s.edges[seq.tail].next = e;
        }
        seq.tail = e;
        seq.len += 1;
    }

    /// The children of a sequence, in order.
    pub(super) fn children(&self, seq: Seq) -> Children<'_> {
        Children {
            edges: &self.s.edges,
            cur: seq.head,
        }
    }

    fn hashable(&self, id: Id, at: usize) -> Result<(), PickleError> {
        match &self.nodes[id] {
            n @ (Node::List(_)
            | Node::Dict(_)
            | Node::Set(_)
            | Node::ByteArray(_)
            | Node::ByteArrayRef(_)) => Err(malformed(
                at,
                format!(
                    "unhashable type {} used as a dict key or set element",
                    n.kind()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn check_hashable_from(&self, from: usize, step: usize, at: usize) -> Result<(), PickleError> {
        for &id in self.s.stack[from..].iter().step_by(step) {
            self.hashable(id, at)?;
        }
        Ok(())
    }

    /// Pops a mark and appends the items above it to the container on top of the stack.
    fn extend_top(
        &mut self,
        at: usize,
        op: &str,
        pairs: bool,
        set: bool,
    ) -> Result<(), PickleError> {
        let from = self.pop_mark(at)?;
        if pairs && !(self.s.stack.len() - from).is_multiple_of(2) {
            return Err(malformed(at, "odd number of items for a dict"));
        }
        if pairs || set {
            self.check_hashable_from(from, if pairs { 2 } else { 1 }, at)?;
        }
        if from <= self.frame_start() {
            return Err(malformed(at, "stack underflow"));
        }
        let target = self.s.stack[from - 1];
        let mut seq = match (&self.nodes[target], pairs, set) {
            (Node::List(s), false, false)
            | (Node::Dict(s), true, false)
            | (Node::Set(s), false, true) => *s,
            (n, _, _) => return Err(malformed(at, format!("{op} on a {}", n.kind()))),
        };
        self.append_from_stack(&mut seq, from);
        self.set_seq(target, seq);
        Ok(())
    }

    fn set_seq(&mut self, id: Id, seq: Seq) {
        if let Node::List(s) | Node::Tuple(s) | Node::Set(s) | Node::FrozenSet(s) | Node::Dict(s) =
            &mut self.nodes[id]
        {
            *s = seq;
        }
    }

    // ---- memo -----------------------------------------------------------------------------

    fn memo_put(&mut self, idx: u64, at: usize) -> Result<(), PickleError> {
        let id = self.top(at)?;
        let memo = &mut self.s.memo;
        let dense = memo.len() as u64;
        if idx < dense {
            let slot = &mut memo[idx as usize];
            if *slot == EMPTY_MEMO {
                self.memo_count += 1;
            }
            *slot = id;
        } else if idx < dense + 1024 {
            memo.resize(idx as usize, EMPTY_MEMO);
            memo.push(id);
            self.memo_count += 1;
        } else if self.memo_sparse.insert(idx, id).is_none() {
            self.memo_count += 1;
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u64, at: usize) -> Result<(), PickleError> {
        let id = match self.s.memo.get(idx as usize) {
            Some(&id) if idx < self.s.memo.len() as u64 && id != EMPTY_MEMO => Some(id),
            _ => self.memo_sparse.get(&idx).copied(),
        };
        match id {
            Some(id) => {
                self.s.stack.push(id);
                Ok(())
            }
            None => Err(malformed(at, format!("memo entry {idx} is not defined"))),
        }
    }

    // ---- values ---------------------------------------------------------------------------

    fn int_from_le(&mut self, n: u64, at: usize) -> Result<Node<'de>, PickleError> {
        if n > self.limits.max_int_bytes as u64 {
            return Err(PickleError::at(
                ErrorKind::Limit,
                at,
                format!(
                    "an int of {n} bytes exceeds the limit of {} bytes",
                    self.limits.max_int_bytes
                ),
            ));
        }
        let start = self.take(n, "an int")?;
        let b = &self.input[start..start + n as usize];
        if b.len() <= 8 {
            let fill = if b.last().is_some_and(|x| x & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut a = [fill; 8];
            a[..b.len()].copy_from_slice(b);
            return Ok(Node::Int(i64::from_le_bytes(a)));
        }
        let big = BigInt::from_le_bytes(b);
        Ok(match big.to_i64() {
            Some(i) => Node::Int(i),
            None => Node::BigInt(big),
        })
    }

    fn int_from_text(&self, text: &[u8], at: usize) -> Result<Node<'de>, PickleError> {
        let s = std::str::from_utf8(text).map_err(|_| malformed(at, "int text is not ASCII"))?;
        if let Ok(i) = s.parse::<i64>() {
            return Ok(Node::Int(i));
        }
        // 2.41 decimal digits per byte, plus a sign.
        if s.len() > self.limits.max_int_bytes.saturating_mul(5) / 2 + 1 {
            return Err(PickleError::at(
                ErrorKind::Limit,
                at,
                format!(
                    "an int of {} digits exceeds the limit of {} bytes",
                    s.len(),
                    self.limits.max_int_bytes
                ),
            ));
        }
        let big: BigInt = s
            .parse()
            .map_err(|e: PickleError| malformed(at, e.to_string()))?;
        Ok(match big.to_i64() {
            Some(i) => Node::Int(i),
            None => Node::BigInt(big),
        })
    }

    fn resolve_global(&self, module: &str, name: &str, at: usize) -> Result<Global, PickleError> {
        match (module, name) {
            ("builtins" | "__builtin__", "set") => Ok(Global::Set),
            ("builtins" | "__builtin__", "frozenset") => Ok(Global::FrozenSet),
            ("builtins" | "__builtin__", "bytearray") => Ok(Global::ByteArray),
            ("builtins" | "__builtin__", "bytes") => Ok(Global::Bytes),
            ("_codecs", "encode") => Ok(Global::CodecsEncode),
            ("datetime" | "decimal" | "uuid" | "pathlib" | "collections", _) => {
                Err(PickleError::at(
                    ErrorKind::Unsupported,
                    at,
                    format!(
                        "unsupported Python type {}.{}: the pickle codec reads only None, bool, \
                         int, float, str, bytes, bytearray, list, tuple, set, frozenset and dict \
                         (store dates and decimals as strings or numbers)",
                        short(module),
                        short(name)
                    ),
                ))
            }
            _ => Err(PickleError::at(
                ErrorKind::Unsupported,
                at,
                format!(
                    "refusing to load the global {}.{}: only builtins set, frozenset, bytearray, \
                     bytes and _codecs.encode are allowed, and nothing is ever called",
                    short(module),
                    short(name)
                ),
            )),
        }
    }

    fn reduce(&mut self, at: usize) -> Result<(), PickleError> {
        let args_id = self.pop(at)?;
        let f_id = self.pop(at)?;
        let Node::Global(g) = self.nodes[f_id] else {
            return Err(malformed(
                at,
                format!("REDUCE on a {}, not a callable", self.nodes[f_id].kind()),
            ));
        };
        let Node::Tuple(args) = self.nodes[args_id] else {
            return Err(malformed(at, "REDUCE arguments are not a tuple"));
        };
        let args: Vec<Id> = self.children(args).collect();
        let latin1 = |s: &str| -> Result<Vec<u8>, PickleError> {
            s.chars()
                .map(|c| u8::try_from(u32::from(c)))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| malformed(at, "latin-1 text has a character above U+00FF"))
        };
        let is_latin1 =
            |e: Option<&str>| matches!(e, Some("latin1" | "latin-1" | "iso-8859-1" | "iso8859-1"));
        let node = match (g, &args[..]) {
            (Global::Set, []) => Node::Set(Seq::EMPTY),
            (Global::FrozenSet, []) => Node::FrozenSet(Seq::EMPTY),
            (Global::Set | Global::FrozenSet, &[arg]) => {
                let Some(src) = self.nodes[arg]
                    .seq()
                    .filter(|_| !matches!(self.nodes[arg], Node::Dict(_)))
                else {
                    return Err(self.bad_call(g, &args, at));
                };
                let items: Vec<Id> = self.children(src).collect();
                let mut seq = Seq::EMPTY;
                for i in items {
                    self.hashable(i, at)?;
                    self.append(&mut seq, i);
                }
                match g {
                    Global::Set => Node::Set(seq),
                    _ => Node::FrozenSet(seq),
                }
            }
            (Global::Bytes, []) => Node::Bytes(Vec::new()),
            (Global::ByteArray, []) => Node::ByteArray(Vec::new()),
            (Global::Bytes, &[b]) if self.bytes_of(b).is_some() => self.nodes[b].clone_shallow(),
            (Global::ByteArray, &[b]) if self.bytes_of(b).is_some() => match self.nodes[b] {
                Node::BytesRef(x) => Node::ByteArrayRef(x),
                _ => Node::ByteArray(self.bytes_of(b).map(<[u8]>::to_vec).unwrap_or_default()),
            },
            (Global::ByteArray | Global::CodecsEncode, &[s, e])
                if is_latin1(self.str_of(e)) && self.str_of(s).is_some() =>
            {
                let b = latin1(self.str_of(s).unwrap_or_default())?;
                match g {
                    Global::ByteArray => Node::ByteArray(b),
                    _ => Node::Bytes(b),
                }
            }
            _ => return Err(self.bad_call(g, &args, at)),
        };
        self.payload = self.payload.saturating_add(node.payload_bytes());
        self.push(node);
        Ok(())
    }

    fn bad_call(&self, g: Global, args: &[Id], at: usize) -> PickleError {
        let kinds: Vec<&str> = args.iter().map(|&a| self.nodes[a].kind()).collect();
        PickleError::at(
            ErrorKind::Unsupported,
            at,
            format!(
                "unsupported call {}({}) in REDUCE",
                g.name(),
                kinds.join(", ")
            ),
        )
    }

    // ---- the machine ----------------------------------------------------------------------

    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            let at = self.pos;
            if at >= self.input.len() {
                return Err(malformed(at, "truncated pickle: no STOP opcode"));
            }
            let op = self.input[at];
            self.pos += 1;
            match op {
                // PROTO
                0x80 => {
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(PickleError::at(
                            ErrorKind::Unsupported,
                            at,
                            format!("unsupported pickle protocol {v} (0 to 5 are supported)"),
                        ));
                    }
                }
                // FRAME: a length prefix for buffered reading; the content follows inline.
                0x95 => {
                    let n = u64::from_le_bytes(self.array()?);
                    let remaining = (self.input.len() - self.pos) as u64;
                    if n > remaining {
                        return Err(malformed(
                            at,
                            format!(
                                "truncated pickle: FRAME declares {n} bytes but only {remaining} remain"
                            ),
                        ));
                    }
                }
                // STOP
                b'.' => {
                    let root = self.pop(at)?;
                    self.adopt(root);
                    return Ok(root);
                }
                // MARK
                b'(' => {
                    if self.s.marks.len() > self.limits.max_depth {
                        return Err(PickleError::at(
                            ErrorKind::Limit,
                            at,
                            format!(
                                "nesting deeper than the depth limit of {}",
                                self.limits.max_depth
                            ),
                        ));
                    }
                    self.s.marks.push(self.s.stack.len());
                }
                // POP: the top item, or the whole mark frame when it is empty.
                b'0' => {
                    if self.s.stack.len() > self.frame_start() {
                        self.s.stack.pop();
                    } else {
                        let from = self.pop_mark(at)?;
                        self.s.stack.truncate(from);
                    }
                }
                // POP_MARK
                b'1' => {
                    let from = self.pop_mark(at)?;
                    self.s.stack.truncate(from);
                }
                // DUP
                b'2' => {
                    let id = self.top(at)?;
                    self.s.stack.push(id);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                // INT: decimal text; "01"/"00" are protocol 0's True/False.
                b'I' => {
                    let node = match self.line()? {
                        b"01" => Node::Bool(true),
                        b"00" => Node::Bool(false),
                        t => self.int_from_text(t, at)?,
                    };
                    self.push(node);
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Node::Int(v.into()));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Node::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Node::Int(v.into()));
                }
                // LONG: decimal text with an optional trailing 'L'.
                b'L' => {
                    let t = self.line()?;
                    let t = t.strip_suffix(b"L").unwrap_or(t);
                    let node = self.int_from_text(t, at)?;
                    self.push(node);
                }
                // LONG1, LONG4: two's complement little-endian.
                0x8a => {
                    let n = self.byte()?;
                    let node = self.int_from_le(n.into(), at)?;
                    self.push(node);
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.array()?);
                    let n = u64::try_from(n)
                        .map_err(|_| malformed(at, "LONG4 with a negative length"))?;
                    let node = self.int_from_le(n, at)?;
                    self.push(node);
                }
                // FLOAT (text), BINFLOAT (big-endian IEEE 754)
                b'F' => {
                    let t = self.line_str()?;
                    let f: f64 = t
                        .parse()
                        .map_err(|_| malformed(at, format!("invalid float text {:?}", short(t))))?;
                    self.push(Node::Float(f));
                }
                b'G' => {
                    let f = f64::from_be_bytes(self.array()?);
                    self.push(Node::Float(f));
                }
                // UNICODE: raw-unicode-escape text.
                b'V' => {
                    let t = self.line()?;
                    let s = raw_unicode_escape(t).map_err(|m| malformed(at, m))?;
                    self.check_len(s.len() as u64, "a str")?;
                    self.push(Node::Str(s));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let node = self.sized_str(n.into())?;
                    self.push(node);
                }
                0x8c => {
                    let n = self.byte()?;
                    let node = self.sized_str(n.into())?;
                    self.push(node);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array()?);
                    let node = self.sized_str(n)?;
                    self.push(node);
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = self.byte()?;
                    let (a, n) = self.sized(n.into(), "a bytes")?;
                    let input: &'de [u8] = self.input;
                    self.push(Node::BytesRef(&input[a..a + n]));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let (a, n) = self.sized(n.into(), "a bytes")?;
                    let input: &'de [u8] = self.input;
                    self.push(Node::BytesRef(&input[a..a + n]));
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.array()?);
                    let (a, n) = self.sized(n, "a bytes")?;
                    let input: &'de [u8] = self.input;
                    self.push(Node::BytesRef(&input[a..a + n]));
                }
                0x96 => {
                    let n = u64::from_le_bytes(self.array()?);
                    let (a, n) = self.sized(n, "a bytearray")?;
                    let input: &'de [u8] = self.input;
                    self.push(Node::ByteArrayRef(&input[a..a + n]));
                }
                // SHORT_BINSTRING, BINSTRING: Python 2 str; Python 3 reads ASCII ones as str.
                b'U' | b'T' => {
                    let n: u64 = if op == b'U' {
                        self.byte()?.into()
                    } else {
                        u64::try_from(i32::from_le_bytes(self.array()?))
                            .map_err(|_| malformed(at, "BINSTRING with a negative length"))?
                    };
                    let (a, n) = self.sized(n, "a Python 2 str")?;
                    let input: &'de [u8] = self.input;
                    let raw = &input[a..a + n];
                    if !raw.is_ascii() {
                        return Err(PickleError::at(
                            ErrorKind::Unsupported,
                            at,
                            "a non-ASCII Python 2 str (its encoding is unknown)",
                        ));
                    }
                    let x = std::str::from_utf8(raw)
                        .map_err(|_| malformed(at, "a Python 2 str is not ASCII"))?;
                    self.push(Node::StrRef(x));
                }
                // Containers
                b')' => self.push(Node::Tuple(Seq::EMPTY)),
                b']' => self.push(Node::List(Seq::EMPTY)),
                b'}' => self.push(Node::Dict(Seq::EMPTY)),
                0x8f => self.push(Node::Set(Seq::EMPTY)),
                b't' | b'l' | 0x91 => {
                    let from = self.pop_mark(at)?;
                    if op == 0x91 {
                        self.check_hashable_from(from, 1, at)?;
                    }
                    let mut seq = Seq::EMPTY;
                    self.append_from_stack(&mut seq, from);
                    self.push(match op {
                        b't' => Node::Tuple(seq),
                        b'l' => Node::List(seq),
                        _ => Node::FrozenSet(seq),
                    });
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.s.stack.len() < self.frame_start() + n {
                        return Err(malformed(at, "stack underflow"));
                    }
                    let mut seq = Seq::EMPTY;
                    let from = self.s.stack.len() - n;
                    self.append_from_stack(&mut seq, from);
                    self.push(Node::Tuple(seq));
                }
                b'd' => {
                    let from = self.pop_mark(at)?;
                    if !(self.s.stack.len() - from).is_multiple_of(2) {
                        return Err(malformed(at, "odd number of items for a dict"));
                    }
                    self.check_hashable_from(from, 2, at)?;
                    let mut seq = Seq::EMPTY;
                    self.append_from_stack(&mut seq, from);
                    self.push(Node::Dict(seq));
                }
                // APPEND, SETITEM: one item (or pair) without a mark.
                b'a' | b's' => {
                    let n = if op == b'a' { 1 } else { 2 };
                    if self.s.stack.len() < self.frame_start() + n + 1 {
                        return Err(malformed(at, "stack underflow"));
                    }
                    let from = self.s.stack.len() - n;
                    if op == b's' {
                        self.check_hashable_from(from, 2, at)?;
                    }
                    let target = self.s.stack[from - 1];
                    let mut seq = match (&self.nodes[target], op) {
                        (Node::List(s), b'a') | (Node::Dict(s), b's') => *s,
                        (node, _) => {
                            let name = if op == b'a' {
                                "APPEND to"
                            } else {
                                "SETITEM on"
                            };
                            return Err(malformed(at, format!("{name} a {}", node.kind())));
                        }
                    };
                    self.append_from_stack(&mut seq, from);
                    self.set_seq(target, seq);
                }
                // APPENDS, SETITEMS, ADDITEMS
                b'e' => self.extend_top(at, "APPENDS", false, false)?,
                b'u' => self.extend_top(at, "SETITEMS", true, false)?,
                0x90 => self.extend_top(at, "ADDITEMS", false, true)?,
                // Memo: PUT, BINPUT, LONG_BINPUT, MEMOIZE, GET, BINGET, LONG_BINGET
                b'p' => {
                    let idx = self.memo_index_text(at)?;
                    self.memo_put(idx, at)?;
                }
                b'q' => {
                    let idx = self.byte()?;
                    self.memo_put(idx.into(), at)?;
                }
                b'r' => {
                    let idx = u32::from_le_bytes(self.array()?);
                    self.memo_put(idx.into(), at)?;
                }
                0x94 => {
                    let idx = self.memo_count;
                    self.memo_put(idx, at)?;
                }
                b'g' => {
                    let idx = self.memo_index_text(at)?;
                    self.memo_get(idx, at)?;
                }
                b'h' => {
                    let idx = self.byte()?;
                    self.memo_get(idx.into(), at)?;
                }
                b'j' => {
                    let idx = u32::from_le_bytes(self.array()?);
                    self.memo_get(idx.into(), at)?;
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = self.resolve_global(module, name, at)?;
                    self.push(Node::Global(g));
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name))
                    else {
                        return Err(malformed(at, "STACK_GLOBAL needs two str"));
                    };
                    let g = self.resolve_global(module, name, at)?;
                    self.push(Node::Global(g));
                }
                b'R' => self.reduce(at)?,
                // Everything that builds or restores arbitrary objects is refused.
                b'P' | b'Q' => return Err(self.refuse(at, "persistent ids (PERSID)")),
                b'b' => return Err(self.refuse(at, "object state (BUILD)")),
                b'i' | b'o' | 0x81 | 0x92 => {
                    return Err(self.refuse(at, "class instances (INST/OBJ/NEWOBJ)"));
                }
                0x82..=0x84 => return Err(self.refuse(at, "the copyreg extension registry (EXT)")),
                0x97 | 0x98 => {
                    return Err(self.refuse(at, "out-of-band buffers (protocol 5 PickleBuffer)"));
                }
                b'S' => return Err(self.refuse(at, "quoted Python 2 str (STRING)")),
                _ => {
                    return Err(malformed(at, format!("unknown opcode 0x{op:02x}")));
                }
            }
        }
    }

    fn refuse(&self, at: usize, what: &str) -> PickleError {
        PickleError::at(
            ErrorKind::Unsupported,
            at,
            format!("unsupported pickle content: {what}; the pickle codec reads plain data only"),
        )
    }

    fn memo_index_text(&mut self, at: usize) -> Result<u64, PickleError> {
        let t = self.line_str()?;
        t.parse::<u64>()
            .map_err(|_| malformed(at, format!("invalid memo index {:?}", short(t))))
    }

    // ---- measure --------------------------------------------------------------------------

    fn measure(&self, root: Id) -> Result<(), PickleError> {
        let n = self.nodes.len();
        // 0 unvisited, 1 on the current path, 2 done.
        let mut state = vec![0u8; n];
        let mut elems = vec![0u64; n];
        let mut bytes = vec![0u64; n];
        let mut depth = vec![0u32; n];
        let limit = |msg: String| PickleError::new(ErrorKind::Limit, msg);
        // (node, next edge to visit)
        let mut path: Vec<(Id, usize)> = Vec::new();
        let leaf = |id: Id, elems: &mut [u64], bytes: &mut [u64], state: &mut [u8]| {
            elems[id] = 1;
            bytes[id] = self.nodes[id].payload_bytes();
            state[id] = 2;
        };
        match self.nodes[root].seq() {
            Some(seq) => {
                state[root] = 1;
                path.push((root, seq.head));
            }
            None => leaf(root, &mut elems, &mut bytes, &mut state),
        }
        while let Some((id, cursor)) = path.last_mut() {
            let id = *id;
            if *cursor != NIL {
                let Edge { child: c, next } = self.s.edges[*cursor];
                *cursor = next;
                match (state[c], self.nodes[c].seq()) {
                    (0, Some(seq)) => {
                        if path.len() >= self.limits.max_depth {
                            return Err(depth_error(self.limits));
                        }
                        state[c] = 1;
                        path.push((c, seq.head));
                    }
                    (0, None) => leaf(c, &mut elems, &mut bytes, &mut state),
                    (1, _) => {
                        return Err(PickleError::new(
                            ErrorKind::Unsupported,
                            "recursive structure: a container contains itself",
                        ));
                    }
                    _ => {}
                }
            } else {
                let (mut e, mut b, mut d) = (1u64, 0u64, 0u32);
                if let Some(seq) = self.nodes[id].seq() {
                    for c in self.children(seq) {
                        e = e.saturating_add(elems[c]);
                        b = b.saturating_add(bytes[c]);
                        d = d.max(depth[c]);
                    }
                }
                elems[id] = e;
                bytes[id] = b;
                depth[id] = d + 1;
                state[id] = 2;
                path.pop();
            }
        }
        if elems[root] > self.limits.max_elements {
            return Err(limit(format!(
                "the value expands to {} elements (memo references counted as they expand), over the limit of {}",
                elems[root], self.limits.max_elements
            )));
        }
        if bytes[root] > self.limits.max_decoded_bytes {
            return Err(limit(format!(
                "the value expands to {} bytes of strings and bytes, over the limit of {}",
                bytes[root], self.limits.max_decoded_bytes
            )));
        }
        if depth[root] as usize > self.limits.max_depth {
            return Err(depth_error(self.limits));
        }
        Ok(())
    }

    // ---- build ----------------------------------------------------------------------------

    /// Takes a node out of the arena (moved when reached once, else cloned).
    pub(super) fn take_node(&mut self, id: Id, shared: bool) -> Node<'de> {
        if shared {
            self.nodes[id].clone_shallow()
        } else {
            std::mem::replace(&mut self.nodes[id], Node::Taken)
        }
    }

    fn build(&mut self, root: Id) -> Result<Value, PickleError> {
        #[derive(Clone, Copy)]
        enum Kind {
            List,
            Tuple,
            Set,
            FrozenSet,
            Dict,
        }
        enum Task {
            /// Convert a node at a depth; `shared`: the node or an ancestor is reached more than
            /// once, so it is visited once per path and must be cloned, not moved.
            Enter(Id, usize, bool),
            Close(Kind, usize),
        }
        let mut tasks = vec![Task::Enter(root, 0, false)];
        let mut out: Vec<Value> = Vec::new();
        let mut kids: Vec<Id> = Vec::new();
        while let Some(task) = tasks.pop() {
            match task {
                Task::Enter(id, depth, shared) => {
                    let shared = shared || self.s.uses[id] > 1;
                    let node = self.take_node(id, shared);
                    let (kind, seq) = match node {
                        Node::List(s) => (Kind::List, s),
                        Node::Tuple(s) => (Kind::Tuple, s),
                        Node::Set(s) => (Kind::Set, s),
                        Node::FrozenSet(s) => (Kind::FrozenSet, s),
                        Node::Dict(s) => (Kind::Dict, s),
                        other => {
                            out.push(self.scalar(other)?);
                            continue;
                        }
                    };
                    if depth >= self.limits.max_depth {
                        return Err(depth_error(self.limits));
                    }
                    tasks.push(Task::Close(kind, seq.len));
                    kids.clear();
                    kids.extend(self.children(seq));
                    tasks.extend(
                        kids.iter()
                            .rev()
                            .map(|&c| Task::Enter(c, depth + 1, shared)),
                    );
                }
                Task::Close(kind, n) => {
                    let start = out.len().checked_sub(n).ok_or_else(|| {
                        PickleError::new(ErrorKind::Malformed, "internal: build underflow")
                    })?;
                    let items = out.split_off(start);
                    out.push(match kind {
                        Kind::List => Value::List(items),
                        Kind::Tuple => Value::Tuple(items),
                        Kind::Set => Value::Set(items),
                        Kind::FrozenSet => Value::FrozenSet(items),
                        Kind::Dict => {
                            let mut pairs = Vec::with_capacity(n / 2);
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                pairs.push((k, v));
                            }
                            Value::Dict(pairs)
                        }
                    });
                }
            }
        }
        match (out.pop(), out.is_empty()) {
            (Some(v), true) => Ok(v),
            _ => Err(PickleError::new(
                ErrorKind::Malformed,
                "internal: build left extra values",
            )),
        }
    }

    /// A non-container node as a value.
    pub(super) fn scalar(&self, node: Node<'de>) -> Result<Value, PickleError> {
        Ok(match node {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::Int(i),
            Node::BigInt(n) => Value::BigInt(n),
            Node::Float(f) => Value::Float(f),
            Node::StrRef(x) => Value::Str(x.to_owned()),
            Node::Str(s) => Value::Str(s),
            Node::BytesRef(b) => Value::Bytes(b.to_vec()),
            Node::Bytes(b) => Value::Bytes(b),
            Node::ByteArrayRef(b) => Value::ByteArray(b.to_vec()),
            Node::ByteArray(b) => Value::ByteArray(b),
            Node::Global(_) => return Err(global_value_error()),
            Node::List(_)
            | Node::Tuple(_)
            | Node::Set(_)
            | Node::FrozenSet(_)
            | Node::Dict(_)
            | Node::Taken => {
                return Err(PickleError::new(
                    ErrorKind::Malformed,
                    "internal: a node was used more often than counted",
                ));
            }
        })
    }
}

pub(super) fn global_value_error() -> PickleError {
    PickleError::new(
        ErrorKind::Unsupported,
        "a pickled callable (a global not passed to REDUCE) is not a value",
    )
}

/// Iterates a sequence's children.
pub(super) struct Children<'a> {
    edges: &'a [Edge],
    cur: usize,
}

impl Iterator for Children<'_> {
    type Item = Id;
    fn next(&mut self) -> Option<Id> {
        let e = self.edges.get(self.cur)?;
        self.cur = e.next;
        Some(e.child)
    }
}

/// Decodes Python's `raw-unicode-escape`: bytes are Latin-1 code points, except `\uXXXX` and
/// `\UXXXXXXXX` (the pickler escapes `\` itself, NUL and newlines that way).
fn raw_unicode_escape(t: &[u8]) -> Result<String, String> {
    let mut s = String::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let b = t[i];
        let width = match (b, t.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if width == 0 {
            s.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = t
            .get(i + 2..i + 2 + width)
            .ok_or("truncated \\u escape in UNICODE text")?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err("bad \\u escape in UNICODE text".to_owned());
        }
        let hex = std::str::from_utf8(hex).map_err(|_| "bad \\u escape in UNICODE text")?;
        let cp = u32::from_str_radix(hex, 16).map_err(|_| "bad \\u escape in UNICODE text")?;
        let c = char::from_u32(cp).ok_or(
            "UNICODE text has a lone surrogate or an invalid code point (not representable in Rust)",
        )?;
        s.push(c);
        i += 2 + width;
    }
    Ok(s)
}
