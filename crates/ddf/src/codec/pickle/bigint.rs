//! Python ints of any size, kept exactly.
//!
//! Hand-written rather than a bignum crate: the codec only needs to carry the value (pickle's
//! `LONG1`/`LONG4` already give two's complement little-endian bytes) and convert it to and from
//! decimal text (protocol 0's `L123...L`, JSON views). Schoolbook base-10^9 conversion is
//! quadratic, which [`super::Limits::max_int_bytes`] bounds.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{ErrorKind, PickleError};

/// An integer of any size as two's complement little-endian bytes, minimal length (pickle's own
/// `LONG1` representation).
///
/// The decoder produces [`super::Value::Int`] for every integer that fits an `i64` and `BigInt`
/// only for larger ones.
///
/// ```
/// use ddf::pickle::BigInt;
/// let n: BigInt = "-1180591620717411303424".parse()?;
/// assert_eq!(n.to_string(), "-1180591620717411303424");
/// assert_eq!(n.to_i128(), Some(-(1i128 << 70)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BigInt {
    le: Vec<u8>,
}

impl BigInt {
    /// From two's complement little-endian bytes (any length; empty is zero).
    pub fn from_le_bytes(bytes: &[u8]) -> Self {
        let mut le = bytes.to_vec();
        trim(&mut le);
        BigInt { le }
    }

    /// From an `i128`.
    pub fn from_i128(v: i128) -> Self {
        Self::from_le_bytes(&v.to_le_bytes())
    }

    /// From a `u128`.
    pub fn from_u128(v: u128) -> Self {
        let mut b = v.to_le_bytes().to_vec();
        b.push(0);
        Self::from_le_bytes(&b)
    }

    /// The minimal two's complement little-endian bytes (empty for zero).
    pub fn as_le_bytes(&self) -> &[u8] {
        &self.le
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.le.last().is_some_and(|b| b & 0x80 != 0)
    }

    /// The value as an `i64`, if it fits.
    pub fn to_i64(&self) -> Option<i64> {
        (self.le.len() <= 8).then(|| {
            let mut b = [if self.is_negative() { 0xff } else { 0 }; 8];
            b[..self.le.len()].copy_from_slice(&self.le);
            i64::from_le_bytes(b)
        })
    }

    /// The value as a `u64`, if it fits.
    pub fn to_u64(&self) -> Option<u64> {
        self.to_u128().and_then(|v| u64::try_from(v).ok())
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        (self.le.len() <= 16).then(|| {
            let mut b = [if self.is_negative() { 0xff } else { 0 }; 16];
            b[..self.le.len()].copy_from_slice(&self.le);
            i128::from_le_bytes(b)
        })
    }

    /// The value as a `u128`, if it fits.
    pub fn to_u128(&self) -> Option<u128> {
        if self.is_negative() {
            return None;
        }
        let bytes = match self.le.len() {
            0..=16 => &self.le[..],
            17 if self.le[16] == 0 => &self.le[..16],
            _ => return None,
        };
        let mut b = [0u8; 16];
        b[..bytes.len()].copy_from_slice(bytes);
        Some(u128::from_le_bytes(b))
    }

    /// The magnitude as little-endian base-2^32 limbs.
    fn magnitude_limbs(&self) -> Vec<u32> {
        let mut mag = self.le.clone();
        if self.is_negative() {
            // Two's complement negation: invert, add one.
            let mut carry = true;
            for b in &mut mag {
                *b = !*b;
                if carry {
                    let (v, c) = b.overflowing_add(1);
                    *b = v;
                    carry = c;
                }
            }
        }
        let mut limbs: Vec<u32> = mag
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
        limbs
    }

    fn from_magnitude(negative: bool, limbs: &[u32]) -> Self {
        let mut le: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
        le.push(0);
        if negative {
            let mut carry = true;
            for b in &mut le {
                *b = !*b;
                if carry {
                    let (v, c) = b.overflowing_add(1);
                    *b = v;
                    carry = c;
                }
            }
        }
        trim(&mut le);
        BigInt { le }
    }
}

/// Drops redundant sign-extension bytes.
fn trim(le: &mut Vec<u8>) {
    while let [.., prev, last] = le[..] {
        if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
            le.pop();
        } else {
            break;
        }
    }
    if le[..] == [0] {
        le.clear();
    }
}

impl fmt::Display for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v) = self.to_i128() {
            return write!(f, "{v}");
        }
        // Repeated division of the magnitude by 10^9, most significant limb first.
        let mut limbs = self.magnitude_limbs();
        let mut chunks = Vec::new();
        while !limbs.is_empty() {
            let mut rem = 0u64;
            for l in limbs.iter_mut().rev() {
                let cur = (rem << 32) | u64::from(*l);
                *l = (cur / 1_000_000_000) as u32;
                rem = cur % 1_000_000_000;
            }
            chunks.push(rem as u32);
            while limbs.last() == Some(&0) {
                limbs.pop();
            }
        }
        if self.is_negative() {
            f.write_str("-")?;
        }
        let mut it = chunks.iter().rev();
        if let Some(first) = it.next() {
            write!(f, "{first}")?;
        }
        for c in it {
            write!(f, "{c:09}")?;
        }
        Ok(())
    }
}

/// Written as the integer it is: `i128`/`u128` when it fits, else (beyond 128 bits) as a bare
/// JSON number for serde_json (a `RawValue`) and a `LONG` for the pickle codec.
impl Serialize for BigInt {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.to_i128(), self.to_u128()) {
            (Some(i), _) => s.serialize_i128(i),
            (None, Some(u)) => s.serialize_u128(u),
            _ => match serde_json::value::RawValue::from_string(self.to_string()) {
                Ok(raw) => raw.serialize(s),
                Err(e) => Err(serde::ser::Error::custom(e)),
            },
        }
    }
}

/// Read from any integer (any size from a pickle or from ddf's JSON codec, up to 128 bits from
/// other formats); a string or a float is an error, never converted.
impl<'de> Deserialize<'de> for BigInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BigInt, D::Error> {
        d.deserialize_newtype_struct(super::value::BIGINT_TOKEN, BigIntVisitor { text: true })
    }
}

/// `text`: asked through [`super::value::BIGINT_TOKEN`]; only the pickle deserializers' answer
/// to it ([`super::value::bigint_text`]) is read, never a stored string.
struct BigIntVisitor {
    text: bool,
}

impl<'de> Visitor<'de> for BigIntVisitor {
    type Value = BigInt;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<BigInt, E> {
        Ok(BigInt::from_i128(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<BigInt, E> {
        Ok(BigInt::from_u128(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<BigInt, E> {
        Ok(BigInt::from_i128(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<BigInt, E> {
        Ok(BigInt::from_u128(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<BigInt, E> {
        match super::value::parse_bigint_text(v) {
            Some(n) if self.text => n.map_err(E::custom),
            _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
        }
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<BigInt, D::Error> {
        d.deserialize_any(BigIntVisitor { text: false })
    }
}

impl fmt::Debug for BigInt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BigInt({self})")
    }
}

impl FromStr for BigInt {
    type Err = PickleError;

    /// Parses optional `+`/`-` and ASCII decimal digits (what Python's `repr(int)` writes).
    fn from_str(s: &str) -> Result<Self, PickleError> {
        let (negative, digits) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PickleError::new(
                ErrorKind::Malformed,
                format!("invalid integer text {:?}", short(s)),
            ));
        }
        // Multiply-add in base 2^32, nine decimal digits at a time.
        let mut limbs: Vec<u32> = Vec::new();
        let bytes = digits.as_bytes();
        let head = bytes.len() % 9;
        let mut pieces = Vec::new();
        if head > 0 {
            pieces.push(&bytes[..head]);
        }
        pieces.extend(bytes[head..].chunks(9));
        for piece in pieces {
            let mut chunk = 0u64;
            for &d in piece {
                chunk = chunk * 10 + u64::from(d - b'0');
            }
            let mul = 10u64.pow(piece.len() as u32);
            let mut carry = chunk;
            for l in &mut limbs {
                let cur = u64::from(*l) * mul + carry;
                *l = cur as u32;
                carry = cur >> 32;
            }
            if carry > 0 {
                limbs.push(carry as u32);
            }
        }
        Ok(BigInt::from_magnitude(negative, &limbs))
    }
}

fn short(s: &str) -> String {
    if s.len() <= 40 {
        return s.to_owned();
    }
    let mut end = 40;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "1180591620717411303424",
            "-1180591620717411303424",
            "340282366920938463463374607431768211455",
            "-340282366920938463463374607431768211456",
            "123456789012345678901234567890123456789012345678901234567890",
            "-100000000000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let n: BigInt = s.parse().unwrap();
            assert_eq!(n.to_string(), s);
        }
        assert_eq!("+5".parse::<BigInt>().unwrap().to_i64(), Some(5));
        assert!("".parse::<BigInt>().is_err());
        assert!("1_0".parse::<BigInt>().is_err());
        assert!("-".parse::<BigInt>().is_err());
    }

    #[test]
    fn le_bytes_match_python() {
        // (2**70).to_bytes(9, 'little', signed=True)
        let n = BigInt::from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        assert_eq!(n.to_string(), "1180591620717411303424");
        let n = BigInt::from_le_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0xc0]);
        assert_eq!(n.to_string(), "-1180591620717411303424");
        assert_eq!(BigInt::from_le_bytes(&[]).to_i64(), Some(0));
        assert_eq!(BigInt::from_le_bytes(&[0xff, 0xff]).as_le_bytes(), &[0xff]);
        assert_eq!(BigInt::from_u128(u128::MAX).to_u128(), Some(u128::MAX));
        assert_eq!(BigInt::from_u128(u128::MAX).to_i128(), None);
        assert_eq!(BigInt::from_i128(i128::MIN).to_i128(), Some(i128::MIN));
        assert_eq!(BigInt::from_i128(-1).to_u64(), None);
    }
}
