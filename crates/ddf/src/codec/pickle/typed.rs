//! A serde `Deserializer` reading straight from the decoder's arena, for typed targets: no
//! intermediate [`super::Value`], and strings are handed to serde as borrowed slices of the
//! input (a struct's field names cost no allocation).
//!
//! It recurses along the data, as every serde deserializer does, but only after the decoder
//! has checked the structure: it counts its depth and stops at `Limits::max_depth`, so the
//! recursion is bounded by the limit, never by the input.

use serde::de::{self, DeserializeSeed, Unexpected, Visitor};

use super::de::{Id, Machine, NIL, Node, Seq, depth_error, global_value_error};
use super::{ErrorKind, PickleError};

pub(super) struct ArenaDe<'m, 'de> {
    pub(super) m: &'m mut Machine<'de>,
    pub(super) id: Id,
    pub(super) depth: usize,
    /// The node or an ancestor is reached more than once: clone instead of moving.
    pub(super) shared: bool,
}

impl<'m, 'de> ArenaDe<'m, 'de> {
    fn node(&mut self) -> (Node<'de>, bool) {
        let shared = self.shared || self.m.s.uses[self.id] > 1;
        (self.m.take_node(self.id, shared), shared)
    }

    fn enter(&self) -> Result<usize, PickleError> {
        if self.depth >= self.m.limits.max_depth {
            return Err(depth_error(self.m.limits));
        }
        Ok(self.depth + 1)
    }
}

fn unexpected<'a>(node: &'a Node<'_>) -> Unexpected<'a> {
    match node {
        Node::None => Unexpected::Unit,
        Node::Bool(b) => Unexpected::Bool(*b),
        Node::Int(i) => Unexpected::Signed(*i),
        Node::Float(f) => Unexpected::Float(*f),
        Node::Str(s) => Unexpected::Str(s),
        Node::StrRef(x) => Unexpected::Str(x),
        Node::Bytes(b) | Node::ByteArray(b) => Unexpected::Bytes(b),
        Node::BytesRef(b) | Node::ByteArrayRef(b) => Unexpected::Bytes(b),
        Node::Dict(_) => Unexpected::Map,
        Node::BigInt(_) => Unexpected::Other("an int too large for 128 bits"),
        _ => Unexpected::Seq,
    }
}

impl<'de> de::Deserializer<'de> for ArenaDe<'_, 'de> {
    type Error = PickleError;

    fn deserialize_any<V: Visitor<'de>>(mut self, v: V) -> Result<V::Value, PickleError> {
        let (node, shared) = self.node();
        match node {
            Node::None => v.visit_unit(),
            Node::Bool(b) => v.visit_bool(b),
            Node::Int(i) => v.visit_i64(i),
            Node::BigInt(ref n) => {
                if let Some(u) = n.to_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.to_i128() {
                    v.visit_i128(i)
                } else if let Some(u) = n.to_u128() {
                    v.visit_u128(u)
                } else {
                    Err(de::Error::invalid_type(unexpected(&node), &v))
                }
            }
            Node::Float(f) => v.visit_f64(f),
            Node::StrRef(x) => v.visit_borrowed_str(x),
            Node::Str(s) => v.visit_string(s),
            Node::BytesRef(b) | Node::ByteArrayRef(b) => v.visit_borrowed_bytes(b),
            Node::Bytes(b) | Node::ByteArray(b) => v.visit_byte_buf(b),
            Node::List(seq) | Node::Tuple(seq) | Node::Set(seq) | Node::FrozenSet(seq) => {
                let depth = self.enter()?;
                let mut access = Children {
                    m: self.m,
                    cursor: seq.head,
                    remaining: seq.len,
                    depth,
                    shared,
                };
                let r = v.visit_seq(&mut access)?;
                if access.remaining > 0 {
                    return Err(de::Error::invalid_length(seq.len, &"fewer elements"));
                }
                Ok(r)
            }
            Node::Dict(seq) => {
                let depth = self.enter()?;
                let mut access = Children {
                    m: self.m,
                    cursor: seq.head,
                    remaining: seq.len / 2,
                    depth,
                    shared,
                };
                let r = v.visit_map(&mut access)?;
                if access.remaining > 0 {
                    return Err(de::Error::invalid_length(seq.len / 2, &"fewer entries"));
                }
                Ok(r)
            }
            Node::Global(_) => Err(global_value_error()),
            Node::Taken => Err(PickleError::new(
                ErrorKind::Malformed,
                "internal: a node was used more often than counted",
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        match self.m.nodes[self.id] {
            Node::None => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, PickleError> {
        // `BigInt`'s own Deserialize: any size, as decimal text.
        if name == super::value::BIGINT_TOKEN
            && let Node::BigInt(n) = &self.m.nodes[self.id]
        {
            return v.visit_string(super::value::bigint_text(n));
        }
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        // serde_json's external tagging: "Variant" or {"Variant": content}.
        match self.m.nodes[self.id] {
            Node::StrRef(_) | Node::Str(_) => v.visit_enum(EnumAccess {
                variant: self,
                content: None,
            }),
            Node::Dict(Seq { head, len: 2, .. }) => {
                let shared = self.shared || self.m.s.uses[self.id] > 1;
                let depth = self.enter()?;
                let key = self.m.s.edges[head];
                let value = self.m.s.edges[key.next].child;
                v.visit_enum(EnumAccess {
                    variant: ArenaDe {
                        m: self.m,
                        id: key.child,
                        depth,
                        shared,
                    },
                    content: Some(value),
                })
            }
            _ => {
                let (node, _) = self.node();
                Err(de::Error::invalid_type(
                    unexpected(&node),
                    &"a variant name (str) or a dict with one entry",
                ))
            }
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, PickleError> {
        v.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The children of a list-like or dict node, in order: a sequence's elements, or a dict's keys
/// and values alternating. `remaining` counts elements, or entries for a dict.
struct Children<'m, 'de> {
    m: &'m mut Machine<'de>,
    cursor: usize,
    remaining: usize,
    depth: usize,
    shared: bool,
}

impl<'de> Children<'_, 'de> {
    /// Deserializes the next child; `None` at the end of the list.
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, PickleError> {
        if self.cursor == NIL {
            return Ok(None);
        }
        let e = *self.m.s.edges.get(self.cursor).ok_or_else(|| {
            PickleError::new(ErrorKind::Malformed, "internal: an edge out of the arena")
        })?;
        self.cursor = e.next;
        seed.deserialize(ArenaDe {
            m: &mut *self.m,
            id: e.child,
            depth: self.depth,
            shared: self.shared,
        })
        .map(Some)
    }
}

impl<'de> de::SeqAccess<'de> for Children<'_, 'de> {
    type Error = PickleError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, PickleError> {
        let r = self.next(seed)?;
        if r.is_some() {
            self.remaining -= 1;
        }
        Ok(r)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

impl<'de> de::MapAccess<'de> for Children<'_, 'de> {
    type Error = PickleError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, PickleError> {
        let r = self.next(seed)?;
        if r.is_some() {
            self.remaining -= 1;
        }
        Ok(r)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, PickleError> {
        self.next(seed)?.ok_or_else(|| {
            PickleError::new(ErrorKind::Malformed, "internal: a dict key without a value")
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.remaining)
    }
}

struct EnumAccess<'m, 'de> {
    variant: ArenaDe<'m, 'de>,
    content: Option<Id>,
}

impl<'m, 'de> de::EnumAccess<'de> for EnumAccess<'m, 'de> {
    type Error = PickleError;
    type Variant = VariantAccess<'m, 'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantAccess<'m, 'de>), PickleError> {
        let ArenaDe {
            m,
            id,
            depth,
            shared,
        } = self.variant;
        let name = seed.deserialize(ArenaDe {
            m: &mut *m,
            id,
            depth,
            shared,
        })?;
        Ok((
            name,
            VariantAccess {
                m,
                content: self.content,
                depth,
                shared,
            },
        ))
    }
}

struct VariantAccess<'m, 'de> {
    m: &'m mut Machine<'de>,
    content: Option<Id>,
    depth: usize,
    shared: bool,
}

impl<'m, 'de> VariantAccess<'m, 'de> {
    fn content(self, what: &'static str) -> Result<ArenaDe<'m, 'de>, PickleError> {
        match self.content {
            Some(id) => Ok(ArenaDe {
                m: self.m,
                id,
                depth: self.depth,
                shared: self.shared,
            }),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &what)),
        }
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'_, 'de> {
    type Error = PickleError;

    fn unit_variant(self) -> Result<(), PickleError> {
        match self.content {
            None => Ok(()),
            Some(id) => match &self.m.nodes[id] {
                Node::None => Ok(()),
                other => Err(de::Error::invalid_type(
                    unexpected(other),
                    &"a unit variant",
                )),
            },
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, PickleError> {
        seed.deserialize(self.content("a newtype variant")?)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, PickleError> {
        de::Deserializer::deserialize_any(self.content("a tuple variant")?, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, PickleError> {
        de::Deserializer::deserialize_any(self.content("a struct variant")?, v)
    }
}
