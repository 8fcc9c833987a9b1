//! pymemcache's compressed items (`CompressedSerde`): zlib data, flags 8 (`FLAG_COMPRESSED`)
//! added to the flags of what was compressed (9: a compressed pickle, 24: compressed text...).
//!
//! Read in every mode (an item with flags 8 is inflated, then read by its remaining flags);
//! written only when `compress_min_bytes` is set, and only on the Memcached backends: Redis keeps
//! no flags, so a compressed value there could not be told from an uncompressed one, and a Python
//! DDF reading it would get zlib bytes. As pymemcache does, the compressed form is kept only when
//! it is not larger. A Python reader must use `CompressedSerde` (the plain `python_memcache`
//! serializer tests flags bit by bit and would read compressed text as text): hence off by default.

use std::borrow::Cow;
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

use crate::codec::flags;
use crate::item::Item;

/// The most an item may inflate to: the pickle decoder's own input limit (64 MiB), so a small
/// zlib bomb from a peer is an error, not a memory blow-up.
pub(crate) const MAX_INFLATED: u64 = 64 << 20;

/// `item` zlib-compressed with flags 8 added, when it is longer than `min` bytes and compressing
/// does not make it larger (pymemcache's rule); else `item` as it is. Level 6, Python's
/// `zlib.compress` default.
pub(crate) fn compress(item: Item, min: usize) -> Item {
    if item.data.len() <= min || item.flags & flags::COMPRESSED != 0 {
        return item;
    }
    let mut z = ZlibEncoder::new(Vec::with_capacity(item.data.len() / 2), Compression::new(6));
    // Writing into a Vec cannot fail; should it, the item is stored uncompressed.
    let Ok(data) = z.write_all(&item.data).and_then(|()| z.finish()) else {
        return item;
    };
    if data.len() > item.data.len() {
        return item;
    }
    Item::new(data, item.flags | flags::COMPRESSED)
}

/// The item a compressed one stands for (inflated, flags 8 removed); `item` itself when it is
/// not compressed.
///
/// # Errors
/// The reason, when the data is not zlib or inflates beyond [`MAX_INFLATED`].
pub(crate) fn inflate(item: &Item) -> Result<Cow<'_, Item>, String> {
    if item.flags & flags::COMPRESSED == 0 {
        return Ok(Cow::Borrowed(item));
    }
    let mut out = Vec::with_capacity(item.data.len().saturating_mul(4).min(1 << 20));
    ZlibDecoder::new(&item.data[..])
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("flags 8 (zlib-compressed) but the data is not zlib: {e}"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "flags 8 (zlib-compressed): inflates beyond {} MiB, the most this codec reads",
            MAX_INFLATED >> 20
        ));
    }
    Ok(Cow::Owned(Item::new(out, item.flags & !flags::COMPRESSED)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_pymemcache_s_rules() {
        let text = "abc".repeat(400).into_bytes();
        let item = compress(Item::new(text.clone(), flags::TEXT), 400);
        assert_eq!(item.flags, flags::TEXT | flags::COMPRESSED);
        assert!(item.data.len() < 100, "{}", item.data.len());
        assert_eq!(
            inflate(&item).unwrap().into_owned(),
            Item::new(text.clone(), flags::TEXT)
        );
        // Short, or larger once compressed: left as is.
        let short = Item::new(b"abc".to_vec(), flags::TEXT);
        assert_eq!(compress(short.clone(), 400), short);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let n = Item::new(noise, flags::PICKLE);
        assert_eq!(compress(n.clone(), 10), n);
        // Not compressed: borrowed as is.
        assert!(matches!(inflate(&short).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn bad_or_huge_data_is_an_error() {
        let bad = Item::new(b"not zlib".to_vec(), flags::COMPRESSED | flags::PICKLE);
        assert!(inflate(&bad).unwrap_err().contains("not zlib"));
        // 65 MiB of zeros compress to ~65 KiB: refused at the limit.
        let bomb = compress(Item::new(vec![0; 65 << 20], 0), 0);
        assert!(bomb.data.len() < 200_000);
        assert!(inflate(&bomb).unwrap_err().contains("64 MiB"));
    }
}
