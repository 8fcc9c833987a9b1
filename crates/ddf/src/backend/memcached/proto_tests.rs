//! Tests of the pure protocol code: formatting, the parser fed whole, split at every position and
//! byte by byte, hostile input, and a property test that no input makes it panic.

use super::*;
use proptest::prelude::*;

const LIMIT: usize = 1024 * 1024;

/// Feeds `bytes` to `parse` as a transport would, revealing one more byte at a time, and
/// collects every reply; asserts that the end is reached exactly.
fn feed_bytewise<'a, T>(
    bytes: &'a [u8],
    mut parse: impl FnMut(&'a [u8]) -> Result<Parsed<T>, ProtoError>,
) -> Result<Vec<T>, ProtoError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    while start < bytes.len() {
        match parse(&bytes[start..end])? {
            Parsed::Done(r, n) => {
                assert!(n > 0 && start + n <= end, "consumed {n} of {}", end - start);
                out.push(r);
                start += n;
            }
            Parsed::Incomplete => {
                assert!(end < bytes.len(), "incomplete at the end of the input");
                end += 1;
            }
        }
    }
    Ok(out)
}

/// Parses `a` then `b` from one buffer (two chunks, split anywhere) the way a transport reading
/// twice would; returns every reply.
fn feed_split<'a, T>(
    bytes: &'a [u8],
    split: usize,
    mut parse: impl FnMut(&'a [u8]) -> Result<Parsed<T>, ProtoError>,
) -> Result<Vec<T>, ProtoError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = split;
    loop {
        match parse(&bytes[start..end])? {
            Parsed::Done(r, n) => {
                out.push(r);
                start += n;
                if start == bytes.len() {
                    return Ok(out);
                }
            }
            Parsed::Incomplete if end < bytes.len() => end = bytes.len(),
            Parsed::Incomplete => panic!("incomplete at the end of the input"),
        }
    }
}

fn meta(buf: &[u8]) -> Result<Parsed<MetaReply<'_>>, ProtoError> {
    parse_meta(buf, LIMIT)
}

#[test]
fn cas_requests_and_replies() {
    let mut buf = Vec::new();
    delete_cas(&mut buf, b"k", 42).unwrap();
    assert_eq!(buf, b"md k C42\r\n");
    assert!(
        meta(b"VA 1 cx\r\nx\r\n").is_err(),
        "a malformed CAS value is refused"
    );
}

/// Owned copies of meta replies (the parsed ones borrow the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Value(Vec<u8>, u32, Option<u32>),
    Status(Status, Option<u32>),
    Error(Vec<u8>),
}

fn owned(r: MetaReply<'_>) -> Owned {
    match r {
        MetaReply::Value {
            data,
            flags,
            opaque,
            ..
        } => Owned::Value(data.to_vec(), flags, opaque),
        MetaReply::Status { status, opaque, .. } => Owned::Status(status, opaque),
        MetaReply::Error(l) => Owned::Error(l.to_vec()),
    }
}

const META_STREAM: &[u8] = b"VA 5 f16 O3\r\nhello\r\nEN\r\nHD\r\nNF\r\nVA 0 f0\r\n\r\n\
    SERVER_ERROR out of memory storing object\r\nVA 4 t-1 f7 O9 k\r\na\r\nb\r\nNS\r\nEX\r\nMN\r\n";

fn meta_expected() -> Vec<Owned> {
    vec![
        Owned::Value(b"hello".to_vec(), 16, Some(3)),
        Owned::Status(Status::En, None),
        Owned::Status(Status::Hd, None),
        Owned::Status(Status::Nf, None),
        Owned::Value(Vec::new(), 0, None),
        Owned::Error(b"SERVER_ERROR out of memory storing object".to_vec()),
        Owned::Value(b"a\r\nb".to_vec(), 7, Some(9)),
        Owned::Status(Status::Ns, None),
        Owned::Status(Status::Ex, None),
        Owned::Status(Status::Mn, None),
    ]
}

#[test]
fn meta_replies_whole() {
    let got = feed_split(META_STREAM, META_STREAM.len(), |b| meta(b)).unwrap();
    let got: Vec<Owned> = got.into_iter().map(owned).collect();
    assert_eq!(got, meta_expected());
}

#[test]
fn meta_replies_byte_by_byte() {
    let got = feed_bytewise(META_STREAM, |b| meta(b)).unwrap();
    let got: Vec<Owned> = got.into_iter().map(owned).collect();
    assert_eq!(got, meta_expected());
}

#[test]
fn meta_replies_split_at_every_position() {
    for split in 0..=META_STREAM.len() {
        let got = feed_split(META_STREAM, split, |b| meta(b)).unwrap();
        let got: Vec<Owned> = got.into_iter().map(owned).collect();
        assert_eq!(got, meta_expected(), "split at {split}");
    }
}

#[test]
fn every_prefix_of_a_reply_is_incomplete() {
    let one = b"VA 5 f16 O3\r\nhello\r\n";
    for end in 0..one.len() {
        assert_eq!(
            meta(&one[..end]),
            Ok(Parsed::Incomplete),
            "prefix of {end} bytes"
        );
    }
    assert!(matches!(meta(one), Ok(Parsed::Done(_, 20))));
}

const TEXT_STREAM: &[u8] = b"VERSION 1.6.18\r\nSTAT pid 42\r\nSTAT version 1.6.18 extra words\r\n\
    END\r\nOK\r\nkey=a%20b exp=-1 la=1 cas=2 fetch=no cls=1 size=63\r\nkey=plain\r\n\
    BUSY currently processing crawler request\r\nBADCLASS invalid class id\r\nERROR\r\n\
    CLIENT_ERROR bad command line format\r\nSTAT broken\r\nwhat\n";

fn text_expected() -> Vec<TextLine<'static>> {
    vec![
        TextLine::Version(b"1.6.18"),
        TextLine::Stat {
            name: b"pid",
            value: b"42",
        },
        TextLine::Stat {
            name: b"version",
            value: b"1.6.18 extra words",
        },
        TextLine::End,
        TextLine::Ok,
        TextLine::DumpKey {
            key: b"a%20b",
            exp: Some(-1),
        },
        TextLine::DumpKey {
            key: b"plain",
            exp: None,
        },
        TextLine::Busy(b"BUSY currently processing crawler request"),
        TextLine::BadClass(b"BADCLASS invalid class id"),
        TextLine::Error(b"ERROR"),
        TextLine::Error(b"CLIENT_ERROR bad command line format"),
        TextLine::Other(b"STAT broken"),
        TextLine::Other(b"what"),
    ]
}

#[test]
fn text_lines_byte_by_byte_and_split() {
    let got = feed_bytewise(TEXT_STREAM, parse_text).unwrap();
    assert_eq!(got, text_expected());
    for split in 0..=TEXT_STREAM.len() {
        let got = feed_split(TEXT_STREAM, split, parse_text).unwrap();
        assert_eq!(got, text_expected(), "split at {split}");
    }
}

#[test]
fn enormous_announced_lengths_are_refused_before_the_data() {
    // Only the line has arrived: the refusal must not wait for (or reserve) the data.
    let e = meta(b"VA 999999999 f0\r\n").unwrap_err();
    assert!(e.0.contains("999999999") && e.0.contains("1048576"), "{e}");
    // One byte over the limit; exactly the limit is allowed (and still incomplete).
    let over = format!("VA {} f0\r\n", LIMIT + 1);
    assert!(meta(over.as_bytes()).is_err());
    let at = format!("VA {LIMIT} f0\r\n");
    assert_eq!(meta(at.as_bytes()), Ok(Parsed::Incomplete));
    // A server claiming a huge item limit still meets the absolute cap.
    let e = parse_meta(b"VA 2000000000 f0\r\n", usize::MAX).unwrap_err();
    assert!(e.0.contains(&MAX_VALUE_CAP.to_string()), "{e}");
    // More digits than any length: refused, not overflowed.
    assert!(meta(b"VA 99999999999999999999999 f0\r\n").is_err());
}

#[test]
fn garbage_is_a_protocol_error() {
    for bad in [
        &b"hello\r\n"[..],
        b"VA\r\n",
        b"VA x f1\r\n",
        b"VA -1 f1\r\n",
        b"VA +5 f1\r\nhello\r\n",
        b"VA 5 fx\r\nhello\r\n",
        b"VA 5 f99999999999\r\nhello\r\n",
        b"VA 5 Oabc\r\nhello\r\n",
        b"VA 5 f1\r\nhelloXY",
        b"HD Ofoo\r\n",
        b"END\r\n",
        b"\r\n",
        b"\x00\xff\r\n",
    ] {
        assert!(meta(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn lines_are_bounded() {
    let long = vec![b'a'; MAX_LINE];
    let e = meta(&long).unwrap_err();
    assert!(e.0.contains("65536"), "{e}");
    assert!(parse_text(&long).is_err());
    // Just under the bound: still waiting for the line end.
    assert_eq!(parse_text(&long[..MAX_LINE - 1]), Ok(Parsed::Incomplete));
    // A line end at the last allowed byte is accepted.
    let mut ok = vec![b'a'; MAX_LINE - 1];
    ok.push(b'\n');
    assert!(matches!(parse_text(&ok), Ok(Parsed::Done(TextLine::Other(_), n)) if n == MAX_LINE));
    // The data block of a value does not count against the line bound.
    let mut big = b"VA 100000 f1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    big.extend_from_slice(b"\r\n");
    assert!(
        matches!(meta(&big), Ok(Parsed::Done(MetaReply::Value { data, .. }, _)) if data.len() == 100_000)
    );
}

#[test]
fn requests() {
    let mut b = Vec::new();
    get(&mut b, b"k1", None).unwrap();
    get(&mut b, b"k2", Some(7)).unwrap();
    set(&mut b, b"k", b"v\r\n", 16, 0, false).unwrap();
    set(&mut b, b"k", b"", 0, 3600, true).unwrap();
    delete(&mut b, b"gone").unwrap();
    noop(&mut b);
    version(&mut b);
    stats(&mut b, "");
    stats(&mut b, "settings");
    flush_all(&mut b);
    metadump(&mut b, true);
    metadump(&mut b, false);
    assert_eq!(
        String::from_utf8(b).unwrap(),
        "mg k1 v f\r\nmg k2 v f q O7\r\nms k 3 F16\r\nv\r\n\r\nms k 0 F0 T3600 q\r\n\r\n\
         md gone\r\nmn\r\nversion\r\nstats\r\nstats settings\r\nflush_all\r\n\
         lru_crawler metadump hash\r\nlru_crawler metadump all\r\n"
    );
    let mut b = Vec::new();
    push_uint(&mut b, u64::MAX);
    push_uint(&mut b, 0);
    assert_eq!(b, b"184467440737095516150");
}

#[test]
fn keys_that_could_inject_are_refused() {
    let mut b = Vec::new();
    for bad in [
        &b""[..],
        b"a b",
        b"a\r\nflush_all",
        b"a\tb",
        b"caf\xc3\xa9",
        &[b'k'; 251],
    ] {
        assert!(get(&mut b, bad, None).is_err());
        assert!(set(&mut b, bad, b"v", 0, 0, false).is_err());
        assert!(delete(&mut b, bad).is_err());
    }
    assert!(b.is_empty(), "nothing appended for a refused key");
    assert!(get(&mut b, &[b'k'; 250], None).is_ok());
}

#[test]
fn url_decoding() {
    let mut out = Vec::new();
    url_decode(b"a%20b%25%0D%0A%", &mut out);
    assert_eq!(out, b"a b%\r\n%");
    out.clear();
    url_decode(b"%4", &mut out);
    assert_eq!(out, b"%4");
    out.clear();
    url_decode(b"%zz%41", &mut out);
    assert_eq!(out, b"%zzA");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    /// No input makes either parser panic, and a reply never claims more bytes than it was given.
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), limit in 0usize..2048) {
        if let Ok(Parsed::Done(_, n)) = parse_meta(&bytes, limit) {
            prop_assert!(n > 0 && n <= bytes.len());
        }
        if let Ok(Parsed::Done(_, n)) = parse_text(&bytes) {
            prop_assert!(n > 0 && n <= bytes.len());
        }
        let mut out = Vec::new();
        url_decode(&bytes, &mut out);
        prop_assert!(out.len() <= bytes.len());
    }

    /// Reply-shaped input (valid and mangled lines from the protocol's vocabulary) parses or
    /// errs without panicking, fed in two chunks at any split.
    #[test]
    fn reply_shaped_input_never_panics(
        parts in proptest::collection::vec(prop_oneof![
            Just(b"VA ".to_vec()), Just(b"HD".to_vec()), Just(b"EN".to_vec()), Just(b"MN".to_vec()),
            Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b" f".to_vec()), Just(b" O".to_vec()),
            Just(b"STAT ".to_vec()), Just(b"END".to_vec()), Just(b"key=".to_vec()),
            Just(b"SERVER_ERROR x".to_vec()),
            (0u64..40).prop_map(|n| n.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..4),
        ], 0..24),
        split in any::<prop::sample::Index>(),
    ) {
        let bytes: Vec<u8> = parts.concat();
        let split = split.index(bytes.len() + 1);
        let _ = feed_split_lenient(&bytes, split, |b| parse_meta(b, 64));
        let _ = feed_split_lenient(&bytes, split, parse_text);
    }
}

/// [`feed_split`] that stops (instead of panicking) when the input ends inside a reply.
fn feed_split_lenient<'a, T>(
    bytes: &'a [u8],
    split: usize,
    mut parse: impl FnMut(&'a [u8]) -> Result<Parsed<T>, ProtoError>,
) -> Result<usize, ProtoError> {
    let (mut start, mut end, mut n) = (0, split, 0);
    loop {
        match parse(&bytes[start..end])? {
            Parsed::Done(_, used) => {
                assert!(used > 0 && start + used <= end);
                start += used;
                n += 1;
            }
            Parsed::Incomplete if end < bytes.len() => end = bytes.len(),
            Parsed::Incomplete => return Ok(n),
        }
    }
}

#[test]
fn add_is_ms_in_mode_e() {
    let mut buf = Vec::new();
    add(&mut buf, b"k", b"v", 2, 10).unwrap();
    assert_eq!(buf, b"ms k 1 F2 T10 ME\r\nv\r\n");
}

#[test]
fn arithmetic_touch_and_meta_requests() {
    let mut buf = Vec::new();
    get_cas(&mut buf, b"k").unwrap();
    arith(&mut buf, b"k", 42, true, 3).unwrap();
    touch_or_meta(&mut buf, b"k", Some(0)).unwrap();
    touch_or_meta(&mut buf, b"k", None).unwrap();
    assert_eq!(
        buf,
        b"mg k v c f\r\nma k C42 MD D3 v\r\nmg k T0\r\nmg k s t f\r\n"
    );
}

#[test]
fn reply_fields_are_read() {
    let Ok(Parsed::Done(MetaReply::Status { fields, .. }, _)) = meta(b"HD s5 t-1 f2\r\n") else {
        panic!("not parsed");
    };
    assert_eq!(
        fields,
        Fields {
            cas: None,
            ttl: Some(-1),
            size: Some(5),
            flags: Some(2)
        }
    );
    let Ok(Parsed::Done(MetaReply::Value { fields, data, .. }, _)) = meta(b"VA 1 c77 f2\r\n7\r\n")
    else {
        panic!("not parsed");
    };
    assert_eq!((fields.cas, data), (Some(77), &b"7"[..]));
}

#[test]
fn a_near_fill_asks_for_the_ttl_with_the_value() {
    let mut buf = Vec::new();
    get_expiring(&mut buf, b"k").unwrap();
    assert_eq!(buf, b"mg k v f t\r\n");
    assert!(get_expiring(&mut Vec::new(), b"bad key").is_err());
    match meta(b"VA 1 f3 t17\r\nx\r\n").unwrap() {
        Parsed::Done(r, _) => {
            let (v, ttl) = crate::backend::memcached::replies::get_expiring(r)
                .unwrap()
                .unwrap();
            assert_eq!((v.data.as_slice(), v.flags, ttl), (&b"x"[..], 3, Some(17)));
        }
        Parsed::Incomplete => panic!("a whole reply read as incomplete"),
    }
}
