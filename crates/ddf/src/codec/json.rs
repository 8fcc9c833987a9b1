//! The JSON codec's reading side: serde_json, plus integers of any size kept exactly.
//!
//! serde_json (without its `arbitrary_precision` feature) reads an integer literal beyond 64 bits
//! as an `f64` whenever the target asks for "any value" (`serde_json::Value`,
//! [`pickle::Value`](super::pickle::Value), untagged enums): `json.dumps(2**70 + 1)` written by
//! the Python DDF would read as `1.1805916207174113e+21`. `arbitrary_precision` would fix that by
//! changing `serde_json::Number` for the whole build, which breaks untagged enums and
//! `#[serde(flatten)]` over numbers and changes how every serializer sees a `serde_json::Value`
//! (docs/codecs.md has the comparison). So instead:
//!
//! 1. [`has_big_int`] looks for an integer literal outside strings that fits neither `i64` nor
//!    `u64`: a stride scan finds digit runs of 19 or more (shorter ones always fit), and only
//!    then a tokenizer that skips strings checks them. Text without one (nearly all) is read by
//!    serde_json as before.
//! 2. Text with one is read by [`to_value`] into the lossless [`Value`] (integers of any size
//!    exact, object keys in order) in one pass: serde_json parses, and each number it visits is
//!    matched by rank with its token in the text, so an integer it could only give as an `f64`
//!    is read from its digits. The target type is then read from that `Value`: an integer the
//!    target cannot hold is an error, never a rounded number.

use std::cell::Cell;
use std::collections::HashMap;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, ser};

use super::pickle::{BigInt, Value};
use super::python_memcache::MAX_INT_TEXT;

/// Digits of `i64::MAX`: a shorter integer literal always fits 64 bits.
const RUN: usize = 19;

/// Decodes JSON text into `T`; integers beyond 64 bits are read exactly (see the module comment).
///
/// # Errors
/// The reason, when the text is not valid JSON or not a `T`.
pub(crate) fn from_slice<T: DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    if has_big_int(data) {
        let value = to_value(data)?;
        return T::deserialize(value).map_err(|e| e.to_string());
    }
    serde_json::from_slice(data).map_err(|e| e.to_string())
}

/// The JSON view ([`Value::to_json`]'s rules) of JSON text: the text as serde_json reads it,
/// except that integers beyond 64 bits become strings of their digits instead of floats.
///
/// # Errors
/// The reason, when the text is not valid JSON.
pub(crate) fn to_json_view(data: &[u8]) -> Result<serde_json::Value, String> {
    if has_big_int(data) {
        return to_value(data).map(|v| v.to_json());
    }
    serde_json::from_slice(data).map_err(|e| e.to_string())
}

/// Whether JSON text holds an integer literal (outside strings) that fits neither `i64` nor
/// `u64`. Invalid text may answer either way; the parser that runs next reports it.
pub(crate) fn has_big_int(data: &[u8]) -> bool {
    may_have_big_int(data) && big_int_token(data)
}

/// Whether `data` has a run of at least [`RUN`] ASCII digits anywhere (strings included).
/// Looks at one byte in [`RUN`]: any run that long covers one of them.
fn may_have_big_int(data: &[u8]) -> bool {
    let mut i = RUN - 1;
    while let Some(b) = data.get(i) {
        if !b.is_ascii_digit() {
            i += RUN;
            continue;
        }
        let start = data[..i]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |p| p + 1);
        let end = data[i..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(data.len(), |p| i + p);
        if end - start >= RUN {
            return true;
        }
        // The next run starts after `end`; its RUN-th digit is at `end + RUN` or later.
        i = end + RUN;
    }
    false
}

/// The exact check behind [`may_have_big_int`]: number tokens outside strings.
fn big_int_token(data: &[u8]) -> bool {
    NumberTokens { data, i: 0 }.any(|r| data.get(r).is_some_and(is_big_int))
}

/// An integer token (no fraction, no exponent) that fits neither `i64` nor `u64`.
fn is_big_int(token: &[u8]) -> bool {
    !token.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) && !fits_64(token)
}

/// Where the number tokens of JSON text are, outside strings, in order: in valid JSON, exactly
/// the numbers a parser visits, in the order it visits them.
struct NumberTokens<'a> {
    data: &'a [u8],
    i: usize,
}

impl Iterator for NumberTokens<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<std::ops::Range<usize>> {
        let data = self.data;
        while let Some(&b) = data.get(self.i) {
            match b {
                b'"' => {
                    self.i += 1;
                    while let Some(&c) = data.get(self.i) {
                        match c {
                            b'\\' => self.i += 2,
                            b'"' => break,
                            _ => self.i += 1,
                        }
                    }
                    self.i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = self.i;
                    self.i += 1;
                    while data.get(self.i).is_some_and(|c| {
                        matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                    }) {
                        self.i += 1;
                    }
                    return Some(start..self.i);
                }
                _ => self.i += 1,
            }
        }
        None
    }
}

fn fits_64(token: &[u8]) -> bool {
    std::str::from_utf8(token).is_ok_and(|s| s.parse::<i64>().is_ok() || s.parse::<u64>().is_ok())
}

/// Reads JSON text into the lossless [`Value`]: integers of any size exact ([`Value::Int`] or
/// [`Value::BigInt`]), floats as Python's `json.loads` reads them (except beyond `f64`'s range,
/// `1e400`, which serde_json refuses and Python reads as `inf`), objects as
/// [`Value::Dict`] with string keys in order (a repeated key kept once, the last value, as
/// Python does), arrays as [`Value::List`].
///
/// # Errors
/// The reason, when the text is not valid JSON, nests deeper than 128 levels, or holds an
/// integer longer than Python's own limit (4,300 digits).
pub(crate) fn to_value(data: &[u8]) -> Result<Value, String> {
    let ranges: Vec<_> = NumberTokens { data, i: 0 }.collect();
    // serde_json refuses an integer beyond f64's range (10**400): each integer beyond 64 bits is
    // given to it as `0`, at the same rank, and read from its own digits below.
    let mut text = Vec::with_capacity(data.len());
    let mut at = 0;
    for r in &ranges {
        if let Some(token) = data.get(r.clone())
            && is_big_int(token)
        {
            text.extend_from_slice(data.get(at..r.start).unwrap_or_default());
            text.push(b'0');
            at = r.end;
        }
    }
    text.extend_from_slice(data.get(at..).unwrap_or_default());
    let numbers = Numbers {
        tokens: ranges.into_iter().filter_map(|r| data.get(r)).collect(),
        next: Cell::new(0),
    };
    let mut de = serde_json::Deserializer::from_slice(&text);
    let v = Exact(&numbers)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// One pass: serde_json parses, and every number it visits is matched (by its rank) with its
/// token in the text, so that an integer serde_json could only give as an `f64` is read from
/// its digits. No text is parsed twice.
struct Numbers<'a> {
    tokens: Vec<&'a [u8]>,
    next: Cell<usize>,
}

impl Numbers<'_> {
    /// The text of the number being visited.
    fn take(&self) -> Option<&[u8]> {
        let k = self.next.get();
        self.next.set(k + 1);
        self.tokens.get(k).copied()
    }

    /// An integer serde_json visited: `v`, unless its token is an integer beyond 64 bits (which
    /// serde_json was given as `0`), then read from the token's digits.
    fn integer<E: de::Error>(&self, v: Value) -> Result<Value, E> {
        match self.take() {
            Some(t) if is_big_int(t) => integer(t).map_err(E::custom),
            Some(_) => Ok(v),
            None => Err(E::custom("a number the scan did not see (not valid JSON)")),
        }
    }
}

#[derive(Clone, Copy)]
struct Exact<'n, 'a>(&'n Numbers<'a>);

impl<'de> DeserializeSeed<'de> for Exact<'_, '_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Exact<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.integer(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.integer(
            i64::try_from(v)
                .map_or_else(|_| Value::BigInt(BigInt::from_u128(v.into())), Value::Int),
        )
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        match self.0.take() {
            Some(_) => Ok(Value::Float(v)),
            None => Err(E::custom("a number the scan did not see (not valid JSON)")),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::List(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out: Vec<(Value, Value)> =
            Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        // Python's json.loads keeps the last value of a repeated key, at its first place.
        let mut seen: HashMap<String, usize> = HashMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            match seen.get(&k).and_then(|&i| out.get_mut(i)) {
                Some(slot) => slot.1 = v,
                None => {
                    seen.insert(k.clone(), out.len());
                    out.push((Value::Str(k), v));
                }
            }
        }
        Ok(Value::Dict(out))
    }
}

/// An integer token of any size, up to Python's own limit of 4,300 digits.
fn integer(token: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(token).map_err(|e| e.to_string())?;
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    if text.len() > MAX_INT_TEXT {
        return Err(format!(
            "an integer of {} digits: the most Python itself reads is 4,300",
            text.trim_start_matches('-').len()
        ));
    }
    text.parse::<BigInt>()
        .map(|n| Value::int_from_le_bytes(n.as_le_bytes()))
        .map_err(|e| e.to_string())
}

/// Encodes a value as JSON text, refusing NaN and infinities: serde_json would write them as
/// `null`, which reads back (in ddf and in Python) as a different value.
///
/// # Errors
/// The reason, when the value cannot be represented.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let data = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    // Only text with a `null` can hide a non-finite float: then look for one.
    if data.windows(4).any(|w| w == b"null")
        && let Err(NonFinite(Some(f))) = value.serialize(Probe)
    {
        return Err(format!(
            "the float {f} has no JSON form (serde_json would write null, which reads back as \
             None): use a pickle backend for NaN and infinities"
        ));
    }
    Ok(data)
}

/// What [`Probe`] stops at: a non-finite float (`Some`), or the value's own error (`None`).
#[derive(Debug)]
struct NonFinite(Option<f64>);

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-finite float")
    }
}

impl std::error::Error for NonFinite {}

impl ser::Error for NonFinite {
    fn custom<M: std::fmt::Display>(_msg: M) -> Self {
        NonFinite(None)
    }
}

/// A serializer that writes nothing and fails at the first NaN or infinity. Hand-written: a
/// serde_json `Formatter` sees `null` for both a NaN and a real `None`.
struct Probe;

fn check(f: f64) -> Result<(), NonFinite> {
    if f.is_finite() {
        Ok(())
    } else {
        Err(NonFinite(Some(f)))
    }
}

impl ser::Serializer for Probe {
    type Ok = ();
    type Error = NonFinite;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Probe;
    type SerializeStructVariant = Probe;

    fn serialize_f32(self, v: f32) -> Result<(), NonFinite> {
        check(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), NonFinite> {
        check(v)
    }
    fn serialize_bool(self, _: bool) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit(self) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NonFinite> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), NonFinite> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, NonFinite> {
        Ok(Probe)
    }
}

/// Every compound form: each element, key and value goes through [`Probe`].
macro_rules! probe_compound {
    ($($tr:ident :: $method:ident ($($arg:ty),*);)*) => {$(
        impl ser::$tr for Probe {
            type Ok = ();
            type Error = NonFinite;
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $arg,)* v: &T) -> Result<(), NonFinite> {
                v.serialize(Probe)
            }
            fn end(self) -> Result<(), NonFinite> {
                Ok(())
            }
        }
    )*};
}

probe_compound! {
    SerializeSeq::serialize_element();
    SerializeTuple::serialize_element();
    SerializeTupleStruct::serialize_field();
    SerializeTupleVariant::serialize_field();
    SerializeStruct::serialize_field(&'static str);
    SerializeStructVariant::serialize_field(&'static str);
}

impl ser::SerializeMap for Probe {
    type Ok = ();
    type Error = NonFinite;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), NonFinite> {
        k.serialize(Probe)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), NonFinite> {
        v.serialize(Probe)
    }
    fn end(self) -> Result<(), NonFinite> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BIG: &str = "1180591620717411303425"; // 2**70 + 1

    #[test]
    fn the_scan_finds_big_integers_outside_strings_only() {
        for (text, big) in [
            ("1", false),
            ("9223372036854775807", false),
            ("-9223372036854775808", false),
            ("18446744073709551615", false),
            ("18446744073709551616", true),
            ("-9223372036854775809", true),
            (BIG, true),
            ("[1, {\"a\": -1180591620717411303425}]", true),
            ("\"1180591620717411303425\"", false),
            ("[\"\\\"1180591620717411303425\"]", false),
            ("1180591620717411303425.0", false),
            ("1.180591620717411303425e21", false),
            (
                "{\"k\": \"x\", \"n\": 100000000000000000000000000000000000000000}",
                true,
            ),
        ] {
            assert_eq!(has_big_int(text.as_bytes()), big, "{text}");
        }
        // Every position of a long digit run is found by the stride scan.
        for pad in 0..40 {
            let text = format!("[{}{BIG}]", "0, ".repeat(pad));
            assert!(has_big_int(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn big_integers_are_exact_everywhere() {
        let text = format!("{{\"m\": {BIG}, \"n\": 12345678901234, \"l\": [-{BIG}, 1.5]}}");
        let v = to_value(text.as_bytes()).unwrap();
        let big: BigInt = BIG.parse().unwrap();
        let Value::Dict(pairs) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(pairs[0], (Value::Str("m".into()), Value::BigInt(big)));
        assert_eq!(pairs[1].1, Value::Int(12345678901234));
        // Typed: i128 and u128 hold it; u64 and serde_json::Value cannot: an error, not a float.
        assert_eq!(
            from_slice::<i128>(BIG.as_bytes()).unwrap(),
            (1i128 << 70) + 1
        );
        assert_eq!(
            from_slice::<u128>(BIG.as_bytes()).unwrap(),
            (1u128 << 70) + 1
        );
        assert!(from_slice::<u64>(BIG.as_bytes()).is_err());
        assert!(from_slice::<serde_json::Value>(text.as_bytes()).is_err());
        assert_eq!(
            from_slice::<Value>(text.as_bytes()).unwrap(),
            v,
            "the lossless value"
        );
        let ten40 = format!("1{}", "0".repeat(40));
        assert_eq!(
            from_slice::<BigInt>(ten40.as_bytes()).unwrap().to_string(),
            ten40
        );
        assert!(from_slice::<i128>(ten40.as_bytes()).is_err());
        // The JSON view: digits kept, as strings.
        assert_eq!(
            to_json_view(text.as_bytes()).unwrap(),
            json!({"m": BIG, "n": 12345678901234u64, "l": [format!("-{BIG}"), 1.5]})
        );
    }

    #[test]
    fn non_finite_floats_are_refused_not_written_as_null() {
        #[derive(serde::Serialize)]
        struct S {
            a: Option<f64>,
            b: Vec<(String, f32)>,
        }
        let ok = S {
            a: None,
            b: vec![("x".into(), 1.5)],
        };
        assert_eq!(to_vec(&ok).unwrap(), br#"{"a":null,"b":[["x",1.5]]}"#);
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = to_vec(&S {
                a: Some(f),
                b: vec![],
            })
            .unwrap_err();
            assert!(e.contains("pickle backend"), "{e}");
            let e = to_vec(&S {
                a: None,
                b: vec![("x".into(), f as f32)],
            })
            .unwrap_err();
            assert!(e.contains("no JSON form"), "{e}");
            let mut m = std::collections::BTreeMap::new();
            m.insert("k", vec![Some(f)]);
            assert!(to_vec(&m).is_err());
        }
    }

    #[test]
    fn the_exact_reader_follows_json_loads() {
        let v = to_value(br#"{"b": 1, "a": [true, null, "\u00e9\n"], "b": 2}"#).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("b".into()), Value::Int(2)),
                (
                    Value::Str("a".into()),
                    Value::List(vec![
                        Value::Bool(true),
                        Value::None,
                        Value::Str("é\n".into())
                    ])
                ),
            ])
        );
        // Integers beyond f64's range, nested, beside floats and strings of digits.
        let ten400 = format!("1{}", "0".repeat(400));
        let text = format!("[[{{\"a\": [-{ten400}, 2.5, \"{ten400}\"]}}], {ten400}]");
        let expect_big = |s: &str| Value::BigInt(s.parse().unwrap());
        assert_eq!(
            to_value(text.as_bytes()).unwrap(),
            Value::List(vec![
                Value::List(vec![Value::Dict(vec![(
                    Value::Str("a".into()),
                    Value::List(vec![
                        expect_big(&format!("-{ten400}")),
                        Value::Float(2.5),
                        Value::Str(ten400.clone())
                    ])
                )])]),
                expect_big(&ten400),
            ])
        );
        // Python reads 1e400 as inf; serde_json refuses it: an error, not a changed value.
        assert!(to_value(b"1e400").is_err());
        assert_eq!(to_value(b"-0.0").unwrap(), Value::Float(-0.0));
        assert!(to_value(b"[1,").is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(to_value(deep.as_bytes()).is_err());
        let long = "9".repeat(5000);
        assert!(to_value(long.as_bytes()).unwrap_err().contains("4,300"));
        // 200,000 keys (and a big integer): linear, not quadratic.
        let wide: String = (0..200_000).map(|i| format!("\"k{i}\":{i},")).collect();
        let text = format!("{{{wide}\"k0\":{BIG}}}");
        let Value::Dict(pairs) = to_value(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(pairs.len(), 200_000);
        assert_eq!(pairs[0].1, Value::BigInt(BIG.parse().unwrap()));
    }
}
