//! The value codec's tests: flags, exact integers, compression, Python's items.

use super::*;
use serde_json::{Value, json};

#[test]
fn a_huge_python_int_item_is_not_converted_in_quadratic_time() {
    // 1 MB of digits with pymemcache's int flag: decoded as bytes or refused, at once.
    let item = Item::new(vec![b'7'; 1_000_000], flags::INTEGER);
    let start = std::time::Instant::now();
    for codec in [MC_JSON, MC_PICKLE] {
        let _ = codec.decode::<Value>("k", &item);
        let _ = codec.decode_json("k", &item);
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    // Shorter ones still read as an int, exactly.
    let ok = Item::new(format!("1{}", "0".repeat(30)).into_bytes(), flags::INTEGER);
    assert_eq!(MC_PICKLE.decode::<u128>("k", &ok).unwrap(), 10u128.pow(30));
    assert_eq!(MC_JSON.decode::<u128>("k", &ok).unwrap(), 10u128.pow(30));
}

const MC_JSON: ValueCodec = ValueCodec {
    codec: Codec::Json,
    pymemcache: true,
    compress_min: None,
};
const MC_PICKLE: ValueCodec = ValueCodec {
    codec: Codec::Pickle,
    pymemcache: true,
    compress_min: None,
};

#[test]
fn integers_of_any_size_are_exact_in_every_codec() {
    use pickle::{BigInt, Value as P};
    let big = |s: &str| s.parse::<BigInt>().unwrap();
    let cases = [
        "1180591620717411303425",
        "-1180591620717411303425",
        "10000000000000000000000000000000000000000",
        "-340282366920938463463374607431768211457",
        "18446744073709551616",
    ];
    let redis_json = ValueCodec::for_backend(CacheBackend::Redis);
    let file = ValueCodec::for_backend(CacheBackend::Pickle);
    for text in cases {
        let n = big(text);
        let v = P::BigInt(n.clone());
        for codec in [redis_json, file, MC_JSON, MC_PICKLE] {
            let what = format!("{text} in {codec:?}");
            let item = codec.encode("k", &v).unwrap();
            if codec == MC_JSON {
                // pymemcache's int: decimal text, flags 2.
                assert_eq!(item, Item::new(text.into(), flags::INTEGER), "{what}");
            }
            if codec == redis_json {
                assert_eq!(item.data, text.as_bytes(), "{what}");
            }
            assert_eq!(codec.decode::<P>("k", &item).unwrap(), v, "{what}");
            assert_eq!(codec.decode::<BigInt>("k", &item).unwrap(), n, "{what}");
            assert_eq!(
                codec.decode_json("k", &item).unwrap(),
                json!(text),
                "{what}"
            );
            match n.to_i128() {
                Some(i) => assert_eq!(codec.decode::<i128>("k", &item).unwrap(), i),
                None => {
                    let e = codec.decode::<i128>("key9", &item).unwrap_err();
                    assert!(e.is_decode() && e.to_string().contains("key9"), "{e}");
                }
            }
            // Never a rounded number: a target that cannot hold it is a Decode error.
            let e = codec.decode::<u64>("key9", &item).unwrap_err();
            assert!(e.is_decode() && e.to_string().contains("key9"), "{e}");
            assert!(codec.decode::<Value>("k", &item).is_err(), "{what}");
            // Nested, beside small integers.
            let doc = P::Dict(vec![
                (P::Str("m".into()), v.clone()),
                (P::Str("n".into()), P::Int(12345678901234)),
            ]);
            let item = codec.encode("k", &doc).unwrap();
            assert_eq!(codec.decode::<P>("k", &item).unwrap(), doc, "{what}");
        }
    }
    // (Beyond 128 bits the pickle and pymemcache cases above also pin serde_json's RawValue
    // struct name, which the pickle serializer and the int capture recognize.)
    // u128 and i128 written from Rust, read back exactly.
    for codec in [redis_json, file, MC_JSON, MC_PICKLE] {
        let item = codec.encode("k", &u128::MAX).unwrap();
        assert_eq!(codec.decode::<u128>("k", &item).unwrap(), u128::MAX);
        let item = codec.encode("k", &i128::MIN).unwrap();
        assert_eq!(codec.decode::<i128>("k", &item).unwrap(), i128::MIN);
    }
}

#[test]
fn compressed_items_read_in_every_mode_and_are_written_on_memcached_only() {
    use crate::config::CacheConfig;
    // As pymemcache's CompressedSerde writes (zlib.compress), even when not smaller.
    let z = |data: &[u8], f: u32| {
        use std::io::Write;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        Item::new(e.finish().unwrap(), f | flags::COMPRESSED)
    };
    let list = pickle::to_vec(&json!([1, "a", null])).unwrap();
    let all = [
        MC_JSON,
        MC_PICKLE,
        ValueCodec::for_backend(CacheBackend::Redis),
        ValueCodec::for_backend(CacheBackend::Pickle),
    ];
    for codec in all {
        let item = z(&list, flags::PICKLE);
        assert_eq!(item.flags, 9);
        assert_eq!(
            codec.decode::<Value>("k", &item).unwrap(),
            json!([1, "a", null])
        );
        assert_eq!(
            codec.decode_json("k", &item).unwrap(),
            json!([1, "a", null])
        );
        let bad = Item::new(b"xx".to_vec(), 9);
        let e = codec.decode::<Value>("key7", &bad).unwrap_err();
        assert!(
            e.is_decode() && e.to_string().contains("key7") && e.to_string().contains("zlib"),
            "{e}"
        );
    }
    for codec in [MC_JSON, MC_PICKLE] {
        assert_eq!(
            codec
                .decode::<String>("k", &z("héllo".as_bytes(), flags::TEXT))
                .unwrap(),
            "héllo"
        );
        assert_eq!(
            codec
                .decode::<i64>("k", &z(b"-42", flags::INTEGER))
                .unwrap(),
            -42
        );
        assert_eq!(
            codec.raw_bytes("k", z(b"\x00\xff", 0)).unwrap(),
            b"\x00\xff"
        );
    }
    // Written compressed only on the Memcached backends, and only when asked.
    let doc = json!({"text": "x".repeat(2000)});
    for (backend, compressed) in [
        (CacheBackend::Memcached, true),
        (CacheBackend::MemcachedPickle, true),
        (CacheBackend::Redis, false),
        (CacheBackend::RedisPickle, false),
        (CacheBackend::Pickle, false),
    ] {
        let config = CacheConfig::default()
            .with_backend(backend)
            .with_compress_min_bytes(Some(400));
        let codec = ValueCodec::for_config(&config);
        let item = codec.encode("k", &doc).unwrap();
        assert_eq!(
            item.flags & flags::COMPRESSED != 0,
            compressed,
            "{backend:?}"
        );
        assert_eq!(codec.decode::<Value>("k", &item).unwrap(), doc);
        let off = ValueCodec::for_config(&CacheConfig::default().with_backend(backend));
        assert_eq!(off.encode("k", &doc).unwrap().flags & flags::COMPRESSED, 0);
    }
}

#[test]
fn chosen_once_from_the_backend_kind() {
    assert_eq!(ValueCodec::for_backend(CacheBackend::Memcached), MC_JSON);
    assert_eq!(
        ValueCodec::for_backend(CacheBackend::MemcachedPickle),
        MC_PICKLE
    );
    let redis = ValueCodec::for_backend(CacheBackend::Redis);
    assert_eq!((redis.codec(), redis.pymemcache), (Codec::Json, false));
    let file = ValueCodec::for_backend(CacheBackend::Pickle);
    assert_eq!((file.codec(), file.pymemcache), (Codec::Pickle, false));
}

#[test]
fn memcached_json_items_carry_their_final_flags() {
    let e = |v: &Value| MC_JSON.encode("k", v).unwrap();
    assert_eq!(
        e(&json!("héllo \"x\"")),
        Item::new("héllo \"x\"".into(), flags::TEXT)
    );
    assert_eq!(e(&json!(-42)), Item::new(b"-42".to_vec(), flags::INTEGER));
    // Anything else is a pickle (flags 1), as the Python DDF's `memcached` backend writes.
    for v in [
        json!([1, "a"]),
        json!(1.5),
        json!(true),
        json!(null),
        json!({"b": 1}),
    ] {
        let item = e(&v);
        assert_eq!(item, Item::new(pickle::to_vec(&v).unwrap(), flags::PICKLE));
    }
    // JSON text with flags 0 (what ddf wrote before) still reads.
    let old = Item::new(br#"[1,"a"]"#.to_vec(), flags::BYTES);
    assert_eq!(MC_JSON.decode::<Value>("k", &old).unwrap(), json!([1, "a"]));
    // Redis and the file backend keep the plain codec's flags.
    let redis = ValueCodec::for_backend(CacheBackend::Redis);
    assert_eq!(
        redis.encode("k", "s").unwrap(),
        Item::new(br#""s""#.to_vec(), flags::TEXT)
    );
}

#[test]
fn memcached_json_round_trips() {
    for v in [
        json!("s"),
        json!(""),
        json!(0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(null),
        json!({"a": [true, 1.25]}),
    ] {
        let item = MC_JSON.encode("k", &v).unwrap();
        assert_eq!(MC_JSON.decode::<Value>("k", &item).unwrap(), v);
        assert_eq!(MC_JSON.decode_json("k", &item).unwrap(), v);
    }
    let item = MC_JSON.encode("k", &Some("x".to_owned())).unwrap();
    assert_eq!(
        MC_JSON.decode::<Option<String>>("k", &item).unwrap(),
        Some("x".to_owned())
    );
    // A string is not a number: a Decode error naming the key and the codec.
    let e = MC_JSON.decode::<u32>("key1", &item).unwrap_err();
    assert!(e.is_decode() && e.to_string().contains("key1"), "{e}");
}

#[test]
fn python_items_read_in_both_modes() {
    let s = Item::new("a\"b".into(), flags::TEXT);
    assert_eq!(MC_JSON.decode::<String>("k", &s).unwrap(), "a\"b");
    assert_eq!(MC_PICKLE.decode::<String>("k", &s).unwrap(), "a\"b");
    assert_eq!(MC_JSON.raw_bytes("k", s.clone()).unwrap(), br#""a\"b""#);
    assert_eq!(
        MC_PICKLE.raw_bytes("k", s.clone()).unwrap(),
        python_memcache::pickle_str("a\"b")
    );
    let big = Item::new(b"1180591620717411303424".to_vec(), flags::LONG); // 2**70
    // Python's bytes (flags 0): bytes for a target that takes them, in both modes.
    let raw = Item::new(vec![0, 255], flags::BYTES);
    for codec in [MC_JSON, MC_PICKLE] {
        let b: pickle::Value = codec.decode("k", &raw).unwrap();
        assert_eq!(b, pickle::Value::Bytes(vec![0, 255]));
        assert_eq!(codec.decode_value("k", &raw).unwrap(), b);
        assert!(codec.decode::<String>("k", &raw).is_err());
    }
    // Python's bytes (flags 0, not JSON text): the view's {"$bytes": ...} in both modes.
    let py_bytes = Item::new(vec![0, 255], flags::BYTES);
    for codec in [MC_JSON, MC_PICKLE] {
        assert_eq!(
            codec.decode_json("k", &py_bytes).unwrap(),
            json!({"$bytes": "AP8="})
        );
    }
    // Both modes' JSON view: the digits, as a string (never a rounded float).
    for codec in [MC_JSON, MC_PICKLE] {
        assert_eq!(
            codec.decode_json("k", &big).unwrap(),
            json!("1180591620717411303424")
        );
    }
    assert_eq!(MC_JSON.raw_bytes("k", big.clone()).unwrap(), big.data);
    let i = Item::new(b"-129".to_vec(), flags::INTEGER);
    assert_eq!(MC_JSON.decode::<i64>("k", &i).unwrap(), -129);
    assert_eq!(MC_PICKLE.decode::<i64>("k", &i).unwrap(), -129);
    let raw = Item::new(vec![0, 255], flags::BYTES);
    assert_eq!(MC_JSON.raw_bytes("k", raw.clone()).unwrap(), raw.data);
    assert_eq!(MC_PICKLE.raw_bytes("k", raw.clone()).unwrap(), raw.data);
    // A pickle reads in JSON mode too.
    let p = Codec::Pickle.encode("k", &("a", 1)).unwrap();
    assert_eq!(
        MC_JSON.decode::<(String, i32)>("k", &p).unwrap(),
        ("a".into(), 1)
    );
    // Flags 0 from Redis: the cache's own codec.
    let redis = ValueCodec::for_backend(CacheBackend::Redis);
    let item = Item::unflagged(b"[1,2]".to_vec());
    assert_eq!(redis.decode::<Vec<u8>>("k", &item).unwrap(), vec![1, 2]);
}
