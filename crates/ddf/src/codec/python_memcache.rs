//! The value layer between ddf's codecs and pymemcache's `python_memcache` serializer.
//!
//! Memcached keeps a 32-bit flags word with each item; pymemcache's default serializer uses it as
//! a type tag ([`flags`]): bytes 0, pickle 1, int 2, long 4, compressed 8, text 16. The memcached
//! backend converts every item once, on the way out ([`to_wire`]) and on the way in
//! ([`from_wire`]), between that convention and the canonical form of the cache's codec, so the
//! codecs never see memcached's tags and the backend has no special cases.
//!
//! JSON mode (`backend = memcached`):
//!
//! | ddf value | stored as | pymemcache reads |
//! |---|---|---|
//! | string | UTF-8 text, flags 16 | `str` |
//! | integer | decimal text, flags 2 | `int` |
//! | anything else (float, bool, null, list, map) | JSON text, flags 0 | `bytes` (`json.loads` it) |
//! | `set_bytes` | the bytes, flags 0 | `bytes` |
//!
//! Read back: flags 16 becomes a JSON string, flags 2 and 4 (any size) a JSON number, flags 0 is
//! passed as it is (JSON text, or raw bytes for [`get_bytes`](crate::CacheManager::get_bytes)).
//! A Python pickle (flags 1: lists, dicts, floats...) is passed as it is; the cache decodes any
//! item flagged 1 with the pickle codec, whatever its own codec (see [`crate::codec`]).
//!
//! Pickle mode (`backend = memcached_pickle`): values are stored as the pickle codec wrote them
//! (flags 1; pymemcache unpickles them into Python objects, strings and integers included).
//! Values Python wrote as text (16) or integers (2, 4) are turned into the pickle of that `str`
//! or `int` on the way in, so they decode like any pickle. Python's `bytes` (flags 0) are passed
//! as they are (raw for [`get_bytes`](crate::CacheManager::get_bytes)).

use crate::codec::flags;
use crate::item::Item;

/// Which codec the cache uses, as far as the value layer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON text (`memcached`).
    Json,
    /// Python pickles (`memcached_pickle`).
    Pickle,
}

/// Whether `data` is a decimal integer as Python's `str(int)` writes it (optional `-`).
fn is_decimal_int(data: &[u8]) -> bool {
    let digits = data.strip_prefix(b"-").unwrap_or(data);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// The item to store for an item the codec produced.
pub fn to_wire(mode: Mode, item: Item) -> Item {
    match (mode, item.flags) {
        (Mode::Json, flags::TEXT) => {
            let data = item.data;
            if data.first() == Some(&b'"') {
                // A JSON string: store the text itself, as pymemcache stores a `str`.
                match serde_json::from_slice::<String>(&data) {
                    Ok(s) => Item::new(s.into_bytes(), flags::TEXT),
                    Err(_) => Item::new(data, flags::BYTES),
                }
            } else if is_decimal_int(&data) {
                Item::new(data, flags::INTEGER)
            } else {
                Item::new(data, flags::BYTES)
            }
        }
        _ => item,
    }
}

/// The codec's item for an item read from the server.
pub fn from_wire(mode: Mode, item: Item) -> Item {
    match (mode, item.flags) {
        (Mode::Json, flags::TEXT) => match std::str::from_utf8(&item.data) {
            Ok(s) => match serde_json::to_vec(s) {
                Ok(json) => Item::new(json, flags::TEXT),
                Err(_) => item,
            },
            Err(_) => Item::new(item.data, flags::BYTES),
        },
        (Mode::Json, flags::INTEGER | flags::LONG) if is_decimal_int(&item.data) => {
            Item::new(item.data, flags::TEXT)
        }
        (Mode::Pickle, flags::TEXT) => match std::str::from_utf8(&item.data) {
            Ok(s) => Item::new(pickle_str(s), flags::PICKLE),
            Err(_) => item,
        },
        (Mode::Pickle, flags::INTEGER | flags::LONG) if is_decimal_int(&item.data) => {
            Item::new(pickle_int(&item.data), flags::PICKLE)
        }
        _ => item,
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
pub fn pickle_str(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    out.extend_from_slice(&[PROTO, 2, BINUNICODE]);
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(STOP);
    out
}

/// `pickle.dumps(int(text), protocol=2)` for decimal text of any size.
pub fn pickle_int(text: &[u8]) -> Vec<u8> {
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

    fn json(v: serde_json::Value) -> Item {
        Item::new(serde_json::to_vec(&v).unwrap(), flags::TEXT)
    }

    #[test]
    fn json_values_get_pymemcache_flags() {
        let w = to_wire(Mode::Json, json(serde_json::json!("héllo \"x\"")));
        assert_eq!(w, Item::new("héllo \"x\"".into(), flags::TEXT));
        let w = to_wire(Mode::Json, json(serde_json::json!(-42)));
        assert_eq!(w, Item::new(b"-42".to_vec(), flags::INTEGER));
        let w = to_wire(Mode::Json, json(serde_json::json!([1, "a"])));
        assert_eq!(w, Item::new(br#"[1,"a"]"#.to_vec(), flags::BYTES));
        let w = to_wire(Mode::Json, json(serde_json::json!(1.5)));
        assert_eq!(w.flags, flags::BYTES);
        let raw = Item::new(vec![0, 255], flags::BYTES);
        assert_eq!(to_wire(Mode::Json, raw.clone()), raw);
    }

    #[test]
    fn python_flags_read_back_as_json() {
        let r = from_wire(Mode::Json, Item::new("a\"b".into(), flags::TEXT));
        assert_eq!(r.data, br#""a\"b""#);
        let big = b"1180591620717411303424".to_vec(); // 2**70
        let r = from_wire(Mode::Json, Item::new(big.clone(), flags::LONG));
        assert_eq!(r, Item::new(big, flags::TEXT));
        let p = Item::new(vec![0x80, 4, b'.'], flags::PICKLE);
        assert_eq!(from_wire(Mode::Json, p.clone()), p);
    }

    #[test]
    fn round_trips_in_json_mode() {
        for v in [
            serde_json::json!("s"),
            serde_json::json!(""),
            serde_json::json!(0),
            serde_json::json!(u64::MAX),
            serde_json::json!(i64::MIN),
            serde_json::json!(null),
            serde_json::json!({"a": [true, 1.25]}),
        ] {
            let back = from_wire(Mode::Json, to_wire(Mode::Json, json(v.clone())));
            let got: serde_json::Value = serde_json::from_slice(&back.data).unwrap();
            assert_eq!(got, v);
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
