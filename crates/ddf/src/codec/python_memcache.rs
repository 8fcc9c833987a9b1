//! pymemcache's `python_memcache` serializer convention, as the codec layer applies it for the
//! Memcached backends. The backend stores what this layer produces and never calls it.
//!
//! Memcached keeps a 32-bit flags word with each item; pymemcache's default serializer uses it as
//! a type tag ([`flags`]): bytes 0, pickle 1, int 2, long 4, text 16. The cache's
//! [`ValueCodec`](super::ValueCodec), chosen once from the backend kind, gives each value its
//! final flags here when it encodes and reads items by these flags when it decodes.
//!
//! JSON mode (`backend = memcached`):
//!
//! | ddf value | stored as | pymemcache reads |
//! |---|---|---|
//! | string | UTF-8 text, flags 16 | `str` |
//! | integer | decimal text, flags 2 | `int` |
//! | anything else (float, bool, null, list, map) | a pickle, flags 1 | the object |
//! | `set_bytes` | the bytes, flags 0 | `bytes` |
//!
//! That is what the Python DDF's `memcached` backend writes. Read back: flags 16 is a string,
//! flags 2 and 4 an integer of any size, flags 0 JSON text (what ddf wrote before; or raw bytes
//! for [`get_bytes`](crate::CacheManager::get_bytes)). A pickle (flags 1) is read with the pickle
//! codec, whatever the cache's own codec.
//!
//! Pickle mode (`backend = memcached_pickle`): values are stored as the pickle codec wrote them
//! (flags 1; pymemcache unpickles them into Python objects, strings and integers included).
//! Values Python wrote as text (16) or integers (2, 4) are read as the pickle of that `str` or
//! `int` ([`pickle_str`], [`pickle_int`]), so they decode exactly like any pickle. Python's
//! `bytes` (flags 0) are raw bytes for [`get_bytes`](crate::CacheManager::get_bytes).
//!
//! No value is serialized twice: a string or an integer is captured straight from its
//! `Serialize` impl ([`capture`]) and a stored string is read straight into the target type
//! ([`StrDeserializer`]), without JSON text in between.

use std::fmt;

use serde::de::{self, Visitor};
use serde::ser::{self, Impossible, Serialize};

use crate::codec::flags;
use crate::codec::pickle::value::RAW_VALUE_TOKEN;
use crate::item::Item;

/// The longest decimal text read as a Python `int`: Python's own default limit on the digits of
/// `str(int)` (`sys.get_int_max_str_digits()`, 4,300), plus a sign.
pub(crate) const MAX_INT_TEXT: usize = 4_301;

/// Whether `data` is a decimal integer as Python's `str(int)` writes it (optional `-`).
pub(crate) fn is_decimal_int(data: &[u8]) -> bool {
    let digits = data.strip_prefix(b"-").unwrap_or(data);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// The JSON-mode item of a value that pymemcache stores outside JSON: a string (flags 16, its
/// UTF-8 text) or an integer (flags 2, its decimal text). `None` for any other value, which the
/// caller writes as JSON text with flags 0.
pub(crate) fn capture<T: Serialize + ?Sized>(value: &T) -> Option<Item> {
    value.serialize(Capture).ok()
}

/// Why [`Capture`] declined a value: it is not a string or an integer (or its `Serialize` impl
/// failed, which the JSON encoder then reports).
#[derive(Debug)]
pub(crate) struct NotScalar;

impl fmt::Display for NotScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a string or an integer")
    }
}

impl std::error::Error for NotScalar {}

impl ser::Error for NotScalar {
    fn custom<M: fmt::Display>(_msg: M) -> Self {
        NotScalar
    }
}

/// A serde `Serializer` that accepts exactly what `serde_json` writes as a JSON string or a JSON
/// integer, and refuses everything else at its first call. Hand-written: no crate captures a
/// scalar without producing text first, and this is the whole of it.
struct Capture;

fn int(v: impl fmt::Display) -> Result<Item, NotScalar> {
    // One allocation, the item's own buffer; the digits are those of `str(int)` and serde_json.
    Ok(Item::new(v.to_string().into_bytes(), flags::INTEGER))
}

fn text(s: &str) -> Result<Item, NotScalar> {
    Ok(Item::new(s.as_bytes().to_vec(), flags::TEXT))
}

impl ser::Serializer for Capture {
    type Ok = Item;
    type Error = NotScalar;
    type SerializeSeq = Impossible<Item, NotScalar>;
    type SerializeTuple = Impossible<Item, NotScalar>;
    type SerializeTupleStruct = Impossible<Item, NotScalar>;
    type SerializeTupleVariant = Impossible<Item, NotScalar>;
    type SerializeMap = Impossible<Item, NotScalar>;
    type SerializeStruct = RawInt;
    type SerializeStructVariant = Impossible<Item, NotScalar>;

    fn serialize_str(self, v: &str) -> Result<Item, NotScalar> {
        text(v)
    }
    fn serialize_char(self, v: char) -> Result<Item, NotScalar> {
        text(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Item, NotScalar> {
        text(variant)
    }
    fn serialize_i8(self, v: i8) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_i16(self, v: i16) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_i32(self, v: i32) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_i64(self, v: i64) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_i128(self, v: i128) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_u16(self, v: u16) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_u32(self, v: u32) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_u64(self, v: u64) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Item, NotScalar> {
        int(v)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Item, NotScalar> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Item, NotScalar> {
        // serde_json's RawValue is a newtype over its JSON text: that text is not a string.
        if name.starts_with("$serde_json::") {
            return Err(NotScalar);
        }
        value.serialize(self)
    }

    fn serialize_bool(self, _v: bool) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_f32(self, _v: f32) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_f64(self, _v: f64) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_none(self) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_unit(self) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Item, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, NotScalar> {
        // A `BigInt` beyond 128 bits (serde_json's RawValue of its digits): an int, flags 2.
        if name == RAW_VALUE_TOKEN {
            return Ok(RawInt(None));
        }
        Err(NotScalar)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, NotScalar> {
        Err(NotScalar)
    }
}

/// The one field of a `RawValue` struct: accepted when it is decimal integer text.
pub(crate) struct RawInt(Option<Item>);

impl ser::SerializeStruct for RawInt {
    type Ok = Item;
    type Error = NotScalar;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), NotScalar> {
        let item = value.serialize(Capture)?;
        if item.flags != flags::TEXT || !is_decimal_int(&item.data) {
            return Err(NotScalar);
        }
        self.0 = Some(Item::new(item.data, flags::INTEGER));
        Ok(())
    }
    fn end(self) -> Result<Item, NotScalar> {
        self.0.ok_or(NotScalar)
    }
}

/// A serde `Deserializer` over a stored string (flags 16) that answers as `serde_json` answers
/// for the same string as a JSON string, without the JSON text: any type asks for a string,
/// `Option` is `Some`, a newtype struct is transparent, an enum is a unit variant, bytes are the
/// UTF-8 bytes. `serde::de::value::StrDeserializer` forwards `Option` and newtypes to
/// `deserialize_any`, which would refuse `Option<String>`; hence this small one.
pub(crate) struct StrDeserializer<'a>(pub(crate) &'a str);

impl<'de> de::Deserializer<'de> for StrDeserializer<'de> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(de::value::BorrowedStrDeserializer::new(self.0))
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_bytes(self.0.as_bytes())
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_bytes(self.0.as_bytes())
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

// A two-opcode pickle writer for the two types pymemcache stores outside pickles. Hand-written
// (protocol 2 opcodes: PROTO, BINUNICODE, LONG1/LONG4, STOP) because it is all we need here and
// it keeps this layer independent of the full pickle codec.
const PROTO: u8 = 0x80;
const BINUNICODE: u8 = b'X';
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const STOP: u8 = b'.';

/// `pickle.dumps(s, protocol=2)` for a `str`.
pub(crate) fn pickle_str(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    out.extend_from_slice(&[PROTO, 2, BINUNICODE]);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(STOP);
    out
}

/// `pickle.dumps(int(text), protocol=2)` for decimal text of any size.
pub(crate) fn pickle_int(text: &[u8]) -> Vec<u8> {
    let (neg, digits) = match text.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, text),
    };
    // Magnitude, little-endian base 256, by repeated multiply-add.
    let mut mag: Vec<u8> = Vec::new();
    for d in digits {
        let mut carry = u32::from(d - b'0');
        for byte in mag.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while mag.last() == Some(&0) {
        mag.pop();
    }
    // Two's complement, little-endian, shortest form (pickle's encode_long).
    let mut bytes = mag;
    if neg && !bytes.is_empty() {
        let mut carry = 1u16;
        for byte in bytes.iter_mut() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        // The top bit must be set for a negative number; trim redundant 0xff bytes.
        if bytes.last().is_some_and(|b| b & 0x80 == 0) {
            bytes.push(0xff);
        }
        while bytes.len() > 1
            && bytes[bytes.len() - 1] == 0xff
            && bytes[bytes.len() - 2] & 0x80 != 0
        {
            bytes.pop();
        }
    } else if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        bytes.push(0);
    }
    let mut out = Vec::with_capacity(bytes.len() + 10);
    out.extend_from_slice(&[PROTO, 2]);
    if bytes.len() < 256 {
        out.extend_from_slice(&[LONG1, bytes.len() as u8]);
    } else {
        out.push(LONG4);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&bytes);
    out.push(STOP);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[test]
    fn strings_and_integers_are_captured_with_pymemcache_flags() {
        assert_eq!(
            capture("héllo \"x\""),
            Some(Item::new("héllo \"x\"".into(), flags::TEXT))
        );
        assert_eq!(capture(&'é'), Some(Item::new("é".into(), flags::TEXT)));
        assert_eq!(
            capture(&-42i64),
            Some(Item::new(b"-42".to_vec(), flags::INTEGER))
        );
        assert_eq!(
            capture(&u128::MAX),
            Some(Item::new(
                u128::MAX.to_string().into_bytes(),
                flags::INTEGER
            ))
        );
        assert_eq!(
            capture(&Some(7u8)),
            Some(Item::new(b"7".to_vec(), flags::INTEGER))
        );
        #[derive(Serialize)]
        enum E {
            Unit,
            Tuple(u8),
        }
        #[derive(Serialize)]
        struct Wrap(String);
        assert_eq!(
            capture(&E::Unit),
            Some(Item::new(b"Unit".to_vec(), flags::TEXT))
        );
        assert_eq!(
            capture(&Wrap("w".into())),
            Some(Item::new(b"w".to_vec(), flags::TEXT))
        );
        assert_eq!(capture(&E::Tuple(1)), None);
        assert_eq!(capture(&1.5f64), None);
        assert_eq!(capture(&true), None);
        assert_eq!(capture(&()), None);
        assert_eq!(capture(&None::<u8>), None);
        assert_eq!(capture(&vec![1, 2]), None);
        assert_eq!(capture(&serde_json::json!({"a": 1})), None);
        assert_eq!(
            capture(&serde_json::json!("s")),
            Some(Item::new(b"s".to_vec(), flags::TEXT))
        );
        assert_eq!(
            capture(&serde_json::json!(-3)),
            Some(Item::new(b"-3".to_vec(), flags::INTEGER))
        );
        assert_eq!(capture(&serde_json::json!(3.0)), None);
    }

    /// The captured form is what the JSON text round trip of the old value layer produced.
    #[test]
    fn capture_agrees_with_json_text() {
        fn old(json: &[u8]) -> Option<Item> {
            if json.first() == Some(&b'"') {
                let s: String = serde_json::from_slice(json).unwrap();
                Some(Item::new(s.into_bytes(), flags::TEXT))
            } else if is_decimal_int(json) {
                Some(Item::new(json.to_vec(), flags::INTEGER))
            } else {
                None
            }
        }
        let values = [
            serde_json::json!("a\"b\\c\u{1}é😀"),
            serde_json::json!(""),
            serde_json::json!(0),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!(null),
            serde_json::json!(1e20),
            serde_json::json!([1]),
        ];
        for v in values {
            assert_eq!(capture(&v), old(&serde_json::to_vec(&v).unwrap()), "{v}");
        }
    }

    /// Reading a stored string answers as serde_json answers for the same JSON string.
    #[test]
    fn str_deserializer_matches_serde_json() {
        #[derive(Deserialize, Debug, PartialEq)]
        enum E {
            Unit,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct Wrap(String);
        fn both<T: for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(s: &str) {
            let direct = T::deserialize(StrDeserializer(s)).ok();
            let json = serde_json::from_str::<T>(&serde_json::to_string(s).unwrap()).ok();
            assert_eq!(direct, json, "{s:?} as {}", std::any::type_name::<T>());
        }
        for s in ["x", "", "Unit", "12", "é\"\n"] {
            both::<String>(s);
            both::<Option<String>>(s);
            both::<Wrap>(s);
            both::<E>(s);
            both::<serde_json::Value>(s);
            both::<Box<str>>(s);
            both::<char>(s);
            both::<u64>(s);
            both::<Vec<u8>>(s);
            both::<()>(s);
        }
    }

    #[test]
    fn small_pickles_load_in_python() {
        // Checked with pickle.loads in Python 3.11: 0 1 255 -1 -128 -129 -256 "hé".
        assert_eq!(pickle_int(b"0"), b"\x80\x02\x8a\x00.");
        assert_eq!(pickle_int(b"1"), b"\x80\x02\x8a\x01\x01.");
        assert_eq!(pickle_int(b"255"), b"\x80\x02\x8a\x02\xff\x00.");
        assert_eq!(pickle_int(b"-1"), b"\x80\x02\x8a\x01\xff.");
        assert_eq!(pickle_int(b"-128"), b"\x80\x02\x8a\x01\x80.");
        assert_eq!(pickle_int(b"-129"), b"\x80\x02\x8a\x02\x7f\xff.");
        assert_eq!(pickle_int(b"-256"), b"\x80\x02\x8a\x02\x00\xff.");
        assert_eq!(pickle_str("hé"), b"\x80\x02X\x03\x00\x00\x00h\xc3\xa9.");
    }
}
