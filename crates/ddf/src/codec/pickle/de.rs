//! The decoder: pickle bytes to [`Value`], in three iterative passes.
//!
//! 1. **Run** the pickle machine over the opcodes with an explicit stack and mark stack, as
//!    CPython's `_Unpickler` does, but building objects in a flat arena: every object is a
//!    [`Node`] and containers hold arena indices. The memo maps to indices too, so a memo
//!    reference shares the object (and sees later `APPEND`s/`SETITEMS`), exactly as in Python.
//!    Only the plain-data globals are accepted; nothing is ever called.
//! 2. **Measure** the tree the root would expand to (elements, payload bytes, depth, cycles) by
//!    an iterative depth-first walk over the arena, memoizing each node's totals. A memo bomb
//!    (each level referencing the previous one twice) costs one visit per node here, and is
//!    refused before anything is built.
//! 3. **Build** the [`Value`] tree with an explicit task stack. A node referenced once is moved
//!    out of the arena; a shared node is cloned per reference (the measure pass bounded that).
//!
//! Nothing here recurses on the input: a 100,000-deep pickle is a [`ErrorKind::Limit`] error.

use std::collections::BTreeMap;

use super::{BigInt, ErrorKind, Limits, PickleError, Value};

type Id = usize;

/// An object under construction.
#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// One of the accepted callables, only valid as the target of `REDUCE`.
    Global(Global),
    /// Moved out during the build pass.
    Taken,
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::None => "NoneType",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::ByteArray(_) => "bytearray",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Dict(_) => "dict",
            Node::Global(_) => "global",
            Node::Taken => "taken",
        }
    }

    fn is_container(&self) -> bool {
        matches!(
            self,
            Node::List(_) | Node::Tuple(_) | Node::Set(_) | Node::FrozenSet(_) | Node::Dict(_)
        )
    }

    /// The `i`-th child (dict entries flattened as key, value).
    fn child(&self, i: usize) -> Option<Id> {
        match self {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => v.get(i).copied(),
            Node::Dict(p) => p
                .get(i / 2)
                .map(|(k, v)| if i.is_multiple_of(2) { *k } else { *v }),
            _ => None,
        }
    }

    fn payload_bytes(&self) -> u64 {
        match self {
            Node::Str(s) => s.len() as u64,
            Node::Bytes(b) | Node::ByteArray(b) => b.len() as u64,
            Node::BigInt(n) => n.as_le_bytes().len() as u64,
            _ => 0,
        }
    }

    fn clone_shallow(&self) -> Node {
        match self {
            Node::None => Node::None,
            Node::Bool(b) => Node::Bool(*b),
            Node::Int(i) => Node::Int(*i),
            Node::BigInt(n) => Node::BigInt(n.clone()),
            Node::Float(f) => Node::Float(*f),
            Node::Str(s) => Node::Str(s.clone()),
            Node::Bytes(b) => Node::Bytes(b.clone()),
            Node::ByteArray(b) => Node::ByteArray(b.clone()),
            Node::List(v) => Node::List(v.clone()),
            Node::Tuple(v) => Node::Tuple(v.clone()),
            Node::Set(v) => Node::Set(v.clone()),
            Node::FrozenSet(v) => Node::FrozenSet(v.clone()),
            Node::Dict(p) => Node::Dict(p.clone()),
            Node::Global(g) => Node::Global(*g),
            Node::Taken => Node::Taken,
        }
    }
}

/// The callables CPython's pickler uses for plain data at protocols 0-4.
#[derive(Debug, Clone, Copy)]
enum Global {
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

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    limits: &'a Limits,
    nodes: Vec<Node>,
    /// How many container slots (plus the root) refer to each node: 1 means it can be moved.
    uses: Vec<u32>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: Vec<Id>,
    /// Memo entries at indices far beyond the dense part (legal, never written by CPython).
    memo_sparse: BTreeMap<u64, Id>,
    memo_count: u64,
}

/// Decodes a pickle into a [`Value`] within `limits`.
pub(crate) fn decode(input: &[u8], limits: &Limits) -> Result<Value, PickleError> {
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
    let mut m = Machine {
        input,
        pos: 0,
        limits,
        nodes: Vec::with_capacity(16),
        uses: Vec::with_capacity(16),
        stack: Vec::with_capacity(8),
        marks: Vec::with_capacity(4),
        memo: Vec::new(),
        memo_sparse: BTreeMap::new(),
        memo_count: 0,
    };
    let root = m.run()?;
    m.measure(root)?;
    m.build(root)
}

fn malformed(pos: usize, msg: impl Into<String>) -> PickleError {
    PickleError::at(ErrorKind::Malformed, pos, msg)
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    out
}

impl Machine<'_> {
    // ---- input ----------------------------------------------------------------------------

    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], PickleError> {
        let remaining = self.input.len() - self.pos;
        if n > remaining as u64 {
            return Err(malformed(
                self.pos,
                format!("truncated pickle: {what} declares {n} bytes but only {remaining} remain"),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.input[start..self.pos])
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1, "an opcode argument")?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, "a fixed-size argument")?);
        Ok(a)
    }

    /// A text argument: the bytes up to the next `\n`, which is consumed.
    fn line(&mut self) -> Result<&[u8], PickleError> {
        let rest = &self.input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let start = self.pos;
                self.pos += n + 1;
                Ok(&self.input[start..start + n])
            }
            None => Err(malformed(
                self.pos,
                "truncated pickle: a text argument has no terminating newline",
            )),
        }
    }

    fn line_str(&mut self) -> Result<&str, PickleError> {
        let pos = self.pos;
        let line = self.line()?;
        std::str::from_utf8(line).map_err(|_| malformed(pos, "a text argument is not UTF-8"))
    }

    fn check_len(&self, n: u64, what: &str) -> Result<(), PickleError> {
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
        Ok(())
    }

    fn sized_bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, PickleError> {
        self.check_len(n, what)?;
        Ok(self.take(n, what)?.to_vec())
    }

    fn sized_str(&mut self, n: u64) -> Result<String, PickleError> {
        self.check_len(n, "a str")?;
        let pos = self.pos;
        let raw = self.take(n, "a str")?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(malformed(
                pos,
                "a str is not valid UTF-8 (Python strings with lone surrogates cannot be decoded)",
            )),
        }
    }

    // ---- stack ----------------------------------------------------------------------------

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.uses.push(0);
        self.stack.push(self.nodes.len() - 1);
    }

    fn frame_start(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: usize) -> Result<Id, PickleError> {
        if self.stack.len() <= self.frame_start() {
            return Err(malformed(at, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| malformed(at, "stack underflow"))
    }

    fn top(&self, at: usize) -> Result<Id, PickleError> {
        if self.stack.len() <= self.frame_start() {
            return Err(malformed(at, "stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| malformed(at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Id>, PickleError> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| malformed(at, "no MARK on the stack"))?;
        Ok(self.stack.split_off(m))
    }

    fn adopt(&mut self, ids: &[Id]) {
        for &id in ids {
            self.uses[id] = self.uses[id].saturating_add(1);
        }
    }

    fn hashable(&self, id: Id, at: usize) -> Result<(), PickleError> {
        match &self.nodes[id] {
            n @ (Node::List(_) | Node::Dict(_) | Node::Set(_) | Node::ByteArray(_)) => {
                Err(malformed(
                    at,
                    format!(
                        "unhashable type {} used as a dict key or set element",
                        n.kind()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    // ---- memo -----------------------------------------------------------------------------

    fn memo_put(&mut self, idx: u64, at: usize) -> Result<(), PickleError> {
        let id = self.top(at)?;
        let dense = self.memo.len() as u64;
        if idx < dense {
            let slot = &mut self.memo[idx as usize];
            if *slot == EMPTY_MEMO {
                self.memo_count += 1;
            }
            *slot = id;
        } else if idx < dense + 1024 {
            self.memo.resize(idx as usize, EMPTY_MEMO);
            self.memo.push(id);
            self.memo_count += 1;
        } else if self.memo_sparse.insert(idx, id).is_none() {
            self.memo_count += 1;
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u64, at: usize) -> Result<(), PickleError> {
        let id = match self.memo.get(idx as usize) {
            Some(&id) if idx < self.memo.len() as u64 && id != EMPTY_MEMO => Some(id),
            _ => self.memo_sparse.get(&idx).copied(),
        };
        match id {
            Some(id) => {
                self.stack.push(id);
                Ok(())
            }
            None => Err(malformed(at, format!("memo entry {idx} is not defined"))),
        }
    }

    // ---- values ---------------------------------------------------------------------------

    fn int_from_le(&mut self, n: u64, at: usize) -> Result<Node, PickleError> {
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
        let b = self.take(n, "an int")?;
        let big = BigInt::from_le_bytes(b);
        Ok(match big.to_i64() {
            Some(i) => Node::Int(i),
            None => Node::BigInt(big),
        })
    }

    fn int_from_text(&self, text: &[u8], at: usize) -> Result<Node, PickleError> {
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
        let Node::Tuple(args) = &self.nodes[args_id] else {
            return Err(malformed(at, "REDUCE arguments are not a tuple"));
        };
        let args: Vec<&Node> = args.iter().map(|&a| &self.nodes[a]).collect();
        let latin1 = |s: &str| -> Result<Vec<u8>, PickleError> {
            s.chars()
                .map(|c| u8::try_from(u32::from(c)))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| malformed(at, "latin-1 text has a character above U+00FF"))
        };
        let is_latin1 = |e: &str| matches!(e, "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1");
        let node = match (g, &args[..]) {
            (Global::Set, []) => Node::Set(Vec::new()),
            (Global::FrozenSet, []) => Node::FrozenSet(Vec::new()),
            (
                Global::Set | Global::FrozenSet,
                [Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v)],
            ) => {
                let items = v.clone();
                for &i in &items {
                    self.hashable(i, at)?;
                }
                self.adopt(&items);
                match g {
                    Global::Set => Node::Set(items),
                    _ => Node::FrozenSet(items),
                }
            }
            (Global::Bytes, []) => Node::Bytes(Vec::new()),
            (Global::Bytes, [Node::Bytes(b)]) => Node::Bytes(b.clone()),
            (Global::ByteArray, []) => Node::ByteArray(Vec::new()),
            (Global::ByteArray, [Node::Bytes(b)]) => Node::ByteArray(b.clone()),
            (Global::ByteArray, [Node::Str(s), Node::Str(e)]) if is_latin1(e) => {
                Node::ByteArray(latin1(s)?)
            }
            (Global::CodecsEncode, [Node::Str(s), Node::Str(e)]) if is_latin1(e) => {
                Node::Bytes(latin1(s)?)
            }
            _ => {
                let kinds: Vec<&str> = args.iter().map(|a| a.kind()).collect();
                return Err(PickleError::at(
                    ErrorKind::Unsupported,
                    at,
                    format!(
                        "unsupported call {}({}) in REDUCE",
                        g.name(),
                        kinds.join(", ")
                    ),
                ));
            }
        };
        self.push(node);
        Ok(())
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
                    self.uses[root] = self.uses[root].saturating_add(1);
                    return Ok(root);
                }
                // MARK
                b'(' => {
                    if self.marks.len() > self.limits.max_depth {
                        return Err(PickleError::at(
                            ErrorKind::Limit,
                            at,
                            format!(
                                "nesting deeper than the depth limit of {}",
                                self.limits.max_depth
                            ),
                        ));
                    }
                    self.marks.push(self.stack.len());
                }
                // POP: the top item, or the whole mark frame when it is empty.
                b'0' => {
                    if self.stack.len() > self.frame_start() {
                        self.stack.pop();
                    } else {
                        self.pop_mark(at)?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark(at)?;
                }
                // DUP
                b'2' => {
                    let id = self.top(at)?;
                    self.stack.push(id);
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                // INT: decimal text; "01"/"00" are protocol 0's True/False.
                b'I' => {
                    let node = match self.line()? {
                        b"01" => Node::Bool(true),
                        b"00" => Node::Bool(false),
                        t => {
                            let t = t.to_vec();
                            self.int_from_text(&t, at)?
                        }
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
                    let t = t.strip_suffix(b"L").unwrap_or(t).to_vec();
                    let node = self.int_from_text(&t, at)?;
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
                    let s = self.sized_str(n.into())?;
                    self.push(Node::Str(s));
                }
                0x8c => {
                    let n = self.byte()?;
                    let s = self.sized_str(n.into())?;
                    self.push(Node::Str(s));
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array()?);
                    let s = self.sized_str(n)?;
                    self.push(Node::Str(s));
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = self.byte()?;
                    let b = self.sized_bytes(n.into(), "a bytes")?;
                    self.push(Node::Bytes(b));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let b = self.sized_bytes(n.into(), "a bytes")?;
                    self.push(Node::Bytes(b));
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.array()?);
                    let b = self.sized_bytes(n, "a bytes")?;
                    self.push(Node::Bytes(b));
                }
                0x96 => {
                    let n = u64::from_le_bytes(self.array()?);
                    let b = self.sized_bytes(n, "a bytearray")?;
                    self.push(Node::ByteArray(b));
                }
                // SHORT_BINSTRING, BINSTRING: Python 2 str; Python 3 reads ASCII ones as str.
                b'U' | b'T' => {
                    let n: u64 = if op == b'U' {
                        self.byte()?.into()
                    } else {
                        u64::try_from(i32::from_le_bytes(self.array()?))
                            .map_err(|_| malformed(at, "BINSTRING with a negative length"))?
                    };
                    let b = self.sized_bytes(n, "a Python 2 str")?;
                    if !b.is_ascii() {
                        return Err(PickleError::at(
                            ErrorKind::Unsupported,
                            at,
                            "a non-ASCII Python 2 str (its encoding is unknown)",
                        ));
                    }
                    let s = String::from_utf8(b)
                        .map_err(|_| malformed(at, "a Python 2 str is not ASCII"))?;
                    self.push(Node::Str(s));
                }
                // Containers
                b')' => self.push(Node::Tuple(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.adopt(&items);
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.frame_start() + n {
                        return Err(malformed(at, "stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.adopt(&items);
                    self.push(Node::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.adopt(&items);
                    self.push(Node::List(items));
                }
                b'd' => {
                    let items = self.pop_mark(at)?;
                    let pairs = self.pairs(&items, at)?;
                    self.push(Node::Dict(pairs));
                }
                0x91 => {
                    let items = self.pop_mark(at)?;
                    for &i in &items {
                        self.hashable(i, at)?;
                    }
                    self.adopt(&items);
                    self.push(Node::FrozenSet(items));
                }
                // APPEND, APPENDS
                b'a' => {
                    let v = self.pop(at)?;
                    let l = self.top(at)?;
                    self.adopt(&[v]);
                    match &mut self.nodes[l] {
                        Node::List(items) => items.push(v),
                        n => return Err(malformed(at, format!("APPEND to a {}", n.kind()))),
                    }
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let l = self.top(at)?;
                    self.adopt(&items);
                    match &mut self.nodes[l] {
                        Node::List(v) => v.extend_from_slice(&items),
                        n => return Err(malformed(at, format!("APPENDS to a {}", n.kind()))),
                    }
                }
                // SETITEM, SETITEMS
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let d = self.top(at)?;
                    let pairs = self.pairs(&[k, v], at)?;
                    match &mut self.nodes[d] {
                        Node::Dict(p) => p.extend(pairs),
                        n => return Err(malformed(at, format!("SETITEM on a {}", n.kind()))),
                    }
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let d = self.top(at)?;
                    let pairs = self.pairs(&items, at)?;
                    match &mut self.nodes[d] {
                        Node::Dict(p) => p.extend(pairs),
                        n => return Err(malformed(at, format!("SETITEMS on a {}", n.kind()))),
                    }
                }
                // ADDITEMS
                0x90 => {
                    let items = self.pop_mark(at)?;
                    let s = self.top(at)?;
                    for &i in &items {
                        self.hashable(i, at)?;
                    }
                    self.adopt(&items);
                    match &mut self.nodes[s] {
                        Node::Set(v) => v.extend_from_slice(&items),
                        n => return Err(malformed(at, format!("ADDITEMS on a {}", n.kind()))),
                    }
                }
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
                    let module = self.line_str()?.to_owned();
                    let name = self.line_str()?.to_owned();
                    let g = self.resolve_global(&module, &name, at)?;
                    self.push(Node::Global(g));
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Node::Str(module), Node::Str(name)) =
                        (&self.nodes[module], &self.nodes[name])
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

    fn pairs(&mut self, items: &[Id], at: usize) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(malformed(at, "odd number of items for a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        for kv in items.chunks_exact(2) {
            self.hashable(kv[0], at)?;
            pairs.push((kv[0], kv[1]));
        }
        self.adopt(items);
        Ok(pairs)
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
        let mut path: Vec<(Id, usize)> = Vec::new();
        let leaf = |id: Id, elems: &mut [u64], bytes: &mut [u64], state: &mut [u8]| {
            elems[id] = 1;
            bytes[id] = self.nodes[id].payload_bytes();
            state[id] = 2;
        };
        if self.nodes[root].is_container() {
            state[root] = 1;
            path.push((root, 0));
        } else {
            leaf(root, &mut elems, &mut bytes, &mut state);
        }
        while let Some((id, i)) = path.last_mut() {
            let id = *id;
            match self.nodes[id].child(*i) {
                Some(c) => {
                    *i += 1;
                    match state[c] {
                        0 if self.nodes[c].is_container() => {
                            if path.len() >= self.limits.max_depth {
                                return Err(limit(format!(
                                    "nesting deeper than the depth limit of {}",
                                    self.limits.max_depth
                                )));
                            }
                            state[c] = 1;
                            path.push((c, 0));
                        }
                        0 => leaf(c, &mut elems, &mut bytes, &mut state),
                        1 => {
                            return Err(PickleError::new(
                                ErrorKind::Unsupported,
                                "recursive structure: a container contains itself",
                            ));
                        }
                        _ => {}
                    }
                }
                None => {
                    let (mut e, mut b, mut d) = (1u64, 0u64, 0u32);
                    let mut j = 0;
                    while let Some(c) = self.nodes[id].child(j) {
                        e = e.saturating_add(elems[c]);
                        b = b.saturating_add(bytes[c]);
                        d = d.max(depth[c]);
                        j += 1;
                    }
                    elems[id] = e;
                    bytes[id] = b;
                    depth[id] = d + 1;
                    state[id] = 2;
                    path.pop();
                }
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
            return Err(limit(format!(
                "nesting deeper than the depth limit of {}",
                self.limits.max_depth
            )));
        }
        Ok(())
    }

    // ---- build ----------------------------------------------------------------------------

    fn build(mut self, root: Id) -> Result<Value, PickleError> {
        enum Task {
            /// Convert a node; `shared`: some ancestor (or the node) is reached more than once,
            /// so it is visited once per path and must be cloned, not moved.
            Enter(Id, bool),
            List(usize),
            Tuple(usize),
            Set(usize),
            FrozenSet(usize),
            Dict(usize),
        }
        let mut tasks = vec![Task::Enter(root, false)];
        let mut out: Vec<Value> = Vec::new();
        let take_last = |out: &mut Vec<Value>, n: usize| -> Result<Vec<Value>, PickleError> {
            let start = out.len().checked_sub(n).ok_or_else(|| {
                PickleError::new(ErrorKind::Malformed, "internal: build underflow")
            })?;
            Ok(out.split_off(start))
        };
        while let Some(task) = tasks.pop() {
            match task {
                Task::Enter(id, shared) => {
                    let shared = shared || self.uses[id] > 1;
                    let node = if !shared {
                        std::mem::replace(&mut self.nodes[id], Node::Taken)
                    } else {
                        self.nodes[id].clone_shallow()
                    };
                    let (children, end) = match node {
                        Node::None => (None, Value::None),
                        Node::Bool(b) => (None, Value::Bool(b)),
                        Node::Int(i) => (None, Value::Int(i)),
                        Node::BigInt(n) => (None, Value::BigInt(n)),
                        Node::Float(f) => (None, Value::Float(f)),
                        Node::Str(s) => (None, Value::Str(s)),
                        Node::Bytes(b) => (None, Value::Bytes(b)),
                        Node::ByteArray(b) => (None, Value::ByteArray(b)),
                        Node::List(v) => (Some((Task::List(v.len()), v)), Value::None),
                        Node::Tuple(v) => (Some((Task::Tuple(v.len()), v)), Value::None),
                        Node::Set(v) => (Some((Task::Set(v.len()), v)), Value::None),
                        Node::FrozenSet(v) => (Some((Task::FrozenSet(v.len()), v)), Value::None),
                        Node::Dict(p) => {
                            tasks.push(Task::Dict(p.len()));
                            for &(k, v) in p.iter().rev() {
                                tasks.push(Task::Enter(v, shared));
                                tasks.push(Task::Enter(k, shared));
                            }
                            continue;
                        }
                        Node::Global(_) => {
                            return Err(PickleError::new(
                                ErrorKind::Unsupported,
                                "a pickled callable (a global not passed to REDUCE) is not a value",
                            ));
                        }
                        Node::Taken => {
                            return Err(PickleError::new(
                                ErrorKind::Malformed,
                                "internal: a node was used more often than counted",
                            ));
                        }
                    };
                    match children {
                        None => out.push(end),
                        Some((t, ids)) => {
                            tasks.push(t);
                            tasks.extend(ids.iter().rev().map(|&c| Task::Enter(c, shared)));
                        }
                    }
                }
                Task::List(n) => {
                    let v = take_last(&mut out, n)?;
                    out.push(Value::List(v));
                }
                Task::Tuple(n) => {
                    let v = take_last(&mut out, n)?;
                    out.push(Value::Tuple(v));
                }
                Task::Set(n) => {
                    let v = take_last(&mut out, n)?;
                    out.push(Value::Set(v));
                }
                Task::FrozenSet(n) => {
                    let v = take_last(&mut out, n)?;
                    out.push(Value::FrozenSet(v));
                }
                Task::Dict(n) => {
                    let flat = take_last(&mut out, n * 2)?;
                    let mut pairs = Vec::with_capacity(n);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    out.push(Value::Dict(pairs));
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
