//! Unit tests of the pickle codec on fixed bytes (CPython 3.11 output captured with
//! `pickle.dumps`). The differential tests against a live python3 are in `tests/it/pickle.rs`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::*;

fn s(x: &str) -> Value {
    Value::Str(x.to_owned())
}

#[test]
fn empty_bytes_at_every_protocol() {
    let cases: [&[u8]; 6] = [
        b"c__builtin__\nbytes\np0\n(tRp1\n.",
        b"c__builtin__\nbytes\nq\x00)Rq\x01.",
        b"\x80\x02c__builtin__\nbytes\nq\x00)Rq\x01.",
        b"\x80\x03C\x00q\x00.",
        b"\x80\x04\x95\x04\x00\x00\x00\x00\x00\x00\x00C\x00\x94.",
        b"\x80\x05\x95\x04\x00\x00\x00\x00\x00\x00\x00C\x00\x94.",
    ];
    for c in cases {
        assert_eq!(from_slice_value(c).unwrap(), Value::Bytes(vec![]), "{c:?}");
    }
    // b'ab\xff' at protocols 0 and 2 (_codecs.encode with latin1).
    let p0 = b"c_codecs\nencode\np0\n(Vab\xff\np1\nVlatin1\np2\ntp3\nRp4\n.";
    assert_eq!(
        from_slice_value(p0).unwrap(),
        Value::Bytes(b"ab\xff".to_vec())
    );
    let p2 = b"\x80\x02c_codecs\nencode\nq\x00X\x04\x00\x00\x00ab\xc3\xbfq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.";
    assert_eq!(
        from_slice_value(p2).unwrap(),
        Value::Bytes(b"ab\xff".to_vec())
    );
}

#[test]
fn protocol_0_text_forms() {
    let v = from_slice_value(b"Va\\u005cb\\u000a\\u1234\\U0001f600\xe9\np0\n.").unwrap();
    assert_eq!(v, s("a\\b\n\u{1234}\u{1F600}\u{e9}"));
    assert_eq!(
        from_slice_value(b"L1180591620717411303424L\n.").unwrap(),
        Value::BigInt("1180591620717411303424".parse().unwrap())
    );
    assert_eq!(from_slice_value(b"I01\n.").unwrap(), Value::Bool(true));
    assert_eq!(from_slice_value(b"I-5\n.").unwrap(), Value::Int(-5));
    assert!(matches!(from_slice_value(b"Fnan\n.").unwrap(), Value::Float(f) if f.is_nan()));
    assert_eq!(
        from_slice_value(b"F-inf\n.").unwrap(),
        Value::Float(f64::NEG_INFINITY)
    );
    let set = from_slice_value(b"c__builtin__\nset\np0\n((lp1\nI1\naI2\natp2\nRp3\n.").unwrap();
    assert_eq!(set, Value::Set(vec![Value::Int(1), Value::Int(2)]));
}

#[test]
fn shared_and_mutated_after_memoization() {
    // d = {}; d['a'] = 1; [d, d] at protocol 4: the dict is memoized empty, filled later.
    let py = b"\x80\x04\x95\x0e\x00\x00\x00\x00\x00\x00\x00]\x94(}\x94\x8c\x01a\x94K\x01sh\x01e.";
    let d = Value::Dict(vec![(s("a"), Value::Int(1))]);
    assert_eq!(
        from_slice_value(py).unwrap(),
        Value::List(vec![d.clone(), d])
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    ports: Vec<String>,
    volumes: Vec<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    New(i32),
    Tup(u8, String),
    Struct { x: f64 },
}

#[test]
fn serde_round_trips() {
    let r = Record {
        name: "web".into(),
        ports: vec!["8080:80".into()],
        volumes: vec!["/data:/app/data".into()],
    };
    let b = to_vec(&r).unwrap();
    assert_eq!(from_slice::<Record>(&b).unwrap(), r);
    let j: serde_json::Value = from_slice(&b).unwrap();
    assert_eq!(j["volumes"][0], "/data:/app/data");

    for shape in [
        Shape::Unit,
        Shape::New(-7),
        Shape::Tup(3, "x".into()),
        Shape::Struct { x: 1.5 },
    ] {
        let b = to_vec(&shape).unwrap();
        assert_eq!(from_slice::<Shape>(&b).unwrap(), shape);
        // Same shape as serde_json.
        assert_eq!(
            from_slice_value(&b).unwrap().to_json(),
            serde_json::to_value(&shape).unwrap()
        );
    }

    let ints = (
        u64::MAX,
        i64::MIN,
        i128::MIN,
        u128::MAX,
        -1i8,
        70000u32,
        -70000i32,
    );
    let b = to_vec(&ints).unwrap();
    assert_eq!(
        from_slice::<(u64, i64, i128, u128, i8, u32, i32)>(&b).unwrap(),
        ints
    );

    let mut m = BTreeMap::new();
    m.insert(3i64, Some(vec![(1u8, 'c')]));
    m.insert(-1, None);
    let b = to_vec(&m).unwrap();
    assert_eq!(
        from_slice::<BTreeMap<i64, Option<Vec<(u8, char)>>>>(&b).unwrap(),
        m
    );

    // A Python float into f64, a Python int into i64 and into f64.
    assert_eq!(from_slice::<f64>(&to_vec(&2.5f64).unwrap()).unwrap(), 2.5);
    assert_eq!(from_slice::<f64>(&to_vec(&3i64).unwrap()).unwrap(), 3.0);
    assert_eq!(from_slice::<i64>(&to_vec(&3i64).unwrap()).unwrap(), 3);
    let e = from_slice::<i64>(&to_vec(&2.5f64).unwrap()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Type);
    assert!(e.to_string().contains("floating point"), "{e}");

    // A struct from a dict with a missing field names it.
    let e = from_slice::<Record>(&to_vec(&HashMap::from([("name", "x")])).unwrap()).unwrap_err();
    assert!(e.to_string().contains("ports"), "{e}");
}

#[test]
fn value_round_trips_losslessly() {
    let v = Value::List(vec![
        Value::None,
        Value::Bool(false),
        Value::Int(-300),
        Value::BigInt(
            "-123456789012345678901234567890123456789012345"
                .parse()
                .unwrap(),
        ),
        Value::Float(-0.0),
        s("é"),
        Value::Bytes(vec![0, 255]),
        Value::ByteArray(vec![]),
        Value::ByteArray(vec![1, 2]),
        Value::Tuple(vec![]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Tuple(vec![
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
            Value::Int(4),
        ]),
        Value::Set(vec![]),
        Value::Set(vec![Value::Int(1), s("a")]),
        Value::FrozenSet(vec![Value::Tuple(vec![s("x")])]),
        Value::Dict(vec![
            (Value::Tuple(vec![Value::Int(1), s("b")]), Value::None),
            (Value::Int(5), Value::Dict(vec![])),
            (Value::Bytes(b"k".to_vec()), Value::List(vec![])),
        ]),
    ]);
    let b = to_vec(&v).unwrap();
    assert_eq!(from_slice_value(&b).unwrap(), v);
    // Through serde_json, sets and tuples become arrays.
    let j = serde_json::to_value(Value::Set(vec![Value::Int(1)])).unwrap();
    assert_eq!(j, serde_json::json!([1]));
}

#[test]
fn unhashable_keys_are_refused_when_writing() {
    let mut m = BTreeMap::new();
    m.insert(vec![1], 2);
    let e = to_vec(&m).unwrap_err();
    assert!(e.to_string().contains("unhashable"), "{e}");
}

#[test]
fn code_executing_globals_are_refused() {
    for (bytes, needle) in [
        (&b"cos\nsystem\n(Vecho hi\ntR."[..], "os.system"),
        (
            b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R.",
            "builtins.eval",
        ),
        (
            b"cdatetime\ndatetime\n(tR.",
            "unsupported Python type datetime.datetime",
        ),
        (b"cdecimal\nDecimal\n(V1.5\ntR.", "decimal.Decimal"),
        (b"\x80\x02c__main__\nC\n)\x81}b.", "__main__.C"),
    ] {
        let e = from_slice_value(bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn memo_bomb_is_refused_before_expansion() {
    // l0 = [s]; l1 = [l0, l0]; ... 40 levels: 2^40 elements in 200-odd bytes.
    let mut p = b"\x80\x04]\x94\x8c\x01x\x94a".to_vec();
    let mut prev = 0u8;
    for i in 0..40u8 {
        p.extend_from_slice(&[b']', 0x94, b'h', prev, b'a', b'h', prev, b'a']);
        prev = 2 + i;
    }
    p.push(b'.');
    let t = std::time::Instant::now();
    let e = from_slice_value(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    assert!(e.to_string().contains("expands to"), "{e}");
    assert!(t.elapsed().as_secs() < 5);
}

#[test]
fn deep_nesting_is_an_error_not_an_abort() {
    let mut p = b"\x80\x04".to_vec();
    p.extend(std::iter::repeat_n(b'(', 100_000));
    let e = from_slice_value(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit);
    // Nested via APPEND without marks: ]]]]...aaaa.
    let mut p = b"\x80\x04".to_vec();
    p.extend(std::iter::repeat_n(b']', 100_000));
    p.extend(std::iter::repeat_n(b'a', 99_999));
    p.push(b'.');
    let e = from_slice_value(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    // Within the limit it decodes, and into serde_json::Value too.
    let mut p = b"\x80\x04".to_vec();
    p.extend(std::iter::repeat_n(b']', 200));
    p.extend(std::iter::repeat_n(b'a', 199));
    p.push(b'.');
    let _: serde_json::Value = from_slice(&p).unwrap();
}

#[test]
fn recursive_structure_is_an_error() {
    // l = []; l.append(l)
    let e = from_slice_value(b"\x80\x04]\x94h\x00a.").unwrap_err();
    assert!(e.to_string().contains("recursive"), "{e}");
}

#[test]
fn limits_apply() {
    let b = to_vec(&vec!["abc"; 10]).unwrap();
    let l = Limits::default().with_max_elements(5);
    assert_eq!(
        from_slice_value_with_limits(&b, &l).unwrap_err().kind(),
        ErrorKind::Limit
    );
    let l = Limits::default().with_max_decoded_bytes(20);
    assert_eq!(
        from_slice_value_with_limits(&b, &l).unwrap_err().kind(),
        ErrorKind::Limit
    );
    let l = Limits::default().with_max_input_bytes(10);
    assert_eq!(
        from_slice_with_limits::<Vec<String>>(&b, &l)
            .unwrap_err()
            .kind(),
        ErrorKind::Limit
    );
    let big = to_vec(&Value::BigInt(BigInt::from_le_bytes(&[1; 100]))).unwrap();
    let l = Limits::default().with_max_int_bytes(64);
    assert_eq!(
        from_slice_value_with_limits(&big, &l).unwrap_err().kind(),
        ErrorKind::Limit
    );
}

#[test]
fn malformed_inputs_say_where() {
    for (bytes, needle) in [
        (&b""[..], "no STOP"),
        (b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f", "exceeds"),
        (
            b"\x80\x04\x8d\xff\xff\x00\x00\x00\x00\x00\x00",
            "declares 65535 bytes",
        ),
        (b"\x80\x04\x8c\x05ab", "declares 5 bytes"),
        (b"\xff.", "unknown opcode 0xff"),
        (b"\x80\x04\x8c\x02\xc3\x28.", "UTF-8"),
        (b"\x80\x04h\x05.", "memo entry 5"),
        (b"\x80\x04a.", "stack underflow"),
        (b"\x80\x09N.", "protocol 9"),
        (b"\x80\x04K\x01K\x02K\x03s.", "SETITEM on a int"),
    ] {
        let e = from_slice_value(bytes).unwrap_err();
        assert!(e.to_string().contains(needle), "{bytes:?}: {e}");
    }
}
