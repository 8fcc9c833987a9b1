//! The single-pass fast path of typed decoding ([`super::from_slice`]), for pickles without
//! memo references: every pickle ddf writes, and CPython's plain-data pickles at protocols 2-5
//! that share nothing.
//!
//! The reader is a serde `Deserializer` that walks the opcodes top-down, borrowing strings and
//! bytes from the input. It counts every value and payload byte it reads against the limits and
//! checks the depth limit at every container (so serde's recursion stays bounded by
//! `Limits::max_depth`, as on the slow path). Pickle builds containers postfix (`x y TUPLE2`,
//! `list x APPEND`, `MARK ... TUPLE`), which a top-down reader cannot tell in advance, hence two
//! tries:
//!
//! 1. **Without annotations** the reader accepts only containers opened by `EMPTY_LIST`/
//!    `EMPTY_DICT`/`EMPTY_SET` and filled by `MARK ... APPENDS`/`SETITEMS`/`ADDITEMS` batches,
//!    plus single `APPEND`/`SETITEM`s of scalars (recognized by looking past the scalars). The
//!    pickle machine reads this grammar the same way, and the reader checks what the machine
//!    would (hashable keys, memo writes only where a value is on top, `PROTO`/`FRAME`
//!    arguments), so a success is the machine's tree. This covers ddf's own pickles (but small
//!    tuples and enums) and CPython's plain records.
//! 2. Otherwise, a **scan** (no allocation once the thread's vectors are warm): one linear pass
//!    that simulates the machine's stack with one small entry per value (its start offset and
//!    kind) and proves the pickle is a tree the machine accepts: no `GET`/`DUP`/`POP`, no
//!    global, every `APPEND`/`SETITEMS`/... on the right container, hashable keys, lengths within
//!    the input, and the element, payload, int-size and mark-depth limits. It records, at the
//!    offset where each postfix construct starts, how it is wrapped; the reader then runs again
//!    following these annotations.
//!
//! On any error the fast path gives up and the caller runs the two-pass decoder from the start,
//! so errors (their kind, message and offset) are always the slow path's; the fast path only
//! ever returns values. The tests below check that against the two-pass decoder over generated
//! pickles, intact and mutated.

use std::cell::RefCell;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

use super::{ErrorKind, Limits, PickleError};

// Value kinds on the simulated stack (enough to check hashability and closer targets).
const K_SCALAR: u8 = 0;
const K_LIST: u8 = 1;
const K_DICT: u8 = 2;
const K_SET: u8 = 3;
const K_BYTEARRAY: u8 = 4;
const K_TUPLE: u8 = 5;
const K_FROZENSET: u8 = 6;

// Annotations, at the offset where the annotated value starts (outermost first).
/// The value is appended to the list below it by `APPEND`.
const A_APPEND: u8 = 1;
/// The value is the key of a `SETITEM` on the dict below it.
const A_SETITEM: u8 = 2;
/// The value is the first item of a `TUPLEn` (`A_TUPLE0 + n`, n = 1..3).
const A_TUPLE0: u8 = 2;
const A_TUPLE1: u8 = A_TUPLE0 + 1;
const A_TUPLE3: u8 = A_TUPLE0 + 3;
/// `MARK ... TUPLE` / `LIST` / `FROZENSET` / `DICT`.
const A_MARK_TUPLE: u8 = 6;
const A_MARK_LIST: u8 = 7;
const A_MARK_FROZENSET: u8 = 8;
const A_MARK_DICT: u8 = 9;

#[derive(Debug, Clone, Copy)]
struct Ann {
    pos: usize,
    /// Discovery order: at one offset, inner wrappers are found first.
    seq: u32,
    kind: u8,
}

#[derive(Debug, Default)]
struct Scratch {
    /// (start offset, kind) per value on the simulated stack.
    stack: Vec<(usize, u8)>,
    /// Stack length at each open `MARK`, and the mark's offset.
    marks: Vec<(usize, usize)>,
    ann: Vec<Ann>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Decodes `input` into `T` on the fast path, or `None` when the pickle is not eligible or
/// anything fails (the caller then runs the slow path, which reports the error).
#[inline]
pub(super) fn try_from_slice<T: DeserializeOwned>(input: &[u8], limits: &Limits) -> Option<T> {
    if input.len() > limits.max_input_bytes {
        return None;
    }
    // Without annotations the reader accepts what needs none: everything ddf writes except
    // small tuples and enums, and CPython's plain records (single `APPEND`/`SETITEM` of
    // scalars are recognized by a look ahead).
    if let Some(v) = read::<T, false>(input, limits, &[]) {
        return Some(v);
    }
    let go = |s: &mut Scratch| -> Option<T> {
        let r = if scan(input, limits, s).is_some() && !s.ann.is_empty() {
            read::<T, true>(input, limits, &s.ann)
        } else {
            None
        };
        if s.stack.capacity() > 4096 || s.marks.capacity() > 4096 || s.ann.capacity() > 4096 {
            *s = Scratch::default();
        }
        r
    };
    match SCRATCH.try_with(|c| c.try_borrow_mut().ok().map(|mut s| go(&mut s))) {
        Ok(Some(r)) => r,
        // A decode running inside a `Deserialize` impl of an outer decode on this thread.
        _ => go(&mut Scratch::default()),
    }
}

fn read<T: DeserializeOwned, const ANN: bool>(
    input: &[u8],
    limits: &Limits,
    ann: &[Ann],
) -> Option<T> {
    let mut r = Reader::<ANN> {
        input,
        pos: 0,
        ann,
        ai: 0,
        depth: 0,
        max_depth: limits.max_depth,
        max_elements: limits.max_elements,
        max_payload: limits.max_decoded_bytes,
        max_int_bytes: limits.max_int_bytes,
        elements: 0,
        payload: 0,
        put_ok: false,
    };
    if let [0x80, v, ..] = input
        && *v <= 5
    {
        r.pos = 2;
    }
    r.meta();
    let v = T::deserialize(&mut r).ok()?;
    r.meta();
    (r.op() == Some(b'.') && r.ai == ann.len()).then_some(v)
}

#[inline]
fn le<const N: usize>(input: &[u8], pos: usize) -> Option<[u8; N]> {
    input.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

fn hashable(kind: u8) -> bool {
    !matches!(kind, K_LIST | K_DICT | K_SET | K_BYTEARRAY)
}

/// Step 1: `Some(())` when the pickle is an eligible tree within the limits; fills `s.ann`.
fn scan(input: &[u8], limits: &Limits, s: &mut Scratch) -> Option<()> {
    s.stack.clear();
    s.marks.clear();
    s.ann.clear();
    let mut pos = 0usize;
    let mut elements: u64 = 0;
    let mut payload: u64 = 0;
    macro_rules! ann {
        ($pos:expr, $kind:expr) => {{
            let seq = u32::try_from(s.ann.len()).ok()?;
            s.ann.push(Ann {
                pos: $pos,
                seq,
                kind: $kind,
            });
        }};
    }
    macro_rules! payload {
        ($n:expr) => {{
            let n: u64 = $n;
            payload = payload.checked_add(n)?;
            if payload > limits.max_decoded_bytes || n > (input.len() - pos) as u64 {
                return None;
            }
            pos += n as usize;
        }};
    }
    loop {
        let at = pos;
        let op = *input.get(at)?;
        pos += 1;
        let frame = s.marks.last().map_or(0, |m| m.0);
        let kind = match op {
            // PROTO, FRAME
            0x80 => {
                if *input.get(pos)? > 5 {
                    return None;
                }
                pos += 1;
                continue;
            }
            0x95 => {
                let n = u64::from_le_bytes(le(input, pos)?);
                pos += 8;
                if n > (input.len() - pos) as u64 {
                    return None;
                }
                continue;
            }
            // STOP
            b'.' => {
                let ok = s.stack.len() == 1
                    && s.marks.is_empty()
                    && elements <= limits.max_elements
                    && payload <= limits.max_decoded_bytes;
                if ok {
                    s.ann
                        .sort_unstable_by_key(|a| (a.pos, std::cmp::Reverse(a.seq)));
                    return Some(());
                }
                return None;
            }
            b'(' => {
                if s.marks.len() > limits.max_depth {
                    return None;
                }
                s.marks.push((s.stack.len(), at));
                continue;
            }
            // Memo writes (harmless: nothing ever reads the memo on this path).
            b'p' => {
                let n = input.get(pos..)?.iter().position(|&b| b == b'\n')?;
                std::str::from_utf8(&input[pos..pos + n])
                    .ok()?
                    .parse::<u64>()
                    .ok()?;
                pos += n + 1;
                if s.stack.len() <= frame {
                    return None;
                }
                continue;
            }
            b'q' | b'r' | 0x94 => {
                pos += match op {
                    b'q' => 1,
                    b'r' => 4,
                    _ => 0,
                };
                if pos > input.len() || s.stack.len() <= frame {
                    return None;
                }
                continue;
            }
            b'N' | 0x88 | 0x89 => K_SCALAR,
            b'J' | b'K' | b'M' | b'G' => {
                pos += match op {
                    b'J' => 4,
                    b'K' => 1,
                    b'M' => 2,
                    _ => 8,
                };
                if pos > input.len() {
                    return None;
                }
                K_SCALAR
            }
            // LONG1 up to 8 bytes (bigger ints take the slow path).
            0x8a => {
                let n = *input.get(pos)?;
                pos += 1;
                if n > 8
                    || usize::from(n) > limits.max_int_bytes
                    || pos + usize::from(n) > input.len()
                {
                    return None;
                }
                pos += usize::from(n);
                K_SCALAR
            }
            // Strings and bytes (UTF-8 and ASCII are checked by the reader).
            b'X' | b'B' => {
                let n = u32::from_le_bytes(le(input, pos)?);
                pos += 4;
                payload!(n.into());
                K_SCALAR
            }
            0x8c | b'C' | b'U' => {
                let n = *input.get(pos)?;
                pos += 1;
                payload!(n.into());
                K_SCALAR
            }
            b'T' => {
                let n = u64::try_from(i32::from_le_bytes(le(input, pos)?)).ok()?;
                pos += 4;
                payload!(n);
                K_SCALAR
            }
            0x8d | 0x8e | 0x96 => {
                let n = u64::from_le_bytes(le(input, pos)?);
                pos += 8;
                payload!(n);
                if op == 0x96 { K_BYTEARRAY } else { K_SCALAR }
            }
            b')' => K_TUPLE,
            b']' => K_LIST,
            b'}' => K_DICT,
            0x8f => K_SET,
            // MARK ... TUPLE / LIST / FROZENSET / DICT
            b't' | b'l' | 0x91 | b'd' => {
                let (from, mark) = s.marks.pop()?;
                let items = &s.stack[from..];
                let (kind, a) = match op {
                    b't' => (K_TUPLE, A_MARK_TUPLE),
                    b'l' => (K_LIST, A_MARK_LIST),
                    0x91 => {
                        if !items.iter().all(|e| hashable(e.1)) {
                            return None;
                        }
                        (K_FROZENSET, A_MARK_FROZENSET)
                    }
                    _ => {
                        if !items.len().is_multiple_of(2)
                            || !items.iter().step_by(2).all(|e| hashable(e.1))
                        {
                            return None;
                        }
                        (K_DICT, A_MARK_DICT)
                    }
                };
                s.stack.truncate(from);
                ann!(mark, a);
                s.stack.push((mark, kind));
                elements += 1;
                continue;
            }
            // TUPLE1-3: the tuple starts where its first item does.
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if s.stack.len() < frame + n {
                    return None;
                }
                let from = s.stack.len() - n;
                let start = s.stack[from].0;
                s.stack.truncate(from);
                ann!(start, A_TUPLE0 + op - 0x84);
                s.stack.push((start, K_TUPLE));
                elements += 1;
                continue;
            }
            // APPEND, SETITEM
            b'a' => {
                let n = s.stack.len();
                if n < frame + 2 || s.stack[n - 2].1 != K_LIST {
                    return None;
                }
                ann!(s.stack[n - 1].0, A_APPEND);
                s.stack.pop();
                continue;
            }
            b's' => {
                let n = s.stack.len();
                if n < frame + 3 || s.stack[n - 3].1 != K_DICT || !hashable(s.stack[n - 2].1) {
                    return None;
                }
                ann!(s.stack[n - 2].0, A_SETITEM);
                s.stack.truncate(n - 2);
                continue;
            }
            // APPENDS, SETITEMS, ADDITEMS: onto the container below the mark.
            b'e' | b'u' | 0x90 => {
                let (from, _) = s.marks.pop()?;
                let below = s.marks.last().map_or(0, |m| m.0);
                if from <= below {
                    return None;
                }
                let items = &s.stack[from..];
                let ok = match op {
                    b'e' => s.stack[from - 1].1 == K_LIST,
                    b'u' => {
                        s.stack[from - 1].1 == K_DICT
                            && items.len().is_multiple_of(2)
                            && items.iter().step_by(2).all(|e| hashable(e.1))
                    }
                    _ => s.stack[from - 1].1 == K_SET && items.iter().all(|e| hashable(e.1)),
                };
                if !ok {
                    return None;
                }
                s.stack.truncate(from);
                continue;
            }
            // Everything else (memo reads, DUP, POP, globals, text opcodes...): slow path.
            _ => return None,
        };
        s.stack.push((at, kind));
        elements += 1;
        if elements > limits.max_elements {
            return None;
        }
    }
}

// ---- step 2: the reader ---------------------------------------------------------------------

/// Where the scalar starting at `pos` ends, if it is one.
#[inline]
fn scalar_end(input: &[u8], pos: usize) -> Option<usize> {
    let op = *input.get(pos)?;
    let p = pos + 1;
    let len = |w: usize| -> Option<usize> {
        let b = input.get(p..p + w)?;
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a))
            .ok()?
            .checked_add(p + w)
    };
    match op {
        b'N' | 0x88 | 0x89 => Some(p),
        b'K' => Some(p + 1),
        b'M' => Some(p + 2),
        b'J' => Some(p + 4),
        b'G' => Some(p + 8),
        0x8a | 0x8c | b'C' | b'U' => len(1),
        b'X' | b'B' => len(4),
        0x8d | 0x8e | 0x96 => len(8),
        _ => None,
    }
}

/// Past memo writes and frames (a look only; [`Reader::meta`] checks them when reading).
#[inline]
fn skip_meta(input: &[u8], mut pos: usize) -> usize {
    loop {
        pos += match input.get(pos) {
            Some(0x94) => 1,
            Some(b'q') => 2,
            Some(b'r') => 5,
            Some(0x95) => 9,
            _ => return pos,
        };
    }
}

/// The opcodes [`Reader::meta`] may skip: `PROTO`, `FRAME`, `MEMOIZE`, `BINPUT`,
/// `LONG_BINPUT`, `PUT` (one table load on the hot path).
static META: [bool; 256] = {
    let mut t = [false; 256];
    t[0x80] = true;
    t[0x95] = true;
    t[0x94] = true;
    t[b'q' as usize] = true;
    t[b'r' as usize] = true;
    t[b'p' as usize] = true;
    t
};

struct Reader<'de, 'a, const ANN: bool> {
    input: &'de [u8],
    pos: usize,
    ann: &'a [Ann],
    /// The next annotation to consume.
    ai: usize,
    depth: usize,
    /// The limits (copied: read on every value).
    max_depth: usize,
    max_elements: u64,
    max_payload: u64,
    max_int_bytes: usize,
    /// Values read so far (every one, skipped ones too) and their str/bytes payload.
    elements: u64,
    payload: u64,
    /// A memo write may come next: the machine's stack has a value on top in its frame.
    put_ok: bool,
}

/// The fast path's only error: the caller discards it and runs the slow path.
#[cold]
fn bail() -> PickleError {
    PickleError::new(ErrorKind::Malformed, "fast path: not handled")
}

impl<'de, const ANN: bool> Reader<'de, '_, ANN> {
    /// Skips opcodes without a stack effect here: `PROTO`, `FRAME` and, right after a value,
    /// memo writes. An invalid one is left in place, where no caller accepts it.
    #[inline(always)]
    fn meta(&mut self) {
        if let Some(&op) = self.input.get(self.pos)
            && META[usize::from(op)]
        {
            self.meta_slow();
        }
    }

    #[inline(never)]
    fn meta_slow(&mut self) {
        loop {
            let n = match self.input.get(self.pos) {
                Some(0x80) => match self.input.get(self.pos + 1) {
                    Some(&v) if v <= 5 => 2,
                    _ => return,
                },
                Some(0x95) => match le::<8>(self.input, self.pos + 1) {
                    Some(n)
                        if u64::from_le_bytes(n) <= (self.input.len() - self.pos - 9) as u64 =>
                    {
                        9
                    }
                    _ => return,
                },
                Some(0x94) if self.put_ok => 1,
                Some(b'q') if self.put_ok => 2,
                Some(b'r') if self.put_ok => 5,
                Some(b'p') if self.put_ok => {
                    let rest = self.input.get(self.pos + 1..).unwrap_or_default();
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(n)
                            if std::str::from_utf8(&rest[..n])
                                .is_ok_and(|t| t.parse::<u64>().is_ok()) =>
                        {
                            n + 2
                        }
                        _ => return,
                    }
                }
                _ => return,
            };
            if n > self.input.len() - self.pos {
                return;
            }
            self.pos += n;
        }
    }

    /// Without annotations: whether the scalar (`APPEND`) or two scalars (`SETITEM`) at the
    /// current offset are followed by `op`, which then applies them to the container below.
    /// Only a look: the reader checks everything again as it reads them.
    #[cold]
    #[inline(never)]
    fn single_follows(&self, op: u8) -> bool {
        let mut pos = self.pos;
        for _ in 0..if op == b's' { 2 } else { 1 } {
            match scalar_end(self.input, pos) {
                Some(end) => pos = skip_meta(self.input, end),
                None => return false,
            }
        }
        self.input.get(pos) == Some(&op)
    }

    /// Counts one more value against `Limits::max_elements`.
    #[inline]
    fn count(&mut self) -> Result<(), PickleError> {
        self.elements += 1;
        if self.elements > self.max_elements {
            return Err(bail());
        }
        Ok(())
    }

    #[inline]
    fn op(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// The annotation at the current offset (after [`Reader::meta`]), or 0.
    #[inline]
    fn ann_here(&self) -> u8 {
        if !ANN {
            return 0;
        }
        match self.ann.get(self.ai) {
            Some(a) if a.pos == self.pos => a.kind,
            _ => 0,
        }
    }

    /// A str/bytes payload, counted against `Limits::max_decoded_bytes`.
    #[inline]
    fn payload(&mut self, n: usize) -> Result<&'de [u8], PickleError> {
        self.payload = self.payload.saturating_add(n as u64);
        if self.payload > self.max_payload {
            return Err(bail());
        }
        self.take(n)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], PickleError> {
        let input: &'de [u8] = self.input;
        let end = self.pos.checked_add(n).ok_or_else(bail)?;
        let b = input.get(self.pos..end).ok_or_else(bail)?;
        self.pos = end;
        Ok(b)
    }

    #[inline]
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        self.take(N)?.try_into().map_err(|_| bail())
    }

    #[inline]
    fn str(&mut self, n: usize) -> Result<&'de str, PickleError> {
        std::str::from_utf8(self.payload(n)?).map_err(|_| bail())
    }

    fn enter(&mut self) -> Result<(), PickleError> {
        if self.depth >= self.max_depth {
            return Err(bail());
        }
        self.depth += 1;
        Ok(())
    }

    /// `hashed`: a set or frozenset, whose items must be hashable.
    fn visit_seq<V: Visitor<'de>>(
        &mut self,
        v: V,
        mode: Mode,
        hashed: bool,
    ) -> Result<V::Value, PickleError> {
        self.enter()?;
        let mut a = Access {
            r: self,
            mode,
            pending: 0,
            hashed,
        };
        let out = v.visit_seq(&mut a)?;
        a.finish()?;
        self.depth -= 1;
        Ok(out)
    }

    fn visit_map<V: Visitor<'de>>(&mut self, v: V, mode: Mode) -> Result<V::Value, PickleError> {
        self.enter()?;
        let mut a = Access {
            r: self,
            mode,
            pending: 0,
            hashed: true,
        };
        let out = v.visit_map(&mut a)?;
        a.finish()?;
        self.depth -= 1;
        Ok(out)
    }
}

const fn opener(closer: u8, single_ann: u8, single_op: u8) -> Mode {
    Mode::Opener {
        closer,
        single_ann,
        single_op,
        in_batch: false,
    }
}

const LIST: Mode = opener(b'e', A_APPEND, b'a');
const DICT: Mode = opener(b'u', A_SETITEM, b's');
const SET: Mode = opener(0x90, 0, 0);

impl<'de, const ANN: bool> de::Deserializer<'de> for &mut Reader<'de, '_, ANN> {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        self.meta();
        self.count()?;
        match self.ann_here() {
            0 => {}
            k @ (A_MARK_TUPLE | A_MARK_LIST | A_MARK_FROZENSET | A_MARK_DICT) => {
                self.ai += 1;
                if self.op() != Some(b'(') {
                    return Err(bail());
                }
                self.pos += 1;
                self.put_ok = false;
                return match k {
                    A_MARK_TUPLE => self.visit_seq(v, Mode::Mark(b't'), false),
                    A_MARK_LIST => self.visit_seq(v, Mode::Mark(b'l'), false),
                    A_MARK_FROZENSET => self.visit_seq(v, Mode::Mark(0x91), true),
                    _ => self.visit_map(v, Mode::Mark(b'd')),
                };
            }
            k @ A_TUPLE1..=A_TUPLE3 => {
                self.ai += 1;
                return self.visit_seq(v, Mode::Postfix(k - A_TUPLE0, 0x84 + k - A_TUPLE0), false);
            }
            _ => return Err(bail()),
        }
        let op = self.op().ok_or_else(bail)?;
        self.pos += 1;
        // Every value below leaves itself on the machine's stack.
        self.put_ok = true;
        match op {
            b'N' => v.visit_unit(),
            0x88 => v.visit_bool(true),
            0x89 => v.visit_bool(false),
            b'J' => v.visit_i64(i32::from_le_bytes(self.arr()?).into()),
            b'K' => v.visit_i64(self.arr::<1>()?[0].into()),
            b'M' => v.visit_i64(u16::from_le_bytes(self.arr()?).into()),
            0x8a => {
                let n = usize::from(self.arr::<1>()?[0]);
                let b = self.take(n)?;
                if n > 8 || n > self.max_int_bytes {
                    return Err(bail());
                }
                let fill = if b.last().is_some_and(|x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut a = [fill; 8];
                a[..n].copy_from_slice(b);
                v.visit_i64(i64::from_le_bytes(a))
            }
            b'G' => v.visit_f64(f64::from_be_bytes(self.arr()?)),
            0x8c => {
                let n = self.arr::<1>()?[0];
                v.visit_borrowed_str(self.str(n.into())?)
            }
            b'X' => {
                let n = u32::from_le_bytes(self.arr()?);
                v.visit_borrowed_str(self.str(usize::try_from(n).map_err(|_| bail())?)?)
            }
            0x8d => {
                let n = u64::from_le_bytes(self.arr()?);
                v.visit_borrowed_str(self.str(usize::try_from(n).map_err(|_| bail())?)?)
            }
            b'U' | b'T' => {
                let n = if op == b'U' {
                    usize::from(self.arr::<1>()?[0])
                } else {
                    usize::try_from(i32::from_le_bytes(self.arr()?)).map_err(|_| bail())?
                };
                let b = self.payload(n)?;
                if !b.is_ascii() {
                    return Err(bail());
                }
                v.visit_borrowed_str(std::str::from_utf8(b).map_err(|_| bail())?)
            }
            b'C' => {
                let n = self.arr::<1>()?[0];
                v.visit_borrowed_bytes(self.payload(n.into())?)
            }
            b'B' => {
                let n = u32::from_le_bytes(self.arr()?);
                v.visit_borrowed_bytes(self.payload(usize::try_from(n).map_err(|_| bail())?)?)
            }
            0x8e | 0x96 => {
                let n = u64::from_le_bytes(self.arr()?);
                v.visit_borrowed_bytes(self.payload(usize::try_from(n).map_err(|_| bail())?)?)
            }
            b']' => self.visit_seq(v, LIST, false),
            b'}' => self.visit_map(v, DICT),
            0x8f => self.visit_seq(v, SET, true),
            b')' => self.visit_seq(v, Mode::Empty, false),
            _ => Err(bail()),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        self.meta();
        if self.ann_here() == 0 && self.op() == Some(b'N') {
            self.pos += 1;
            self.put_ok = true;
            self.count()?;
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, PickleError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        // As the slow path: "Variant" or {"Variant": content} (a dict of exactly one entry).
        self.meta();
        let dict = match (self.ann_here(), self.op()) {
            (0, Some(0x8c | b'X' | 0x8d | b'U' | b'T')) => {
                return v.visit_enum(Enum {
                    r: self,
                    dict: None,
                });
            }
            (0, Some(b'}')) => {
                self.put_ok = true;
                DICT
            }
            (A_MARK_DICT, Some(b'(')) => {
                self.ai += 1;
                self.put_ok = false;
                Mode::Mark(b'd')
            }
            _ => return Err(bail()),
        };
        self.pos += 1;
        self.count()?;
        self.enter()?;
        let out = v.visit_enum(Enum {
            r: &mut *self,
            dict: Some(dict),
        })?;
        self.depth -= 1;
        Ok(out)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        // The slow path skips the node; here its opcodes must be read past.
        self.deserialize_any(de::IgnoredAny)?;
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// How a container's items follow its start.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `EMPTY_TUPLE`.
    Empty,
    /// `TUPLE1-3`: this many items left, then the opcode.
    Postfix(u8, u8),
    /// `MARK` items, then this closing opcode.
    Mark(u8),
    /// `EMPTY_LIST`/`EMPTY_DICT`/`EMPTY_SET`, then any number of `MARK ... closer` batches and
    /// single items annotated `single_ann`, each followed by `single_op`.
    Opener {
        closer: u8,
        single_ann: u8,
        single_op: u8,
        in_batch: bool,
    },
}

struct Access<'r, 'de, 'a, const ANN: bool> {
    r: &'r mut Reader<'de, 'a, ANN>,
    mode: Mode,
    /// The opcode that must follow the current item (`APPEND`/`SETITEM`), or 0.
    pending: u8,
    /// Items (a dict's keys) must be hashable.
    hashed: bool,
}

impl<const ANN: bool> Access<'_, '_, '_, ANN> {
    /// Moves to the next item; `false` at the end of the container (its closing opcode, if
    /// any, not yet consumed).
    #[inline]
    fn next(&mut self) -> Result<bool, PickleError> {
        loop {
            self.r.meta();
            match &mut self.mode {
                Mode::Empty => return Ok(false),
                Mode::Postfix(left, _) => {
                    if *left == 0 {
                        return Ok(false);
                    }
                    *left -= 1;
                    return Ok(true);
                }
                Mode::Mark(c) => return Ok(self.r.op() != Some(*c)),
                Mode::Opener {
                    closer,
                    single_ann,
                    single_op,
                    in_batch,
                } => {
                    let op = self.r.op();
                    if *in_batch {
                        if op == Some(*closer) {
                            self.r.pos += 1;
                            self.r.put_ok = true;
                            *in_batch = false;
                            continue;
                        }
                        return Ok(true);
                    }
                    let a = self.r.ann_here();
                    if *single_ann != 0 && a == *single_ann {
                        self.r.ai += 1;
                        self.pending = *single_op;
                        return Ok(true);
                    }
                    if a == 0 && op == Some(b'(') {
                        self.r.pos += 1;
                        self.r.put_ok = false;
                        *in_batch = true;
                        continue;
                    }
                    if !ANN && *single_op != 0 && self.r.single_follows(*single_op) {
                        self.pending = *single_op;
                        return Ok(true);
                    }
                    return Ok(false);
                }
            }
        }
    }

    /// After an item (a dict's value): its `APPEND`/`SETITEM`, if any.
    #[inline]
    fn after(&mut self) -> Result<(), PickleError> {
        if self.pending != 0 {
            self.r.meta();
            if self.r.op() != Some(self.pending) {
                return Err(bail());
            }
            self.r.pos += 1;
            self.r.put_ok = true;
            self.pending = 0;
        }
        Ok(())
    }

    /// After the visitor: no item may be left (as the slow path's length check), and the
    /// closing opcode is consumed.
    fn finish(&mut self) -> Result<(), PickleError> {
        if self.pending != 0 || self.next()? {
            return Err(bail());
        }
        if let Mode::Postfix(_, c) | Mode::Mark(c) = self.mode {
            self.r.meta();
            if self.r.op() != Some(c) {
                return Err(bail());
            }
            self.r.pos += 1;
            self.r.put_ok = true;
        }
        Ok(())
    }

    /// The machine refuses a list, dict, set or bytearray as a dict key or set item.
    #[inline]
    fn check_hashable(&self) -> Result<(), PickleError> {
        if self.hashed
            && self.r.ann_here() == 0
            && matches!(self.r.op(), Some(b']' | b'}' | 0x8f | 0x96))
        {
            return Err(bail());
        }
        Ok(())
    }
}

impl<'de, const ANN: bool> de::SeqAccess<'de> for Access<'_, 'de, '_, ANN> {
    type Error = PickleError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, PickleError> {
        if !self.next()? {
            return Ok(None);
        }
        self.check_hashable()?;
        let v = seed.deserialize(&mut *self.r)?;
        self.after()?;
        Ok(Some(v))
    }
}

impl<'de, const ANN: bool> de::MapAccess<'de> for Access<'_, 'de, '_, ANN> {
    type Error = PickleError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, PickleError> {
        if !self.next()? {
            return Ok(None);
        }
        self.check_hashable()?;
        seed.deserialize(&mut *self.r).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, PickleError> {
        let v = seed.deserialize(&mut *self.r)?;
        self.after()?;
        Ok(v)
    }
}

struct Enum<'r, 'de, 'a, const ANN: bool> {
    r: &'r mut Reader<'de, 'a, ANN>,
    /// `{variant: content}` (the dict's opening opcode consumed, its items read in this mode),
    /// else a bare variant name.
    dict: Option<Mode>,
}

impl<'r, 'de, 'a, const ANN: bool> de::EnumAccess<'de> for Enum<'r, 'de, 'a, ANN> {
    type Error = PickleError;
    type Variant = Variant<'r, 'de, 'a, ANN>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Variant<'r, 'de, 'a, ANN>), PickleError> {
        let Some(mode) = self.dict else {
            let name = seed.deserialize(&mut *self.r)?;
            return Ok((name, Variant { a: None }));
        };
        let mut a = Access {
            r: self.r,
            mode,
            pending: 0,
            hashed: true,
        };
        if !a.next()? {
            return Err(bail());
        }
        a.check_hashable()?;
        let name = seed.deserialize(&mut *a.r)?;
        Ok((name, Variant { a: Some(a) }))
    }
}

struct Variant<'r, 'de, 'a, const ANN: bool> {
    /// The one-entry dict, positioned at the content; `None` for a bare name.
    a: Option<Access<'r, 'de, 'a, ANN>>,
}

impl<'de, 'a, const ANN: bool> Variant<'_, 'de, 'a, ANN> {
    fn content<R>(
        self,
        f: impl FnOnce(&mut Reader<'de, 'a, ANN>) -> Result<R, PickleError>,
    ) -> Result<R, PickleError> {
        let mut a = self.a.ok_or_else(bail)?;
        let out = f(&mut *a.r)?;
        a.after()?;
        a.finish()?;
        Ok(out)
    }
}

impl<'de, const ANN: bool> de::VariantAccess<'de> for Variant<'_, 'de, '_, ANN> {
    type Error = PickleError;

    fn unit_variant(self) -> Result<(), PickleError> {
        if self.a.is_none() {
            return Ok(());
        }
        self.content(|r| {
            r.meta();
            if r.ann_here() == 0 && r.op() == Some(b'N') {
                r.pos += 1;
                r.put_ok = true;
                r.count()
            } else {
                Err(bail())
            }
        })
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        self.content(|r| seed.deserialize(r))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, PickleError> {
        self.content(|r| de::Deserializer::deserialize_any(r, v))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        self.content(|r| de::Deserializer::deserialize_any(r, v))
    }
}

#[cfg(test)]
mod tests {
    //! The fast path against the two-pass decoder (`from_slice_slow`) over generated pickles:
    //! ddf's own and CPython-shaped ones (single `APPEND`/`SETITEM`, `TUPLE1-3`, `MARK` forms,
    //! memo writes, frames), intact and mutated, under default and tiny limits.

    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::super::{Value, from_slice_slow, from_slice_with_limits, to_vec};
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        name: String,
        ports: Vec<String>,
        volumes: Vec<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum E {
        A,
        B(i64),
        C { x: String },
        D(i64, String),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Mixed {
        #[serde(default)]
        a: Option<i64>,
        #[serde(default)]
        e: Option<E>,
        #[serde(default)]
        t: Option<(i64, String, Option<bool>)>,
        #[serde(default)]
        m: std::collections::BTreeMap<String, Vec<u8>>,
    }

    const PYTHON_P5: &[u8] = b"\x80\x05\x95F\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04name\x94\x8c\x03web\x94\x8c\x05ports\x94]\x94\x8c\x078080:80\x94a\x8c\x07volumes\x94]\x94\x8c\x0f/data:/app/data\x94au.";

    fn record() -> Record {
        Record {
            name: "web".into(),
            ports: vec!["8080:80".into()],
            volumes: vec!["/data:/app/data".into()],
        }
    }

    #[test]
    fn the_seed_record_takes_the_fast_path() {
        let ours = to_vec(&record()).unwrap();
        let l = Limits::default();
        // ddf's own pickle needs no annotation: no scan at all.
        assert_eq!(read::<Record, false>(&ours, &l, &[]), Some(record()));
        let mut s = Scratch::default();
        assert!(scan(PYTHON_P5, &l, &mut s).is_some());
        assert_eq!(s.ann.len(), 2);
        // ... but its single APPENDs of a str are recognized without them too.
        assert_eq!(read::<Record, false>(PYTHON_P5, &l, &[]), Some(record()));
        assert_eq!(try_from_slice::<Record>(PYTHON_P5, &l), Some(record()));
    }

    #[test]
    fn memo_reads_and_globals_take_the_slow_path() {
        let l = Limits::default();
        // t = ("x", "y"); [t, t] at protocol 5 (BINGET).
        let shared = b"\x80\x05\x95\x11\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x01x\x94\x8c\x01y\x94\x86\x94h\x03e.";
        assert!(scan(shared, &l, &mut Scratch::default()).is_none());
        assert_eq!(try_from_slice::<serde_json::Value>(shared, &l), None);
        let v: serde_json::Value = from_slice_with_limits(shared, &l).unwrap();
        assert_eq!(v, serde_json::json!([["x", "y"], ["x", "y"]]));
        // set() at protocol 2 (a global and REDUCE).
        let set = b"\x80\x02c__builtin__\nset\nq\x00]q\x01K\x01a\x85q\x02Rq\x03.";
        assert_eq!(try_from_slice::<Vec<i64>>(set, &l), None);
        assert_eq!(
            from_slice_with_limits::<Vec<i64>>(set, &l).unwrap(),
            vec![1]
        );
    }

    #[test]
    fn limits_hold_on_the_fast_path() {
        // An 8-byte LONG1 over a 4-byte int limit.
        let big = to_vec(&vec![1i64 << 40]).unwrap();
        let l = Limits::default().with_max_int_bytes(4);
        assert_eq!(try_from_slice::<Vec<i64>>(&big, &l), None);
        let e = from_slice_with_limits::<Vec<i64>>(&big, &l).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Limit);
        let ours = to_vec(&record()).unwrap();
        let d = Limits::default();
        for l in [
            d.with_max_depth(0),
            d.with_max_elements(5),
            d.with_max_decoded_bytes(20),
            d.with_max_input_bytes(10),
        ] {
            assert_eq!(try_from_slice::<Record>(&ours, &l), None, "{l:?}");
            assert_eq!(try_from_slice::<Record>(PYTHON_P5, &l), None, "{l:?}");
            let e = from_slice_with_limits::<Record>(&ours, &l).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Limit, "{l:?}");
        }
    }

    fn arb_scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (0i64..300).prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z\u{e9}\u{1F600}]{0,6}".prop_map(Value::Str),
            prop::collection::vec(any::<u8>(), 0..6).prop_map(Value::Bytes),
        ]
    }

    fn arb_key() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => arb_scalar(),
            1 => prop::collection::vec(arb_scalar(), 0..4).prop_map(Value::Tuple),
        ]
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            8 => arb_scalar(),
            1 => prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::ByteArray),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::List),
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Tuple),
                prop::collection::vec((arb_key(), inner), 0..5).prop_map(Value::Dict),
                prop::collection::vec(arb_key(), 0..4).prop_map(Value::Set),
                prop::collection::vec(arb_key(), 0..4).prop_map(Value::FrozenSet),
            ]
        })
    }

    /// Values shaped like the typed targets above, with extra keys of any shape.
    fn arb_typed() -> impl Strategy<Value = Value> {
        let s = |x: &str| Value::Str(x.to_owned());
        let strs = prop::collection::vec("[a-z:/0-9]{0,9}".prop_map(Value::Str), 0..3);
        let e = prop_oneof![
            Just(s("A")),
            any::<i64>().prop_map(move |i| Value::Dict(vec![(s("B"), Value::Int(i))])),
            "[a-z]{0,4}".prop_map(move |x| Value::Dict(vec![(
                s("C"),
                Value::Dict(vec![(s("x"), Value::Str(x))])
            )])),
            (any::<i64>(), "[a-z]{0,4}").prop_map(move |(i, x)| Value::Dict(vec![(
                s("D"),
                Value::Tuple(vec![Value::Int(i), Value::Str(x)])
            )])),
        ];
        (
            "[a-z]{0,5}",
            strs.clone(),
            strs,
            prop::option::of(any::<i64>()),
            prop::option::of(e),
            prop::option::of((any::<i64>(), "[a-z]{0,3}", prop::option::of(any::<bool>()))),
            prop::collection::vec(
                ("[a-z]{1,3}", prop::collection::vec(any::<u8>(), 0..3)),
                0..3,
            ),
            prop::collection::vec(("[a-z]{1,3}", arb_value()), 0..2),
        )
            .prop_map(move |(name, ports, volumes, a, e, t, m, extra)| {
                let mut d = vec![
                    (s("name"), Value::Str(name)),
                    (s("ports"), Value::List(ports)),
                    (s("volumes"), Value::List(volumes)),
                ];
                if let Some(a) = a {
                    d.push((s("a"), Value::Int(a)));
                }
                if let Some(e) = e {
                    d.push((s("e"), e));
                }
                if let Some((i, x, b)) = t {
                    let b = b.map_or(Value::None, Value::Bool);
                    d.push((s("t"), Value::Tuple(vec![Value::Int(i), Value::Str(x), b])));
                }
                let m = m
                    .into_iter()
                    .map(|(k, v)| (Value::Str(k), Value::Bytes(v)))
                    .collect();
                d.push((s("m"), Value::Dict(m)));
                d.extend(extra.into_iter().map(|(k, v)| (Value::Str(k), v)));
                Value::Dict(d)
            })
    }

    /// Writes `v` the ways CPython's pickler (and older ones) do, choosing forms from `r`.
    fn py_enc(v: &Value, o: &mut Vec<u8>, r: &mut impl FnMut() -> u8) {
        let len32 = |o: &mut Vec<u8>, n: usize| o.extend((n as u32).to_le_bytes());
        match v {
            Value::None => o.push(b'N'),
            Value::Bool(b) => o.push(if *b { 0x88 } else { 0x89 }),
            Value::Int(i) => {
                if let Ok(x) = u8::try_from(*i) {
                    o.extend([b'K', x]);
                } else if let Ok(x) = u16::try_from(*i) {
                    o.push(b'M');
                    o.extend(x.to_le_bytes());
                } else if let Ok(x) = i32::try_from(*i) {
                    o.push(b'J');
                    o.extend(x.to_le_bytes());
                } else {
                    o.extend([0x8a, 8]);
                    o.extend(i.to_le_bytes());
                }
            }
            Value::Float(f) => {
                o.push(b'G');
                o.extend(f.to_be_bytes());
            }
            Value::Str(x) => {
                if x.len() < 256 && r().is_multiple_of(2) {
                    o.extend([0x8c, x.len() as u8]);
                } else {
                    o.push(b'X');
                    len32(o, x.len());
                }
                o.extend(x.as_bytes());
            }
            Value::Bytes(b) => {
                o.extend([b'C', b.len() as u8]);
                o.extend(b);
            }
            Value::ByteArray(b) => {
                o.push(0x96);
                o.extend((b.len() as u64).to_le_bytes());
                o.extend(b);
            }
            Value::BigInt(_) => o.push(b'N'),
            Value::List(items) if r().is_multiple_of(3) => {
                o.push(b'(');
                items.iter().for_each(|i| py_enc(i, o, r));
                o.push(b'l');
            }
            Value::List(items) => {
                o.push(b']');
                let mut it = items.iter().peekable();
                while it.peek().is_some() {
                    if r().is_multiple_of(2) {
                        py_enc(it.next().unwrap(), o, r);
                        o.push(b'a');
                    } else {
                        o.push(b'(');
                        for _ in 0..1 + r() % 3 {
                            if let Some(i) = it.next() {
                                py_enc(i, o, r);
                            }
                        }
                        o.push(b'e');
                    }
                    if r().is_multiple_of(4) {
                        o.push(0x94);
                    }
                }
            }
            Value::Tuple(items) if items.is_empty() => o.push(b')'),
            Value::Tuple(items) if items.len() <= 3 && r().is_multiple_of(2) => {
                items.iter().for_each(|i| py_enc(i, o, r));
                o.push(0x84 + items.len() as u8);
            }
            Value::Tuple(items) => {
                o.push(b'(');
                items.iter().for_each(|i| py_enc(i, o, r));
                o.push(b't');
            }
            Value::Dict(pairs) if r().is_multiple_of(3) => {
                o.push(b'(');
                for (k, v) in pairs {
                    py_enc(k, o, r);
                    py_enc(v, o, r);
                }
                o.push(b'd');
            }
            Value::Dict(pairs) => {
                o.push(b'}');
                let mut it = pairs.iter().peekable();
                while it.peek().is_some() {
                    if r().is_multiple_of(2) {
                        let (k, v) = it.next().unwrap();
                        py_enc(k, o, r);
                        py_enc(v, o, r);
                        o.push(b's');
                    } else {
                        o.push(b'(');
                        for _ in 0..1 + r() % 3 {
                            if let Some((k, v)) = it.next() {
                                py_enc(k, o, r);
                                py_enc(v, o, r);
                            }
                        }
                        o.push(b'u');
                    }
                }
            }
            Value::Set(items) => {
                o.push(0x8f);
                for chunk in items.chunks(2) {
                    o.push(b'(');
                    chunk.iter().for_each(|i| py_enc(i, o, r));
                    o.push(0x90);
                }
            }
            Value::FrozenSet(items) => {
                o.push(b'(');
                items.iter().for_each(|i| py_enc(i, o, r));
                o.push(0x91);
            }
        }
        if r().is_multiple_of(3) {
            o.push(0x94);
        }
        if r().is_multiple_of(7) {
            o.extend([b'q', r()]);
        }
    }

    fn py_pickle(v: &Value, choices: &[u8]) -> Vec<u8> {
        let mut i = 0;
        let mut r = || {
            i += 1;
            choices.get(i % choices.len().max(1)).copied().unwrap_or(0) ^ (i as u8)
        };
        let mut body = Vec::new();
        py_enc(v, &mut body, &mut r);
        body.push(b'.');
        let mut o = vec![0x80, 5];
        if r().is_multiple_of(2) {
            o.push(0x95);
            o.extend((body.len() as u64).to_le_bytes());
        }
        o.extend(body);
        o
    }

    /// Decodes `b` on both paths; the fast path may decline, but what it returns must be the
    /// slow path's value, and the public entry point must answer as the slow path does.
    /// Returns whether the fast path answered and whether the slow path succeeded.
    fn check<T: DeserializeOwned + Debug>(b: &[u8], l: &Limits) -> (bool, bool) {
        let fast = try_from_slice::<T>(b, l);
        let slow = from_slice_slow::<T>(b, l);
        if let Some(f) = &fast {
            match &slow {
                Ok(s) => assert_eq!(format!("{f:?}"), format!("{s:?}"), "{b:?}"),
                Err(e) => panic!("fast path returned {f:?}, the slow path {e}: {b:?}"),
            }
        }
        let public = from_slice_with_limits::<T>(b, l);
        assert_eq!(format!("{public:?}"), format!("{slow:?}"), "{b:?}");
        (fast.is_some(), slow.is_ok())
    }

    fn check_all(b: &[u8], l: &Limits) -> bool {
        let (f1, s1) = check::<Value>(b, l);
        let (f2, s2) = check::<serde_json::Value>(b, l);
        let (f3, s3) = check::<Mixed>(b, l);
        let (f4, s4) = check::<Record>(b, l);
        check::<E>(b, l);
        check::<(i64, String)>(b, l);
        check::<Vec<Option<bool>>>(b, l);
        check::<serde::de::IgnoredAny>(b, l);
        // On an intact pickle without memo reads, every success is the fast path's.
        f1 == s1 && f2 == s2 && f3 == s3 && f4 == s4
    }

    fn has_bytearray(v: &Value) -> bool {
        match v {
            Value::ByteArray(_) => true,
            Value::List(x) | Value::Tuple(x) | Value::Set(x) | Value::FrozenSet(x) => {
                x.iter().any(has_bytearray)
            }
            Value::Dict(p) => p.iter().any(|(k, v)| has_bytearray(k) || has_bytearray(v)),
            _ => false,
        }
    }

    fn limits(pick: u8, depth: usize, elements: u64, bytes: u64) -> Limits {
        if pick.is_multiple_of(2) {
            Limits::default()
        } else {
            Limits::default()
                .with_max_depth(depth)
                .with_max_elements(elements)
                .with_max_decoded_bytes(bytes)
                .with_max_int_bytes(usize::from(pick / 16))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fast_path_equals_slow_path(
            v in prop_oneof![arb_value(), arb_typed()],
            choices in prop::collection::vec(any::<u8>(), 1..32),
            (pick, depth, elements, bytes) in (any::<u8>(), 0usize..6, 0u64..40, 0u64..60),
        ) {
            let l = limits(pick, depth, elements, bytes);
            let ours = to_vec(&v).unwrap();
            let py = py_pickle(&v, &choices);
            let ours_fast = check_all(&ours, &l);
            let py_fast = check_all(&py, &l);
            if l == Limits::default() {
                // ddf writes a bytearray as a call of the global (slow path).
                prop_assert!(ours_fast || has_bytearray(&v), "{v:?}");
                prop_assert!(py_fast, "{v:?} {py:?}");
            }
        }

        #[test]
        fn fast_path_equals_slow_path_on_mutated_pickles(
            v in prop_oneof![arb_value(), arb_typed()],
            choices in prop::collection::vec(any::<u8>(), 1..32),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            (pick, depth, elements, bytes) in (any::<u8>(), 0usize..6, 0u64..40, 0u64..60),
        ) {
            let l = limits(pick, depth, elements, bytes);
            for mut b in [to_vec(&v).unwrap(), py_pickle(&v, &choices)] {
                check_all(&b[..cut.index(b.len() + 1)], &l);
                for &(i, x) in &flips {
                    let i = i.index(b.len());
                    b[i] = x;
                }
                check_all(&b, &l);
            }
        }

        #[test]
        fn fast_path_never_panics_on_arbitrary_bytes(
            raw in prop::collection::vec(any::<u8>(), 0..64),
            (pick, depth, elements, bytes) in (any::<u8>(), 0usize..6, 0u64..40, 0u64..60),
        ) {
            let mut b = vec![0x80, 4];
            b.extend(raw);
            check_all(&b, &limits(pick, depth, elements, bytes));
        }
    }
}
