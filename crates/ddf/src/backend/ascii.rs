//! What the protocol encoders share (Memcached's meta protocol, ddf's RESP2 hot path): decimal
//! numbers written into a request buffer.

/// Appends the decimal form of `n` (by hand: `itoa` is not a direct dependency, and `format!`
/// would allocate on every request of the write path).
pub(crate) fn push_uint(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_forms() {
        for n in [0, 1, 9, 10, 99, 100, 4_294_967_295, u64::MAX] {
            let mut b = Vec::new();
            super::push_uint(&mut b, n);
            assert_eq!(b, n.to_string().into_bytes());
        }
    }
}
