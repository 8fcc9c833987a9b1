//! The CLI's value form: JSON text for any value a cache holds, that `set --json` stores back as
//! the same value.
//!
//! Plain JSON stands for itself: `null`, `true`, numbers, strings, arrays (Python `list`) and
//! objects (`dict` with `str` keys, **in insertion order**). Integers are written with all their
//! digits, whatever their size (`1180591620717411303425`); a number with a fraction or an
//! exponent is a `float` (`1.0`, `1e+16`, as Python writes them). What JSON has no form for is an
//! object with one `$` key:
//!
//! | Python value | form |
//! |---|---|
//! | `bytes` | `{"$bytes": "<base64, standard alphabet, padded>"}` |
//! | `bytearray` | `{"$bytearray": "<base64>"}` |
//! | `tuple` | `{"$tuple": [...]}` |
//! | `set`, `frozenset` | `{"$set": [...]}`, `{"$frozenset": [...]}` |
//! | `nan`, `inf`, `-inf` | `{"$float": "nan"}`, `{"$float": "inf"}`, `{"$float": "-inf"}` |
//! | a `dict` with a key that is not a `str`, or whose only key is one of these `$` names | `{"$dict": [[key, value], ...]}` |
//!
//! So `{"$bytes": "aGk="}` given to `set --json` stores the bytes `b"hi"`, and a dict that
//! really is `{"$bytes": "aGk="}` prints (and is given) as `{"$dict": [["$bytes", "aGk="]]}`.

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ddf::pickle::Value;

const BYTES: &str = "$bytes";
const BYTEARRAY: &str = "$bytearray";
const TUPLE: &str = "$tuple";
const SET: &str = "$set";
const FROZENSET: &str = "$frozenset";
const FLOAT: &str = "$float";
const DICT: &str = "$dict";
const MARKERS: [&str; 7] = [BYTES, BYTEARRAY, TUPLE, SET, FROZENSET, FLOAT, DICT];

/// The CLI form of a value, as one line of JSON text.
pub(crate) fn print(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::None => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::BigInt(n) => out.push_str(&n.to_string()),
        Value::Float(f) if f.is_finite() => {
            // serde_json writes the shortest text that reads back as the same f64, with a
            // fraction or an exponent, so it reads back as a float.
            out.push_str(&serde_json::Value::from(*f).to_string());
        }
        Value::Float(f) => {
            let name = if f.is_nan() {
                "nan"
            } else if *f > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            marker(FLOAT, out, |out| string(name, out));
        }
        Value::Str(s) => string(s, out),
        Value::Bytes(b) => marker(BYTES, out, |out| string(&STANDARD.encode(b), out)),
        Value::ByteArray(b) => marker(BYTEARRAY, out, |out| string(&STANDARD.encode(b), out)),
        Value::List(items) => array(items, out),
        Value::Tuple(items) => marker(TUPLE, out, |out| array(items, out)),
        Value::Set(items) => marker(SET, out, |out| array(items, out)),
        Value::FrozenSet(items) => marker(FROZENSET, out, |out| array(items, out)),
        Value::Dict(pairs) => {
            let plain = pairs.iter().all(|(k, _)| matches!(k, Value::Str(_)))
                && !(pairs.len() == 1
                    && matches!(&pairs[0].0, Value::Str(k) if MARKERS.contains(&k.as_str())));
            if plain {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(k, out);
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            } else {
                marker(DICT, out, |out| {
                    out.push('[');
                    for (i, (k, v)) in pairs.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push('[');
                        write(k, out);
                        out.push(',');
                        write(v, out);
                        out.push(']');
                    }
                    out.push(']');
                });
            }
        }
        // `Value` is non-exhaustive: a kind this CLI does not know yet.
        other => string(&format!("<{}>", other.type_name()), out),
    }
}

fn string(s: &str, out: &mut String) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn array(items: &[Value], out: &mut String) {
    out.push('[');
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write(v, out);
    }
    out.push(']');
}

fn marker(name: &str, out: &mut String, inner: impl FnOnce(&mut String)) {
    out.push('{');
    string(name, out);
    out.push(':');
    inner(out);
    out.push('}');
}

/// Reads the CLI form (any JSON text; the `$` forms above become their Python types).
///
/// # Errors
/// When the text is not JSON, or a `$` form holds the wrong thing (bad base64, a `$dict` entry
/// that is not a `[key, value]` pair...).
pub(crate) fn parse(text: &str) -> anyhow::Result<Value> {
    let v = Value::from_json(text).with_context(|| {
        let shown: String = text.chars().take(80).collect();
        format!("--json: the value is not valid JSON: {shown}")
    })?;
    convert(v).context("--json")
}

fn convert(v: Value) -> anyhow::Result<Value> {
    Ok(match v {
        Value::List(items) => Value::List(convert_all(items)?),
        Value::Dict(mut pairs) => {
            let marker = match pairs.as_slice() {
                [(Value::Str(k), _)] if MARKERS.contains(&k.as_str()) => Some(k.clone()),
                _ => None,
            };
            match (marker, pairs.pop()) {
                (Some(name), Some((_, inner))) => from_marker(&name, inner)?,
                (_, last) => {
                    pairs.extend(last);
                    Value::Dict(
                        pairs
                            .into_iter()
                            .map(|(k, v)| Ok((k, convert(v)?)))
                            .collect::<anyhow::Result<_>>()?,
                    )
                }
            }
        }
        other => other,
    })
}

fn convert_all(items: Vec<Value>) -> anyhow::Result<Vec<Value>> {
    items.into_iter().map(convert).collect()
}

fn from_marker(name: &str, inner: Value) -> anyhow::Result<Value> {
    let base64 = |inner: &Value| -> anyhow::Result<Vec<u8>> {
        match inner {
            Value::Str(s) => STANDARD
                .decode(s)
                .with_context(|| format!("{name}: not standard padded base64")),
            _ => bail!("{name} holds a base64 string"),
        }
    };
    let list = |inner: Value| -> anyhow::Result<Vec<Value>> {
        match inner {
            Value::List(items) => convert_all(items),
            _ => bail!("{name} holds an array"),
        }
    };
    Ok(match name {
        BYTES => Value::Bytes(base64(&inner)?),
        BYTEARRAY => Value::ByteArray(base64(&inner)?),
        TUPLE => Value::Tuple(list(inner)?),
        SET => Value::Set(list(inner)?),
        FROZENSET => Value::FrozenSet(list(inner)?),
        FLOAT => match &inner {
            Value::Str(s) if s == "nan" => Value::Float(f64::NAN),
            Value::Str(s) if s == "inf" => Value::Float(f64::INFINITY),
            Value::Str(s) if s == "-inf" => Value::Float(f64::NEG_INFINITY),
            _ => bail!("$float holds \"nan\", \"inf\" or \"-inf\""),
        },
        _ => {
            let mut pairs = Vec::new();
            for entry in list(inner)? {
                match entry {
                    Value::List(mut kv) if kv.len() == 2 => {
                        let v = kv.pop();
                        let k = kv.pop();
                        if let (Some(k), Some(v)) = (k, v) {
                            pairs.push((k, v));
                        }
                    }
                    _ => bail!("$dict holds [key, value] pairs"),
                }
            }
            Value::Dict(pairs)
        }
    })
}

/// What a `redis` (JSON) backend cannot store as it is: bytes, tuples, sets, non-finite
/// floats, dicts with non-`str` keys. Named, so that `set` refuses instead of storing a changed
/// value (a tuple would come back a list).
pub(crate) fn not_json(v: &Value) -> Option<&'static str> {
    match v {
        Value::Bytes(_) | Value::ByteArray(_) => Some("bytes"),
        Value::Tuple(_) => Some("a tuple"),
        Value::Set(_) | Value::FrozenSet(_) => Some("a set"),
        Value::Float(f) if !f.is_finite() => Some("nan or an infinity"),
        Value::List(items) => items.iter().find_map(not_json),
        Value::Dict(pairs) => pairs.iter().find_map(|(k, v)| match k {
            Value::Str(_) => not_json(v),
            _ => Some("a dict key that is not a string"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for text in [
            "null",
            "true",
            "-7",
            "0",
            "1180591620717411303425",
            "-100000000000000000000000000000000000000000",
            "1.5",
            "1.0",
            "-0.0",
            "1e+16",
            "5e-324",
            "\"hé\\n\"",
            "[]",
            "{}",
            "{\"b\":1,\"a\":2}",
            "{\"$bytes\":\"aGk=\"}",
            "{\"$bytearray\":\"\"}",
            "{\"$tuple\":[1,{\"$tuple\":[]}]}",
            "{\"$set\":[1,2]}",
            "{\"$frozenset\":[\"a\"]}",
            "{\"$float\":\"nan\"}",
            "{\"$float\":\"-inf\"}",
            "{\"$dict\":[[1,\"one\"],[{\"$tuple\":[1,2]},null]]}",
            "{\"$dict\":[[\"$bytes\",\"not bytes\"]]}",
            "{\"$bytes\":\"aGk=\",\"other\":1}",
        ] {
            let v = parse(text).unwrap();
            assert_eq!(print(&v), text, "{v:?}");
            assert_eq!(parse(&print(&v)).unwrap().type_name(), v.type_name());
        }
        assert_eq!(
            parse("{\"$bytes\": \"aGk=\"}").unwrap(),
            Value::Bytes(b"hi".to_vec())
        );
        // Printed compact, as serde_json does; key order kept.
        assert_eq!(
            print(&parse("{ \"z\" : [1, 2],\n \"a\":{}}").unwrap()),
            "{\"z\":[1,2],\"a\":{}}"
        );
    }

    #[test]
    fn bad_forms_are_errors() {
        for text in [
            "{not json",
            "{\"$bytes\": \"!!\"}",
            "{\"$bytes\": 1}",
            "{\"$tuple\": 1}",
            "{\"$float\": \"NaN\"}",
            "{\"$dict\": [[1]]}",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn json_backends_refuse_what_they_would_change() {
        assert_eq!(
            not_json(&parse("{\"a\":[{\"$tuple\":[]}]}").unwrap()),
            Some("a tuple")
        );
        assert_eq!(
            not_json(&parse("{\"$dict\": [[1, 2]]}").unwrap()),
            Some("a dict key that is not a string")
        );
        assert_eq!(
            not_json(&parse("[1180591620717411303425, {\"a\": null}]").unwrap()),
            None
        );
    }
}
