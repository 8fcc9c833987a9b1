//! [`Value`]: a dynamic Python value (the plain-data subset), and its serde integration.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Unexpected, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::bigint::BigInt;
use super::error::PickleError;

// Newtype-struct names that tell the pickle serializer to write a Python type serde has no
// notion of (the trick serde_json's `RawValue` uses). Other serializers see a plain newtype:
// a sequence, bytes or a string.
pub(crate) const SET_TOKEN: &str = "$ddf::pickle::set";
pub(crate) const FROZENSET_TOKEN: &str = "$ddf::pickle::frozenset";
pub(crate) const BYTEARRAY_TOKEN: &str = "$ddf::pickle::bytearray";
pub(crate) const BIGINT_TOKEN: &str = "$ddf::pickle::bigint";
/// The struct name serde_json's `RawValue` serializes with: how a [`BigInt`] beyond 128 bits is
/// written (a bare number in JSON text; the pickle serializer and pymemcache's integer capture
/// read its one field as decimal text). A test pins it against serde_json.
pub(crate) const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A Python value of the plain-data subset the pickle codec reads and writes.
///
/// Read losslessly from any pickle (`cache.get::<Value>(key)`), and written back losslessly (a `Set` is written as a Python `set`, a `Tuple` as a `tuple`, and so on).
/// `PartialEq` is structural: `Float(NAN) != Float(NAN)`, and sets compare in order.
///
/// Drop and the serde impls recurse on nesting; values from the decoder are at most
/// as deep as the decoder's depth limit (1,000 by default).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// An `int` that fits an `i64`.
    Int(i64),
    /// An `int` that does not fit an `i64`.
    BigInt(BigInt),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `bytearray`.
    ByteArray(Vec<u8>),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `set` (in the pickle's order).
    Set(Vec<Value>),
    /// `frozenset` (in the pickle's order).
    FrozenSet(Vec<Value>),
    /// `dict`, keys in insertion order.
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// An int from its two's complement little-endian bytes: [`Value::Int`] when it fits an
    /// `i64`, else [`Value::BigInt`].
    pub fn int_from_le_bytes(bytes: &[u8]) -> Value {
        let n = BigInt::from_le_bytes(bytes);
        match n.to_i64() {
            Some(i) => Value::Int(i),
            None => Value::BigInt(n),
        }
    }

    /// Reads JSON text exactly, as Python's `json.loads` reads it: integers of any size
    /// ([`Value::Int`] or [`Value::BigInt`]), a number with a fraction or an exponent as a
    /// [`Value::Float`], objects as [`Value::Dict`] with keys in their order (a repeated key
    /// keeps its first place and its last value), arrays as [`Value::List`].
    ///
    /// ```
    /// use ddf::pickle::Value;
    /// let v = Value::from_json(r#"{"b": 1180591620717411303425, "a": [1.0]}"#)?;
    /// let Value::Dict(pairs) = v else { unreachable!() };
    /// assert_eq!(pairs[0].1, Value::BigInt("1180591620717411303425".parse()?));
    /// assert_eq!(pairs[1].1, Value::List(vec![Value::Float(1.0)]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) saying why, when the text is not
    /// JSON, nests deeper than 128 levels or holds an integer of more than 4,300 digits.
    pub fn from_json(text: &str) -> crate::Result<Value> {
        crate::codec::json::to_value(text.as_bytes())
            .map_err(|e| crate::Error::InvalidArgument(format!("not valid JSON: {e}")))
    }

    /// Reads a Python pickle (protocols 0-5) with ddf's restricted decoder and its default
    /// limits: nothing in it is executed, and any global but the plain-data builtins (a class,
    /// `os.system`, `datetime`) is refused. Lossless: tuples, sets, bytes, ints of any size.
    ///
    /// ```
    /// use ddf::pickle::Value;
    /// // pickle.dumps(("a", 1), protocol=5)
    /// let v = Value::from_pickle(b"\x80\x05\x95\t\x00\x00\x00\x00\x00\x00\x00\x8c\x01a\x94K\x01\x86\x94.")?;
    /// assert_eq!(v, Value::Tuple(vec![Value::Str("a".into()), Value::Int(1)]));
    /// # Ok::<(), ddf::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) saying what is wrong (malformed,
    /// a refused global, a limit exceeded, with the byte offset when it has one).
    pub fn from_pickle(bytes: &[u8]) -> crate::Result<Value> {
        super::from_slice_value(bytes)
            .map_err(|e| crate::Error::InvalidArgument(format!("not a pickle ddf reads: {e}")))
    }

    /// The Python type name (`"int"`, `"dict"`...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Dict(_) => "dict",
        }
    }

    /// A JSON view of the value, for display (`ddf-cache get`). Lossy, by these rules:
    ///
    /// - `None`, `bool`, `str`, `list` and `dict` map to their JSON counterparts;
    /// - `tuple`, `set` and `frozenset` become arrays (sets in the pickle's order);
    /// - ints become numbers when they fit 64 bits (`i64` or `u64`), else **strings** of their
    ///   decimal digits (`"1180591620717411303424"`), so no digit is lost;
    /// - finite floats become numbers; `nan`, `inf`, `-inf` become the strings `"nan"`, `"inf"`,
    ///   `"-inf"` (JSON has no such numbers);
    /// - `bytes` and `bytearray` become `{"$bytes": "<standard base64 with padding>"}`;
    /// - dict keys that are not strings become strings as Python's `json.dumps` converts them
    ///   (`1` → `"1"`, `True` → `"true"`, `None` → `"null"`, `1.5` → `"1.5"`); a key that
    ///   `json.dumps` refuses (a tuple, bytes) becomes the compact JSON text of its own view
    ///   (`("a", 1)` → `"[\"a\",1]"`). When two keys map to the same string, the later wins.
    ///
    /// ```
    /// use ddf::pickle::Value;
    /// let v = Value::Dict(vec![
    ///     (Value::Int(1), Value::Tuple(vec![Value::Bytes(b"hi".to_vec())])),
    /// ]);
    /// assert_eq!(v.to_json(), serde_json::json!({"1": [{"$bytes": "aGk="}]}));
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::BigInt(n) => match n.to_u64() {
                Some(u) => J::from(u),
                None => J::String(n.to_string()),
            },
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => J::String(float_name(*f).to_owned()),
            },
            Value::Str(s) => J::String(s.clone()),
            Value::Bytes(b) | Value::ByteArray(b) => {
                let mut m = serde_json::Map::new();
                m.insert("$bytes".to_owned(), J::String(base64(b)));
                J::Object(m)
            }
            Value::List(v) | Value::Tuple(v) | Value::Set(v) | Value::FrozenSet(v) => {
                J::Array(v.iter().map(Value::to_json).collect())
            }
            Value::Dict(pairs) => J::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.json_key(), v.to_json()))
                    .collect(),
            ),
        }
    }

    fn json_key(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::None => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::BigInt(n) => n.to_string(),
            Value::Float(f) if f.is_finite() => python_float_repr(*f),
            Value::Float(f) => match float_name(*f) {
                "nan" => "NaN".to_owned(),
                "inf" => "Infinity".to_owned(),
                _ => "-Infinity".to_owned(),
            },
            other => other.to_json().to_string(),
        }
    }
}

fn float_name(f: f64) -> &'static str {
    if f.is_nan() {
        "nan"
    } else if f > 0.0 {
        "inf"
    } else {
        "-inf"
    }
}

/// Python's `repr(float)` for finite values: shortest round-trip digits, `1.0` not `1`,
/// exponent form from 1e16 and below 1e-4.
fn python_float_repr(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust: "1e16", "1.5e-7"; Python: "1e+16", "1.5e-07".
        let s = format!("{f:e}");
        if let Some((mant, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mant}e{sign}{digits:0>2}");
        }
        return s;
    }
    format!("{f:?}")
}

/// Standard base64 with padding (RFC 4648 §4). Ten lines do not justify a dependency.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- Serialize: a Value written by any serde serializer -------------------------------------

struct Items<'a>(&'a [Value]);

impl Serialize for Items<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in self.0 {
            seq.serialize_element(v)?;
        }
        seq.end()
    }
}

struct Buf<'a>(&'a [u8]);

impl Serialize for Buf<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::None => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::BigInt(n) => n.serialize(s),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::ByteArray(b) => s.serialize_newtype_struct(BYTEARRAY_TOKEN, &Buf(b)),
            Value::List(v) => Items(v).serialize(s),
            Value::Tuple(v) => {
                let mut t = s.serialize_tuple(v.len())?;
                for x in v {
                    t.serialize_element(x)?;
                }
                t.end()
            }
            Value::Set(v) => s.serialize_newtype_struct(SET_TOKEN, &Items(v)),
            Value::FrozenSet(v) => s.serialize_newtype_struct(FROZENSET_TOKEN, &Items(v)),
            Value::Dict(pairs) => {
                let mut m = s.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

// ---- Deserialize: a Value read from any serde format (e.g. JSON for `ddf-cache set --json`) --

/// `text`: asked through [`BIGINT_TOKEN`], to which the pickle deserializers answer an int
/// beyond 64 bits as [`bigint_text`] (ints beyond 128 bits have no place in serde's data model);
/// only a string with that prefix is read as an int.
struct ValueVisitor {
    text: bool,
}

/// How the pickle deserializers answer [`BIGINT_TOKEN`] for an int beyond 64 bits: the token
/// followed by the decimal digits. The token makes the answer unmistakable for a stored string
/// from a deserializer that ignores newtype names.
pub(crate) fn bigint_text(n: &BigInt) -> String {
    format!("{BIGINT_TOKEN}{n}")
}

/// The int in a [`bigint_text`], if `s` is one.
pub(crate) fn parse_bigint_text(s: &str) -> Option<Result<BigInt, PickleError>> {
    s.strip_prefix(BIGINT_TOKEN).map(str::parse)
}

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(
            i64::try_from(v)
                .map_or_else(|_| Value::BigInt(BigInt::from_u128(v.into())), Value::Int),
        )
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::int_from_le_bytes(&v.to_le_bytes()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::int_from_le_bytes(BigInt::from_u128(v).as_le_bytes()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        if self.text
            && let Some(n) = parse_bigint_text(v)
        {
            return Ok(Value::int_from_le_bytes(
                n.map_err(E::custom)?.as_le_bytes(),
            ));
        }
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        if self.text && v.starts_with(BIGINT_TOKEN) {
            return self.visit_str(&v);
        }
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor { text: false })
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::List(v))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(kv) = map.next_entry()? {
            v.push(kv);
        }
        Ok(Value::Dict(v))
    }
}

impl<'de> Deserialize<'de> for Value {
    /// Reads a value from any serde format: sequences become [`Value::List`], maps
    /// [`Value::Dict`]. To keep tuples and sets when reading a pickle, use
    /// the pickle decoder.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_newtype_struct(BIGINT_TOKEN, ValueVisitor { text: true })
    }
}

// ---- Deserializer: a decoded Value read into any serde type ---------------------------------

impl<'de> IntoDeserializer<'de, PickleError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl Value {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::None => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::Float(f) => Unexpected::Float(*f),
            Value::Str(s) => Unexpected::Str(s),
            Value::Bytes(b) | Value::ByteArray(b) => Unexpected::Bytes(b),
            Value::Dict(_) => Unexpected::Map,
            Value::BigInt(_) => Unexpected::Other("an int too large for 128 bits"),
            _ => Unexpected::Seq,
        }
    }
}

impl<'de> Deserializer<'de> for Value {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self {
            Value::None => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(b),
            Value::Int(i) => v.visit_i64(i),
            Value::BigInt(ref n) => {
                if let Some(u) = n.to_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.to_i128() {
                    v.visit_i128(i)
                } else if let Some(u) = n.to_u128() {
                    v.visit_u128(u)
                } else {
                    Err(de::Error::invalid_type(self.unexpected(), &v))
                }
            }
            Value::Float(f) => v.visit_f64(f),
            Value::Str(s) => v.visit_string(s),
            Value::Bytes(b) | Value::ByteArray(b) => v.visit_byte_buf(b),
            Value::List(items)
            | Value::Tuple(items)
            | Value::Set(items)
            | Value::FrozenSet(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let r = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(r)
            }
            Value::Dict(pairs) => {
                let mut map = MapDeserializer::new(pairs.into_iter());
                let r = v.visit_map(&mut map)?;
                map.end()?;
                Ok(r)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self {
            Value::None => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, PickleError> {
        match self {
            // `BigInt`'s own Deserialize: any size, as decimal text.
            Value::BigInt(n) if name == BIGINT_TOKEN => v.visit_string(bigint_text(&n)),
            other => v.visit_newtype_struct(other),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        // serde_json's external tagging: "Variant" or {"Variant": content}.
        match self {
            Value::Str(_) => v.visit_enum(EnumDe {
                variant: self,
                content: None,
            }),
            Value::Dict(mut pairs) if pairs.len() == 1 => {
                let (variant, content) = pairs.remove(0);
                v.visit_enum(EnumDe {
                    variant,
                    content: Some(content),
                })
            }
            other => Err(de::Error::invalid_type(
                other.unexpected(),
                &"a variant name (str) or a dict with one entry",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        drop(self);
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct EnumDe {
    variant: Value,
    content: Option<Value>,
}

impl<'de> de::EnumAccess<'de> for EnumDe {
    type Error = PickleError;
    type Variant = VariantDe;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantDe), PickleError> {
        let name = seed.deserialize(self.variant)?;
        Ok((name, VariantDe(self.content)))
    }
}

struct VariantDe(Option<Value>);

impl<'de> de::VariantAccess<'de> for VariantDe {
    type Error = PickleError;

    fn unit_variant(self) -> Result<(), PickleError> {
        match self.0 {
            None | Some(Value::None) => Ok(()),
            Some(other) => Err(de::Error::invalid_type(
                other.unexpected(),
                &"a unit variant",
            )),
        }
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        match self.0 {
            Some(v) => seed.deserialize(v),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, PickleError> {
        match self.0 {
            Some(x) => x.deserialize_any(v),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        match self.0 {
            Some(x) => x.deserialize_any(v),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"a struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn json_keys_follow_python_json_dumps() {
        assert_eq!(python_float_repr(1.5), "1.5");
        assert_eq!(python_float_repr(1.0), "1.0");
        assert_eq!(python_float_repr(1e16), "1e+16");
        assert_eq!(python_float_repr(1.5e-7), "1.5e-07");
        assert_eq!(python_float_repr(0.0001), "0.0001");
        let v = Value::Dict(vec![
            (Value::Bool(true), Value::None),
            (Value::None, Value::None),
            (Value::Float(2.5), Value::None),
            (
                Value::Tuple(vec![Value::Str("a".into()), Value::Int(1)]),
                Value::None,
            ),
            (
                Value::BigInt("1180591620717411303424".parse().unwrap()),
                Value::Float(f64::NAN),
            ),
        ]);
        assert_eq!(
            v.to_json(),
            serde_json::json!({"true": null, "null": null, "2.5": null, "[\"a\",1]": null,
                "1180591620717411303424": "nan"})
        );
    }
}
