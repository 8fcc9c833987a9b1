//! The pickle codec against CPython: differential tests in both directions over generated
//! values at every protocol (one python3 process per batch of cases, over stdin/stdout), a
//! hostile corpus that must fail fast, arbitrary bytes that must never panic, and the codec as
//! wired into the file backend.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ddf::testing::internals::pickle::{self, BigInt, ErrorKind, Limits, Value};
use ddf::{CacheConfig, CacheManager, Codec};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

// ---- the Python side -----------------------------------------------------------------------

/// Reads JSON lines `{"lit": <python expression>, "data"?: <hex pickle>}`. With `data`, loads
/// it and compares it type-strictly with the literal's value (`eq`); then pickles the value
/// (the loaded one, else the literal's) at protocols 0-5 (`pickles`, hex).
const SCRIPT: &str = r#"
import sys, json, pickle, math
def strict_eq(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(strict_eq(k1, k2) and strict_eq(v1, v2)
                                        for (k1, v1), (k2, v2) in zip(a.items(), b.items()))
    return a == b
env = {'__builtins__': {'float': float, 'bytes': bytes, 'bytearray': bytearray,
                        'set': set, 'frozenset': frozenset}}
for line in sys.stdin:
    req = json.loads(line)
    out = {}
    try:
        # "full": a fixed, trusted literal that may use every builtin (range, str...).
        obj = eval(req['lit'], {} if req.get('full') else env)
        if 'data' in req:
            got = pickle.loads(bytes.fromhex(req['data']))
            out['eq'] = strict_eq(got, obj)
            if not out['eq']:
                out['got'] = repr(got)
            obj = got
        out['pickles'] = [pickle.dumps(obj, protocol=p).hex() for p in range(6)]
    except Exception as e:
        out['error'] = repr(e)
    print(json.dumps(out), flush=True)
"#;

fn python3() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DDF_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = ddf_testkit::which("python3") {
        return Some(p);
    }
    let msg = "python3 is not on PATH: the pickle differential tests cannot run";
    if ddf_testkit::servers_required() {
        panic!("{msg} (DDF_TEST_REQUIRE_SERVERS is set, so this is a failure, not a skip)");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    None
}

#[derive(Debug, Deserialize)]
struct Reply {
    eq: Option<bool>,
    got: Option<String>,
    pickles: Option<Vec<String>>,
    error: Option<String>,
}

/// Runs one python3 over a batch of requests.
fn ask_python(py: &PathBuf, requests: &[serde_json::Value]) -> Vec<Reply> {
    let mut child = Command::new(py)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    // A writer thread: Python answers while we write, and a full pipe must not deadlock us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<Reply> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), requests.len());
    replies
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ---- values as Python literals ---------------------------------------------------------------

/// The Python expression for a value. `canonical` sorts set elements (Python's set order is
/// not insertion order), which makes the text a comparison key.
fn lit(v: &Value, canonical: bool) -> String {
    let items = |xs: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = xs.iter().map(|x| lit(x, canonical)).collect();
        if canonical {
            v.sort();
        }
        v
    };
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::BigInt(n) => n.to_string(),
        Value::Float(f) => format!("float('{f:?}')"),
        Value::Str(s) => serde_json::to_string(s).unwrap(),
        Value::Bytes(b) => format!("bytes.fromhex('{}')", hex(b)),
        Value::ByteArray(b) => format!("bytearray.fromhex('{}')", hex(b)),
        Value::List(xs) => format!(
            "[{}]",
            xs.iter()
                .map(|x| lit(x, canonical))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Tuple(xs) => {
            let parts: Vec<String> = xs.iter().map(|x| lit(x, canonical)).collect();
            match parts.len() {
                1 => format!("({},)", parts[0]),
                _ => format!("({})", parts.join(", ")),
            }
        }
        Value::Set(xs) => format!("set([{}])", items(xs).join(", ")),
        Value::FrozenSet(xs) => format!("frozenset([{}])", items(xs).join(", ")),
        Value::Dict(kv) => format!(
            "{{{}}}",
            kv.iter()
                .map(|(k, v)| format!("{}: {}", lit(k, canonical), lit(v, canonical)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => panic!("no literal for {other:?}"),
    }
}

/// What a value looks like through serde's data model: tuples and sets are sequences,
/// bytearray is bytes.
fn serde_view(v: &Value) -> Value {
    match v {
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
            Value::List(xs.iter().map(serde_view).collect())
        }
        Value::ByteArray(b) => Value::Bytes(b.clone()),
        Value::Dict(kv) => Value::Dict(
            kv.iter()
                .map(|(k, v)| (serde_view(k), serde_view(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn has_huge_int(v: &Value) -> bool {
    match v {
        Value::BigInt(n) => n.to_i128().is_none() && n.to_u128().is_none(),
        Value::List(xs) | Value::Tuple(xs) | Value::Set(xs) | Value::FrozenSet(xs) => {
            xs.iter().any(has_huge_int)
        }
        Value::Dict(kv) => kv.iter().any(|(k, v)| has_huge_int(k) || has_huge_int(v)),
        _ => false,
    }
}

fn canon(v: &Value) -> String {
    lit(v, true)
}

// ---- generators ------------------------------------------------------------------------------

fn arb_int() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        (-300i64..300).prop_map(Value::Int),
        // Any size up to 30 bytes, normalized (Int when it fits).
        prop::collection::vec(any::<u8>(), 0..30).prop_map(|b| Value::int_from_le_bytes(&b)),
    ]
}

fn arb_float() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_map(Value::Float),
        Just(Value::Float(f64::NAN)),
        Just(Value::Float(f64::INFINITY)),
        Just(Value::Float(f64::NEG_INFINITY)),
        Just(Value::Float(-0.0)),
        Just(Value::Float(1e16)),
        Just(Value::Float(5e-324)),
    ]
}

fn arb_str() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::Str),
        "[a-z\\\\\n\r\0\u{1a} ]{0,12}".prop_map(Value::Str),
        Just(Value::Str(String::new())),
        "\\PC{200,300}".prop_map(Value::Str),
    ]
}

fn arb_bytes() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
        Just(Value::Bytes(Vec::new())),
        prop::collection::vec(any::<u8>(), 250..300).prop_map(Value::Bytes),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Value::ByteArray),
        Just(Value::ByteArray(Vec::new())),
    ]
}

/// Values Python can hash and that never compare equal across types (no bool, no float).
fn arb_hashable() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        arb_int(),
        arb_str(),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Tuple),
            prop::collection::vec(inner, 0..3).prop_map(|v| Value::FrozenSet(dedup(v))),
        ]
    })
}

fn dedup(v: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|x| seen.insert(canon(x))).collect()
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        arb_int(),
        arb_float(),
        arb_str(),
        arb_bytes(),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Tuple),
            prop::collection::vec(arb_hashable(), 0..6).prop_map(|v| Value::Set(dedup(v))),
            prop::collection::vec(arb_hashable(), 0..4).prop_map(|v| Value::FrozenSet(dedup(v))),
            prop::collection::vec((arb_hashable(), inner), 0..6).prop_map(|kv| {
                let mut seen = std::collections::HashSet::new();
                Value::Dict(
                    kv.into_iter()
                        .filter(|(k, _)| seen.insert(canon(k)))
                        .collect(),
                )
            }),
        ]
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 6,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- differential tests ----------------------------------------------------------------------

/// Rust writes, Python reads it as the same value, Python writes it back at every protocol,
/// Rust reads each as the same value.
fn rust_python_rust(py: &PathBuf, values: &[Value]) -> Result<(), TestCaseError> {
    let requests: Vec<serde_json::Value> = values
        .iter()
        .map(
            |v| serde_json::json!({"lit": lit(v, false), "data": hex(&pickle::to_vec(v).unwrap())}),
        )
        .collect();
    for (v, r) in values.iter().zip(ask_python(py, &requests)) {
        prop_assert!(
            r.error.is_none(),
            "python: {:?} for {}",
            r.error,
            lit(v, false)
        );
        prop_assert_eq!(
            r.eq,
            Some(true),
            "python read {:?} for {}",
            r.got,
            lit(v, false)
        );
        for (proto, p) in r.pickles.unwrap().iter().enumerate() {
            let back = pickle::from_slice_value(&unhex(p))
                .map_err(|e| TestCaseError::fail(format!("protocol {proto}: {e}")))?;
            prop_assert_eq!(canon(&back), canon(v), "protocol {}", proto);
        }
    }
    Ok(())
}

/// Python builds the value from a literal (sharing it: `[x, x, (x,)]`) and writes it at every
/// protocol; Rust reads each, then writes what it read; Python reads that back as equal.
fn python_rust_python(py: &PathBuf, values: &[Value]) -> Result<(), TestCaseError> {
    let shared: Vec<Value> = values
        .iter()
        .map(|v| Value::List(vec![v.clone(), v.clone(), Value::Tuple(vec![v.clone()])]))
        .collect();
    let requests: Vec<serde_json::Value> = values
        .iter()
        .map(|v| serde_json::json!({"lit": format!("(lambda x: [x, x, (x,)])({})", lit(v, false))}))
        .collect();
    let mut second = Vec::new();
    for ((expected, v), r) in shared.iter().zip(values).zip(ask_python(py, &requests)) {
        prop_assert!(
            r.error.is_none(),
            "python: {:?} for {}",
            r.error,
            lit(v, false)
        );
        for (proto, p) in r.pickles.unwrap().iter().enumerate() {
            let got = pickle::from_slice_value(&unhex(p))
                .map_err(|e| TestCaseError::fail(format!("protocol {proto}: {e}")))?;
            prop_assert_eq!(canon(&got), canon(expected), "protocol {}", proto);
            // The typed path (serde straight from the arena) sees the same data, minus the
            // distinctions serde has no words for.
            match pickle::from_slice::<Value>(&unhex(p)) {
                Ok(typed) => prop_assert_eq!(
                    canon(&typed),
                    canon(&serde_view(&got)),
                    "typed, protocol {}",
                    proto
                ),
                // serde's integers stop at 128 bits.
                Err(e) if has_huge_int(&got) => {
                    prop_assert!(e.to_string().contains("128 bits"), "{}", e)
                }
                Err(e) => return Err(TestCaseError::fail(format!("typed, protocol {proto}: {e}"))),
            }
            second.push(serde_json::json!({
                "lit": lit(expected, false),
                "data": hex(&pickle::to_vec(&got).unwrap()),
            }));
        }
    }
    for r in ask_python(py, &second) {
        prop_assert!(r.error.is_none(), "python: {:?}", r.error);
        prop_assert_eq!(r.eq, Some(true), "python read back {:?}", r.got);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn rust_to_python_to_rust_at_every_protocol(values in prop::collection::vec(arb_value(), 1..48)) {
        if let Some(py) = python3() {
            rust_python_rust(&py, &values)?;
        }
    }

    #[test]
    fn python_to_rust_to_python_at_every_protocol_with_sharing(values in prop::collection::vec(arb_value(), 1..48)) {
        if let Some(py) = python3() {
            python_rust_python(&py, &values)?;
        }
    }

    /// Arbitrary bytes, and mutations of valid pickles, never panic and never take long.
    #[test]
    fn arbitrary_bytes_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        v in arb_value(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = pickle::from_slice_value(&raw);
        let mut b = pickle::to_vec(&v).unwrap();
        let _ = pickle::from_slice_value(&b[..cut.index(b.len() + 1)]);
        for (i, x) in flips {
            let i = i.index(b.len());
            b[i] = x;
        }
        let _ = pickle::from_slice_value(&b);
        let _ = pickle::from_slice::<serde_json::Value>(&b);
    }
}

#[test]
fn python_fixed_shapes_decode_at_every_protocol() {
    let Some(py) = python3() else { return };
    // The shapes the issue names, built by Python itself.
    let cases = [
        "None",
        "[True, False, 0, -1, 2**70, -2**70, 2**64, 1.5, float('nan'), float('inf'), '', 'é😀']",
        "[b'', bytearray(b''), b'\\x00\\xff', bytearray(b'ab'), set(), frozenset(), {1, 2}, frozenset({'a'})]",
        "{'a': 1, 2: 'b', (1, 'x'): [None], b'k': {}}",
        "(lambda t: [t, t])(('x', 'y'))",
        "(lambda d: {'a': d, 'b': [d, d]})({'k': [1, 2]})",
        "{'name': 'web', 'ports': ['8080:80'], 'volumes': ['/data:/app/data']}",
        "[(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]",
        "['x' * 300, b'y' * 300, list(range(2000)), {i: str(i) for i in range(1500)}]",
    ];
    let requests: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| serde_json::json!({ "lit": c, "full": true }))
        .collect();
    for (case, r) in cases.iter().zip(ask_python(&py, &requests)) {
        assert!(r.error.is_none(), "{case}: {:?}", r.error);
        let pickles = r.pickles.unwrap();
        let first = pickle::from_slice_value(&unhex(&pickles[0])).unwrap();
        for (proto, p) in pickles.iter().enumerate() {
            let v = pickle::from_slice_value(&unhex(p))
                .unwrap_or_else(|e| panic!("{case} at protocol {proto}: {e}"));
            assert_eq!(canon(&v), canon(&first), "{case} at protocol {proto}");
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Service {
    name: String,
    ports: Vec<String>,
    volumes: Vec<String>,
    replicas: Option<u32>,
    cpu: f64,
}

#[test]
fn python_reads_typed_rust_values_as_natural_python_values() {
    let Some(py) = python3() else { return };
    let svc = Service {
        name: "web".into(),
        ports: vec!["8080:80".into()],
        volumes: vec![],
        replicas: None,
        cpu: 0.5,
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            pickle::to_vec(&svc).unwrap(),
            "{'name': 'web', 'ports': ['8080:80'], 'volumes': [], 'replicas': None, 'cpu': 0.5}",
        ),
        (
            pickle::to_vec(&(1u8, "a", [true; 2])).unwrap(),
            "(1, 'a', (True, True))",
        ),
        (pickle::to_vec(&u64::MAX).unwrap(), "18446744073709551615"),
        (
            pickle::to_vec(&i128::MIN).unwrap(),
            "-170141183460469231731687303715884105728",
        ),
        (pickle::to_vec(&()).unwrap(), "None"),
        (pickle::to_vec(&Some(3.0f32)).unwrap(), "3.0"),
        (
            pickle::to_vec(&std::collections::BTreeMap::from([(1, "a"), (2, "b")])).unwrap(),
            "{1: 'a', 2: 'b'}",
        ),
        (
            pickle::to_vec(&serde_json::json!({"a": [1, 2.5, null, "x"]})).unwrap(),
            "{'a': [1, 2.5, None, 'x']}",
        ),
    ];
    let requests: Vec<serde_json::Value> = cases
        .iter()
        .map(|(b, l)| serde_json::json!({"lit": l, "data": hex(b)}))
        .collect();
    for ((_, l), r) in cases.iter().zip(ask_python(&py, &requests)) {
        assert!(r.error.is_none(), "{l}: {:?}", r.error);
        assert_eq!(r.eq, Some(true), "{l}: python read {:?}", r.got);
    }
}

// ---- hostile corpus ------------------------------------------------------------------------

fn hostile_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut c: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let rep = |b: u8, n: usize| std::iter::repeat_n(b, n).collect::<Vec<u8>>();
    c.push((
        "100k MARKs",
        [b"\x80\x04".to_vec(), rep(b'(', 100_000)].concat(),
    ));
    c.push((
        "100k nested lists via MARK/APPENDS",
        [
            b"\x80\x04".to_vec(),
            [b']', b'('].repeat(100_000),
            rep(b'e', 100_000),
            b".".to_vec(),
        ]
        .concat(),
    ));
    c.push((
        "100k nested lists via APPEND",
        [
            b"\x80\x04".to_vec(),
            rep(b']', 100_000),
            rep(b'a', 99_999),
            b".".to_vec(),
        ]
        .concat(),
    ));
    c.push((
        "100k nested tuples",
        [b"\x80\x04N".to_vec(), rep(0x85, 100_000), b".".to_vec()].concat(),
    ));
    c.push(("100k nested lists through the memo", {
        let mut p = b"\x80\x04]\x94".to_vec();
        for i in 0..100_000u32 {
            p.extend_from_slice(b"]\x94j");
            p.extend_from_slice(&i.to_le_bytes());
            p.push(b'a');
        }
        p.push(b'.');
        p
    }));
    // 2^60 elements from about 300 bytes.
    let mut bomb = b"\x80\x04]\x94\x8c\x01x\x94a".to_vec();
    let mut prev = 0u8;
    for i in 0..60u8 {
        bomb.extend_from_slice(&[
            b']', 0x94, b'(', b'h', prev, b'h', prev, b'h', prev, b'h', prev, b'e',
        ]);
        prev = 2 + i;
    }
    bomb.push(b'.');
    c.push(("memo bomb", bomb));
    // Same, with a 1 MiB string at the bottom: bytes limit.
    let mut bomb2 = b"\x80\x04\x8e\x00\x00\x10\x00\x00\x00\x00\x00".to_vec();
    bomb2.extend(rep(b'x', 1 << 20));
    bomb2.extend_from_slice(b"\x94");
    let mut prev = 0u8;
    for i in 0..12u8 {
        bomb2.extend_from_slice(&[b']', 0x94, b'(', b'h', prev, b'h', prev, b'e']);
        prev = 1 + i;
    }
    bomb2.push(b'.');
    c.push(("string memo bomb", bomb2));
    c.push((
        "BINUNICODE8 declares 2^63",
        b"\x80\x04\x8d\x00\x00\x00\x00\x00\x00\x00\x80.".to_vec(),
    ));
    c.push((
        "BINBYTES8 declares 2^40",
        b"\x80\x04\x8e\x00\x00\x00\x00\x00\x01\x00\x00.".to_vec(),
    ));
    c.push((
        "BINUNICODE declares 4 GiB",
        b"\x80\x04X\xff\xff\xff\xffabc.".to_vec(),
    ));
    c.push((
        "BYTEARRAY8 declares 2^62",
        b"\x80\x05\x96\x00\x00\x00\x00\x00\x00\x00\x40.".to_vec(),
    ));
    c.push(("LONG4 of 2 GiB", b"\x80\x04\x8b\xff\xff\xff\x7f.".to_vec()));
    c.push((
        "LONG4 negative length",
        b"\x80\x04\x8b\xff\xff\xff\xff.".to_vec(),
    ));
    c.push((
        "huge decimal int",
        [b"L".to_vec(), rep(b'9', 100_000), b"L\n.".to_vec()].concat(),
    ));
    c.push((
        "FRAME declares 2^63",
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x80N.".to_vec(),
    ));
    c.push(("memo get undefined", b"\x80\x04j\x00\x00\x00\x01.".to_vec()));
    c.push(("truncated at every byte", Vec::new())); // expanded below
    c.push(("unknown opcode", b"\x80\x04\xff.".to_vec()));
    c.push(("unknown opcode 0x99", b"\x80\x05\x99.".to_vec()));
    c.push(("protocol 6", b"\x80\x06N.".to_vec()));
    c.push((
        "os.system via GLOBAL",
        b"cos\nsystem\n(Vtouch /tmp/pwned\ntR.".to_vec(),
    ));
    c.push((
        "posix.system via STACK_GLOBAL",
        b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x04true\x85R.".to_vec(),
    ));
    c.push((
        "builtins.eval",
        b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0b__import__('os')\x85R.".to_vec(),
    ));
    c.push((
        "__builtin__.exec",
        b"c__builtin__\nexec\n(Vprint(1)\ntR.".to_vec(),
    ));
    c.push((
        "getattr chain",
        b"cbuiltins\ngetattr\n(cbuiltins\nlist\nVappend\ntR.".to_vec(),
    ));
    c.push((
        "subprocess.Popen",
        b"csubprocess\nPopen\n((Vls\nltR.".to_vec(),
    ));
    c.push((
        "copyreg._reconstructor",
        b"ccopy_reg\n_reconstructor\n(c__main__\nC\nc__builtin__\nobject\nNtR.".to_vec(),
    ));
    c.push(("NEWOBJ", b"\x80\x02c__builtin__\nset\n)\x81.".to_vec()));
    c.push(("BUILD", b"\x80\x02}}b.".to_vec()));
    c.push(("INST", b"(i__main__\nC\n.".to_vec()));
    c.push(("persistent id", b"\x80\x04\x8c\x01xQ.".to_vec()));
    c.push(("PERSID", b"P1\n.".to_vec()));
    c.push(("EXT1", b"\x80\x02\x82\x01.".to_vec()));
    c.push(("NEXT_BUFFER", b"\x80\x05\x97.".to_vec()));
    c.push((
        "bare global as value",
        b"\x80\x04\x8c\x08builtins\x8c\x03set\x93.".to_vec(),
    ));
    c.push((
        "set of a str arg",
        b"c__builtin__\nset\n(Vabc\ntR.".to_vec(),
    ));
    c.push((
        "bad UTF-8 BINUNICODE",
        b"\x80\x04X\x02\x00\x00\x00\xc3\x28.".to_vec(),
    ));
    c.push(("overlong UTF-8", b"\x80\x04\x8c\x02\xc0\x80.".to_vec()));
    c.push((
        "surrogate in UTF-8",
        b"\x80\x04\x8c\x03\xed\xa0\x80.".to_vec(),
    ));
    c.push(("lone surrogate escape", b"V\\ud800\n.".to_vec()));
    c.push(("bad escape", b"V\\uZZZZ\n.".to_vec()));
    c.push(("non-ASCII py2 str", b"U\x01\xff.".to_vec()));
    c.push((
        "latin-1 above 255",
        b"c_codecs\nencode\n(V\\u0100\nVlatin1\ntR.".to_vec(),
    ));
    c.push(("no STOP", b"\x80\x04N".to_vec()));
    c.push(("empty", Vec::new()));
    c.push(("STOP on empty stack", b".".to_vec()));
    c.push(("POP_MARK without MARK", b"1.".to_vec()));
    c.push(("APPEND across a MARK", b"](Na.".to_vec()));
    c.push(("odd SETITEMS", b"}(Nu.".to_vec()));
    c.push(("unhashable dict key", b"}]Ns.".to_vec()));
    c.push(("unhashable set element", b"\x80\x04\x8f(]\x90.".to_vec()));
    c.push(("recursive list", b"\x80\x04]\x94h\x00a.".to_vec()));
    c.push(("recursive dict", b"\x80\x04}\x94(K\x01h\x00u.".to_vec()));
    c.push(("REDUCE on a list", b"](tR.".to_vec()));
    c.push(("REDUCE with list args", b"c__builtin__\nset\n]R.".to_vec()));
    c.push(("FLOAT garbage", b"Fabc\n.".to_vec()));
    c.push(("INT garbage", b"I12x\n.".to_vec()));
    c.push(("GET text garbage", b"g-1\n.".to_vec()));
    c.push(("TUPLE3 underflow", b"\x80\x02N\x87.".to_vec()));
    c.push(("64 MiB + 1 input", rep(b'N', (64 << 20) + 1)));
    c
}

#[test]
fn hostile_corpus_fails_fast_with_errors() {
    let start = Instant::now();
    let mut truncations = 0;
    for (name, bytes) in hostile_corpus() {
        if name == "truncated at every byte" {
            let good = pickle::to_vec(&serde_json::json!({
                "name": "web", "ports": ["8080:80"], "n": [1, 2.5, 1u64 << 63, null, true],
                "b": Value::Bytes(vec![1; 300]), "s": "é".repeat(200)
            }))
            .unwrap();
            for cut in 0..good.len() {
                let e = pickle::from_slice_value(&good[..cut]).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Malformed, "cut at {cut}: {e}");
                truncations += 1;
            }
            continue;
        }
        let t = Instant::now();
        let r = pickle::from_slice_value(&bytes);
        let e = match r {
            Ok(v) => panic!("{name}: decoded {v:?}"),
            Err(e) => e,
        };
        // Generous bound: these are microseconds to milliseconds; the point is "no hang".
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name} took {:?}",
            t.elapsed()
        );
        assert!(!e.to_string().is_empty());
        eprintln!("{name:40} {:>10.3?}  {e}", t.elapsed());
    }
    assert!(truncations > 100);
    // A sparse memo index (legal, Python reads it) costs no memory.
    let sparse = b"\x80\x04Nr\x00\x00\x00\xf0j\x00\x00\x00\xf0.";
    assert_eq!(pickle::from_slice_value(sparse).unwrap(), Value::None);
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    eprintln!("whole corpus: {:?}", start.elapsed());
}

#[test]
fn limits_can_be_raised_and_lowered() {
    let deep = [
        b"\x80\x04".to_vec(),
        vec![b']'; 1000],
        vec![b'a'; 999],
        b".".to_vec(),
    ]
    .concat();
    assert_eq!(
        pickle::from_slice_value(&deep).unwrap_err().kind(),
        ErrorKind::Limit
    );
    let limits = Limits::default().with_max_depth(1000);
    let handle = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || pickle::from_slice_value_with_limits(&deep, &limits).map(|v| v.type_name()))
        .unwrap();
    assert_eq!(handle.join().unwrap().unwrap(), "list");
}

// ---- wired into the caches -------------------------------------------------------------------

#[test]
fn the_default_file_cache_stores_pickles_python_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::new(CacheConfig::default().with_pickle_dir(dir.path())).unwrap();
    assert_eq!(cache.codec(), Codec::Pickle);
    let svc = Service {
        name: "web".into(),
        ports: vec!["8080:80".into()],
        volumes: vec!["/data:/app/data".into()],
        replicas: Some(2),
        cpu: 1.0,
    };
    cache.set("svc", &svc, None).unwrap();
    assert_eq!(cache.get::<Service>("svc").unwrap().unwrap(), svc);
    let json = cache.get_json("svc").unwrap().unwrap();
    assert_eq!(json["ports"][0], "8080:80");
    assert_eq!(json["cpu"], 1.0);

    // What the backend stores is a pickle with the PICKLE flag.
    let backend = ddf::testing::build_backend(cache.config()).unwrap();
    let stored = backend.get("svc").unwrap().unwrap();
    assert_eq!(stored.flags, ddf::testing::internals::flags::PICKLE);
    if let Some(py) = python3() {
        let r = ask_python(
            &py,
            &[serde_json::json!({
                "lit": "{'name': 'web', 'ports': ['8080:80'], 'volumes': ['/data:/app/data'], 'replicas': 2, 'cpu': 1.0}",
                "data": hex(&stored.data),
            })],
        );
        assert_eq!(r[0].eq, Some(true), "{:?}", r[0]);
    }

    // Values JSON cannot hold round-trip here.
    let v = Value::Dict(vec![
        (Value::Int(1), Value::Tuple(vec![Value::Str("a".into())])),
        (Value::Str("set".into()), Value::Set(vec![Value::Int(3)])),
        (Value::Str("raw".into()), Value::Bytes(vec![0, 1, 255])),
    ]);
    cache.set("odd", &v, None).unwrap();
    let raw = backend.get("odd").unwrap().unwrap();
    assert_eq!(pickle::from_slice_value(&raw.data).unwrap(), v);
    assert_eq!(
        cache.get_json("odd").unwrap().unwrap(),
        serde_json::json!({"1": ["a"], "set": [3], "raw": {"$bytes": "AAH/"}})
    );
}

#[test]
fn items_are_decoded_by_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig::default().with_pickle_dir(dir.path());
    let backend = ddf::testing::build_backend(&config).unwrap();
    let cache = CacheManager::new(config).unwrap();
    // A JSON item (flags TEXT) in a pickle cache still reads.
    backend
        .set(
            "j",
            &ddf::Item::new(b"[1,2]".to_vec(), ddf::testing::internals::flags::TEXT),
            None,
        )
        .unwrap();
    assert_eq!(cache.get::<Vec<u8>>("j").unwrap().unwrap(), vec![1, 2]);
    // A pickle item in a JSON-codec view reads too.
    let item = Codec::Pickle.encode("k", &("a", 1)).unwrap();
    assert_eq!(
        Codec::Json.decode::<(String, i32)>("k", &item).unwrap(),
        ("a".into(), 1)
    );
    assert_eq!(
        Codec::Json.decode_json("k", &item).unwrap(),
        serde_json::json!(["a", 1])
    );
    // A corrupt pickle is a Decode error naming the key and the codec.
    backend
        .set(
            "bad",
            &ddf::Item::new(
                b"\x80\x04cos\nsystem\n.".to_vec(),
                ddf::testing::internals::flags::PICKLE,
            ),
            None,
        )
        .unwrap();
    let e = cache.get::<String>("bad").unwrap_err();
    assert!(e.is_decode());
    let msg = e.to_string();
    assert!(
        msg.contains("\"bad\"") && msg.contains("pickle") && msg.contains("os.system"),
        "{msg}"
    );
}

#[test]
fn json_backends_keep_json_and_fail_clearly() {
    assert_eq!(Codec::for_backend(ddf::CacheBackend::Redis), Codec::Json);
    assert_eq!(
        Codec::for_backend(ddf::CacheBackend::Memcached),
        Codec::Json
    );
    assert_eq!(
        Codec::for_backend(ddf::CacheBackend::RedisPickle),
        Codec::Pickle
    );
    assert_eq!(
        Codec::for_backend(ddf::CacheBackend::MemcachedPickle),
        Codec::Pickle
    );
    assert_eq!(Codec::for_backend(ddf::CacheBackend::Pickle), Codec::Pickle);
    // JSON cannot hold a map with tuple keys: an Encode error, not a silent change.
    let m = std::collections::BTreeMap::from([((1, 2), "x")]);
    let e = Codec::Json.encode("k", &m).unwrap_err();
    assert!(e.to_string().contains("json"), "{e}");
    assert!(Codec::Pickle.encode("k", &m).is_ok());
    let nan: f64 = Codec::Pickle
        .decode("k", &Codec::Pickle.encode("k", &f64::NAN).unwrap())
        .unwrap();
    assert!(nan.is_nan());
    let big = Value::BigInt(BigInt::from_u128(u128::MAX));
    let back = Codec::Pickle
        .decode::<u128>("k", &Codec::Pickle.encode("k", &big).unwrap())
        .unwrap();
    assert_eq!(back, u128::MAX);
}

/// A mutation fuzzer without nightly: CPython's own pickles of the shapes above at every
/// protocol, mutated at random (byte flips, insertions, deletions, splices, truncations), for
/// `DDF_PICKLE_FUZZ_SECS` seconds (default 1). Every input must decode or fail; nothing may
/// panic or take long; a decoded value must survive its own round trip.
#[test]
fn mutation_fuzz_of_python_pickles() {
    let Some(py) = python3() else { return };
    let cases = [
        "[None, True, 0, -1, 2**70, 1.5, float('nan'), '', 'é😀', b'', bytearray(b'ab'), {1, 2}, frozenset({'a'})]",
        "{'a': 1, 2: 'b', (1, 'x'): [None], b'k': {}}",
        "(lambda t: [t, t, {'k': t}])(('x', 'y'))",
        "{'name': 'web', 'ports': ['8080:80'], 'volumes': ['/data:/app/data']}",
        "[(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), 'a\\\\b\\n\\x00']",
    ];
    let requests: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| serde_json::json!({ "lit": c, "full": true }))
        .collect();
    let seeds: Vec<Vec<u8>> = ask_python(&py, &requests)
        .into_iter()
        .flat_map(|r| r.pickles.unwrap().into_iter().map(|p| unhex(&p)))
        .collect();
    let secs: u64 = std::env::var("DDF_PICKLE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // xorshift: deterministic per run, no dependency.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut runs, mut decoded) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..200 {
            let mut b = seeds[rand() as usize % seeds.len()].clone();
            for _ in 0..1 + rand() % 4 {
                let len = b.len().max(1);
                let i = rand() as usize % len;
                match rand() % 6 {
                    0 if !b.is_empty() => {
                        let k = i % b.len();
                        b[k] = rand() as u8;
                    }
                    1 if !b.is_empty() => {
                        let k = i % b.len();
                        b[k] ^= 1 << (rand() % 8);
                    }
                    2 => b.insert(i.min(b.len()), rand() as u8),
                    3 if !b.is_empty() => {
                        b.remove(i % b.len());
                    }
                    4 => {
                        let other = &seeds[rand() as usize % seeds.len()];
                        let j = rand() as usize % other.len();
                        let n = (rand() as usize % 16).min(other.len() - j);
                        let at = i.min(b.len());
                        b.splice(at..at, other[j..j + n].iter().copied());
                    }
                    _ => b.truncate(i),
                }
            }
            let t = Instant::now();
            let _ = pickle::from_slice::<serde_json::Value>(&b);
            if let Ok(v) = pickle::from_slice_value(&b) {
                decoded += 1;
                let _ = v.to_json();
                if let Ok(again) = pickle::to_vec(&v) {
                    let back = pickle::from_slice_value(&again).unwrap();
                    assert_eq!(pickle::to_vec(&back).unwrap(), again, "{b:?}");
                }
            }
            assert!(t.elapsed() < Duration::from_secs(5), "slow input {b:?}");
            runs += 1;
        }
    }
    eprintln!("mutation fuzz: {runs} inputs in {secs} s, {decoded} decoded");
    assert!(runs > 1000);
}
