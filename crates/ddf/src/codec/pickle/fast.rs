//! The single-pass fast path of typed decoding ([`super::from_slice`]), for pickles without
//! memo references: every pickle ddf writes, and CPython's plain-data pickles at protocols 2-5
//! that share nothing.
//!
//! 1. **Scan** (no allocation once the thread's vectors are warm): one linear pass over the
//!    opcodes that simulates the pickle machine's stack with one small entry per value (its
//!    start offset and kind), and proves the pickle is a tree the machine accepts: no
//!    `GET`/`DUP`/`POP`, no global, every `APPEND`/`SETITEMS`/... on the right container,
//!    hashable keys, lengths within the input, and the element, payload, int-size and mark-depth
//!    limits. Anything else (or anything it does not know) makes the pickle ineligible.
//!    Pickle builds containers postfix (`x y TUPLE2`, `list x APPEND`, `MARK ... TUPLE`), so the
//!    scan also records, at the offset where such a value starts, how it is wrapped; these
//!    annotations are the only thing the scan stores.
//! 2. **Read**: a serde `Deserializer` that walks the opcodes top-down with the annotations,
//!    borrowing strings and bytes from the input, and checks the depth limit at every container
//!    (so serde's recursion stays bounded by `Limits::max_depth`, as on the slow path).
//!
//! On any error of either step the fast path gives up and the caller runs the two-pass decoder
//! from the start, so errors (their kind, message and offset) are always the slow path's; the
//! fast path only ever returns values, and only for pickles whose tree it has proven is the
//! machine's. `pickle::tests::fast_path_equals_slow_path*` check that over generated pickles.

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
    // Without annotations the reader accepts only what needs none (what ddf writes).
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
        limits,
        elements: 0,
        payload: 0,
        put_ok: false,
    };
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
    limits: &'a Limits,
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
            self.pos += n;
        }
    }

    /// Counts one more value against `Limits::max_elements`.
    #[inline]
    fn count(&mut self) -> Result<(), PickleError> {
        self.elements += 1;
        if self.elements > self.limits.max_elements {
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
        if self.payload > self.limits.max_decoded_bytes {
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
        if self.depth >= self.limits.max_depth {
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
                if n > 8 {
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
        if self.ann_here() != 0 {
            return Err(bail());
        }
        match self.op() {
            Some(0x8c | b'X' | 0x8d | b'U' | b'T') => v.visit_enum(Enum {
                r: self,
                dict: false,
            }),
            Some(b'}') => {
                self.pos += 1;
                self.put_ok = true;
                self.count()?;
                self.enter()?;
                let out = v.visit_enum(Enum {
                    r: &mut *self,
                    dict: true,
                })?;
                self.depth -= 1;
                Ok(out)
            }
            _ => Err(bail()),
        }
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
    /// `{variant: content}` (the dict's opcode consumed), else a bare variant name.
    dict: bool,
}

impl<'r, 'de, 'a, const ANN: bool> de::EnumAccess<'de> for Enum<'r, 'de, 'a, ANN> {
    type Error = PickleError;
    type Variant = Variant<'r, 'de, 'a, ANN>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Variant<'r, 'de, 'a, ANN>), PickleError> {
        if !self.dict {
            let name = seed.deserialize(&mut *self.r)?;
            return Ok((name, Variant { a: None }));
        }
        let mut a = Access {
            r: self.r,
            mode: DICT,
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
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        name: String,
        ports: Vec<String>,
        volumes: Vec<String>,
    }

    const PYTHON_P5: &[u8] = b"\x80\x05\x95F\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04name\x94\x8c\x03web\x94\x8c\x05ports\x94]\x94\x8c\x078080:80\x94a\x8c\x07volumes\x94]\x94\x8c\x0f/data:/app/data\x94au.";

    #[test]
    fn the_seed_record_takes_the_fast_path() {
        let record = Record {
            name: "web".into(),
            ports: vec!["8080:80".into()],
            volumes: vec!["/data:/app/data".into()],
        };
        let ours = super::super::to_vec(&record).unwrap();
        let l = Limits::default();
        let mut s = Scratch::default();
        assert!(scan(&ours, &l, &mut s).is_some());
        assert_eq!(try_from_slice::<Record>(&ours, &l), Some(record.clone()));
        assert!(scan(PYTHON_P5, &l, &mut s).is_some());
        assert_eq!(try_from_slice::<Record>(PYTHON_P5, &l), Some(record));
    }
}
