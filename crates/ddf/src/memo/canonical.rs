//! The canonical encoding of memoized arguments: a serde `Serializer` whose output is the input
//! of the key hash ([`super::key`]).
//!
//! Hand-written because no crate offers a canonical, order-independent serde encoding that is
//! stable by contract: serde_json's map order depends on its `preserve_order` feature (any crate
//! in the build may turn it on), cannot key maps by non-strings and writes NaN as `null`.
//! Every value is a tag byte followed by a self-delimiting body: strings and names are
//! length-prefixed, compound values end with a closing byte that no value starts with. So the
//! encoding is prefix-free and two values encode equally only when serde saw the same data.
//! Integers of every width share one tag (their value, as i128 or u128), so widening an
//! argument from u32 to u64 keeps its keys. Map entries are sorted by their encoded key.
//!
//! Frozen: a change of a single output byte orphans every stored memo entry, so it must come
//! with a new `KEY_FORMAT` (in [`super::key`]).

use std::fmt;

use serde::Serialize;

/// The encoder: serialize a value into it with `value.serialize(&mut canon)`.
#[derive(Default)]
pub(crate) struct Canon {
    pub(crate) out: Vec<u8>,
}

/// An argument's `Serialize` implementation reported an error.
#[derive(Debug)]
pub(crate) struct CanonError(String);

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl serde::ser::Error for CanonError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CanonError(msg.to_string())
    }
}

pub(crate) type CResult = std::result::Result<(), CanonError>;

impl Canon {
    /// Room for a typical call's identity and arguments without regrowing.
    pub(crate) fn new() -> Self {
        Canon {
            out: Vec::with_capacity(256),
        }
    }
    /// Appends one tag byte (the key derivation brackets its argument list with them).
    #[inline]
    pub(crate) fn tag(&mut self, t: u8) {
        self.out.push(t);
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.out.extend_from_slice(b);
    }
    #[inline]
    fn int(&mut self, v: i128) -> CResult {
        self.tag(b'i');
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
}

/// A sequence, tuple or struct in progress: elements are appended in order.
pub(crate) struct Seq<'a> {
    c: &'a mut Canon,
    close: u8,
}

impl Seq<'_> {
    fn elem<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        v.serialize(&mut *self.c)
    }
    fn field<T: Serialize + ?Sized>(&mut self, name: &str, v: &T) -> CResult {
        self.c.bytes(name.as_bytes());
        v.serialize(&mut *self.c)
    }
    fn end(self) -> CResult {
        self.c.tag(self.close);
        Ok(())
    }
}

/// A map in progress. Entries are written in place; `entries` remembers where each key and
/// value start and end, and `end` reorders them by their encoded bytes only when they are not
/// already sorted (a `BTreeMap` is): no allocation per entry on the hot path.
pub(crate) struct Map<'a> {
    c: &'a mut Canon,
    start: usize,
    /// (key start, value start, value end) offsets into `c.out`.
    entries: Vec<(usize, usize, usize)>,
    key_start: Option<usize>,
}

impl<'a> serde::Serializer for &'a mut Canon {
    type Ok = ();
    type Error = CanonError;
    type SerializeSeq = Seq<'a>;
    type SerializeTuple = Seq<'a>;
    type SerializeTupleStruct = Seq<'a>;
    type SerializeTupleVariant = Seq<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Seq<'a>;
    type SerializeStructVariant = Seq<'a>;

    fn serialize_bool(self, v: bool) -> CResult {
        self.tag(b'b');
        self.tag(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> CResult {
        self.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> CResult {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> CResult {
        self.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> CResult {
        self.int(v.into())
    }
    fn serialize_i128(self, v: i128) -> CResult {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> CResult {
        self.int(v.into())
    }
    fn serialize_u16(self, v: u16) -> CResult {
        self.int(v.into())
    }
    fn serialize_u32(self, v: u32) -> CResult {
        self.int(v.into())
    }
    fn serialize_u64(self, v: u64) -> CResult {
        self.int(v.into())
    }
    fn serialize_u128(self, v: u128) -> CResult {
        match i128::try_from(v) {
            Ok(i) => self.int(i),
            Err(_) => {
                self.tag(b'q');
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
        }
    }
    fn serialize_f32(self, v: f32) -> CResult {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> CResult {
        self.tag(b'f');
        // One NaN: payload bits carry no meaning a caller could rely on.
        let bits = if v.is_nan() {
            f64::NAN.to_bits()
        } else {
            v.to_bits()
        };
        self.out.extend_from_slice(&bits.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> CResult {
        self.tag(b'c');
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> CResult {
        self.tag(b'"');
        self.bytes(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> CResult {
        self.tag(b'y');
        self.bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> CResult {
        self.tag(b'n');
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> CResult {
        self.tag(b's');
        value.serialize(self)
    }
    fn serialize_unit(self) -> CResult {
        self.tag(b'u');
        Ok(())
    }
    fn serialize_unit_struct(self, name: &'static str) -> CResult {
        self.tag(b'U');
        self.bytes(name.as_bytes());
        Ok(())
    }
    fn serialize_unit_variant(self, name: &'static str, _i: u32, variant: &'static str) -> CResult {
        self.tag(b'v');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> CResult {
        self.tag(b'N');
        self.bytes(name.as_bytes());
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> CResult {
        self.tag(b'w');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'[');
        Ok(Seq {
            c: self,
            close: b']',
        })
    }
    fn serialize_tuple(self, _len: usize) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'(');
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'T');
        self.bytes(name.as_bytes());
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'V');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(Seq {
            c: self,
            close: b')',
        })
    }
    fn serialize_map(self, len: Option<usize>) -> std::result::Result<Map<'a>, CanonError> {
        self.tag(b'{');
        let start = self.out.len();
        Ok(Map {
            c: self,
            start,
            entries: Vec::with_capacity(len.unwrap_or(0)),
            key_start: None,
        })
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'S');
        self.bytes(name.as_bytes());
        Ok(Seq {
            c: self,
            close: b'}',
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> std::result::Result<Seq<'a>, CanonError> {
        self.tag(b'W');
        self.bytes(name.as_bytes());
        self.bytes(variant.as_bytes());
        Ok(Seq {
            c: self,
            close: b'}',
        })
    }
}

impl serde::ser::SerializeSeq for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTuple for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTupleStruct for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeTupleVariant for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> CResult {
        self.elem(v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeStruct for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> CResult {
        self.field(name, v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeStructVariant for Seq<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, name: &'static str, v: &T) -> CResult {
        self.field(name, v)
    }
    fn end(self) -> CResult {
        Seq::end(self)
    }
}

impl serde::ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> CResult {
        self.key_start = Some(self.c.out.len());
        key.serialize(&mut *self.c)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> CResult {
        let ks = self
            .key_start
            .take()
            .ok_or_else(|| CanonError("a map value came without its key".to_owned()))?;
        let vs = self.c.out.len();
        value.serialize(&mut *self.c)?;
        self.entries.push((ks, vs, self.c.out.len()));
        Ok(())
    }
    fn end(self) -> CResult {
        let out = &mut self.c.out;
        let entry = |buf: &[u8], &(ks, vs, ve): &(usize, usize, usize)| -> (Vec<u8>, Vec<u8>) {
            (buf[ks..vs].to_vec(), buf[vs..ve].to_vec())
        };
        let in_order = |buf: &[u8], a: &(usize, usize, usize), b: &(usize, usize, usize)| {
            (&buf[a.0..a.1], &buf[a.1..a.2]) <= (&buf[b.0..b.1], &buf[b.1..b.2])
        };
        let sorted = self.entries.windows(2).all(|w| in_order(out, &w[0], &w[1]));
        if !sorted {
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
                self.entries.iter().map(|e| entry(out, e)).collect();
            pairs.sort_unstable();
            out.truncate(self.start);
            for (k, v) in &pairs {
                out.extend_from_slice(k);
                out.extend_from_slice(v);
            }
        }
        out.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        let mut c = Canon::new();
        v.serialize(&mut c).unwrap();
        c.out
    }

    #[test]
    fn maps_are_order_independent() {
        let a: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let mut b: HashMap<String, u32> = HashMap::new();
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), i);
        }
        let c: BTreeMap<String, u32> = a.clone().into_iter().collect();
        assert_eq!(enc(&a), enc(&b));
        assert_eq!(enc(&a), enc(&c));
    }

    #[test]
    fn distinct_values_encode_differently() {
        let vals: Vec<Vec<u8>> = vec![
            enc(&("a", "bc")),
            enc(&("ab", "c")),
            enc(&vec!["a", "b"]),
            enc(&vec!["ab"]),
            enc(&Vec::<String>::new()),
            enc(&Some("")),
            enc(&None::<String>),
            enc(""),
            enc(&0u8),
            enc(&0.0f64),
            enc(&-0.0f64),
            enc(&false),
            enc(&()),
            enc(&(1u8,)),
            enc(&vec![vec![1u8], vec![]]),
            enc(&vec![vec![], vec![1u8]]),
        ];
        for (i, a) in vals.iter().enumerate() {
            for (j, b) in vals.iter().enumerate() {
                assert_eq!(i == j, a == b, "{i} vs {j}");
            }
        }
    }

    proptest::proptest! {
        /// Equal encodings only for equal values, whatever the nesting.
        #[test]
        fn encoding_is_injective(
            a in proptest::collection::vec(proptest::collection::btree_map(".{0,3}", proptest::option::of(0u8..3), 0..3), 0..3),
            b in proptest::collection::vec(proptest::collection::btree_map(".{0,3}", proptest::option::of(0u8..3), 0..3), 0..3),
        ) {
            proptest::prop_assert_eq!(enc(&a) == enc(&b), a == b);
        }

        /// A HashMap encodes as the BTreeMap of the same entries.
        #[test]
        fn hash_maps_encode_sorted(m in proptest::collection::hash_map(".{0,4}", 0u32..9, 0..8)) {
            let sorted: BTreeMap<_, _> = m.clone().into_iter().collect();
            proptest::prop_assert_eq!(enc(&m), enc(&sorted));
        }
    }

    #[test]
    fn map_layout_is_sorted_entries_in_braces() {
        let m: HashMap<&str, u32> = [("b", 1), ("a", 2), ("c", 0)].into();
        let mut want = vec![b'{'];
        for (k, v) in [("a", 2u32), ("b", 1), ("c", 0)] {
            want.extend(enc(k));
            want.extend(enc(&v));
        }
        want.push(b'}');
        assert_eq!(enc(&m), want);
        // Nested maps in keys and values are sorted too.
        let nested: HashMap<u8, HashMap<&str, u8>> =
            [(2, [("y", 1), ("x", 2)].into()), (1, HashMap::new())].into();
        let sorted: BTreeMap<u8, BTreeMap<&str, u8>> =
            [(2, [("y", 1), ("x", 2)].into()), (1, BTreeMap::new())].into();
        assert_eq!(enc(&nested), enc(&sorted));
    }

    #[test]
    fn integer_widths_share_keys() {
        assert_eq!(enc(&7u8), enc(&7i64));
        assert_eq!(enc(&u128::MAX), enc(&u128::MAX));
        assert_ne!(enc(&u128::MAX), enc(&-1i128));
    }

    /// The encoding is frozen: a change here orphans every stored memo entry, so it must come
    /// with a new KEY_FORMAT. (`key::tests::keys_are_stable` holds a golden hash recorded from
    /// this code; this test pins the bytes it hashes.)
    #[test]
    fn encoding_bytes_are_pinned() {
        let mut want = vec![b'(', b'i'];
        want.extend_from_slice(&1i128.to_le_bytes());
        want.push(b'"');
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b'x');
        want.push(b')');
        assert_eq!(enc(&(1u32, "x")), want);
    }
}
