//! The encoder: a serde `Serializer` writing protocol 4 straight into a `Vec<u8>`.
//!
//! Shapes (what `pickle.loads` returns): maps and structs → `dict` (`EMPTY_DICT MARK k v ...
//! SETITEMS`), sequences → `list` (`EMPTY_LIST MARK ... APPENDS`), tuples, tuple structs and
//! arrays → `tuple`, strings → `str`, `serialize_bytes` → `bytes`, integers → `int` (any width
//! via `LONG1`), floats → `float`, unit/`None` → `None`, enums externally tagged like serde_json.
//! No memo and no frames are written.

use serde::ser::{self, Serialize};

use super::value::{BIGINT_TOKEN, BYTEARRAY_TOKEN, FROZENSET_TOKEN, RAW_VALUE_TOKEN, SET_TOKEN};
use super::{BigInt, ErrorKind, PROTOCOL, PickleError};

const MARK: u8 = b'(';
const STOP: u8 = b'.';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINFLOAT: u8 = b'G';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const BINUNICODE8: u8 = 0x8d;
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const BINBYTES8: u8 = 0x8e;
const EMPTY_LIST: u8 = b']';
const APPENDS: u8 = b'e';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const STACK_GLOBAL: u8 = 0x93;
const REDUCE: u8 = b'R';

/// The Python type a magic newtype asked for (see `value.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Set,
    FrozenSet,
    ByteArray,
    BigInt,
}

struct Encoder {
    out: Vec<u8>,
    pending: Option<Pending>,
}

pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, PickleError> {
    let mut e = Encoder {
        out: Vec::with_capacity(128),
        pending: None,
    };
    e.out.extend_from_slice(&[0x80, PROTOCOL]);
    value.serialize(&mut e)?;
    e.out.push(STOP);
    Ok(e.out)
}

fn type_error(msg: impl Into<String>) -> PickleError {
    PickleError::new(ErrorKind::Type, msg)
}

impl Encoder {
    fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.out.extend_from_slice(&[BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            self.out.push(BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            self.long(BigInt::from_i128(v.into()).as_le_bytes());
        }
    }

    fn long(&mut self, le: &[u8]) {
        if let Ok(n) = u8::try_from(le.len()) {
            self.out.extend_from_slice(&[LONG1, n]);
        } else {
            self.out.push(LONG4);
            self.out.extend_from_slice(&(le.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(le);
    }

    fn str(&mut self, s: &str) {
        let n = s.len();
        if let Ok(n) = u8::try_from(n) {
            self.out.extend_from_slice(&[SHORT_BINUNICODE, n]);
        } else if let Ok(n) = u32::try_from(n) {
            self.out.push(BINUNICODE);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            self.out.push(BINUNICODE8);
            self.out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        let n = b.len();
        if let Ok(n) = u8::try_from(n) {
            self.out.extend_from_slice(&[SHORT_BINBYTES, n]);
        } else if let Ok(n) = u32::try_from(n) {
            self.out.push(BINBYTES);
            self.out.extend_from_slice(&n.to_le_bytes());
        } else {
            self.out.push(BINBYTES8);
            self.out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        self.out.extend_from_slice(b);
    }

    /// `{variant: ...}`: the dict and the key; the caller writes the content, then `SETITEM`.
    fn variant_head(&mut self, variant: &str) {
        self.out.push(EMPTY_DICT);
        self.str(variant);
    }
}

/// How a compound value is closed.
#[derive(Debug, Clone, Copy)]
enum Close {
    /// `APPENDS` (a list).
    List,
    /// A tuple of this many items: `TUPLE1..3` without a mark, else `MARK ... TUPLE`.
    Tuple(usize),
    /// `SETITEMS` (a dict).
    Dict,
    /// `ADDITEMS` (a set).
    Set,
    /// `FROZENSET`.
    FrozenSet,
    /// serde_json's `RawValue`, the form of a [`BigInt`] beyond 128 bits: its one field is the
    /// integer's decimal text, written as a `LONG`. Nothing to open or close.
    RawInt,
}

struct Compound<'a> {
    e: &'a mut Encoder,
    close: Close,
    /// Whether a `{variant: ...}` dict wraps the content (closed with `SETITEM`).
    variant: bool,
}

impl<'a> Compound<'a> {
    fn open(e: &'a mut Encoder, close: Close, variant: bool) -> Self {
        match close {
            Close::List => e.out.extend_from_slice(&[EMPTY_LIST, MARK]),
            Close::Dict => e.out.extend_from_slice(&[EMPTY_DICT, MARK]),
            Close::Set => e.out.extend_from_slice(&[EMPTY_SET, MARK]),
            Close::FrozenSet => e.out.push(MARK),
            Close::Tuple(0..=3) | Close::RawInt => {}
            Close::Tuple(_) => e.out.push(MARK),
        }
        Compound { e, close, variant }
    }

    fn finish(self) {
        let out = &mut self.e.out;
        match self.close {
            Close::List => out.push(APPENDS),
            Close::Dict => out.push(SETITEMS),
            Close::Set => out.push(ADDITEMS),
            Close::FrozenSet => out.push(FROZENSET),
            Close::Tuple(0) => out.push(EMPTY_TUPLE),
            Close::Tuple(n @ 1..=3) => out.push(TUPLE1 + (n as u8 - 1)),
            Close::Tuple(_) => out.push(TUPLE),
            Close::RawInt => {}
        }
        if self.variant {
            out.push(SETITEM);
        }
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), PickleError> {
        let start = self.e.out.len();
        key.serialize(&mut *self.e)?;
        match self.e.out.get(start) {
            Some(&(EMPTY_LIST | EMPTY_DICT | EMPTY_SET)) => Err(type_error(
                "a map key is a list, dict or set, which Python cannot use as a dict key (unhashable)",
            )),
            _ => Ok(()),
        }
    }
}

impl<'a> ser::Serializer for &'a mut Encoder {
    type Ok = ();
    type Error = PickleError;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), PickleError> {
        self.out.push(if v { NEWTRUE } else { NEWFALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i16(self, v: i16) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_i64(self, v: i64) -> Result<(), PickleError> {
        self.int(v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), PickleError> {
        match i64::try_from(v) {
            Ok(v) => self.int(v),
            Err(_) => self.long(BigInt::from_i128(v).as_le_bytes()),
        }
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), PickleError> {
        self.int(v.into());
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), PickleError> {
        self.serialize_u128(v.into())
    }
    fn serialize_u128(self, v: u128) -> Result<(), PickleError> {
        match i64::try_from(v) {
            Ok(v) => self.int(v),
            Err(_) => self.long(BigInt::from_u128(v).as_le_bytes()),
        }
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), PickleError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), PickleError> {
        self.out.push(BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), PickleError> {
        self.str(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), PickleError> {
        if self.pending.take() == Some(Pending::BigInt) {
            let n: BigInt = v
                .parse()
                .map_err(|e: PickleError| type_error(e.to_string()))?;
            self.long(n.as_le_bytes());
        } else {
            self.str(v);
        }
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), PickleError> {
        if self.pending.take() == Some(Pending::ByteArray) {
            // builtins.bytearray(b"..."), as CPython writes it at protocol 4.
            self.str("builtins");
            self.str("bytearray");
            self.out.push(STACK_GLOBAL);
            self.bytes(v);
            self.out.extend_from_slice(&[TUPLE1, REDUCE]);
        } else {
            self.bytes(v);
        }
        Ok(())
    }
    fn serialize_none(self) -> Result<(), PickleError> {
        self.out.push(NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PickleError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), PickleError> {
        self.out.push(NONE);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), PickleError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), PickleError> {
        self.str(variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), PickleError> {
        self.pending = match name {
            SET_TOKEN => Some(Pending::Set),
            FROZENSET_TOKEN => Some(Pending::FrozenSet),
            BYTEARRAY_TOKEN => Some(Pending::ByteArray),
            BIGINT_TOKEN => Some(Pending::BigInt),
            _ => None,
        };
        let r = value.serialize(&mut *self);
        self.pending = None;
        r
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), PickleError> {
        self.variant_head(variant);
        value.serialize(&mut *self)?;
        self.out.push(SETITEM);
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, PickleError> {
        let close = match self.pending.take() {
            Some(Pending::Set) => Close::Set,
            Some(Pending::FrozenSet) => Close::FrozenSet,
            _ => Close::List,
        };
        Ok(Compound::open(self, close, false))
    }
    fn serialize_tuple(self, len: usize) -> Result<Compound<'a>, PickleError> {
        Ok(Compound::open(self, Close::Tuple(len), false))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, PickleError> {
        Ok(Compound::open(self, Close::Tuple(len), false))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, PickleError> {
        self.variant_head(variant);
        Ok(Compound::open(self, Close::Tuple(len), true))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a>, PickleError> {
        Ok(Compound::open(self, Close::Dict, false))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, PickleError> {
        let close = if name == RAW_VALUE_TOKEN {
            Close::RawInt
        } else {
            Close::Dict
        };
        Ok(Compound::open(self, close, false))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, PickleError> {
        self.variant_head(variant);
        Ok(Compound::open(self, Close::Dict, true))
    }
}

impl ser::SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        if matches!(self.close, Close::Set | Close::FrozenSet) {
            self.key(v)
        } else {
            v.serialize(&mut *self.e)
        }
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), PickleError> {
        self.key(k)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), PickleError> {
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        if matches!(self.close, Close::RawInt) {
            // Only integers: other raw JSON has no Python value to become.
            self.e.pending = Some(Pending::BigInt);
            let r = v.serialize(&mut *self.e);
            self.e.pending = None;
            return r;
        }
        self.e.str(key);
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = PickleError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), PickleError> {
        self.e.str(key);
        v.serialize(&mut *self.e)
    }
    fn end(self) -> Result<(), PickleError> {
        self.finish();
        Ok(())
    }
}
